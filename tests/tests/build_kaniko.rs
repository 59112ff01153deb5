//! The three kaniko command lines users copy from CI documents run unchanged
//! but for the binary's name, against a real registry on loopback:
//! a Dockerfile below the context with --no-push and --tar-path; `--context .`
//! with credentials from a docker config.json (DOCKER_CONFIG, as kaniko's image
//! sets it to /kaniko/.docker); and a git context served by `git daemon`.

mod build_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use build_support::*;
use strata_tests::{fixtures, registry::Registry, require, tools};

/// Copies a fixture to `dir` with REGISTRY replaced in its Dockerfiles.
fn instantiate(fixture_dir: &Path, dir: &Path, registry: &str) {
    tools::run_ok(Command::new("cp").arg("-a").arg(fixture_dir).arg(dir));
    for entry in walk(dir) {
        if entry.file_name().is_some_and(|n| n == "Dockerfile") {
            let text = std::fs::read_to_string(&entry).unwrap().replace("REGISTRY", registry);
            std::fs::write(&entry, text).unwrap();
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn ready(test: &str) -> bool {
    requirements(test) && require::tool(test, "docker-registry") && require::tool(test, "git")
}

#[test]
fn kaniko_gitlab_no_push_tar_path() {
    if !ready("kaniko_gitlab_no_push_tar_path") {
        return;
    }
    let registry = Registry::start();
    let s = tempfile::tempdir().unwrap();
    fixtures::push_busybox(&registry.addr, "base/busybox", "1", s.path());
    let dir = s.path().join("project");
    instantiate(&fixture("kaniko/php-app"), &dir, &registry.addr);
    std::fs::create_dir(dir.join("tar_images")).unwrap();
    let (reg, tag) = (registry.addr.as_str(), "1.0.0");
    let d = dir.to_str().unwrap();
    let dockerfile = format!("{d}/deployment/php/Dockerfile");
    let destination = format!("{reg}/osdo/osdo-app:{tag}");
    strata_ok(
        &args(&["--context", d, "--dockerfile", &dockerfile, "--destination", &destination, "--no-push", "--tar-path", "tar_images/osdo_app.tar"]),
        &dir,
        &[],
    );
    let archive = dir.join("tar_images/osdo_app.tar");
    let config = tools::skopeo_config(&format!("docker-archive:{}", archive.display()), &[]);
    assert_eq!(json_strings(&config["config"]["Cmd"]), ["cat", "/var/www/html/index.php"]);
    // Nothing was pushed.
    let pushed = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &format!("docker://{destination}")])
        .output()
        .unwrap();
    assert!(!pushed.status.success(), "--no-push must not push");
    // The archive's tree, through an OCI layout umoci can unpack.
    let layout = s.path().join("oci");
    tools::skopeo_copy(&format!("docker-archive:{}", archive.display()), &format!("oci:{}:x", layout.display()), &[]);
    let root = unpack(&layout, "x", &s.path().join("bundle"));
    assert_eq!(std::fs::read_to_string(root.join("var/www/html/index.php")).unwrap(), "<?php echo \"osdo\";\n");
    assert!(root.join("var/www/html/built.php").is_file());
}

#[test]
fn kaniko_context_dot_with_docker_config_credentials() {
    if !ready("kaniko_context_dot_with_docker_config_credentials") || !require::tool("kaniko_context_dot", "htpasswd") {
        return;
    }
    let registry = Registry::start_with_auth("ci", "t0ken");
    let s = tempfile::tempdir().unwrap();
    fixtures::push_busybox_as(&registry.addr, "base/busybox", "1", s.path(), Some("ci:t0ken"));
    let dir = s.path().join("project");
    instantiate(&fixture("kaniko/git-app"), &dir, &registry.addr);
    let docker = s.path().join("kaniko/.docker");
    let auth = fixtures::write_docker_config(&docker, &registry.addr, "ci", "t0ken");
    let destination = format!("{}/image:0123abc", registry.addr);
    let log = strata_ok(&args(&["--context", ".", "--destination", &destination]), &dir, &[("DOCKER_CONFIG", docker.to_str().unwrap())]);
    assert!(!log.contains("t0ken") && !log.contains(&auth), "credentials must never be logged");
    let config = tools::skopeo_config(&format!("docker://{destination}"), &["--tls-verify=false", "--creds=ci:t0ken"]);
    assert_eq!(json_strings(&config["config"]["Entrypoint"]), ["cat", "/app/app.txt"]);
}

/// `git daemon` serving `base` on 127.0.0.1, killed on drop.
struct GitDaemon(Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kaniko_git_context() {
    if !ready("kaniko_git_context") {
        return;
    }
    let registry = Registry::start();
    let s = tempfile::tempdir().unwrap();
    fixtures::push_busybox(&registry.addr, "base/busybox", "1", s.path());
    let repos = s.path().join("repos");
    let repo = repos.join("app.git");
    std::fs::create_dir_all(&repos).unwrap();
    instantiate(&fixture("kaniko/git-app"), &repo, &registry.addr);
    let git = |args: &[&str]| {
        tools::run_ok(Command::new("git").args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]).args(args).current_dir(&repo));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "app"]);
    let port = strata_tests::registry::free_port();
    let daemon = GitDaemon(
        Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", &format!("--port={port}")])
            .arg(format!("--base-path={}", repos.display()))
            .arg(&repos)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let destination = format!("{}/myapp:1.4.0", registry.addr);
    let context = format!("--context=git://127.0.0.1:{port}/app.git#refs/heads/main");
    strata_ok(&args(&[&context, "--dockerfile=Dockerfile", &format!("--destination={destination}")]), s.path(), &[]);
    drop(daemon);
    let layout = s.path().join("oci");
    tools::skopeo_copy(&format!("docker://{destination}"), &format!("oci:{}:x", layout.display()), &["--src-tls-verify=false"]);
    let root = unpack(&layout, "x", &s.path().join("bundle"));
    assert_eq!(std::fs::read_to_string(root.join("app/app.txt")).unwrap(), "from git\n");
    assert_eq!(std::fs::read_to_string(root.join("app/size.txt")).unwrap(), "9 /app/app.txt\n");
    assert!(!root.join("app/.git").exists());
}

