//! A RUN ends with strata: `kill_running` (what Ctrl-C handlers call) ends
//! the step with an error and cleans up, and when strata itself is killed,
//! the RUN's processes die with it and nothing stays mounted. Its own test
//! binary, since `kill_running` ends every RUN of the process.

mod run_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use run_support::*;
use strata_builder::exec::run::{self, Isolation};

const ROLE: &str = "STRATA_RUN_SIGNAL_CHILD";

fn sleepers(tag: &str) -> usize {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.trim() == format!("sleep {tag}"))
        .count()
}

#[test]
fn kill_running_ends_the_step_and_cleans_up() {
    if !have_root("kill_running_ends_the_step_and_cleans_up") || std::env::var_os(ROLE).is_some() {
        return;
    }
    let level = Isolation::detect(false).unwrap();
    let t = busybox_root();
    let before = tree(&t.root);
    let (req, _) = request(&t, "sleep 301 & sleep 301", level);
    let handle = std::thread::spawn(move || run::execute(&req));
    let start = Instant::now();
    while sleepers("301") < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the RUN did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run::kill_running();
    let err = format!("{:#}", handle.join().unwrap().unwrap_err());
    assert!(err.contains("signal 9"), "{err}");
    assert_eq!(sleepers("301"), 0, "the whole PID namespace is gone");
    assert_eq!(tree(&t.root), before);
    assert_no_mounts_under(t.dir.path());
}

/// Child role: starts a long RUN in a root the parent gave, says so, waits.
fn child_runs_forever(root: &str) {
    let t = TestRoot {
        dir: tempfile::tempdir().unwrap(),
        root: root.into(),
        work: std::env::temp_dir(),
    };
    let level = Isolation::detect(false).unwrap();
    let (mut req, _) = request(&t, "echo started; sleep 302", level);
    req.output = None; // straight to stdout, where the parent waits for it
    let _ = run::execute(&req);
}

#[test]
fn killing_strata_kills_the_run() {
    if let Some(root) = std::env::var_os(ROLE) {
        child_runs_forever(root.to_str().unwrap());
        return;
    }
    if !have_root("killing_strata_kills_the_run") {
        return;
    }
    let t = busybox_root();
    // The killed child cannot clean up its temporary files: keep them in ours.
    let child_tmp = t.dir.path().join("child-tmp");
    std::fs::create_dir(&child_tmp).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("TMPDIR", &child_tmp)
        .args([
            "--exact",
            "killing_strata_kills_the_run",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, &t.root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child's RUN started").unwrap();
        if line.ends_with("started") {
            break;
        }
    }
    assert_eq!(sleepers("302"), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    while sleepers("302") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the RUN outlived strata"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its mount namespace died with it: nothing of the RUN is mounted anywhere.
    let all = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !all.contains(t.root.to_str().unwrap()),
        "no mount of the root left"
    );
}
