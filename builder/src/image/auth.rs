//! Registry credentials from a docker `config.json`, found as kaniko finds it:
//! `$DOCKER_CONFIG/config.json`, then `/kaniko/.docker/config.json`, then
//! `~/.docker/config.json` (the first that exists is used). `auths` entries
//! (`auth` or `username`/`password`, `identitytoken`, `registrytoken`),
//! `credHelpers` and `credsStore` (through `docker-credential-<name> get`)
//! are honoured; with nothing found the registry is used anonymously and the
//! registry's bearer-token flow is handled by `oci-client`.
//!
//! Secrets never leave this module in printable form: [`Credential`]'s
//! `Debug` redacts them, and errors name only the registry and the helper.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde::Deserialize;

use super::reference::DOCKER_HUB;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credential {
    pub fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credential::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// The docker config in force, loaded once per build.
#[derive(Debug, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    file: DockerConfigFile,
}

impl DockerConfig {
    /// Finds and loads the config file as kaniko does; no file means anonymous access.
    pub fn load() -> Result<DockerConfig> {
        for candidate in config_candidates() {
            if candidate.is_file() {
                return DockerConfig::from_file(&candidate);
            }
        }
        Ok(DockerConfig::default())
    }

    pub fn from_file(path: &Path) -> Result<DockerConfig> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        // serde_json's errors give line and column, never the content.
        let file: DockerConfigFile = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a valid docker config.json", path.display()))?;
        Ok(DockerConfig { path: Some(path.to_path_buf()), file })
    }

    /// The file this config came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Credentials for `registry` (host[:port], `docker.io` for Docker Hub).
    pub fn credential_for(&self, registry: &str) -> Result<Credential> {
        let keys = lookup_keys(registry);
        for k in &keys {
            if let Some(helper) = self.file.cred_helpers.get(k) {
                return run_helper(helper, registry);
            }
        }
        for (key, entry) in &self.file.auths {
            if keys.iter().any(|k| k == &normalise_key(key)) {
                return self.decode_entry(key, entry);
            }
        }
        if let Some(store) = &self.file.creds_store {
            return run_helper(store, registry);
        }
        Ok(Credential::Anonymous)
    }

    fn decode_entry(&self, key: &str, e: &AuthEntry) -> Result<Credential> {
        let where_ = || {
            format!(
                "{}: auths entry {key:?}",
                self.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
            )
        };
        if let Some(t) = e.registrytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Credential::Bearer(t.to_string()));
        }
        if let (Some(u), Some(p)) = (&e.username, &e.password)
            && !u.is_empty()
        {
            return Ok(Credential::Basic { username: u.clone(), password: p.clone() });
        }
        if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| anyhow::anyhow!("{}: \"auth\" is not valid base64", where_()))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| anyhow::anyhow!("{}: \"auth\" is not UTF-8", where_()))?;
            let Some((u, p)) = raw.split_once(':') else {
                bail!("{}: \"auth\" must encode username:password", where_());
            };
            return Ok(Credential::Basic { username: u.to_string(), password: p.to_string() });
        }
        if e.identitytoken.as_deref().is_some_and(|t| !t.is_empty()) {
            bail!("{}: identity tokens (OAuth refresh tokens) are not supported; use a username and password or a credential helper", where_());
        }
        Ok(Credential::Anonymous)
    }
}

fn config_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        // kaniko also accepts DOCKER_CONFIG pointing at the file itself.
        if d.is_file() {
            out.push(d);
        } else {
            out.push(d.join("config.json"));
        }
    }
    out.push(PathBuf::from("/kaniko/.docker/config.json"));
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        out.push(PathBuf::from(home).join(".docker/config.json"));
    }
    out
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `reg:5000/` → `reg:5000`.
fn normalise_key(key: &str) -> String {
    let k = key.trim_start_matches("https://").trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => k.to_string(),
    }
}

fn lookup_keys(registry: &str) -> Vec<String> {
    let r = normalise_key(registry);
    if r == DOCKER_HUB {
        vec![r, "index.docker.io".to_string(), "https://index.docker.io/v1/".to_string()]
    } else {
        vec![r]
    }
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn run_helper(helper: &str, registry: &str) -> Result<Credential> {
    if helper.is_empty() || helper.contains('/') {
        bail!("invalid credential helper name {helper:?}");
    }
    let program = format!("docker-credential-{helper}");
    let server = if normalise_key(registry) == DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running credential helper {program} for {registry}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(server.as_bytes())
        .with_context(|| format!("writing to credential helper {program}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for credential helper {program}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        // "credentials not found in native keychain" is the helpers' way of saying anonymous.
        if msg.contains("credentials not found") {
            return Ok(Credential::Anonymous);
        }
        bail!("credential helper {program} failed for {registry} ({})", out.status);
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|_| anyhow::anyhow!("credential helper {program} gave an unreadable reply for {registry}"))?;
    if reply.username == "<token>" {
        bail!("credential helper {program} returned an identity token for {registry}; identity tokens are not supported");
    }
    Ok(Credential::Basic { username: reply.username, password: reply.secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, json).unwrap();
        let c = DockerConfig::from_file(&p).unwrap();
        (dir, c)
    }

    #[test]
    fn reads_auths_entries() {
        let (_d, c) = config(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
                "localhost:5000":{"username":"u2","password":"p2"}}}"#,
        );
        assert_eq!(
            c.credential_for("docker.io").unwrap(),
            Credential::Basic { username: "user".into(), password: "pass".into() }
        );
        assert_eq!(
            c.credential_for("localhost:5000").unwrap(),
            Credential::Basic { username: "u2".into(), password: "p2".into() }
        );
        assert_eq!(c.credential_for("other:1").unwrap(), Credential::Anonymous);
        let shown = format!("{:?}", c.credential_for("docker.io").unwrap());
        assert!(!shown.contains("pass"), "{shown}");
        assert!(!format!("{c:?}").contains("dXNlcjpwYXNz"));
    }

    #[test]
    fn runs_credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-strata-test");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\necho \"{\\\"ServerURL\\\":\\\"$server\\\",\\\"Username\\\":\\\"h-$server\\\",\\\"Secret\\\":\\\"s3cret\\\"}\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
        // Only this test touches PATH-dependent helpers; it runs the helper by name.
        unsafe { std::env::set_var("PATH", &path) };
        let (_d, c) = config(r#"{"credHelpers":{"reg.example":"strata-test"},"credsStore":"strata-test"}"#);
        assert_eq!(
            c.credential_for("reg.example").unwrap(),
            Credential::Basic { username: "h-reg.example".into(), password: "s3cret".into() }
        );
        assert_eq!(
            c.credential_for("docker.io").unwrap(),
            Credential::Basic { username: "h-https://index.docker.io/v1/".into(), password: "s3cret".into() }
        );
        let (_d, c) = config(r#"{"credHelpers":{"reg.example":"absent-helper"}}"#);
        let err = c.credential_for("reg.example").unwrap_err().to_string();
        assert!(err.contains("docker-credential-absent-helper"), "{err}");
    }
}
