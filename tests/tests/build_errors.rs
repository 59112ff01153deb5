//! A failing RUN, a missing COPY source, an unknown USER (and --chown user)
//! and a bad --build-arg each end the build with one clear error line, exit
//! status 1, and nothing left behind: no build directory, no mount, no output.

mod build_support;

use build_support::*;

fn fails(s: &Scratch, dockerfile: &str, extra: &[&str], expect: &[&str]) {
    let work = s.work();
    let layout = s.path().join("out");
    let mut a = args(&[
        "--context", ".", "--dockerfile", dockerfile,
        "--build-context", &s.base_context(), "--no-push",
        "--oci-layout-path", layout.to_str().unwrap(),
        "--kaniko-dir", work.to_str().unwrap(),
    ]);
    a.extend(args(extra));
    // The FUSE mountpoint goes in TMPDIR: a private one tells this build's
    // mounts from those of builds running next to it.
    let tmp = s.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = strata(&a, &fixture("build/errors"), &[("TMPDIR", tmp.to_str().unwrap())]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{dockerfile}: {log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("ERRO")).collect();
    assert_eq!(errors.len(), 1, "{dockerfile}: exactly one error line:\n{log}");
    for e in expect {
        assert!(errors[0].contains(e), "{dockerfile}: {:?} should contain {e:?}", errors[0]);
    }
    assert!(leftover_builds(&work).is_empty(), "{dockerfile}: build directory left behind");
    assert!(mounts_under(&work).is_empty(), "{dockerfile}: mounts left behind");
    assert!(mounts_under(&tmp).is_empty(), "{dockerfile}: FUSE mount left behind");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "{dockerfile}: temporary files left behind");
    assert!(!layout.exists(), "{dockerfile}: no output after a failure");
}

#[test]
fn failures_give_one_clear_line_and_leave_nothing() {
    if !requirements("failures_give_one_clear_line_and_leave_nothing") {
        return;
    }
    let s = Scratch::new();
    fails(&s, "run-fails.Dockerfile", &[], &["run-fails.Dockerfile:2", "RUN", "exit 3", "non-zero code: 3"]);
    fails(&s, "missing-copy.Dockerfile", &[], &["missing-copy.Dockerfile:2", "COPY", "does-not-exist.txt", "no such file"]);
    fails(&s, "unknown-user.Dockerfile", &[], &["unknown-user.Dockerfile:3", "nosuchuser"]);
    fails(&s, "unknown-chown.Dockerfile", &[], &["unknown-chown.Dockerfile:2", "--chown=ghost", "ghost"]);
    fails(&s, "build-arg.Dockerfile", &["--build-arg", "1BAD=x"], &["--build-arg", "1BAD"]);
}

#[test]
fn unsupported_kaniko_flags_are_rejected_by_name() {
    let s = tempfile::tempdir().unwrap();
    for (flag, name) in [
        (vec!["--compressed-caching=false"], "--compressed-caching"),
        (vec!["--snapshot-mode=time"], "--snapshot-mode=time"),
    ] {
        let mut a = args(&["--context", ".", "--no-push"]);
        a.extend(args(&flag));
        let out = strata(&a, s.path(), &[]);
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag:?}: {log}");
        assert!(log.contains(name) && log.contains("not supported"), "{flag:?}: {log}");
    }
}

#[test]
fn ctrl_c_stops_the_build_and_leaves_nothing() {
    if !requirements("ctrl_c_stops_the_build_and_leaves_nothing") {
        return;
    }
    use std::io::BufRead;
    let s = Scratch::new();
    let work = s.work();
    let mut child = std::process::Command::new(strata_tests::strata_bin())
        .args(args(&[
            "--context", ".", "--dockerfile", "slow.Dockerfile",
            "--build-context", &s.base_context(), "--no-push",
            "--kaniko-dir", work.to_str().unwrap(),
        ]))
        .current_dir(fixture("build/errors"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("started"))), "the RUN never started");
    let started = std::time::Instant::now();
    strata_tests::tools::run_ok(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]));
    let status = child.wait().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the RUN was not stopped");
    assert!(!status.success());
    assert_work_clean(&work, "after Ctrl-C");
}
