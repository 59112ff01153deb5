//! RUN at the namespace level (root with CAP_SYS_ADMIN): a real busybox
//! root, a fresh /proc, /dev and read-only /sys, the provided /etc files,
//! USER, WORKDIR, stdin and heredoc files, --network=none, errors, and that
//! nothing is left in the root or the host.

mod run_support;

use run_support::*;
use strata_builder::exec::run::{self, Isolation, Network, RunFile};

fn level(test: &str) -> Option<Isolation> {
    if !have_root(test) {
        return None;
    }
    let level = Isolation::detect(false).unwrap();
    assert_eq!(
        level,
        Isolation::Namespaces,
        "root with CAP_SYS_ADMIN must get the namespace level"
    );
    Some(level)
}

#[test]
fn runs_isolated_and_leaves_no_trace() {
    let Some(level) = level("runs_isolated_and_leaves_no_trace") else {
        return;
    };
    let t = busybox_root();
    let before_tree = tree(&t.root);
    let script = "echo pid=$$; echo host=$(hostname); cat /etc/hostname; grep -c localhost /etc/hosts; \
                  test -c /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; \
                  test -r /proc/self/status && echo proc-ok; ls /dev/pts >/dev/null && echo pts-ok; \
                  touch /sys/x 2>/dev/null || echo sys-ro; test -d /dev/shm && echo shm-ok; \
                  echo work=$(pwd) home=$HOME greeting=$GREETING; echo to-stderr >&2; \
                  mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk 2>/dev/null || echo nodev-ok; rm /tmp/disk; \
                  ls /proc/self/fd | wc -l; echo made > /tmp/made";
    let (mut req, out) = request(&t, script, level);
    req.env.push(("GREETING".into(), "hello".into()));
    req.workdir = "/app/src".into();
    let outcome = run::execute(&req).unwrap();
    let lines = lines(&out);
    for want in [
        "pid=1",
        "host=strata",
        "strata",
        "2",
        "null-ok",
        "4",
        "proc-ok",
        "pts-ok",
        "sys-ro",
        "shm-ok",
        "work=/app/src home=/root greeting=hello",
        "to-stderr",
        "nodev-ok",
        "4",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want:?} in {lines:?}"
        );
    }
    assert!(
        text(&out).lines().all(|l| l.starts_with("[1/1] RUN ")),
        "every line is prefixed"
    );
    assert_eq!(
        outcome.created_paths,
        vec![std::path::PathBuf::from("/app"), "/app/src".into()]
    );
    for p in [
        "/proc",
        "/dev",
        "/sys",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
    ] {
        assert!(
            outcome.excluded_paths.contains(&p.into()),
            "{p} excluded: {:?}",
            outcome.excluded_paths
        );
    }
    // The root holds what the RUN wrote and the WORKDIR, and no mountpoint.
    let mut expected = before_tree.clone();
    expected.insert("tmp/made 100644".into());
    expected.insert("app 40755".into());
    expected.insert("app/src 40755".into());
    assert_eq!(tree(&t.root), expected);
    assert_no_mounts_under(t.dir.path());
}

#[test]
fn user_groups_stdin_and_heredoc_files() {
    let Some(level) = level("user_groups_stdin_and_heredoc_files") else {
        return;
    };
    let t = busybox_root();
    let (mut req, out) = request(&t, "", level);
    req.argv = vec!["/bin/sh".into()];
    req.stdin =
        Some(b"id -u; id -g; id -G; sh /script.sh; cat /proc/self/status | grep CapEff\n".to_vec());
    req.files = vec![RunFile {
        path: "/script.sh".into(),
        contents: b"echo from-heredoc-file\n".to_vec(),
        mode: 0o755,
    }];
    req.user = Some("app".into());
    let outcome = run::execute(&req).unwrap();
    let lines = lines(&out);
    assert_eq!(
        &lines[..4],
        ["1000", "1000", "1000 50", "from-heredoc-file"],
        "{lines:?}"
    );
    assert!(
        lines[4].ends_with("0000000000000000"),
        "a non-root user has no capabilities: {}",
        lines[4]
    );
    assert!(
        !t.root.join("script.sh").exists(),
        "heredoc file gone after the step"
    );
    assert!(outcome.excluded_paths.contains(&"/script.sh".into()));

    // Root keeps only Docker's default capabilities (no CAP_SYS_ADMIN).
    let (req, out) = request(&t, "grep CapBnd /proc/self/status", level);
    run::execute(&req).unwrap();
    assert!(text(&out).contains("00000000a80425fb"), "{}", text(&out));
}

#[test]
fn failures_name_step_command_and_status() {
    let Some(level) = level("failures_name_step_command_and_status") else {
        return;
    };
    let t = busybox_root();
    let (req, _) = request(&t, "echo partial; exit 3", level);
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(
        err.contains("[1/1] RUN")
            && err.contains("`echo partial; exit 3`")
            && err.contains("non-zero code: 3"),
        "{err}"
    );

    let (mut req, _) = request(&t, "", level);
    req.argv = vec!["no-such-tool".into()];
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(
        err.contains("no-such-tool: executable file not found"),
        "{err}"
    );

    let (mut req, _) = request(&t, "true", level);
    req.user = Some("ghost".into());
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(err.contains("unable to find user ghost"), "{err}");

    assert!(
        !t.root.join("proc").exists() && !t.root.join("dev").exists(),
        "mountpoints removed on failure"
    );
}

#[test]
fn background_processes_end_with_the_step() {
    let Some(level) = level("background_processes_end_with_the_step") else {
        return;
    };
    let t = busybox_root();
    let (req, _) = request(&t, "sleep 300 & echo started", level);
    let start = std::time::Instant::now();
    run::execute(&req).unwrap();
    assert!(
        start.elapsed().as_secs() < 30,
        "the step did not wait for its background sleep"
    );
    // The kernel ends a PID namespace's processes before its init is reaped,
    // so none should be left; one CI run still saw the sleep right after the
    // step on a loaded machine. A leaked sleep would stay for 300 s: give
    // /proc a few seconds before calling it one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while processes("sleep 300") > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(processes("sleep 300"), 0, "sleep killed with the step");
}

#[test]
fn network_none_has_only_loopback() {
    let Some(level) = level("network_none_has_only_loopback") else {
        return;
    };
    let t = busybox_root();
    let (mut req, out) = request(
        &t,
        "ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags",
        level,
    );
    req.network = Network::None;
    run::execute(&req).unwrap();
    let lines = lines(&out);
    assert_eq!(lines[0], "lo", "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).unwrap();
    assert!(flags & 1 == 1, "lo is up: {lines:?}");
}

#[test]
fn hostile_symlinks_stay_inside_the_root() {
    let Some(level) = level("hostile_symlinks_stay_inside_the_root") else {
        return;
    };
    let t = busybox_root();
    let victim = t.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    // /proc and /etc/hosts point outside the root by absolute path.
    std::os::unix::fs::symlink(&victim, t.root.join("proc")).unwrap();
    std::os::unix::fs::symlink(victim.join("hosts"), t.root.join("etc/hosts")).unwrap();
    let (req, _) = request(&t, "echo escaped > /proc/x 2>/dev/null; true", level);
    let _ = run::execute(&req);
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing written outside the root"
    );
}

/// Many RUNs at once from a busy multithreaded process (parallel stages):
/// the child between clone and exec must not wait for locks or threads it
/// copied from strata (glibc's setuid wrappers once made it hang).
#[test]
fn parallel_runs_do_not_deadlock() {
    let Some(level) = level("parallel_runs_do_not_deadlock") else {
        return;
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for i in 0..8 {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let t = busybox_root();
            for j in 0..4 {
                let (mut req, out) = request(&t, "id -u", level);
                req.user = Some(if (i + j) % 2 == 0 { "app" } else { "root" }.into());
                run::execute(&req).unwrap();
                // Keep the allocator busy in this thread meanwhile.
                let _noise: Vec<String> = (0..1000).map(|n| n.to_string()).collect();
                assert_eq!(lines(&out).len(), 1);
            }
            // Removed before saying done: the test (and the process) may end
            // as soon as the last thread says so.
            drop(t);
            done_tx.send(()).unwrap();
        });
    }
    for _ in 0..8 {
        done_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a RUN hung or failed");
    }
}
