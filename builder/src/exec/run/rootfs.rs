//! Path operations inside a root that may be hostile (an image's tree): every
//! lookup goes through `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks,
//! absolute or not, resolve inside the root and never reach the host. Also
//! records what it creates so a RUN's mountpoints can be removed afterwards.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `openat2(2)` resolving `path` inside the tree of `dirfd`. Allocates nothing,
/// so the sandboxed child may use it between clone and exec.
pub(crate) fn openat2_in_root(
    dirfd: RawFd,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid pointers for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a fresh descriptor we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; retry as the man page says.
        if err.raw_os_error() != Some(libc::EAGAIN) && err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// The lexically cleaned components of an in-image path (`..` clamps at `/`).
pub(crate) fn components(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// `/a/b` for components `[a, b]`; `/` for none.
pub(crate) fn join_abs(components: &[String]) -> String {
    if components.is_empty() {
        "/".into()
    } else {
        format!("/{}", components.join("/"))
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {s:?} contains a NUL byte"),
        )
    })
}

/// What a created entry is, for its removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

/// An entry created in the root for the length of one RUN.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    /// In-image path as looked up (lexical), e.g. `/etc/resolv.conf`.
    pub path: String,
    pub kind: Kind,
    /// The parent directory's times before the entry was made, and its mtime
    /// right after: when nothing else touched the parent meanwhile, removing
    /// the entry puts the old times back, so a metadata scan sees no change.
    parent_times: Option<([libc::timespec; 2], libc::timespec)>,
}

impl Created {
    /// `path`, just made in `parent`, whose times were `before` it was made.
    fn new(
        path: String,
        kind: Kind,
        parent: &OwnedFd,
        before: Option<[libc::timespec; 2]>,
    ) -> Created {
        let parent_times = before.zip(times_of(parent).map(|t| t[1]));
        Created {
            path,
            kind,
            parent_times,
        }
    }
}

fn times_of(fd: &OwnedFd) -> Option<[libc::timespec; 2]> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some([
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ])
}

fn same_time(a: &libc::timespec, b: &libc::timespec) -> bool {
    a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec
}

/// Sets the times of the directory behind an O_PATH descriptor.
fn set_times(fd: &OwnedFd, times: &[libc::timespec; 2]) {
    if let Ok(path) = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        // SAFETY: utimensat on a NUL-terminated path and two timespecs.
        unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
    }
}

/// A file of the root whose content was replaced for one RUN (chroot levels).
#[derive(Debug)]
pub(crate) struct Replaced {
    pub path: String,
    original: Vec<u8>,
    times: [libc::timespec; 2],
}

/// An open root directory.
#[derive(Debug)]
pub(crate) struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RootDir {
    pub fn open(path: &Path) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "root path contains a NUL byte")
        })?;
        // SAFETY: plain open(2) of a path we own the string of.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        Ok(RootDir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Opens an in-image path, resolved inside the root.
    pub fn open_in(&self, path: &str, flags: i32) -> io::Result<OwnedFd> {
        let rel = join_abs(&components(path));
        openat2_in_root(self.raw_fd(), &cstring(&rel)?, flags, 0)
    }

    /// Where an in-image path really is inside the root after resolving its
    /// symlinks (e.g. `/var/run/x` → `/run/x`), or None if it does not exist.
    pub fn real_path(&self, path: &str) -> Option<String> {
        let fd = self.open_in(path, libc::O_PATH).ok()?;
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = target.strip_prefix(&self.path).ok()?;
        Some(format!("/{}", rel.display()).replace("//", "/"))
    }

    /// The host path of an in-image path after resolving it inside the root.
    pub fn real_host_path(&self, path: &str) -> io::Result<PathBuf> {
        let fd = self.open_in(path, libc::O_PATH)?;
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// Creates the missing directories of `path` (all components), recording them.
    pub fn ensure_dirs(&self, path: &str, created: &mut Vec<Created>) -> io::Result<()> {
        let comps = components(path);
        for i in 0..comps.len() {
            self.ensure_entry(&comps[..=i], Kind::Dir, 0o755, created)?;
        }
        Ok(())
    }

    /// `path`'s components, once its missing parents are made (recorded);
    /// `path` being the root is an error, `if_root`.
    fn ensure_parents(
        &self,
        path: &str,
        if_root: &'static str,
        created: &mut Vec<Created>,
    ) -> io::Result<Vec<String>> {
        let comps = components(path);
        if comps.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, if_root));
        }
        self.ensure_dirs(&join_abs(&comps[..comps.len() - 1]), created)?;
        Ok(comps)
    }

    /// Makes sure `path` exists as `kind` (a mountpoint), creating missing
    /// parents as directories; returns whether anything was created.
    pub fn ensure_mountpoint(
        &self,
        path: &str,
        kind: Kind,
        created: &mut Vec<Created>,
    ) -> io::Result<()> {
        let comps = self.ensure_parents(path, "cannot mount over the root itself", created)?;
        self.ensure_entry(
            &comps,
            kind,
            if kind == Kind::Dir { 0o755 } else { 0o644 },
            created,
        )
    }

    fn ensure_entry(
        &self,
        comps: &[String],
        kind: Kind,
        mode: u32,
        created: &mut Vec<Created>,
    ) -> io::Result<()> {
        self.ensure_entry_hops(comps, kind, mode, created, 0)
    }

    /// Like `ensure_entry`; a dangling symlink (e.g. an image's
    /// `/etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf`) gets its
    /// target created instead, inside the root, up to 8 links deep.
    fn ensure_entry_hops(
        &self,
        comps: &[String],
        kind: Kind,
        mode: u32,
        created: &mut Vec<Created>,
        hops: u32,
    ) -> io::Result<()> {
        let path = join_abs(comps);
        match self.open_in(&path, libc::O_PATH) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
        }
        let parent = self.open_in(
            &join_abs(&comps[..comps.len() - 1]),
            libc::O_PATH | libc::O_DIRECTORY,
        )?;
        let before = times_of(&parent);
        let name = cstring(&comps[comps.len() - 1])?;
        // SAFETY: syscalls on descriptors and strings we own.
        let r = unsafe {
            match kind {
                Kind::Dir => libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode),
                Kind::File => {
                    let fd = libc::openat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_WRONLY
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        mode,
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
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                let link = nix::fcntl::readlinkat(&parent, name.as_c_str()).map_err(|_| {
                    io::Error::new(e.kind(), format!("{path} exists but cannot be opened"))
                })?;
                if hops >= 8 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{path}: too many levels of dangling symlinks"),
                    ));
                }
                let link = link.to_string_lossy().into_owned();
                let target = if link.starts_with('/') {
                    link
                } else {
                    let dir = self
                        .real_path(&join_abs(&comps[..comps.len() - 1]))
                        .unwrap_or_else(|| join_abs(&comps[..comps.len() - 1]));
                    format!("{dir}/{link}")
                };
                let tcomps = components(&target);
                if tcomps.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{path} is a symlink to the root"),
                    ));
                }
                for i in 0..tcomps.len() - 1 {
                    self.ensure_entry_hops(&tcomps[..=i], Kind::Dir, 0o755, created, hops + 1)?;
                }
                return self.ensure_entry_hops(&tcomps, kind, mode, created, hops + 1);
            }
            return Err(io::Error::new(e.kind(), format!("creating {path}: {e}")));
        }
        created.push(Created::new(path, kind, &parent, before));
        Ok(())
    }

    /// Creates a new file (and its missing parents) with `contents`.
    pub fn create_file(
        &self,
        path: &str,
        contents: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        created: &mut Vec<Created>,
    ) -> io::Result<()> {
        let comps = self.ensure_parents(path, "a file cannot be the root", created)?;
        let before = created.len();
        self.ensure_entry(&comps, Kind::File, 0o600, created)?;
        if created.len() == before {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} already exists in the root"),
            ));
        }
        let fd = self.open_in(path, libc::O_WRONLY | libc::O_NOFOLLOW)?;
        let mut file = std::fs::File::from(fd);
        io::Write::write_all(&mut file, contents)?;
        // SAFETY: fchown/fchmod on our descriptor.
        unsafe {
            if libc::fchown(file.as_raw_fd(), uid, gid) != 0
                || libc::fchmod(file.as_raw_fd(), mode) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Overwrites an existing regular file's content, keeping what is needed to
    /// put it back with [`RootDir::restore`].
    pub fn replace_file(&self, path: &str, contents: &[u8]) -> io::Result<Replaced> {
        let fd = self.open_in(path, libc::O_RDWR | libc::O_NOFOLLOW)?;
        let mut file = std::fs::File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is not a regular file"),
            ));
        }
        let mut original = Vec::new();
        io::Read::read_to_end(&mut file, &mut original)?;
        use std::os::unix::fs::MetadataExt;
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        file.set_len(0)?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
        io::Write::write_all(&mut file, contents)?;
        Ok(Replaced {
            path: path.to_string(),
            original,
            times,
        })
    }

    /// Puts back a file changed by [`RootDir::replace_file`], times included.
    pub fn restore(&self, replaced: &Replaced) -> io::Result<()> {
        let fd = self.open_in(
            &replaced.path,
            libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW,
        )?;
        let mut file = std::fs::File::from(fd);
        io::Write::write_all(&mut file, &replaced.original)?;
        // SAFETY: futimens on our descriptor with two valid timespecs.
        if unsafe { libc::futimens(file.as_raw_fd(), replaced.times.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes a character device node at `path` (its parent must exist).
    pub fn mknod_char(
        &self,
        path: &str,
        major: u32,
        minor: u32,
        mode: u32,
        created: &mut Vec<Created>,
    ) -> io::Result<()> {
        let comps = components(path);
        let parent = self.open_in(
            &join_abs(&comps[..comps.len().saturating_sub(1)]),
            libc::O_PATH | libc::O_DIRECTORY,
        )?;
        let name = cstring(comps.last().map(String::as_str).unwrap_or("."))?;
        let before = times_of(&parent);
        // SAFETY: mknodat on our descriptor and string.
        let r = unsafe {
            libc::mknodat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::S_IFCHR | mode,
                libc::makedev(major, minor),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // The umask may have narrowed the mode: set it exactly.
        let node = self.open_in(path, libc::O_PATH | libc::O_NOFOLLOW)?;
        let _ = std::fs::set_permissions(
            format!("/proc/self/fd/{}", node.as_raw_fd()),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        );
        created.push(Created::new(join_abs(&comps), Kind::File, &parent, before));
        Ok(())
    }

    /// Removes what was created, last first. Directories that are no longer
    /// empty (the RUN wrote into them) stay: they are part of the step.
    pub fn remove_created(&self, created: &[Created]) -> Vec<String> {
        let mut failures = Vec::new();
        for c in created.iter().rev() {
            let comps = components(&c.path);
            let Some(last) = comps.last() else { continue };
            let parent = match self.open_in(
                &join_abs(&comps[..comps.len() - 1]),
                libc::O_PATH | libc::O_DIRECTORY,
            ) {
                Ok(p) => p,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    failures.push(format!("{}: {e}", c.path));
                    continue;
                }
            };
            let Ok(name) = cstring(last) else { continue };
            let flags = if c.kind == Kind::Dir {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            let untouched = match (&c.parent_times, times_of(&parent)) {
                (Some((_, after)), Some(now)) => same_time(after, &now[1]),
                _ => false,
            };
            // SAFETY: unlinkat on our descriptor and string.
            if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) } == 0 {
                if let (true, Some((before, _))) = (untouched, &c.parent_times) {
                    set_times(&parent, before);
                }
            } else {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {}
                    _ => failures.push(format!("{}: {e}", c.path)),
                }
            }
        }
        failures
    }
}

/// Reads an in-image file of `root`, resolved inside the root.
pub fn read_in_root(root: &Path, path: &str) -> io::Result<Vec<u8>> {
    let dir = RootDir::open(root)?;
    let fd = dir.open_in(path, libc::O_RDONLY)?;
    let mut out = Vec::new();
    io::Read::read_to_end(&mut std::fs::File::from(fd), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_clamp_at_root() {
        assert_eq!(components("/../a/./b/../c/"), vec!["a", "c"]);
        assert_eq!(join_abs(&components("..")), "/");
    }

    #[test]
    fn symlinks_resolve_inside_and_created_entries_go_away() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        let dir = RootDir::open(root.path()).unwrap();
        let mut created = Vec::new();
        // /etc points at a host directory by absolute path: inside the root it
        // resolves to <root>/<that path>, which does not exist.
        let _ = dir.ensure_mountpoint("/etc/resolv.conf", Kind::File, &mut created);
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written outside the root"
        );
        assert!(dir.remove_created(&created).is_empty());

        std::fs::remove_file(root.path().join("etc")).unwrap();
        let mut created = Vec::new();
        dir.ensure_mountpoint("/a/b/c", Kind::Dir, &mut created)
            .unwrap();
        assert_eq!(created.len(), 3);
        assert_eq!(dir.real_path("/a/b/c").as_deref(), Some("/a/b/c"));
        std::fs::write(root.path().join("a/kept"), b"x").unwrap();
        assert!(dir.remove_created(&created).is_empty());
        assert!(root.path().join("a/kept").exists());
        assert!(!root.path().join("a/b").exists());
    }

    #[test]
    fn dangling_symlink_targets_are_made_and_removed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            root.path().join("etc/resolv.conf"),
        )
        .unwrap();
        let dir = RootDir::open(root.path()).unwrap();
        let mut created = Vec::new();
        dir.ensure_mountpoint("/etc/resolv.conf", Kind::File, &mut created)
            .unwrap();
        assert!(
            root.path()
                .join("run/systemd/resolve/stub-resolv.conf")
                .is_file()
        );
        assert_eq!(
            dir.real_path("/etc/resolv.conf").as_deref(),
            Some("/run/systemd/resolve/stub-resolv.conf")
        );
        assert!(dir.remove_created(&created).is_empty());
        assert!(!root.path().join("run").exists());
        assert!(
            std::fs::symlink_metadata(root.path().join("etc/resolv.conf"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A loop is an error, not a hang.
        std::os::unix::fs::symlink("loop", root.path().join("loop")).unwrap();
        assert!(
            dir.ensure_mountpoint("/loop", Kind::File, &mut Vec::new())
                .is_err()
        );
    }

    #[test]
    fn replace_and_restore_keep_content_and_times() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("hosts"), b"original\n").unwrap();
        let before = std::fs::metadata(root.path().join("hosts"))
            .unwrap()
            .modified()
            .unwrap();
        let dir = RootDir::open(root.path()).unwrap();
        let r = dir.replace_file("/hosts", b"ours").unwrap();
        assert_eq!(std::fs::read(root.path().join("hosts")).unwrap(), b"ours");
        dir.restore(&r).unwrap();
        assert_eq!(
            std::fs::read(root.path().join("hosts")).unwrap(),
            b"original\n"
        );
        assert_eq!(
            std::fs::metadata(root.path().join("hosts"))
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
    }
}
