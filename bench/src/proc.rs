//! Runs a command to completion and measures it: wall time, CPU time and
//! peak resident memory (`wait4`'s rusage: `ru_maxrss` is the largest single
//! process of the command's tree, among those reaped), with its output kept
//! for error messages and log checks.

use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// One measured run of a command.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub secs: f64,
    /// User + system CPU seconds of the command and its reaped descendants.
    pub cpu: f64,
    /// Peak RSS in MiB.
    pub max_rss_mib: f64,
    /// Standard output and error, interleaved.
    pub log: String,
}

impl Run {
    /// Two runs one after the other (a build, then its push): times add up,
    /// the peak is the larger one.
    pub fn then(self, next: Run) -> Run {
        Run {
            secs: self.secs + next.secs,
            cpu: self.cpu + next.cpu,
            max_rss_mib: self.max_rss_mib.max(next.max_rss_mib),
            log: self.log + &next.log,
        }
    }
}

/// Runs `cmd`, failing with the end of its output when it fails.
pub fn measure(cmd: &mut Command) -> Result<Run> {
    let mut out = tempfile::tempfile()?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out.try_clone()?);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child, with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("waiting for {cmd:?}"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut log = String::new();
    out.rewind()?;
    let mut bytes = Vec::new();
    out.read_to_end(&mut bytes)?;
    log.push_str(&String::from_utf8_lossy(&bytes));
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{cmd:?} failed (wait status {status:#x}); last lines of its output:\n{}",
            tail.join("\n")
        );
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Run {
        secs,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        log,
    })
}

/// Unmounts everything mounted at or under `dir` (deepest first), then
/// removes `dir`: builders' storage may leave private bind mounts behind.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        crate::loopfs::run(Command::new("umount").arg("-l").arg(m))?;
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// This process's own peak RSS in MiB (`VmHWM`). A child's `ru_maxrss`
/// starts from it (exec keeps the parent's high-water mark), so it is a
/// floor under every peak measured here; reports state it.
pub fn own_peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
