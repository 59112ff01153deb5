//! Independent tools that check strata's outputs: skopeo and umoci.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skopeo inspect` of an image transport reference (`oci:DIR:TAG`,
/// `docker-archive:FILE`, `docker://HOST/REPO:TAG`), as JSON.
pub fn skopeo_inspect(reference: &str, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(Command::new("skopeo").arg("inspect").args(extra).arg(reference));
    serde_json::from_str(&out).expect("skopeo inspect prints JSON")
}

/// `skopeo inspect --config`: the image config as JSON.
pub fn skopeo_config(reference: &str, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(Command::new("skopeo").args(["inspect", "--config"]).args(extra).arg(reference));
    serde_json::from_str(&out).expect("skopeo inspect --config prints JSON")
}

/// `skopeo copy` between two transport references.
pub fn skopeo_copy(from: &str, to: &str, extra: &[&str]) {
    run_ok(Command::new("skopeo").arg("copy").args(extra).arg(from).arg(to));
}

/// Unpacks `layout:tag` with umoci into `bundle` and returns its rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(bundle),
    );
    bundle.join("rootfs")
}
