//! SIGINT, SIGTERM and SIGKILL at random moments of a build: while pulling the
//! base (through a slow proxy), during a RUN, while snapshotting a RUN that
//! wrote many files, and while pushing. Afterwards nothing is mounted under the
//! work directory, no build directory and no partial blob is left (after
//! SIGKILL: once the next build has started), and each output (--tar-path, --oci-layout-path, the
//! destination tag) is either absent or a complete image.
//! The random moments come from a seed printed by the test.

mod build_support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use build_support::*;
use strata_tests::faultproxy::{Fault, FaultProxy, Rule};
use strata_tests::registry::Registry;
use strata_tests::{fixtures, require, tools};

/// A tiny xorshift generator: random moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Pull,
    Run,
    Snapshot,
    Push,
}

struct Case<'a> {
    s: &'a Scratch,
    proxy: &'a FaultProxy,
    reg: &'a Registry,
}

impl Case<'_> {
    fn dockerfile(&self, phase: Phase) -> String {
        match phase {
            Phase::Pull => format!("FROM {}/base/busybox:1\nRUN echo pulled\n", self.proxy.addr),
            Phase::Run => "FROM base\nRUN echo started && sleep 30\n".to_string(),
            Phase::Snapshot => "FROM base\nRUN mkdir /many && cd /many && for i in $(seq 1 20000); do echo $i > f$i; done && echo written\n".to_string(),
            Phase::Push => "FROM base\nRUN echo started && head -c 3000000 /dev/urandom > /blob\n".to_string(),
        }
    }

    /// Starts the build for `phase`; returns the child and a channel of its stdout lines.
    fn spawn(&self, phase: Phase, dir: &Path) -> (std::process::Child, mpsc::Receiver<String>) {
        let context = dir.join("context");
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(context.join("Dockerfile"), self.dockerfile(phase)).unwrap();
        let mut a = args(&[
            "--context",
            context.to_str().unwrap(),
            "--build-context",
            &self.s.base_context(),
            "--kaniko-dir",
            dir.join("work").to_str().unwrap(),
            "--tar-path",
            dir.join("out.tar").to_str().unwrap(),
            "--oci-layout-path",
            dir.join("layout").to_str().unwrap(),
            "--insecure-registry",
            &self.proxy.addr,
            "--push-retry",
            "0",
        ]);
        if matches!(phase, Phase::Push) {
            a.extend(args(&["--destination", &format!("{}/app/signals:1", self.proxy.addr)]));
        } else {
            a.push("--no-push".to_string());
        }
        let mut cmd = Command::new(strata_tests::strata_bin());
        cmd.args(&a).stderr(std::fs::File::create(dir.join("log")).unwrap());
        spawn_with_lines(cmd)
    }

    /// Checks the outputs of an interrupted build: each absent or complete.
    fn check_outputs(&self, dir: &Path, phase: Phase, what: &str) {
        let tar = dir.join("out.tar");
        if tar.exists() {
            tools::skopeo_inspect(&format!("docker-archive:{}", tar.display()), &[]);
        }
        let layout = dir.join("layout");
        if layout.exists() {
            let bundle = dir.join("bundle");
            let tag = if matches!(phase, Phase::Push) { "1" } else { "latest" };
            tools::umoci_unpack(&layout, tag, &bundle).join("bin").read_dir().expect(what);
        }
        let tag = format!("docker://{}/app/signals:1", self.reg.addr);
        let present = Command::new("skopeo").args(["inspect", "--tls-verify=false", &tag]).output().unwrap();
        if present.status.success() {
            let copy = dir.join("pulled");
            tools::skopeo_copy(&tag, &format!("oci:{}:x", copy.display()), &["--src-tls-verify=false"]);
        }
    }
}

/// Starts strata; returns the child and a channel of its stdout lines.
fn spawn_with_lines(mut cmd: Command) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = cmd.env("NO_COLOR", "1").stdout(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

fn fuse_mounts_under(dir: &Path) -> Vec<String> {
    mounts_under(dir).into_iter().filter(|l| l.contains("fuse")).collect()
}

#[test]
fn signals_at_random_moments_leave_nothing_behind() {
    let t = "signals_at_random_moments_leave_nothing_behind";
    if !requirements(t) || !require::fuse(t) || !require::tool(t, "docker-registry") {
        return;
    }
    let seed = std::env::var("STRATA_SIGNAL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("seed {seed} (set STRATA_SIGNAL_SEED to repeat)");
    let mut rng = Rng(seed);
    let s = Scratch::new();
    let reg = Registry::start();
    fixtures::push_busybox(&reg.addr, "base/busybox", "1", s.path());
    let proxy = FaultProxy::start(&reg.addr);
    // Slow blob downloads (the pull) and slow uploads (the push).
    proxy.add(Rule::new("GET", r"^/v2/base/busybox/blobs/", Fault::Slow { bytes_per_sec: 256 << 10 }));
    proxy.add(Rule::new("*", r"^/v2/app/signals/blobs/uploads/", Fault::Delay(Duration::from_millis(1500))));
    let case = Case { s: &s, proxy: &proxy, reg: &reg };

    let mut n = 0;
    for phase in [Phase::Pull, Phase::Run, Phase::Snapshot, Phase::Push] {
        for signal in ["INT", "TERM", "KILL"] {
            n += 1;
            let dir = s.path().join(format!("case-{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            // A work directory per case, so each pull starts with an empty blob store.
            let work = dir.join("work");
            let what = format!("{phase:?} SIG{signal}");
            let (mut child, rx) = case.spawn(phase, &dir);
            let delay = match phase {
                Phase::Pull => rng.millis(300, 2500),
                Phase::Run => {
                    assert!(wait_line(&rx, "started", Duration::from_secs(60)), "{what}: the RUN never started");
                    rng.millis(0, 1500)
                }
                Phase::Snapshot => {
                    assert!(wait_line(&rx, "written", Duration::from_secs(120)), "{what}: the RUN never finished");
                    rng.millis(0, 800)
                }
                Phase::Push => {
                    assert!(wait_line(&rx, "started", Duration::from_secs(60)), "{what}: the RUN never started");
                    rng.millis(500, 3000)
                }
            };
            std::thread::sleep(delay);
            let sent = Instant::now();
            tools::run_ok(Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]));
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                assert!(sent.elapsed() < Duration::from_secs(120), "{what}: strata did not stop within 120 s");
                std::thread::sleep(Duration::from_millis(50));
            };
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            println!("{what} after {delay:?}: {status}, stopped in {:?}", sent.elapsed());
            if signal == "KILL" {
                // The next build in the same work directory removes what the killed one left.
                let next = dir.join("next");
                std::fs::create_dir_all(&next).unwrap();
                std::fs::write(next.join("Dockerfile"), "FROM base\nLABEL next=1\n").unwrap();
                strata_ok(
                    &args(&[
                        "--context",
                        next.to_str().unwrap(),
                        "--build-context",
                        &s.base_context(),
                        "--no-push",
                        "--kaniko-dir",
                        work.to_str().unwrap(),
                    ]),
                    &next,
                    &[],
                );
            } else if !status.success() {
                assert!(log.contains("signal"), "{what}: the log does not mention the signal:\n{log}");
            }
            assert!(
                leftover_builds(&work).is_empty(),
                "{what}: build directories left: {:?}\n{log}",
                leftover_builds(&work)
            );
            assert!(fuse_mounts_under(&work).is_empty(), "{what}: mounts left: {:?}", mounts_under(&work));
            assert!(mounts_under(&work).is_empty(), "{what}: mounts left: {:?}", mounts_under(&work));
            let incoming: Vec<String> = std::fs::read_dir(work.join("blobs"))
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            assert!(!incoming.iter().any(|n| n.starts_with(".incoming-")), "{what}: partial blobs left: {incoming:?}");
            case.check_outputs(&dir, phase, &what);
        }
    }
}

/// Without --kaniko-dir (and no /kaniko), a build works in a temporary
/// `$TMPDIR/strata-PID@HOST-…` directory; after SIGKILL it cannot remove it,
/// so the next build does.
#[test]
fn sigkilled_build_temporary_work_dir_is_removed_by_the_next_build() {
    let t = "sigkilled_build_temporary_work_dir_is_removed_by_the_next_build";
    if !requirements(t) || !require::fuse(t) {
        return;
    }
    if Path::new("/kaniko").is_dir() {
        println!("SKIP {t}: /kaniko exists here, so builds do not use a temporary work directory");
        return;
    }
    let s = Scratch::new();
    let tmp = s.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // A build of `dockerfile` in a context of its own, without --kaniko-dir.
    let build = |name: &str, dockerfile: &str| -> Vec<String> {
        let context = s.path().join(name);
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
        args(&["--context", context.to_str().unwrap(), "--build-context", &s.base_context(), "--no-push"])
    };
    let work_dirs = || -> Vec<String> {
        let names = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
        names.filter(|n| n.starts_with("strata-")).collect()
    };

    let mut cmd = Command::new(strata_tests::strata_bin());
    cmd.args(build("killed", "FROM base\nRUN echo started && sleep 30\n")).env("TMPDIR", &tmp).stderr(Stdio::null());
    let (mut child, rx) = spawn_with_lines(cmd);
    assert!(wait_line(&rx, "started", Duration::from_secs(60)), "the RUN never started");
    let during = work_dirs();
    assert_eq!(during.len(), 1, "one temporary work directory while building: {during:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(work_dirs(), during, "SIGKILL cannot remove the work directory");

    let next = build("next", "FROM base\nLABEL next=1\n");
    let log = strata_ok(&next, s.path(), &[("TMPDIR", tmp.to_str().unwrap())]);
    // The next build unmounted the killed build's FUSE journal, then removed its work directory.
    assert!(mounts_under(&tmp).is_empty(), "mounts left: {:?}", mounts_under(&tmp));
    assert!(work_dirs().is_empty(), "left in TMPDIR after the next build: {:?}\n{log}", work_dirs());
}
