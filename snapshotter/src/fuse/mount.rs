//! Mounting and unmounting the FUSE filesystem, finding out whether that is
//! possible here (and saying why not in one line), and removing mounts a
//! killed build left behind.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::Unavailable;

/// The filesystem type strata's mounts carry (`fuse.strata` in mountinfo).
pub const FS_TYPE: &str = "fuse.strata";

/// Opens `/dev/fuse`, or says in one line why it cannot be.
pub fn open_dev() -> Result<OwnedFd, Unavailable> {
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(Unavailable(match e.raw_os_error() {
            Some(libc::ENOENT) => "/dev/fuse missing".into(),
            Some(libc::EACCES) | Some(libc::EPERM) => "/dev/fuse: permission denied".into(),
            Some(libc::ENODEV) | Some(libc::ENXIO) => "/dev/fuse: no FUSE support in the kernel".into(),
            _ => format!("/dev/fuse: {e}"),
        }));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mounts a FUSE filesystem served through `dev` at `mountpoint`.
pub fn mount(dev: &OwnedFd, mountpoint: &Path) -> Result<(), Unavailable> {
    let target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Unavailable(format!("mount {}: path contains a NUL byte", mountpoint.display())))?;
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},allow_other,default_permissions",
        dev.as_raw_fd(),
        unsafe { libc::geteuid() },
        unsafe { libc::getegid() }
    );
    let data = CString::new(data).expect("no NUL in mount options");
    let ret = unsafe {
        libc::mount(c"strata".as_ptr(), target.as_ptr(), c"fuse.strata".as_ptr(), libc::MS_NODEV, data.as_ptr().cast())
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(Unavailable(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => "mount: permission denied".into(),
            Some(libc::ENODEV) => "mount: the kernel has no FUSE filesystem type".into(),
            Some(libc::ENOENT) => format!("mount: {} does not exist", mountpoint.display()),
            _ => format!("mount {}: {e}", mountpoint.display()),
        }));
    }
    // Keep mounts made inside the step (the build's /proc, /dev...) from
    // propagating anywhere else.
    unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), libc::MS_PRIVATE, std::ptr::null()) };
    Ok(())
}

/// Unmounts `mountpoint`. A mount can stay busy for a moment after the
/// step's processes are gone (a descriptor a concurrent `clone` copied, a
/// mount namespace still being torn down), so a busy mount is retried for a
/// short while. If it is still busy, aborts the FUSE connection (`MNT_FORCE`:
/// every further access gets ENOTCONN, and the server threads end) and
/// detaches it. Returns whether it had to force.
pub fn unmount(mountpoint: &Path) -> io::Result<bool> {
    const BUSY_RETRIES: u32 = 100;
    let target = CString::new(mountpoint.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    for attempt in 0..=BUSY_RETRIES {
        if unsafe { libc::umount2(target.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(false), // not mounted (any more)
            Some(libc::EBUSY) if attempt < BUSY_RETRIES => std::thread::sleep(std::time::Duration::from_millis(10)),
            Some(libc::EBUSY) => break,
            _ => return Err(io::Error::new(e.kind(), format!("unmounting {}: {e}", mountpoint.display()))),
        }
    }
    force_abort(mountpoint);
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0 {
        Ok(true)
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("unmounting {}: {e}", mountpoint.display())))
    }
}

/// Aborts the FUSE connection of the mount at `mountpoint` (a forced
/// unmount does that first; it may then fail as busy, which is fine).
pub fn force_abort(mountpoint: &Path) {
    if let Ok(target) = CString::new(mountpoint.as_os_str().as_bytes()) {
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_FORCE | libc::UMOUNT_NOFOLLOW) };
    }
}

/// One mount from `/proc/self/mountinfo`.
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub fs_type: String,
}

pub fn mounts() -> io::Result<Vec<MountInfo>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else { continue };
        if fields.len() < 5 || sep + 1 >= fields.len() {
            continue;
        }
        out.push(MountInfo {
            mountpoint: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
            fs_type: String::from_utf8_lossy(fields[sep + 1]).into_owned(),
        });
    }
    Ok(out)
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Unmounts every strata FUSE mount under `work_dir`, and every mount below
/// one (what a build killed with SIGKILL leaves behind: its server is gone,
/// the mounts answer ENOTCONN). Returns how many mounts were removed.
pub fn cleanup_stale(work_dir: &Path) -> io::Result<usize> {
    let work_dir = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    unmount_strata_mounts(|mountpoint| mountpoint.starts_with(&work_dir))
}

/// Unmounts, wherever they are, the strata FUSE mounts whose server is gone
/// (a build killed with SIGKILL: the mount answers ENOTCONN), with every mount
/// below them, and removes their empty mountpoint directories. Mounts of
/// builds still running answer normally and are left alone, so this is safe
/// to call at the start of every build. Returns how many mounts were removed.
pub fn cleanup_abandoned() -> io::Result<usize> {
    // statfs always reaches the server (attributes may be cached for the step).
    let abandoned = |mountpoint: &Path| {
        let Ok(path) = CString::new(mountpoint.as_os_str().as_bytes()) else { return false };
        let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
        let failed = unsafe { libc::statfs(path.as_ptr(), buf.as_mut_ptr()) } != 0;
        failed && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
    };
    let roots: Vec<PathBuf> =
        mounts()?.into_iter().filter(|m| m.fs_type == FS_TYPE && abandoned(&m.mountpoint)).map(|m| m.mountpoint).collect();
    let removed = unmount_strata_mounts(|mountpoint| roots.iter().any(|r| r == mountpoint))?;
    for root in &roots {
        // Only an empty directory goes; anything else was not strata's.
        let _ = std::fs::remove_dir(root);
    }
    Ok(removed)
}

/// Unmounts (deepest first) every strata FUSE mount whose mountpoint `chosen`
/// accepts, and every mount below one.
fn unmount_strata_mounts(chosen: impl Fn(&Path) -> bool) -> io::Result<usize> {
    let all = mounts()?;
    let fuse_roots: Vec<&PathBuf> =
        all.iter().filter(|m| m.fs_type == FS_TYPE && chosen(&m.mountpoint)).map(|m| &m.mountpoint).collect();
    let mut doomed: Vec<&PathBuf> =
        all.iter().map(|m| &m.mountpoint).filter(|p| fuse_roots.iter().any(|r| p.starts_with(r))).collect();
    // Deepest first, each once.
    doomed.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    doomed.dedup();
    let mut removed = 0;
    for path in doomed {
        let target = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0 {
            removed += 1;
        } else {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                return Err(io::Error::new(e.kind(), format!("unmounting stale {}: {e}", path.display())));
            }
        }
    }
    Ok(removed)
}

/// Whether this process may register FUSE passthrough backing files:
/// that needs CAP_SYS_ADMIN in the initial user namespace.
pub fn passthrough_allowed() -> bool {
    let in_initial_userns = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    let cap_sys_admin = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 21) != 0); // bit 21: CAP_SYS_ADMIN
    in_initial_userns && cap_sys_admin
}

/// Tries a real (throwaway) FUSE mount in a private temporary directory.
pub fn probe() -> Result<(), Unavailable> {
    let dev = open_dev()?;
    let dir = std::env::temp_dir().join(format!("strata-fuse-probe-{}-{}", std::process::id(), unique()));
    std::fs::create_dir(&dir).map_err(|e| Unavailable(format!("creating {}: {e}", dir.display())))?;
    let mounted = mount(&dev, &dir);
    if mounted.is_ok() {
        let target = CString::new(dir.as_os_str().as_bytes()).expect("temp path has no NUL");
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    drop(dev);
    let _ = std::fs::remove_dir(&dir);
    mounted
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The server keeps one `O_PATH` descriptor per inode the kernel knows:
/// raise this process's descriptor limit as far as it may go.
pub fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let want = libc::rlimit { rlim_cur: nr_open.max(lim.rlim_max), rlim_max: nr_open.max(lim.rlim_max) };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 && lim.rlim_cur < lim.rlim_max {
        // Not allowed to raise the hard limit: take the soft one up to it.
        let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    }
}
