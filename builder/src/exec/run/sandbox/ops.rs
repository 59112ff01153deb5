//! The mount-namespace work of a namespace-level RUN: the list of
//! operations the parent prepares (fresh /dev, /proc, /sys, the /etc files,
//! the `--mount`s), and their execution in the child before pivot_root,
//! with raw system calls only, every target resolved inside the root.

use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use anyhow::{Result, anyhow, bail};

use super::super::mounts::Source;
use super::super::rootfs::{self, Kind, openat2_in_root};
use super::super::setup::{DEVICES, StepSetup};

/// One mount-namespace operation under the root, before pivot_root.
pub(super) enum Op {
    Mount {
        /// With `source_in`, `source` is a directory and the real source is
        /// `source_in` resolved inside it (in the sandbox's namespace).
        source: Option<CString>,
        source_in: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
        /// Host path to bind recursively instead when the kernel refuses a
        /// fresh proc or sysfs (user namespaces in a container with masked /proc).
        fallback_bind: Option<CString>,
        /// How to create the target when a previous mount hides the one prepared.
        make: Option<(CString, CString, Kind)>,
        optional: bool,
    },
    RemountReadOnly {
        target: CString,
    },
    Symlink {
        parent: CString,
        name: CString,
        points_to: CString,
    },
}

pub(super) fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{s:?} contains a NUL byte"))
}

pub(super) fn rel(path: &str) -> Result<CString> {
    let comps = rootfs::components(path);
    cstr(&if comps.is_empty() {
        ".".to_string()
    } else {
        comps.join("/")
    })
}

pub(super) fn split_parent(path: &str) -> Result<(CString, CString)> {
    let comps = rootfs::components(path);
    let Some((name, parent)) = comps.split_last() else {
        bail!("cannot create the root itself")
    };
    Ok((
        cstr(&if parent.is_empty() {
            ".".into()
        } else {
            parent.join("/")
        })?,
        cstr(name)?,
    ))
}

/// The mount-namespace operations of a namespace-level step, with a
/// description of each for errors.
pub(super) fn build_ops(setup: &StepSetup) -> Result<(Vec<Op>, Vec<String>)> {
    let mut ops = Vec::new();
    let mut descs = Vec::new();
    #[allow(clippy::too_many_arguments)]
    fn push_mount(
        ops: &mut Vec<Op>,
        descs: &mut Vec<String>,
        desc: String,
        source: Option<&str>,
        target: &str,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
        make: Option<Kind>,
    ) -> Result<()> {
        let make = match make {
            Some(k) => {
                let (p, n) = split_parent(target)?;
                Some((p, n, k))
            }
            None => None,
        };
        ops.push(Op::Mount {
            source: source.map(cstr).transpose()?,
            target: rel(target)?,
            fstype: fstype.map(cstr).transpose()?,
            flags,
            data: data.map(cstr).transpose()?,
            source_in: None,
            fallback_bind: None,
            make,
            optional: false,
        });
        descs.push(desc);
        Ok(())
    }
    macro_rules! mount {
        ($($arg:expr),* $(,)?) => { push_mount(&mut ops, &mut descs, $($arg),*) };
    }
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount!(
        "mounting a tmpfs at /dev".into(),
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        None
    )?;
    for (name, _, _) in DEVICES {
        let target = format!("/dev/{name}");
        mount!(
            format!("binding the device {target}"),
            Some(&target),
            &target,
            None,
            libc::MS_BIND,
            None,
            Some(Kind::File)
        )?;
    }
    mount!(
        "mounting devpts at /dev/pts".into(),
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
        Some(Kind::Dir)
    )?;
    mount!(
        "mounting a tmpfs at /dev/shm".into(),
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
        Some(Kind::Dir)
    )?;
    mount!(
        "mounting proc at /proc".into(),
        Some("proc"),
        "/proc",
        Some("proc"),
        nosuid_nodev_noexec,
        None,
        None
    )?;
    mount!(
        "mounting sysfs at /sys".into(),
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        libc::MS_RDONLY | nosuid_nodev_noexec,
        None,
        None
    )?;
    for b in &setup.etc_binds {
        let host = b
            .host
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 temporary path"))?;
        mount!(
            format!("binding {}", b.target),
            Some(host),
            &b.target,
            None,
            libc::MS_BIND,
            None,
            None
        )?;
    }
    let mut readonly = Vec::new();
    for m in &setup.mounts.mounts {
        let kind = if m.is_dir { Kind::Dir } else { Kind::File };
        match &m.source {
            Source::InTree { base, path } => {
                let base_str = base
                    .to_str()
                    .ok_or_else(|| anyhow!("non-UTF-8 path {}", base.display()))?;
                mount!(
                    format!("bind-mounting at {}", m.target),
                    Some(base_str),
                    &m.target,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                    Some(kind)
                )?;
                if let Some(Op::Mount { source_in, .. }) = ops.last_mut() {
                    *source_in = Some(rel(path)?);
                }
            }
            Source::Path(p) => {
                let src = p
                    .to_str()
                    .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))?;
                let what = if m.is_dir { "the cache" } else { "the secret" };
                mount!(
                    format!("mounting {what} at {}", m.target),
                    Some(src),
                    &m.target,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                    Some(kind)
                )?;
            }
            Source::Tmpfs { size } => {
                let data = size.map(|s| format!("size={s}"));
                mount!(
                    format!("mounting a tmpfs at {}", m.target),
                    Some("tmpfs"),
                    &m.target,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    data.as_deref(),
                    Some(Kind::Dir)
                )?;
            }
        }
        if m.readonly {
            readonly.push(m.target.clone());
            ops.push(Op::RemountReadOnly {
                target: rel(&m.target)?,
            });
            descs.push(format!("making {} read-only", m.target));
        }
    }
    for b in &setup.heredoc_binds {
        let host = b
            .host
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 temporary path"))?;
        ops.push(Op::Mount {
            source: Some(cstr(host)?),
            target: rel(&b.target)?,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
            source_in: None,
            fallback_bind: None,
            make: Some({
                let (p, n) = split_parent(&b.target)?;
                (p, n, Kind::File)
            }),
            optional: false,
        });
        descs.push(format!("providing the heredoc file {}", b.target));
        ops.push(Op::RemountReadOnly {
            target: rel(&b.target)?,
        });
        descs.push(format!("making {} read-only", b.target));
    }
    // Fallbacks and optional steps, patched in by position.
    for op in ops.iter_mut() {
        if let Op::Mount {
            fstype: Some(fs),
            fallback_bind,
            optional,
            ..
        } = op
        {
            match fs.to_bytes() {
                b"proc" => *fallback_bind = Some(cstr("/proc")?),
                b"sysfs" => *fallback_bind = Some(cstr("/sys")?),
                b"devpts" => *optional = true,
                _ => {}
            }
        }
    }
    let sys_at = descs
        .iter()
        .position(|d| d == "mounting sysfs at /sys")
        .unwrap_or(ops.len());
    ops.insert(
        sys_at + 1,
        Op::RemountReadOnly {
            target: rel("/sys")?,
        },
    );
    descs.insert(sys_at + 1, "making /sys read-only".into());
    let links = [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ];
    // The links go right after the /dev mounts (before /proc), in /dev's tmpfs.
    let dev_end = descs
        .iter()
        .position(|d| d == "mounting proc at /proc")
        .unwrap_or(ops.len());
    for (i, (link, to)) in links.iter().enumerate() {
        let (parent, name) = split_parent(link)?;
        ops.insert(
            dev_end + i,
            Op::Symlink {
                parent,
                name,
                points_to: cstr(to)?,
            },
        );
        descs.insert(dev_end + i, format!("linking {link}"));
    }
    Ok((ops, descs))
}

pub(super) fn errno() -> i32 {
    // SAFETY: reading the thread's errno.
    unsafe { *libc::__errno_location() }
}

/// `/proc/self/fd/N` for a descriptor, in a caller-provided buffer.
pub(super) fn fd_path(fd: RawFd, buf: &mut [u8; 32]) -> *const c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

pub(super) fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Opens a mount target inside the root, creating it when `make` says how.
pub(super) fn open_target(
    rootfd: RawFd,
    target: &CString,
    make: &Option<(CString, CString, Kind)>,
) -> Result<OwnedFd, i32> {
    match openat2_in_root(rootfd, target, libc::O_PATH, 0) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let Some((parent, name, kind)) = make else {
                return Err(libc::ENOENT);
            };
            let pfd = openat2_in_root(rootfd, parent, libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            // SAFETY: creating an entry in a directory we hold open.
            let r = unsafe {
                match kind {
                    Kind::Dir => libc::mkdirat(pfd.as_raw_fd(), name.as_ptr(), 0o755),
                    Kind::File => {
                        let fd = libc::openat(
                            pfd.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                            0o644,
                        );
                        if fd >= 0 {
                            libc::close(fd);
                            0
                        } else {
                            -1
                        }
                    }
                }
            };
            if r != 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
            openat2_in_root(rootfd, target, libc::O_PATH, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        }
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// The kernel's `struct statfs` on 64-bit Linux (libc's hides `f_flags`).
#[repr(C)]
pub(super) struct KernelStatfs {
    f_type: libc::c_long,
    f_bsize: libc::c_long,
    f_blocks: u64,
    f_bfree: u64,
    f_bavail: u64,
    f_files: u64,
    f_ffree: u64,
    f_fsid: [libc::c_int; 2],
    f_namelen: libc::c_long,
    f_frsize: libc::c_long,
    f_flags: libc::c_long,
    f_spare: [libc::c_long; 4],
}

/// Remounts the mount at `path` adding `add` (read-only, nodev), keeping the
/// flags it has (a user namespace locks nosuid, nodev, noexec and atime ones).
pub(super) fn remount(path: *const c_char, add: libc::c_ulong) -> Result<(), i32> {
    // SAFETY: statvfs and mount on a NUL-terminated path.
    unsafe {
        // statfs(2) is a plain system call (glibc's statvfs may read /proc/mounts).
        let mut st: KernelStatfs = std::mem::zeroed();
        if libc::syscall(libc::SYS_statfs, path, &mut st as *mut KernelStatfs) != 0 {
            return Err(errno());
        }
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | add;
        for (st_flag, ms_flag) in [
            (libc::ST_RDONLY, libc::MS_RDONLY),
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if st.f_flags as libc::c_ulong & st_flag != 0 {
                flags |= ms_flag;
            }
        }
        if libc::mount(
            std::ptr::null(),
            path,
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            return Err(errno());
        }
    }
    Ok(())
}

/// Runs one op; returns the errno on failure.
pub(super) fn run_op(rootfd: RawFd, op: &Op) -> Result<(), i32> {
    let mut buf = [0u8; 32];
    match op {
        Op::Mount {
            source,
            source_in,
            target,
            fstype,
            flags,
            data,
            fallback_bind,
            make,
            optional,
        } => {
            let mut src_buf = [0u8; 32];
            let mut _src_fd = None;
            let mut src_ptr = opt_ptr(source);
            if let (Some(base), Some(inner)) = (source, source_in) {
                // SAFETY: open(2) of a NUL-terminated path from the plan.
                let base_fd = unsafe {
                    libc::open(
                        base.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    )
                };
                if base_fd < 0 {
                    return Err(errno());
                }
                let found = openat2_in_root(base_fd, inner, libc::O_PATH, 0);
                // SAFETY: closing the descriptor just opened.
                unsafe { libc::close(base_fd) };
                let fd = found.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                src_ptr = fd_path(fd.as_raw_fd(), &mut src_buf);
                _src_fd = Some(fd);
            }
            let fd = match open_target(rootfd, target, make) {
                Ok(fd) => fd,
                Err(_) if *optional => return Ok(()),
                Err(e) => return Err(e),
            };
            let path = fd_path(fd.as_raw_fd(), &mut buf);
            // SAFETY: mount(2) with NUL-terminated strings from the plan.
            let mut r = unsafe {
                libc::mount(src_ptr, path, opt_ptr(fstype), *flags, opt_ptr(data).cast())
            };
            if r != 0
                && matches!(errno(), libc::EPERM | libc::EACCES)
                && let Some(host) = fallback_bind
            {
                // SAFETY: as above.
                r = unsafe {
                    libc::mount(
                        host.as_ptr(),
                        path,
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    )
                };
            }
            if r != 0 && !*optional {
                return Err(errno());
            }
            Ok(())
        }
        Op::RemountReadOnly { target } => {
            let fd = openat2_in_root(rootfd, target, libc::O_PATH, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            remount(fd_path(fd.as_raw_fd(), &mut buf), libc::MS_RDONLY)
        }
        Op::Symlink {
            parent,
            name,
            points_to,
        } => {
            let pfd = openat2_in_root(rootfd, parent, libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            // SAFETY: symlinkat in a directory we hold open.
            if unsafe { libc::symlinkat(points_to.as_ptr(), pfd.as_raw_fd(), name.as_ptr()) } != 0
                && errno() != libc::EEXIST
            {
                return Err(errno());
            }
            Ok(())
        }
    }
}
