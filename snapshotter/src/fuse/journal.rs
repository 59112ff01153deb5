//! The step's journal: the pre-step state of everything a mutating FUSE
//! operation is about to change, recorded at first touch.
//!
//! Two kinds of record keep it exact and cheap:
//! - `paths`: for a directory entry (a path) that an operation creates,
//!   removes or renames, what was at that path before the step. Invariant: a
//!   path not in `paths` still resolves to the same inode it did before the
//!   step.
//! - `inodes`: for an inode whose own metadata or contents an operation
//!   changes (write, chmod, xattrs, a directory gaining an entry...), its
//!   pre-step state. Every current name of such an inode is a candidate at
//!   finish, which is how a write through one hard link reaches every name.
//!
//! `finish` (see `finish.rs`) compares each candidate path's recorded state
//! with what is there now, so its cost follows the journal, not the root.

use std::collections::HashMap;
use std::ffi::{CStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::node::Key;
use crate::walk::Stat;
use super::sys;

/// What a scan would see at one path: the fields the canonical ChangeSet compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub stat: Stat,
    pub target: Option<OsString>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Snap {
    /// Captures the inode behind an `O_PATH` (or any) handle.
    pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<Snap> {
        let st = sys::stat_fd(fd)?;
        let kind = st.st_mode & libc::S_IFMT;
        let target = if kind == libc::S_IFLNK { Some(sys::readlink_fd(fd)?) } else { None };
        Ok(Snap {
            stat: Stat::from_libc(&st),
            target,
            xattrs: sys::xattrs(fd)?,
        })
    }

    /// Captures `name` in `dir`, `None` when nothing is there.
    pub fn at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Snap>> {
        match sys::open_path_at(dir, name) {
            Ok(fd) => Snap::of_fd(fd.as_fd()).map(Some),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Captures a relative path beneath `root` without following symlinks.
    pub fn beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<Option<Snap>> {
        match sys::open_beneath(root, rel, libc::O_PATH) {
            Ok(fd) => Snap::of_fd(fd.as_fd()).map(Some),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like `beneath`, but only the `stat` fields: enough for a path that did
    /// not exist before the step (it is changed whatever its details).
    pub fn stat_beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<Option<Snap>> {
        let (dir, name) = match (rel.parent(), rel.file_name()) {
            (Some(dir), Some(name)) => (dir, name),
            _ => return Snap::beneath(root, rel),
        };
        let dir = match sys::open_beneath(root, dir, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = match sys::stat_at(dir.as_fd(), &sys::cstr(name)?) {
            Ok(st) => st,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Snap {
            stat: Stat::from_libc(&st),
            target: None,
            xattrs: Vec::new(),
        }))
    }

    pub fn key(&self) -> Key {
        (self.stat.dev, self.stat.ino)
    }

    pub fn kind(&self) -> u32 {
        self.stat.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.stat.is_dir()
    }

    /// Differs from `self` in what the canonical ChangeSet compares, content aside.
    pub fn differs(&self, now: &Snap) -> bool {
        let (was, is) = (&self.stat, &now.stat);
        self.kind() != now.kind()
            || was.mode & 0o7777 != is.mode & 0o7777
            || was.uid != is.uid
            || was.gid != is.gid
            || was.mtime != is.mtime
            || was.rdev != is.rdev
            || (!now.is_dir() && was.size != is.size)
            || self.target != now.target
            || self.xattrs != now.xattrs
    }
}

/// Errors meaning "nothing at that path" (an ancestor may be gone or a non-directory).
pub fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV))
}

/// The pre-step state of an inode whose own state the step changed.
#[derive(Debug)]
pub struct InodeRecord {
    pub orig: Arc<Snap>,
    /// A path the inode had when first touched (kept current across renames).
    pub path: Option<PathBuf>,
    /// Its contents were written (write, truncate, fallocate, copy_file_range).
    pub written: bool,
    /// Opened for writing with kernel passthrough: writes (and shared-mmap
    /// stores) bypass the server, so a changed ctime at finish means written.
    pub maybe_written: bool,
}

#[derive(Debug, Default)]
pub struct Journal {
    pub paths: HashMap<PathBuf, Option<Arc<Snap>>>,
    pub inodes: HashMap<Key, InodeRecord>,
}

impl Journal {
    pub fn has_path(&self, path: &Path) -> bool {
        self.paths.contains_key(path)
    }

    /// Records the pre-step state of `path`, given what is there now (`live`,
    /// captured before the operation). A live inode that was already changed
    /// this step stands for its recorded pre-step state.
    pub fn record_path(&mut self, path: PathBuf, live: Option<Snap>) {
        if self.paths.contains_key(&path) {
            return;
        }
        let orig = live.map(|snap| match self.inodes.get(&snap.key()) {
            Some(rec) => rec.orig.clone(),
            None => Arc::new(snap),
        });
        self.paths.insert(path, orig);
    }

    /// Records the pre-step state of an inode about to change.
    pub fn record_inode(&mut self, live: Snap, path: Option<PathBuf>) {
        self.inodes
            .entry(live.key())
            .or_insert_with(|| InodeRecord { orig: Arc::new(live), path, written: false, maybe_written: false });
    }

    pub fn mark_written(&mut self, key: Key, definitely: bool) {
        if let Some(rec) = self.inodes.get_mut(&key) {
            if definitely {
                rec.written = true;
            } else {
                rec.maybe_written = true;
            }
        }
    }

    /// An inode was renamed: keep its remembered path current.
    pub fn moved(&mut self, key: Key, to: &Path) {
        if let Some(rec) = self.inodes.get_mut(&key) {
            rec.path = Some(to.to_path_buf());
        }
    }
}
