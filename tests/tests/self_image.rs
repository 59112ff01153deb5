//! strata builds its own executor image from the root Dockerfile, with
//! docs/ci/build-executor-image.sh exactly as docs/ci/README.md tells users to
//! (pushing to a local registry, the busybox stage from the local busybox
//! base), and the image is what a kaniko user expects: checked with skopeo
//! (entrypoint, environment, working directory) and umoci (files), and the
//! static binary runs from the unpacked image in a chroot.

mod build_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use build_support::*;
use strata_tests::registry::Registry;
use strata_tests::{require, tools, workspace_root};

/// The target directory the tests were built in (the script builds the
/// static binary there too, so it is compiled once).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    exe.ancestors().nth(3).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Runs docs/ci/build-executor-image.sh with `flags`; returns its output.
fn build_executor_image(s: &Scratch, flags: &[&str]) -> String {
    let script = workspace_root().join("docs/ci/build-executor-image.sh");
    let busybox = format!("busybox:1.37=oci-layout://{}", s.path().join("base").display());
    let out = Command::new("bash")
        .arg(&script)
        .args(flags)
        .args(["--build-context", &busybox])
        .env("CARGO_TARGET_DIR", target_dir())
        .env("NO_COLOR", "1")
        .output()
        .expect("running docs/ci/build-executor-image.sh");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} {flags:?} failed ({}):\n{log}", script.display(), out.status);
    log
}

/// Copies `reference` from the registry into an OCI layout and unpacks it.
fn fetch(reference: &str, s: &Scratch, name: &str) -> (serde_json::Value, PathBuf) {
    let layout = s.path().join(format!("{name}-layout"));
    tools::skopeo_copy(
        &format!("docker://{reference}"),
        &format!("oci:{}:latest", layout.display()),
        &["--src-tls-verify=false"],
    );
    let config = config(&layout, "latest");
    let root = unpack(&layout, "latest", &s.path().join(format!("{name}-bundle")));
    (config, root)
}

fn env_of(config: &serde_json::Value) -> Vec<String> {
    json_strings(&config["config"]["Env"])
}

/// Runs `argv` chrooted into `root` (no /bin/env there: the argv itself).
/// The environment is the image's PATH only (the program is looked up on the
/// host's PATH first: Command resolves it with the child's).
fn chroot(root: &Path, argv: &[&str]) -> String {
    let chroot = tools::which("chroot").expect("chroot on PATH");
    tools::run_ok(Command::new(chroot).arg(root).args(argv).env_clear().env("PATH", "/kaniko:/busybox"))
}

/// Whether the ELF file at `path` has no PT_INTERP program header, i.e. needs
/// no dynamic loader (a static or static-pie executable).
fn is_static_elf(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let b = std::fs::read(path).unwrap();
    assert!(b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2 && b[5] == 1, "{}: a 64-bit little-endian ELF", path.display());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != PT_INTERP
    })
}

#[test]
fn strata_builds_its_own_executor_image() {
    let test = "strata_builds_its_own_executor_image";
    if !requirements(test) || !require::tool(test, "cargo") || !require::tool(test, "chroot") {
        return;
    }
    let s = Scratch::new();
    let registry = Registry::start();
    let reference = format!("{}/strata/executor:test", registry.addr);
    build_executor_image(&s, &["--destination", &reference]);
    let (config, root) = fetch(&reference, &s, "executor");

    let c = &config["config"];
    assert_eq!(json_strings(&c["Entrypoint"]), ["/kaniko/strata"], "{config}");
    assert!(c["Cmd"].is_null() || json_strings(&c["Cmd"]).is_empty(), "no CMD: flags go straight to strata: {config}");
    assert_eq!(c["WorkingDir"], "/workspace");
    let env = env_of(&config);
    for wanted in [
        "DOCKER_CONFIG=/kaniko/.docker/",
        "PATH=/usr/local/bin:/kaniko",
        "HOME=/root",
        "SSL_CERT_FILE=/kaniko/ssl/certs/ca-certificates.crt",
        "SSL_CERT_DIR=/kaniko/ssl/certs",
    ] {
        assert!(env.iter().any(|e| e == wanted), "{wanted} in {env:?}");
    }

    use std::os::unix::fs::PermissionsExt;
    let strata = root.join("kaniko/strata");
    let meta = std::fs::symlink_metadata(&strata).unwrap();
    assert!(meta.is_file() && meta.permissions().mode() & 0o7777 == 0o755, "/kaniko/strata: {meta:?}");
    assert!(is_static_elf(&strata), "/kaniko/strata is statically linked");
    assert_eq!(std::fs::read_link(root.join("kaniko/executor")).unwrap(), Path::new("strata"));
    for dir in ["kaniko/.docker", "workspace", "tmp"] {
        assert!(root.join(dir).is_dir(), "/{dir} is a directory");
    }
    assert_eq!(std::fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    let bundle = std::fs::read_to_string(root.join("kaniko/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.contains("BEGIN CERTIFICATE"), "the CA bundle");
    assert_eq!(std::fs::read_to_string(root.join("etc/nsswitch.conf")).unwrap(), "hosts: files dns\n");
    assert!(!root.join("bin").exists() && !root.join("busybox").exists(), "the executor image has no shell");

    // The binary runs from the image, with no libc there, under both names.
    let help = chroot(&root, &["/kaniko/executor", "--help"]);
    assert!(help.contains("drop-in for kaniko") && help.contains("--destination"), "{help}");
    let version = chroot(&root, &["/kaniko/strata", "--version"]);
    assert!(version.starts_with("strata "), "{version}");

    // Used as kaniko's image is: the context in /workspace, the Dockerfile
    // there, /kaniko as the work directory, no other flag. (A RUN step needs
    // what a container runtime gives strata, a /dev and a root that is a
    // mount point, which a bare chroot lacks; the build_* tests cover RUN.)
    std::fs::write(root.join("workspace/Dockerfile"), "FROM scratch\nCOPY hello.txt /hello.txt\n").unwrap();
    std::fs::write(root.join("workspace/hello.txt"), "hello from /workspace\n").unwrap();
    chroot(&root, &["/kaniko/executor", "--no-push", "--tar-path", "/workspace/out.tar"]);
    let layout = s.path().join("dropin-layout");
    tools::skopeo_copy(
        &format!("docker-archive:{}", root.join("workspace/out.tar").display()),
        &format!("oci:{}:latest", layout.display()),
        &[],
    );
    let built = unpack(&layout, "latest", &s.path().join("dropin-bundle"));
    assert_eq!(std::fs::read_to_string(built.join("hello.txt")).unwrap(), "hello from /workspace\n");
    assert!(root.join("kaniko/blobs").is_dir(), "/kaniko is the default work directory");
}

#[test]
fn the_debug_target_adds_busybox() {
    let test = "the_debug_target_adds_busybox";
    if !requirements(test) || !require::tool(test, "cargo") || !require::tool(test, "chroot") {
        return;
    }
    let s = Scratch::new();
    let registry = Registry::start();
    let reference = format!("{}/strata/executor:test-debug", registry.addr);
    build_executor_image(&s, &["--target", "debug", "--destination", &reference]);
    let (config, root) = fetch(&reference, &s, "debug");
    assert_eq!(json_strings(&config["config"]["Entrypoint"]), ["/kaniko/strata"], "kaniko's debug image keeps the entrypoint");
    assert!(env_of(&config).iter().any(|e| e == "PATH=/usr/local/bin:/kaniko:/busybox"), "{config}");
    assert!(root.join("kaniko/strata").is_file() && root.join("kaniko/.docker").is_dir());
    // A GitLab-style script: a shell from /busybox, the executor on PATH.
    let out = chroot(&root, &["/busybox/sh", "-c", "mkdir -p /kaniko/.docker && echo '{}' > /kaniko/.docker/config.json && executor --version"]);
    assert!(out.starts_with("strata "), "{out}");
}
