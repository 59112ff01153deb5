//! Each RUN isolation level for real. The test re-runs itself in a
//! restricted process made with util-linux's `setpriv`, and checks what
//! `Isolation::detect` picks there and that a RUN works at that level:
//! - unprivileged (uid 65534, no capabilities): a user namespace;
//! - a plain Kubernetes pod (uid 0, Docker's default capabilities, so no
//!   CAP_SYS_ADMIN, and user namespaces denied by a seccomp filter as
//!   Docker's default profile does): chroot with device nodes made by mknod;
//! - the same without CAP_SYS_CHROOT: kaniko's way, in the container's root.

mod run_support;

use std::process::Command;

use run_support::*;
use strata_builder::exec::run::{self, Isolation};

const ROLE: &str = "STRATA_RUN_LEVEL_CHILD";
/// Docker's default capability set, for `setpriv --bounding-set`.
const DOCKER_CAPS: &str = "-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,+setuid,+setpcap,\
                           +net_bind_service,+net_raw,+sys_chroot,+mknod,+audit_write,+setfcap";
const DONE: &str = "LEVEL-CHILD-DONE";

/// In the parent: re-runs `test` under `setpriv <args>` and checks it passed.
fn rerun_restricted(test: &str, setpriv_args: &[&str]) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, "1")
        .output()
        .expect("util-linux setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "{test} in a restricted process failed:\n{stdout}\n{stderr}"
    );
}

fn in_child() -> bool {
    std::env::var_os(ROLE).is_some()
}

/// Denies new user namespaces to this process and its children, as Docker's
/// default seccomp profile does for a container without CAP_SYS_ADMIN.
fn deny_user_namespaces() {
    assert!(
        seccomp_deny_user_namespaces(true),
        "installing the seccomp filter: {}",
        std::io::Error::last_os_error()
    );
    assert_ne!(
        unsafe { libc::unshare(libc::CLONE_NEWUSER) },
        0,
        "user namespaces are denied now"
    );
}

fn cap_eff() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

const CAP_SYS_ADMIN: u64 = 1 << 21;

#[test]
fn user_namespace_level_when_unprivileged() {
    if !in_child() {
        if have_root("user_namespace_level_when_unprivileged") {
            rerun_restricted(
                "user_namespace_level_when_unprivileged",
                &["--reuid=65534", "--regid=65534", "--clear-groups"],
            );
        }
        return;
    }
    assert_eq!(unsafe { libc::geteuid() }, 65534);
    let level = Isolation::detect(false).unwrap();
    assert_eq!(level, Isolation::UserNamespace);
    let t = busybox_root();
    let before = tree(&t.root);
    let (mut req, out) = request(
        &t,
        "id -u; echo pid=$$; hostname; test -c /dev/null && echo null-ok; test -r /proc/self/status && echo proc-ok; \
         cat /run/secrets/s; echo; ls /c >/dev/null && echo cache-ok; echo x > /tmp/x",
        level,
    );
    let secret = t.work.join("s");
    std::fs::write(&secret, "userns-secret").unwrap();
    req.secrets = vec![format!("id=s,src={}", secret.display()).parse().unwrap()];
    req.mounts = vec!["type=secret,id=s".into(), "type=cache,target=/c".into()];
    run::execute(&req).unwrap();
    assert_eq!(
        lines(&out),
        [
            "0",
            "pid=1",
            "strata",
            "null-ok",
            "proc-ok",
            "userns-secret",
            "cache-ok"
        ]
    );
    let mut expected = before;
    expected.insert("tmp/x 100644".into());
    assert_eq!(tree(&t.root), expected);
    assert_no_mounts_under(t.dir.path());

    // Only uid 0 is mapped: another USER is a clear error.
    let (mut req, _) = request(&t, "true", level);
    req.user = Some("app".into());
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(err.contains("maps only uid 0"), "{err}");
    println!("{DONE}");
}

#[test]
fn user_namespace_level_as_root_without_sys_admin() {
    if !in_child() {
        if have_root("user_namespace_level_as_root_without_sys_admin") {
            rerun_restricted(
                "user_namespace_level_as_root_without_sys_admin",
                &["--bounding-set", DOCKER_CAPS, "--inh-caps=-all"],
            );
        }
        return;
    }
    assert_eq!(cap_eff() & CAP_SYS_ADMIN, 0, "CAP_SYS_ADMIN dropped");
    let level = Isolation::detect(false).unwrap();
    assert_eq!(level, Isolation::UserNamespace);
    let t = busybox_root();
    // Root maps every id into the namespace: other users work, and files
    // keep their owners.
    let (mut req, out) = request(
        &t,
        "id -u; id -G; stat -c %u /etc/passwd; touch /tmp/by-app; echo pid=$$",
        level,
    );
    req.user = Some("app".into());
    run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["1000", "1000 50", "0", "pid=1"]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(t.root.join("tmp/by-app")).unwrap().uid(),
        1000
    );
    assert_no_mounts_under(t.dir.path());
    println!("{DONE}");
}

#[test]
fn chroot_level_in_a_plain_pod() {
    if !in_child() {
        if have_root("chroot_level_in_a_plain_pod") {
            rerun_restricted(
                "chroot_level_in_a_plain_pod",
                &["--bounding-set", DOCKER_CAPS, "--inh-caps=-all"],
            );
        }
        return;
    }
    assert_eq!(cap_eff() & CAP_SYS_ADMIN, 0, "CAP_SYS_ADMIN dropped");
    deny_user_namespaces();
    let level = Isolation::detect(false).unwrap();
    assert_eq!(level, Isolation::Chroot);

    let t = busybox_root();
    std::fs::write(t.root.join("etc/hosts"), "10.0.0.1 image-own-hosts\n").unwrap();
    let before = tree(&t.root);
    let hosts_mtime = std::fs::metadata(t.root.join("etc/hosts"))
        .unwrap()
        .modified()
        .unwrap();
    let secret = t.work.join("token");
    std::fs::write(&secret, "chroot-secret").unwrap();
    let (mut req, out) = request(
        &t,
        "id -u; test -c /dev/null && echo null-ok; echo > /dev/null && head -c 3 /dev/urandom | wc -c; \
         cat /etc/hostname; grep -c localhost /etc/hosts; test -e /proc/self || echo no-proc; \
         cat /run/secrets/token; echo; pwd; echo made > /tmp/made",
        level,
    );
    req.workdir = "/w".into();
    req.secrets = vec![
        format!("id=token,src={}", secret.display())
            .parse()
            .unwrap(),
    ];
    req.mounts = vec!["type=secret,id=token".into()];
    let outcome = run::execute(&req).unwrap();
    assert_eq!(
        lines(&out),
        [
            "0",
            "null-ok",
            "3",
            "strata",
            "2",
            "no-proc",
            "chroot-secret",
            "/w"
        ]
    );
    let mut expected = before;
    expected.insert("tmp/made 100644".into());
    expected.insert("w 40755".into());
    assert_eq!(
        tree(&t.root),
        expected,
        "devices, /etc files and the secret taken out again"
    );
    assert_eq!(
        std::fs::read_to_string(t.root.join("etc/hosts")).unwrap(),
        "10.0.0.1 image-own-hosts\n"
    );
    assert_eq!(
        std::fs::metadata(t.root.join("etc/hosts"))
            .unwrap()
            .modified()
            .unwrap(),
        hosts_mtime
    );
    assert!(
        outcome
            .excluded_paths
            .contains(&"/run/secrets/token".into())
    );

    let (mut req, out) = request(&t, "id -u; id -G", level);
    req.user = Some("app".into());
    run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["1000", "1000 50"]);

    // No PID namespace here: what the step left running in its process group
    // is gone when the step returns.
    let (req, _) = request(&t, "sleep 301 & echo started", level);
    run::execute(&req).unwrap();
    assert_eq!(processes("sleep 301"), 0, "the background sleep ended with the step");

    let (mut req, _) = request(&t, "true", level);
    req.mounts = vec!["type=cache,target=/c".into()];
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(
        err.contains("needs mount namespaces") && err.contains("only type=secret"),
        "{err}"
    );
    let (mut req, _) = request(&t, "true", level);
    req.network = run::Network::None;
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(
        err.contains("--network=none needs a network namespace"),
        "{err}"
    );
    println!("{DONE}");
}

#[test]
fn container_root_level_without_chroot() {
    if !in_child() {
        if have_root("container_root_level_without_chroot") {
            let caps = DOCKER_CAPS.replace(",+sys_chroot", "");
            rerun_restricted(
                "container_root_level_without_chroot",
                &["--bounding-set", &caps, "--inh-caps=-all"],
            );
        }
        return;
    }
    deny_user_namespaces();
    // `force` stands for "strata knows it may use this root" whether or not
    // this test machine looks like a container.
    let level = Isolation::detect(true).unwrap();
    assert_eq!(level, Isolation::HostRoot);

    let t = busybox_root();
    let (req, _) = request(&t, "true", level);
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(err.contains("stage root must be /"), "{err}");

    // kaniko's way: the command runs in this container's root. Keep it harmless:
    // it only writes in a temporary directory.
    let scratch = tempfile::tempdir().unwrap();
    let secret_target = scratch.path().join("secret");
    let secret = t.work.join("s");
    std::fs::write(&secret, "hostroot-secret").unwrap();
    let (mut req, out) = request(&t, "pwd; cat secret; echo; echo done > out", level);
    req.root = "/".into();
    req.workdir = scratch.path().to_str().unwrap().into();
    req.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    req.secrets = vec![format!("id=s,src={}", secret.display()).parse().unwrap()];
    req.mounts = vec![format!(
        "type=secret,id=s,target={}",
        secret_target.display()
    )];
    run::execute(&req).unwrap();
    assert_eq!(
        lines(&out),
        [scratch.path().to_str().unwrap(), "hostroot-secret"]
    );
    assert!(!secret_target.exists(), "secret removed after the step");
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("out")).unwrap(),
        "done\n"
    );
    println!("{DONE}");
}
