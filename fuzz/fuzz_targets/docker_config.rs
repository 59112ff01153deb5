//! Fuzzes docker config.json parsing and credential lookup. Nothing may panic,
//! and no secret may appear in a credential's or the config's Debug output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_fuzz::image::auth::{Credential, DockerConfig};

/// Words Debug prints whatever the input: a secret inside one of them is not a leak.
const DEBUG_WORDS: &str = "DockerConfig DockerConfigFile auths cred_helpers creds_store AuthEntry(<redacted>) \
                           Basic(, <redacted>) Bearer(<redacted>) Anonymous Some(None) path file config.json";

fn object_keys(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                out.push_str(k);
                out.push('\n');
                object_keys(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| object_keys(v, out)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut public = String::from(DEBUG_WORDS);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        // Credential helpers are programs: lookups that would run one are skipped.
        if value.get("credHelpers").is_some() || value.get("credsStore").is_some() {
            return;
        }
        object_keys(&value, &mut public);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    public.push_str(&path.display().to_string());
    std::fs::write(&path, data).expect("writing config.json");
    let config = match DockerConfig::from_file(&path) {
        Ok(c) => c,
        Err(e) => {
            let _ = format!("{e:#}");
            return;
        }
    };
    let shown = format!("{config:?}");
    for registry in ["docker.io", "index.docker.io", "localhost:5000", "reg.example", "", "a/b", "https://x/"] {
        let credential = match config.credential_for(registry) {
            Ok(c) => c,
            Err(e) => {
                let _ = format!("{e:#}");
                continue;
            }
        };
        let debug = format!("{credential:?}");
        let (secret, user) = match &credential {
            Credential::Basic { username, password } => (password.as_str(), username.as_str()),
            Credential::Bearer(token) => (token.as_str(), ""),
            Credential::Anonymous => continue,
        };
        let _ = credential.to_oci();
        // Usernames are shown by design; short secrets match anything.
        if secret.len() < 4 || public.contains(secret) || user.contains(secret) {
            continue;
        }
        assert!(!debug.contains(secret), "secret {secret:?} in a credential's Debug: {debug}");
        assert!(!shown.contains(secret), "secret {secret:?} in the config's Debug: {shown}");
    }
});
