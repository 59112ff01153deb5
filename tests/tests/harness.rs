//! The harness itself works: the registry starts and accepts a push of the
//! locally made busybox base, which skopeo reads back.

use strata_tests::{fixtures, registry::Registry, require, tools};

#[test]
fn busybox_base_is_deterministic_and_valid() {
    if !require::tool("busybox_base_is_deterministic_and_valid", "skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = fixtures::busybox_layout(&dir.path().join("a"));
    let second = fixtures::busybox_layout(&dir.path().join("b"));
    assert_eq!(first, second, "the same busybox binary must give the same image");
    let inspect = tools::skopeo_inspect(&format!("oci:{}:latest", dir.path().join("a").display()), &[]);
    assert_eq!(inspect["Digest"], first);
    assert_eq!(inspect["Os"], "linux");
}

#[test]
fn registry_accepts_push_with_and_without_auth() {
    if !require::tool("registry_accepts_push", "docker-registry") || !require::tool("registry_accepts_push", "skopeo") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let open = Registry::start();
    let reference = fixtures::push_busybox(&open.addr, "base/busybox", "1", scratch.path());
    let inspect = tools::skopeo_inspect(&format!("docker://{reference}"), &["--tls-verify=false"]);
    assert_eq!(inspect["Architecture"], "amd64");

    let locked = Registry::start_with_auth("alice", "s3cret");
    let layout = scratch.path().join("busybox-layout");
    let denied = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/x:1", locked.addr))
        .output()
        .unwrap();
    assert!(!denied.status.success(), "an anonymous push to an authenticated registry must fail");
    tools::skopeo_copy(
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{}/x:1", locked.addr),
        &["--dest-tls-verify=false", "--dest-creds=alice:s3cret"],
    );
}
