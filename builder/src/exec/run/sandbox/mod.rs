//! The RUN process, parent side: builds the complete plan for the child
//! (every path and string ready, see [`child`]), clones it into new
//! namespaces, maps its user namespace if any, streams its output, waits,
//! and on every way out kills and reaps it.

mod child;
mod ops;

use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};

use super::RunRequest;
use super::isolation::{Isolation, NS_FLAGS};
use super::network::Network;
use super::output::Streamer;
use super::rootfs;
use super::setup::StepSetup;
use crate::exec::user::RunUser;
use child::{ChildPlan, child_main, phase};
use ops::{build_ops, cstr};

/// How a RUN process ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit(libc::c_int);

impl Exit {
    /// None for success, else "exited with status N" / "was killed by signal S".
    pub fn failure(&self) -> Option<String> {
        let s = self.0;
        if libc::WIFEXITED(s) {
            match libc::WEXITSTATUS(s) {
                0 => None,
                code => Some(format!("returned a non-zero code: {code}")),
            }
        } else if libc::WIFSIGNALED(s) {
            let sig = libc::WTERMSIG(s);
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown");
            Some(format!("was killed by signal {sig} ({name})"))
        } else {
            Some(format!("ended with wait status {s:#x}"))
        }
    }
}

/// Candidate paths for argv[0]: itself when it has a slash, else each
/// directory of PATH (resolved inside the root once the child is there).
fn exec_candidates(argv0: &str, env: &[(String, String)]) -> Result<Vec<CString>> {
    if argv0.contains('/') {
        return Ok(vec![cstr(argv0)?]);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| cstr(&format!("{}/{argv0}", dir.trim_end_matches('/'))))
        .collect()
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe")
}

/// PIDs of running RUN processes (and whether they lead a process group).
static RUNNING: Mutex<Vec<(libc::pid_t, bool)>> = Mutex::new(Vec::new());

pub(crate) fn kill_running() {
    if let Ok(list) = RUNNING.lock() {
        for &(pid, group) in list.iter() {
            // SAFETY: signalling processes we started.
            unsafe {
                if group {
                    libc::kill(-pid, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Owns the child: kills and reaps it (and its process group) unless it was
/// reaped normally.
struct ChildGuard {
    pid: libc::pid_t,
    group: bool,
    reaped: bool,
}

impl ChildGuard {
    fn new(pid: libc::pid_t, group: bool) -> Self {
        if let Ok(mut l) = RUNNING.lock() {
            l.push((pid, group));
        }
        ChildGuard {
            pid,
            group,
            reaped: false,
        }
    }

    fn wait(&mut self) -> Result<Exit> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(anyhow!("waiting for the RUN process: {e}"));
            }
        }
        self.reaped = true;
        self.kill_group();
        self.unregister();
        Ok(Exit(status))
    }

    /// Without a PID namespace, whatever the command left behind in its
    /// process group is ended with the step, as `docker build` does. SIGKILL
    /// takes effect when each process next runs, which on a busy machine can
    /// be a while: wait (up to 2 s) until the group is gone, so that the step
    /// really ends with its processes.
    fn kill_group(&self) {
        if !self.group {
            return;
        }
        // SAFETY: signalling the process group we created.
        if unsafe { libc::kill(-self.pid, libc::SIGKILL) } != 0 {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        // SAFETY: signal 0 only asks whether the group still has members.
        while unsafe { libc::kill(-self.pid, 0) } == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn unregister(&self) {
        if let Ok(mut l) = RUNNING.lock() {
            l.retain(|(p, _)| *p != self.pid);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                while libc::waitpid(self.pid, &mut status, libc::__WALL) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
            self.kill_group();
            self.unregister();
        }
    }
}

fn describe(code: u32, errno: i32, descs: &[String], argv0: &str, workdir: &str) -> String {
    let err = std::io::Error::from_raw_os_error(errno);
    let what = match code {
        phase::SYNC => "waiting for the user namespace to be mapped".to_string(),
        phase::STDIO => "setting up standard input and output".into(),
        phase::PRIVATE => "making the mount namespace private".into(),
        phase::ROOT_BIND => "binding the root onto itself".into(),
        phase::PIVOT => "pivoting into the root".into(),
        phase::HOSTNAME => "setting the hostname".into(),
        phase::LOOPBACK => "bringing up loopback for --network=none".into(),
        phase::CAPS => "limiting capabilities".into(),
        phase::GROUPS => "setting supplementary groups".into(),
        phase::GID => "setting the group id".into(),
        phase::UID => "setting the user id".into(),
        phase::WORKDIR => format!("entering WORKDIR {workdir}"),
        phase::EXEC if errno == libc::ENOENT => {
            return format!("{argv0}: executable file not found in the root's PATH");
        }
        phase::EXEC => format!("executing {argv0}"),
        phase::CHROOT => "chrooting into the root".into(),
        i => descs
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| format!("sandbox step {i}")),
    };
    format!("{what}: {err}")
}

/// Runs the step's process under `req.isolation` and waits for it.
pub(crate) fn run(req: &RunRequest, setup: &StepSetup, user: &RunUser) -> Result<Exit> {
    let level = req.isolation;
    let namespaces = level.uses_namespaces();
    if req.network == Network::None && !namespaces {
        bail!(
            "RUN --network=none needs a network namespace, which this environment does not allow (isolation: {level})"
        );
    }
    let (ops, descs) = if namespaces {
        build_ops(setup)?
    } else {
        (Vec::new(), Vec::new())
    };
    // SAFETY: getters.
    let euid = unsafe { libc::geteuid() };
    let egid = unsafe { libc::getegid() };
    let userns = level == Isolation::UserNamespace;
    // Root without CAP_SYS_ADMIN can still map every id (CAP_SETUID/SETGID);
    // an unprivileged caller maps only itself, to 0.
    let full_map = userns && euid == 0;

    let argv: Vec<CString> = req.argv.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let envp: Vec<CString> = setup
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<_>>()?;
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_r, stdin_w) = match &req.stdin {
        Some(_) => {
            let (r, w) = pipe()?;
            (r, Some(w))
        }
        None => (
            OwnedFd::from(std::fs::File::open("/dev/null").context("opening /dev/null")?),
            None,
        ),
    };
    let sync = if userns { Some(pipe()?) } else { None };
    let workdir = if req.workdir.is_empty() {
        "/".to_string()
    } else {
        rootfs::join_abs(&rootfs::components(&req.workdir))
    };
    let root_str = req
        .root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 root {}", req.root.display()))?;

    let plan = ChildPlan {
        level,
        root: cstr(root_str)?,
        ops,
        hostname: cstr(&req.hostname)?,
        network_none: req.network == Network::None,
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
        // Supplementary groups need CAP_SETGID: root, or a fully mapped user namespace.
        set_groups: if namespaces {
            !userns || full_map
        } else {
            euid == 0
        },
        workdir: cstr(&workdir)?,
        argv_ptrs,
        envp_ptrs,
        candidates: exec_candidates(&req.argv[0], &setup.env)?,
        stdin: stdin_r.as_raw_fd(),
        output: out_w.as_raw_fd(),
        errors: err_w.as_raw_fd(),
        sync: sync.as_ref().map(|(r, _)| r.as_raw_fd()),
        // SAFETY: getter.
        parent_pid: unsafe { libc::getpid() },
    };
    let mut flags = 0;
    if namespaces {
        flags |= NS_FLAGS;
        if userns {
            flags |= libc::CLONE_NEWUSER;
        }
        if plan.network_none {
            flags |= libc::CLONE_NEWNET;
        }
    }
    let mut stack = vec![0u8; 1 << 20];
    // SAFETY: the child runs child_main, which only makes system calls on the
    // prepared plan and never returns.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| child_main(&plan)),
            &mut stack,
            nix::sched::CloneFlags::from_bits_retain(flags),
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| anyhow!("starting the RUN process ({level}): {e}"))?;
    let mut child = ChildGuard::new(pid.as_raw(), !namespaces);
    drop((out_w, err_w, stdin_r));
    let streamer = Streamer::start(out_r, req.step_label.clone(), req.output.clone());

    if let Some((sync_r, sync_w)) = sync {
        drop(sync_r);
        let (uid_map, gid_map) = if full_map {
            ("0 0 4294967295".to_string(), "0 0 4294967295".to_string())
        } else {
            std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
                .context("denying setgroups in the user namespace")?;
            (format!("0 {euid} 1"), format!("0 {egid} 1"))
        };
        std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)
            .context("writing the user namespace's uid_map")?;
        std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)
            .context("writing the user namespace's gid_map")?;
        nix::unistd::write(&sync_w, b"1").context("releasing the RUN process")?;
    }

    let stdin_thread = match (stdin_w, &req.stdin) {
        (Some(w), Some(body)) => {
            let body = body.clone();
            Some(std::thread::spawn(move || {
                let mut f = std::fs::File::from(w);
                let _ = std::io::Write::write_all(&mut f, &body);
            }))
        }
        _ => None,
    };

    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match nix::unistd::read(&err_r, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow!("reading the RUN process's setup report: {e}")),
        }
    }
    let exit = child.wait();
    streamer.finish();
    if let Some(t) = stdin_thread {
        let _ = t.join();
    }
    if got == report.len() {
        let code = u32::from_ne_bytes(report[..4].try_into().unwrap_or_default());
        let errno = i32::from_ne_bytes(report[4..].try_into().unwrap_or_default());
        bail!("{}", describe(code, errno, &descs, &req.argv[0], &workdir));
    }
    exit
}
