//! Parallel directory walk: `lstat` every entry under a root on all cores.
//!
//! Directories are read through file descriptors (`openat`/`fstatat` relative
//! to the parent), so no path is resolved twice and a symlink is never
//! followed. Subdirectories are walked as separate rayon tasks; large
//! directories also stat their entries in parallel. Entries that vanish while
//! the walk runs are skipped, not errors.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, fstatat};
use rayon::prelude::*;

/// The metadata a walk records for one entry (what `lstat` says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Full `st_mode`: file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub rdev: u64,
}

impl Stat {
    pub fn from_libc(st: &libc::stat) -> Stat {
        Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
        }
    }

    /// `lstat` of a path (never follows a final symlink).
    pub fn lstat(path: &Path) -> io::Result<Stat> {
        let st = nix::sys::stat::lstat(path).map_err(io::Error::from)?;
        Ok(Stat::from_libc(&st))
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// Relative paths a walk must neither report nor descend into.
#[derive(Debug, Default, Clone)]
pub struct Excluded(HashSet<PathBuf>);

impl Excluded {
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Excluded {
        Excluded(
            paths
                .into_iter()
                .map(|p| crate::changeset::relative(&p))
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        )
    }

    /// True if `rel` is an excluded path or lies under one.
    pub fn covers(&self, rel: &Path) -> bool {
        !self.0.is_empty() && rel.ancestors().any(|a| self.0.contains(a))
    }

    fn is_excluded(&self, rel: &Path) -> bool {
        !self.0.is_empty() && self.0.contains(rel)
    }
}

/// Walks everything under `root/start` (`start` relative, empty for the whole
/// root), not including `start` itself. Returns relative paths with their stat,
/// in no particular order.
pub fn walk(root: &Path, start: &Path, excluded: &Excluded) -> io::Result<Vec<(PathBuf, Stat)>> {
    let dir = root.join(start);
    let fd = match nix::fcntl::open(&dir, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", dir.display()),
            ));
        }
    };
    walk_dir(fd, start.to_path_buf(), root, excluded)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Entries with more names than this stat them on several threads.
const PARALLEL_STAT_THRESHOLD: usize = 512;

fn walk_dir(
    fd: OwnedFd,
    rel: PathBuf,
    root: &Path,
    excluded: &Excluded,
) -> io::Result<Vec<(PathBuf, Stat)>> {
    let names = read_names(&fd).map_err(|e| annotate(e, root, &rel))?;

    let stat_one = |name: &CString| -> io::Result<Option<(PathBuf, Stat)>> {
        let path = rel.join(OsStr::from_bytes(name.as_bytes()));
        if excluded.is_excluded(&path) {
            return Ok(None);
        }
        match fstatat(&fd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some((path, Stat::from_libc(&st)))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(annotate(e.into(), root, &path)),
        }
    };
    let stats: Vec<(PathBuf, Stat)> = if names.len() > PARALLEL_STAT_THRESHOLD {
        names
            .par_iter()
            .map(stat_one)
            .filter_map(Result::transpose)
            .collect::<io::Result<_>>()?
    } else {
        names
            .iter()
            .map(stat_one)
            .filter_map(Result::transpose)
            .collect::<io::Result<_>>()?
    };

    let subdirs: Vec<&PathBuf> = stats
        .iter()
        .filter(|(_, st)| st.is_dir())
        .map(|(p, _)| p)
        .collect();
    let nested: Vec<Vec<(PathBuf, Stat)>> = subdirs
        .into_par_iter()
        .map(|path| {
            let name = path.file_name().expect("walked entries have names");
            match openat(&fd, name, dir_flags(), Mode::empty()) {
                Ok(child) => walk_dir(child, path.clone(), root, excluded),
                // Removed or replaced by a non-directory since it was listed.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(Vec::new()),
                Err(e) => Err(annotate(e.into(), root, path)),
            }
        })
        .collect::<io::Result<_>>()?;

    let mut out = stats;
    out.reserve(nested.iter().map(Vec::len).sum());
    for mut n in nested {
        out.append(&mut n);
    }
    Ok(out)
}

fn read_names(fd: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut dir = Dir::from_fd(fd.try_clone()?)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn annotate(e: io::Error, root: &Path, rel: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("walking {}: {}: {e}", root.display(), rel.display()),
    )
}
