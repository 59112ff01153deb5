//! Fuzzes docker config.json parsing and credential lookup. Nothing may panic,
//! and no secret may appear in a credential's or the config's Debug output
//! beyond what the same output shows with every secret blanked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_fuzz::image::auth::{Credential, DockerConfig};

/// The same JSON with every string value (not key) emptied: what Debug may show.
fn blank_values(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.clear(),
        serde_json::Value::Object(m) => m.values_mut().for_each(blank_values),
        serde_json::Value::Array(a) => a.iter_mut().for_each(blank_values),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut value = serde_json::from_slice::<serde_json::Value>(data).ok();
    // Credential helpers are programs: inputs that would run one are skipped.
    if value.as_ref().is_some_and(|v| v.get("credHelpers").is_some() || v.get("credsStore").is_some()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    std::fs::write(&path, data).expect("writing config.json");
    let config = match DockerConfig::from_file(&path) {
        Ok(c) => c,
        Err(e) => {
            let _ = format!("{e:#}");
            return;
        }
    };
    let shown = format!("{config:?}");
    let skeleton = value.as_mut().map(|v| {
        blank_values(v);
        std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
        format!("{:?}", DockerConfig::from_file(&path).expect("the blanked config parses"))
    });
    for registry in ["docker.io", "index.docker.io", "localhost:5000", "reg.example", "", "a/b", "https://x/"] {
        let credential = match config.credential_for(registry) {
            Ok(c) => c,
            Err(e) => {
                let _ = format!("{e:#}");
                continue;
            }
        };
        let _ = credential.to_oci();
        let debug = format!("{credential:?}");
        let (secret, blanked) = match &credential {
            Credential::Basic { username, password } => {
                (password, format!("{:?}", Credential::Basic { username: username.clone(), password: String::new() }))
            }
            Credential::Bearer(token) => (token, format!("{:?}", Credential::Bearer(String::new()))),
            Credential::Anonymous => continue,
        };
        if secret.is_empty() {
            continue;
        }
        assert!(!debug.contains(secret.as_str()) || blanked.contains(secret.as_str()), "secret {secret:?} in Debug: {debug}");
        if let Some(skeleton) = &skeleton {
            assert!(
                !shown.contains(secret.as_str()) || skeleton.contains(secret.as_str()),
                "secret {secret:?} in the config's Debug: {shown}"
            );
        }
    }
});
