//! Base images made locally from Debian's busybox-static, by
//! fixtures/make-base-images.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::run_ok;
use crate::workspace_root;

pub fn fixtures_dir() -> PathBuf {
    workspace_root().join("fixtures")
}

/// Writes an OCI layout of the busybox base into `dir` (tag `latest`) and
/// returns its manifest digest.
pub fn busybox_layout(dir: &Path) -> String {
    let script = fixtures_dir().join("make-base-images.sh");
    run_ok(Command::new("bash").arg(script).arg(dir)).trim().to_string()
}

/// The busybox base pushed to `registry` (host:port) as `repo:tag`, with
/// skopeo; returns the reference pushed.
pub fn push_busybox(registry: &str, repo: &str, tag: &str, scratch: &Path) -> String {
    push_busybox_as(registry, repo, tag, scratch, None)
}

/// [`push_busybox`] to a registry that wants `user:password` credentials.
pub fn push_busybox_as(registry: &str, repo: &str, tag: &str, scratch: &Path, creds: Option<&str>) -> String {
    let layout = scratch.join("busybox-layout");
    if !layout.join("index.json").exists() {
        busybox_layout(&layout);
    }
    let reference = format!("{registry}/{repo}:{tag}");
    let creds = creds.map(|c| format!("--dest-creds={c}"));
    let mut args = vec!["--dest-tls-verify=false"];
    args.extend(creds.as_deref());
    crate::tools::skopeo_copy(&format!("oci:{}:latest", layout.display()), &format!("docker://{reference}"), &args);
    reference
}

/// Writes `dir/config.json`, a docker config with one `auths` entry under
/// `key` (a registry's host:port, or a URL form such as `http://HOST/v2/`)
/// holding `user:password`; returns the encoded `auth` value.
pub fn write_docker_config(dir: &Path, key: &str, user: &str, password: &str) -> String {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), format!(r#"{{"auths":{{"{key}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
    auth
}
