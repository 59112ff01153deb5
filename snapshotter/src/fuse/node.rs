//! The FUSE server's inode table: one node per real inode the kernel knows,
//! each holding an `O_PATH` handle so that no operation re-resolves a path.
//!
//! Nodes are keyed by the real (device, inode) pair, so every hard link of a
//! file is the same FUSE inode and shares one page cache. A node also keeps
//! the last name it was reached by (its parent node and name): for a
//! directory that is its only name, which is how the journal turns a node
//! into a path without asking the filesystem.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fuser::BackingId;

use super::sys;

pub const ROOT: u64 = 1;

/// (st_dev, st_ino): what identifies a real inode.
pub type Key = (u64, u64);

pub fn key_of(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino)
}

pub struct Node {
    pub ino: u64,
    /// `O_PATH` handle; always held for directories, for other inodes only
    /// while the descriptor budget allows (else reached through `link`).
    fd: Option<OwnedFd>,
    pub key: Key,
    /// `S_IFMT` bits.
    pub kind: u32,
    nlookup: AtomicU64,
    /// Last (parent node, name) this inode was reached by.
    pub link: Mutex<(u64, OsString)>,
    /// Set once the journal holds this inode's pre-step state, or the inode
    /// was created during the step (it has no pre-step state to keep).
    pub journaled: AtomicBool,
    /// Set once a write to the contents has been journaled.
    pub written: AtomicBool,
    /// The kernel passthrough backing file shared by every open of this inode.
    pub backing: Mutex<Option<(Arc<BackingId>, usize)>>,
}

impl Node {
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// The handle of a directory node (directories always keep theirs).
    pub fn dir_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.fd().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTDIR))
    }

    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Arc<Node>>,
    by_key: HashMap<Key, u64>,
}

pub struct Nodes {
    table: RwLock<Table>,
    next: AtomicU64,
    /// Handles held by non-directory nodes, and how many they may hold.
    held: AtomicUsize,
    budget: usize,
}

impl Nodes {
    /// A table holding only the root node, served as FUSE inode 1.
    pub fn new(root: OwnedFd) -> io::Result<Nodes> {
        let st = sys::stat_fd(root.as_fd())?;
        let node = Arc::new(Node {
            ino: ROOT,
            key: key_of(&st),
            kind: st.st_mode & libc::S_IFMT,
            fd: Some(root),
            nlookup: AtomicU64::new(1),
            link: Mutex::new((ROOT, OsString::new())),
            journaled: AtomicBool::new(false),
            written: AtomicBool::new(false),
            backing: Mutex::new(None),
        });
        let mut table = Table::default();
        table.by_key.insert(node.key, ROOT);
        table.by_ino.insert(ROOT, node);
        Ok(Nodes { table: RwLock::new(table), next: AtomicU64::new(ROOT + 1), held: AtomicUsize::new(0), budget: fd_budget() })
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).by_ino.get(&ino).cloned()
    }

    pub fn by_key(&self, key: Key) -> Option<Arc<Node>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.by_key.get(&key).and_then(|ino| table.by_ino.get(ino)).cloned()
    }

    /// Counts one kernel lookup of `name` in `parent` (whose `lstat` is `st`),
    /// creating the node if the kernel did not know the inode yet.
    /// `created` marks an inode made during this step.
    pub fn lookup(&self, parent: &Node, name: &CStr, st: &libc::stat, created: bool) -> io::Result<Arc<Node>> {
        let key = key_of(st);
        let name_os = OsStr::from_bytes(name.to_bytes()).to_os_string();
        if let Some(node) = self.by_key(key) {
            node.nlookup.fetch_add(1, Ordering::Relaxed);
            *node.link.lock().unwrap_or_else(|e| e.into_inner()) = (parent.ino, name_os);
            return Ok(node);
        }
        let kind = st.st_mode & libc::S_IFMT;
        let fd = if kind == libc::S_IFDIR {
            Some(sys::open_path_at(parent.dir_fd()?, name)?)
        } else if self.held.fetch_add(1, Ordering::Relaxed) < self.budget {
            match sys::open_path_at(parent.dir_fd()?, name) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    self.held.fetch_sub(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        } else {
            self.held.fetch_sub(1, Ordering::Relaxed);
            None
        };
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = table.by_key.get(&key).and_then(|ino| table.by_ino.get(ino)).cloned() {
            if fd.is_some() && kind != libc::S_IFDIR {
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
            node.nlookup.fetch_add(1, Ordering::Relaxed);
            *node.link.lock().unwrap_or_else(|e| e.into_inner()) = (parent.ino, name_os);
            return Ok(node);
        }
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node {
            ino,
            fd,
            key,
            kind,
            nlookup: AtomicU64::new(1),
            link: Mutex::new((parent.ino, name_os)),
            journaled: AtomicBool::new(created),
            written: AtomicBool::new(created),
            backing: Mutex::new(None),
        });
        table.by_key.insert(key, ino);
        table.by_ino.insert(ino, node.clone());
        Ok(node)
    }

    /// Takes back `n` lookups; the node (and its handle) goes at zero.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.get(ino) else { return };
        let before = node.nlookup.fetch_sub(n.min(node.nlookup.load(Ordering::Relaxed)), Ordering::AcqRel);
        if before <= n {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            if node.nlookup.load(Ordering::Acquire) == 0 {
                if node.fd.is_some() && node.kind != libc::S_IFDIR {
                    self.held.fetch_sub(1, Ordering::Relaxed);
                }
                table.by_ino.remove(&ino);
                if table.by_key.get(&node.key) == Some(&ino) {
                    table.by_key.remove(&node.key);
                }
            }
        }
    }

    /// The path of a node relative to the root, from the names it was
    /// reached by. Exact for directories (they have one name).
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = table.by_ino.get(&cur)?;
            let (parent, name) = node.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
            names.push(name);
            cur = parent;
            if names.len() > 4096 {
                return None;
            }
        }
        Some(names.iter().rev().collect())
    }
}

/// How many descriptors non-directory nodes may hold: half of what is left
/// of the process limit, keeping the rest for open files and directories.
fn fd_budget() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 512;
    }
    (lim.rlim_cur.min(1 << 24) as usize / 2).saturating_sub(256)
}
