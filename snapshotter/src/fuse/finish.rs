//! Turns a step's journal into the canonical ChangeSet (see `changeset`),
//! looking only at the paths the journal names.
//!
//! Candidates are every journaled path plus every current name of every
//! journaled inode. Names of a changed inode are the paths the journal
//! already knows; only when an inode had more hard links before the step
//! than the journal accounts for does finish look for the others, with one
//! `getdents` walk of the root (no `stat` per entry).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::journal::{Journal, Snap, gone};
use super::node::Key;
use super::sys;
use crate::changeset::ChangeSet;

/// A candidate path: its pre-step state and its state now.
struct Candidate {
    orig: Option<Arc<Snap>>,
    now: Option<Snap>,
}

pub fn changeset(root: BorrowedFd<'_>, journal: Journal, excluded: &[PathBuf]) -> io::Result<ChangeSet> {
    let Journal { paths, inodes } = journal;
    let excluded: Vec<PathBuf> = excluded.iter().map(|p| crate::changeset::relative(p)).collect();
    let covered = |p: &Path| excluded.iter().any(|e| !e.as_os_str().is_empty() && p.starts_with(e));

    let mut cands: HashMap<PathBuf, Candidate> = paths
        .into_par_iter()
        .filter(|(p, _)| !p.as_os_str().is_empty() && !covered(p))
        .map(|(p, orig)| {
            let now = match orig {
                Some(_) => Snap::beneath(root, &p),
                None => Snap::stat_beneath(root, &p),
            };
            let now = now.map_err(|e| annotate(e, &p))?;
            Ok((p, Candidate { orig, now }))
        })
        .collect::<io::Result<_>>()?;

    // Names each changed inode has now, among the candidates.
    let mut found: HashMap<Key, (usize, u64)> = HashMap::new();
    for c in cands.values() {
        if let Some(now) = &c.now
            && inodes.contains_key(&now.key())
        {
            let e = found.entry(now.key()).or_insert((0, now.stat.nlink));
            e.0 += 1;
        }
    }
    // The path each inode was last known by, when it is not a candidate yet.
    for (key, rec) in &inodes {
        let Some(path) = &rec.path else { continue };
        if path.as_os_str().is_empty() || cands.contains_key(path) || covered(path) {
            continue;
        }
        let now = Snap::beneath(root, path).map_err(|e| annotate(e, path))?;
        if let Some(now) = now.filter(|n| n.key() == *key) {
            let e = found.entry(*key).or_insert((0, now.stat.nlink));
            e.0 += 1;
            cands.insert(path.clone(), Candidate { orig: Some(rec.orig.clone()), now: Some(now) });
        }
    }
    // Inodes with names the journal never saw: hard links made before the step.
    let missing: HashSet<Key> = inodes
        .iter()
        // A directory has one name (its link count counts subdirectories).
        .filter(|(_, rec)| rec.orig.kind() != libc::S_IFDIR)
        .filter(|(key, rec)| match found.get(key) {
            Some((names, nlink)) => (*names as u64) < *nlink,
            None => rec.orig.stat.nlink > 1,
        })
        .map(|(key, _)| *key)
        .collect();
    if !missing.is_empty() {
        for path in find_names(root, &missing, &covered)? {
            if cands.contains_key(&path) {
                continue;
            }
            if let Some(now) = Snap::beneath(root, &path).map_err(|e| annotate(e, &path))?
                && let Some(rec) = inodes.get(&now.key())
            {
                cands.insert(path, Candidate { orig: Some(rec.orig.clone()), now: Some(now) });
            }
        }
    }

    let content_changed = |orig: &Snap, now: &Snap| -> bool {
        if now.kind() != libc::S_IFREG {
            return false;
        }
        if orig.key() != now.key() {
            // Another inode now: its bytes cannot be compared with ones that are gone.
            return now.stat.size > 0;
        }
        inodes.get(&now.key()).is_some_and(|rec| rec.written || (rec.maybe_written && rec.orig.stat.ctime != now.stat.ctime))
    };

    let mut set = ChangeSet::default();
    let mut new_dirs = Vec::new();
    let mut gone_paths = Vec::new();
    for (path, c) in &cands {
        match (&c.orig, &c.now) {
            (orig, Some(now)) => {
                let changed = match orig {
                    None => true,
                    Some(o) => o.differs(now) || content_changed(o, now),
                };
                if changed {
                    set.changed.insert(path.clone());
                }
                let was_dir = orig.as_ref().is_some_and(|o| o.is_dir());
                if now.is_dir() && !was_dir {
                    new_dirs.push(path.clone());
                    if orig.is_some() {
                        set.opaque.insert(path.clone());
                    }
                }
            }
            (Some(_), None) => gone_paths.push(path.clone()),
            (None, None) => {}
        }
    }
    // A new directory brings everything under it (walked once, from the topmost).
    new_dirs.sort();
    let mut topmost: Vec<PathBuf> = Vec::new();
    for dir in new_dirs {
        if !topmost.last().is_some_and(|t| dir.starts_with(t)) {
            topmost.push(dir);
        }
    }
    let new_dirs = topmost;
    let descendants: Vec<Vec<PathBuf>> = new_dirs
        .par_iter()
        .map(|dir| walk(root, dir, &covered))
        .collect::<io::Result<_>>()?;
    set.changed.extend(descendants.into_iter().flatten());

    // Only the topmost deletion counts, and nothing under a path that is no
    // longer a directory (the entry replacing it hides what was below).
    let still_dir = |p: &Path| match cands.get(p) {
        Some(c) => c.now.as_ref().is_some_and(|n| n.is_dir()),
        None => true,
    };
    for path in gone_paths {
        let hidden = path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).any(|a| !still_dir(a));
        if !hidden {
            set.deleted.insert(path);
        }
    }
    Ok(set)
}

/// Every path under `dir` (relative to the root), not `dir` itself.
pub fn list_tree(root: BorrowedFd<'_>, dir: &Path) -> io::Result<Vec<PathBuf>> {
    walk(root, dir, &|_| false)
}

fn walk(root: BorrowedFd<'_>, dir: &Path, covered: &(dyn Fn(&Path) -> bool + Sync)) -> io::Result<Vec<PathBuf>> {
    let fd = match sys::open_beneath(root, dir, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(e) if gone(&e) => return Ok(Vec::new()),
        Err(e) => return Err(annotate(e, dir)),
    };
    let mut out = Vec::new();
    let mut stack = vec![(fd, dir.to_path_buf())];
    while let Some((fd, rel)) = stack.pop() {
        for (name, _, dtype) in sys::read_dir(fd.as_fd()).map_err(|e| annotate(e, &rel))? {
            let path = rel.join(&name);
            if covered(&path) {
                continue;
            }
            if dtype == libc::DT_DIR || dtype == libc::DT_UNKNOWN {
                let cname = sys::cstr(&name)?;
                match sys::open_at(fd.as_fd(), &cname, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                    Ok(child) => stack.push((child, path.clone())),
                    Err(e) if gone(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => {}
                    Err(e) => return Err(annotate(e, &path)),
                }
            }
            out.push(path);
        }
    }
    Ok(out)
}

/// Paths of every name of the given inodes, by one walk of the root that
/// reads directory entries only (`d_ino`) and checks matches with `lstat`.
fn find_names(
    root: BorrowedFd<'_>,
    keys: &HashSet<Key>,
    covered: &(dyn Fn(&Path) -> bool + Sync),
) -> io::Result<Vec<PathBuf>> {
    let inos: HashSet<u64> = keys.iter().map(|k| k.1).collect();
    let root_dir = sys::open_beneath(root, Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut out = Vec::new();
    let mut stack = vec![(root_dir, PathBuf::new())];
    while let Some((fd, rel)) = stack.pop() {
        let entries = match sys::read_dir(fd.as_fd()) {
            Ok(e) => e,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(annotate(e, &rel)),
        };
        for (name, d_ino, dtype) in entries {
            let path = rel.join(&name);
            if covered(&path) {
                continue;
            }
            let cname = sys::cstr(&name)?;
            if dtype == libc::DT_DIR || dtype == libc::DT_UNKNOWN {
                match sys::open_at(fd.as_fd(), &cname, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                    Ok(child) => {
                        // Stay on the root's filesystem: mounts below are not the root's.
                        let st = sys::stat_fd(child.as_fd())?;
                        if keys.iter().any(|k| k.0 == st.st_dev) {
                            stack.push((child, path.clone()));
                        }
                        continue;
                    }
                    Err(e) if gone(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => {}
                    Err(e) => return Err(annotate(e, &path)),
                }
            }
            if inos.contains(&d_ino) {
                match sys::stat_at(fd.as_fd(), &cname) {
                    Ok(st) if keys.contains(&(st.st_dev, st.st_ino)) => out.push(path),
                    Ok(_) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(annotate(e, &path)),
                }
            }
        }
    }
    Ok(out)
}

fn annotate(e: io::Error, rel: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("FUSE journal: {}: {e}", rel.display()))
}
