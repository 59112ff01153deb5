//! Which RUN isolation this environment allows, found by trying (in a forked
//! probe process) rather than guessing from uid and capability bits, and
//! logged in one line. From best to last resort:
//! namespaces + pivot_root (root with CAP_SYS_ADMIN), the same inside an
//! unprivileged user namespace, chroot with the device nodes that can be made
//! (a plain Kubernetes pod), and kaniko's way of running in the container's
//! own root (only inside a container, or with `--force`).

use std::ffi::CStr;
use std::fmt;

use anyhow::{Result, bail};

/// How a RUN is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// New mount, PID, UTS and IPC namespaces and pivot_root, as real root.
    Namespaces,
    /// The same inside a new user namespace (uid 0 inside maps to strata's uid).
    UserNamespace,
    /// chroot into the stage root, device nodes made with mknod; no /proc or /sys.
    Chroot,
    /// kaniko's way: the command runs in the container's own root `/`.
    HostRoot,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Namespaces => "namespaces (mount, pid, uts, ipc) + pivot_root",
            Isolation::UserNamespace => {
                "user namespace + namespaces (mount, pid, uts, ipc) + pivot_root"
            }
            Isolation::Chroot => "chroot (no CAP_SYS_ADMIN, no user namespaces)",
            Isolation::HostRoot => "container root (kaniko's way: no chroot possible)",
        })
    }
}

/// Flags of the namespaces a RUN gets at the namespace levels.
pub(crate) const NS_FLAGS: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;

/// Runs `probe` in a forked child and says whether it returned true.
/// The child only makes raw system calls on data prepared before the fork.
fn probe_in_child(probe: impl FnOnce() -> bool) -> bool {
    // SAFETY: the child calls only async-signal-safe system calls and _exit.
    match unsafe { libc::fork() } {
        -1 => false,
        0 => {
            let ok = probe();
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        pid => {
            let mut status = 0;
            loop {
                // SAFETY: waiting for our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                if r == pid {
                    return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                }
                if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    return false;
                }
            }
        }
    }
}

fn write_file(path: &CStr, data: &[u8]) -> bool {
    // SAFETY: plain open/write/close.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let ok = libc::write(fd, data.as_ptr().cast(), data.len()) == data.len() as isize;
        libc::close(fd);
        ok
    }
}

/// Whether new namespaces can be made and mounted in as we are.
fn can_use_namespaces() -> bool {
    probe_in_child(|| unsafe { libc::unshare(NS_FLAGS) == 0 && can_mount() })
}

/// Whether an unprivileged user namespace can be made, mapped and mounted in.
fn can_use_user_namespace() -> bool {
    // SAFETY: getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let uid_map = format!("0 {uid} 1");
    let gid_map = format!("0 {gid} 1");
    probe_in_child(|| unsafe {
        libc::unshare(libc::CLONE_NEWUSER | NS_FLAGS) == 0
            && write_file(c"/proc/self/setgroups", b"deny")
            && write_file(c"/proc/self/uid_map", uid_map.as_bytes())
            && write_file(c"/proc/self/gid_map", gid_map.as_bytes())
            && can_mount()
    })
}

/// In a probe child that has just unshared its mount namespace: whether it
/// may make the mounts a RUN needs (everything private, a tmpfs). Static C
/// strings only: nothing is allocated after the fork.
unsafe fn can_mount() -> bool {
    unsafe {
        libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
            == 0
            && libc::mount(c"tmpfs".as_ptr(), c"/tmp".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) == 0
    }
}

/// Whether chroot(2) is allowed (CAP_SYS_CHROOT).
fn can_chroot() -> bool {
    probe_in_child(|| unsafe { libc::chroot(c"/".as_ptr()) == 0 })
}

/// Whether strata itself runs inside a container (Docker, Podman, Kubernetes,
/// containerd), where building in the container's root is kaniko's way.
pub fn in_container() -> bool {
    if std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("container").is_some()
    {
        return true;
    }
    let cgroup = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    ["docker", "kubepods", "containerd", "libpod", "crio"]
        .iter()
        .any(|k| cgroup.contains(k))
}

impl Isolation {
    /// Finds the best level this environment allows and logs it in one line.
    /// `force` allows building in the container's own root when strata does
    /// not detect a container (kaniko's `--force`).
    pub fn detect(force: bool) -> Result<Isolation> {
        let (level, why) = if can_use_namespaces() {
            (
                Isolation::Namespaces,
                "new namespaces and mounts are allowed".to_string(),
            )
        } else if can_use_user_namespace() {
            (
                Isolation::UserNamespace,
                "no CAP_SYS_ADMIN, but user namespaces are allowed".to_string(),
            )
        } else if can_chroot() {
            (
                Isolation::Chroot,
                "neither CAP_SYS_ADMIN nor user namespaces: no fresh /proc or /sys in RUN"
                    .to_string(),
            )
        } else if in_container() || force {
            let how = if in_container() {
                "running inside a container"
            } else {
                "--force given"
            };
            (
                Isolation::HostRoot,
                format!("no chroot either; {how}: RUN modifies this container's root"),
            )
        } else {
            bail!(
                "RUN cannot be isolated here (no CAP_SYS_ADMIN, no user namespaces, no CAP_SYS_CHROOT) and strata \
                 does not appear to run in a container: building in this machine's own root would modify it; \
                 run strata in a container, or pass --force"
            );
        };
        tracing::info!("RUN isolation: {level} ({why})");
        Ok(level)
    }

    /// Whether this level runs in new namespaces with pivot_root.
    pub fn uses_namespaces(&self) -> bool {
        matches!(self, Isolation::Namespaces | Isolation::UserNamespace)
    }
}
