//! The manifest a scan keeps between steps: what every path looked like after
//! the previous step, and how two looks at one path are compared.
//!
//! `full` compares content hashes (blake3, large files memory-mapped); `redo`
//! compares metadata only. Both skip re-reading what cannot have changed: a
//! path whose inode, size, mtime and ctime are unchanged keeps its recorded
//! xattrs and content hash. ctime cannot be set from userspace, so any write,
//! chmod, chown or xattr change moves it, even when mtime was put back.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::walk::Stat;

/// A 128-bit blake3 prefix: plenty to tell two versions of one path apart.
pub type Digest = [u8; 16];

/// How a scan decides that a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// `full`: type, mode, owner, size, mtime, link target, xattrs and content.
    Content,
    /// `redo`: type, mode, owner, size, mtime (ns), inode, link count, link
    /// target and xattrs; never reads file contents.
    Metadata,
}

/// One path as recorded after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stat: Stat,
    pub link_target: Option<OsString>,
    /// Digest of all extended attributes, `None` when there are none.
    pub xattrs: Option<Digest>,
    /// Content digest of a regular file, in `Compare::Content` only.
    pub content: Option<Digest>,
}

/// What every path under a root looked like after the last step.
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    pub entries: Entries,
}

/// Path → entry, with a fast non-cryptographic hash: crafted colliding
/// names could only slow down the build that created them.
pub type Entries = HashMap<PathBuf, Entry, rustc_hash::FxBuildHasher>;

impl Manifest {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn is_dir(&self, path: &Path) -> bool {
        self.entries.get(path).is_some_and(|e| e.stat.is_dir())
    }

    /// Forgets `path` and everything under it.
    pub fn remove_tree(&mut self, path: &Path) {
        if self.entries.remove(path).is_some_and(|e| e.stat.is_dir()) {
            self.entries.retain(|p, _| !p.starts_with(path));
        }
    }
}

/// True when the inode behind a path cannot have changed in any way a scan
/// looks at, so its recorded xattrs and content digest still hold.
fn inode_untouched(old: &Stat, new: &Stat) -> bool {
    old.ino == new.ino
        && old.dev == new.dev
        && old.ctime == new.ctime
        && old.mtime == new.mtime
        && old.size == new.size
}

/// Reads what the stat alone does not say (link target, xattrs, content),
/// reusing `old` where the inode is untouched. `abs` is the path on disk.
pub fn read_entry(
    abs: &Path,
    stat: Stat,
    old: Option<&Entry>,
    compare: Compare,
) -> io::Result<Entry> {
    if let Some(old) = old.filter(|o| inode_untouched(&o.stat, &stat)) {
        let content = match compare {
            Compare::Content if stat.is_file() && old.content.is_none() => {
                Some(content_digest(abs, stat.size)?)
            }
            Compare::Content => old.content,
            Compare::Metadata => None,
        };
        return Ok(Entry {
            stat,
            link_target: old.link_target.clone(),
            xattrs: old.xattrs,
            content,
        });
    }
    let link_target = if stat.is_symlink() {
        Some(std::fs::read_link(abs)?.into_os_string())
    } else {
        None
    };
    let content = if compare == Compare::Content && stat.is_file() {
        Some(content_digest(abs, stat.size)?)
    } else {
        None
    };
    Ok(Entry {
        stat,
        link_target,
        xattrs: xattr_digest(abs)?,
        content,
    })
}

/// Does `new` differ from `old` in a way this comparison reports?
pub fn differs(old: &Entry, new: &Entry, compare: Compare) -> bool {
    let (o, n) = (&old.stat, &new.stat);
    let kind_changed = o.mode & libc::S_IFMT != n.mode & libc::S_IFMT;
    if kind_changed {
        return true;
    }
    let common = o.mode & 0o7777 != n.mode & 0o7777
        || o.uid != n.uid
        || o.gid != n.gid
        || o.mtime != n.mtime
        || o.rdev != n.rdev
        || (!n.is_dir() && o.size != n.size)
        || old.link_target != new.link_target
        || old.xattrs != new.xattrs;
    common
        || match compare {
            Compare::Content => old.content != new.content,
            Compare::Metadata => o.ino != n.ino || o.nlink != n.nlink,
        }
}

/// Files at least this large are memory-mapped for hashing.
const MMAP_THRESHOLD: u64 = 1 << 20;

fn content_digest(abs: &Path, size: u64) -> io::Result<Digest> {
    let file = File::open(abs).map_err(|e| with_path(e, abs))?;
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        // SAFETY: the step that could modify the file has finished; a
        // concurrent truncation would be a build escaping its step.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| with_path(e, abs))?;
        hasher.update(&map);
    } else {
        let mut buf = Vec::with_capacity(size as usize + 1);
        (&file)
            .take(MMAP_THRESHOLD)
            .read_to_end(&mut buf)
            .map_err(|e| with_path(e, abs))?;
        hasher.update(&buf);
    }
    Ok(truncate(hasher.finalize()))
}

fn xattr_digest(abs: &Path) -> io::Result<Option<Digest>> {
    let names = match xattr::list(abs) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(None),
        Err(e) => return Err(with_path(e, abs)),
    };
    let mut names: Vec<OsString> = names.collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort();
    let mut hasher = blake3::Hasher::new();
    for name in names {
        let value = xattr::get(abs, &name)
            .map_err(|e| with_path(e, abs))?
            .unwrap_or_default();
        hasher.update(name.as_encoded_bytes());
        hasher.update(&[0]);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    Ok(Some(truncate(hasher.finalize())))
}

fn truncate(hash: blake3::Hash) -> Digest {
    let mut d = [0u8; 16];
    d.copy_from_slice(&hash.as_bytes()[..16]);
    d
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
