//! The `full` and `redo` snapshotters: compare a root with the manifest kept
//! from the previous step and produce the canonical ChangeSet.
//!
//! `scan` walks the whole root (after a RUN); `update_declared` looks only at
//! the paths the builder says it wrote (after COPY/ADD) and their ancestors.
//! Both update the manifest in place for the next step.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::changeset::{ChangeSet, relative};
use crate::manifest::{Compare, Entry, Manifest, differs, read_entry};
use crate::walk::{Excluded, Stat, walk};

/// The manifest of everything under `root` (the baseline before a build's first step).
pub fn baseline(root: &Path, excluded: &Excluded, compare: Compare) -> io::Result<Manifest> {
    let walked = walk(root, Path::new(""), excluded)?;
    let entries = walked
        .into_par_iter()
        .filter_map(|(path, stat)| read_vanishing(root, path, stat, None, compare).transpose())
        .collect::<io::Result<_>>()?;
    Ok(Manifest { entries })
}

/// Walks the whole root, returns what changed since `manifest` and makes
/// `manifest` describe the root as it is now. Unchanged entries (identical
/// `lstat`) cost one map lookup; the manifest is updated in place.
pub fn scan(
    root: &Path,
    excluded: &Excluded,
    manifest: &mut Manifest,
    compare: Compare,
) -> io::Result<ChangeSet> {
    let walked = walk(root, Path::new(""), excluded)?;
    let old = &*manifest;
    let found = AtomicUsize::new(0);
    let looked: Vec<Looked> = walked
        .par_iter()
        .filter_map(|(path, stat)| {
            let before = old.get(path);
            if before.is_some() {
                found.fetch_add(1, Ordering::Relaxed);
            }
            match before {
                Some(b) if b.stat == *stat => None,
                _ => look(root, path.clone(), *stat, old, compare).transpose(),
            }
        })
        .collect::<io::Result<_>>()?;

    // Paths gone since the last step: only worth searching for when some
    // recorded path was not walked.
    let gone: Vec<PathBuf> = if found.into_inner() == old.len() {
        Vec::new()
    } else {
        let present: HashSet<&Path, rustc_hash::FxBuildHasher> =
            walked.par_iter().map(|(p, _)| p.as_path()).collect();
        old.entries
            .par_iter()
            .filter(|(p, _)| !present.contains(p.as_path()))
            .map(|(p, _)| p.clone())
            .collect()
    };

    let mut changes = ChangeSet::default();
    for l in looked {
        if l.changed {
            changes.changed.insert(l.path.clone());
        }
        if l.opaque {
            changes.opaque.insert(l.path.clone());
        }
        manifest.entries.insert(l.path, l.entry);
    }
    for path in &gone {
        manifest.entries.remove(path);
    }
    changes.deleted = gone
        .into_iter()
        .filter(|p| parent_is_dir(manifest, p))
        .collect();
    Ok(changes)
}

/// Looks only at `declared` paths (those a COPY/ADD wrote), their ancestors,
/// and the whole subtree of a declared directory that is new. Returns what
/// changed and updates `manifest`.
pub fn update_declared(
    root: &Path,
    excluded: &Excluded,
    manifest: &mut Manifest,
    declared: &[PathBuf],
    compare: Compare,
) -> io::Result<ChangeSet> {
    let mut targets = BTreeSet::new();
    for path in declared.iter().map(|p| relative(p)) {
        if path.as_os_str().is_empty() || excluded.covers(&path) {
            continue;
        }
        targets.extend(
            path.ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_path_buf),
        );
    }

    let mut changes = ChangeSet::default();
    let mut gone = Vec::new();
    // Paths under a non-directory are never looked at: that would follow a symlink.
    // A set probed with each path's ancestors: a COPY declares thousands of files.
    let mut not_dirs: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for path in &targets {
        if path.ancestors().any(|a| not_dirs.contains(a)) {
            continue;
        }
        let stat = match Stat::lstat(&root.join(path)) {
            Ok(stat) => stat,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if manifest.get(path).is_some() {
                    gone.push(path.clone());
                }
                not_dirs.insert(path.clone());
                continue;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", root.join(path).display()),
                ));
            }
        };
        let was_dir = manifest.is_dir(path);
        let existed = manifest.get(path).is_some();
        if !stat.is_dir() {
            not_dirs.insert(path.clone());
        }
        let Some(l) = look(root, path.clone(), stat, manifest, compare)? else {
            continue;
        };
        if was_dir && !l.entry.stat.is_dir() {
            manifest.remove_tree(path);
        }
        let mut subtree = Vec::new();
        if l.entry.stat.is_dir() && (!existed || !was_dir) {
            subtree = walk(root, path, excluded)?;
        }
        if l.changed {
            changes.changed.insert(l.path.clone());
        }
        if l.opaque {
            changes.opaque.insert(l.path.clone());
        }
        manifest.entries.insert(l.path, l.entry);
        for (sub, stat) in subtree {
            if let Some((sub, entry)) = read_vanishing(root, sub, stat, None, compare)? {
                changes.changed.insert(sub.clone());
                manifest.entries.insert(sub, entry);
            }
        }
    }
    for path in gone {
        manifest.remove_tree(&path);
        if parent_is_dir(manifest, &path) {
            changes.deleted.insert(path);
        }
    }
    Ok(changes)
}

/// One walked path compared with the manifest.
struct Looked {
    path: PathBuf,
    entry: Entry,
    changed: bool,
    opaque: bool,
}

fn look(
    root: &Path,
    path: PathBuf,
    stat: Stat,
    old: &Manifest,
    compare: Compare,
) -> io::Result<Option<Looked>> {
    let before = old.get(&path);
    let Some((path, entry)) = read_vanishing(root, path, stat, before, compare)? else {
        return Ok(None);
    };
    let changed = before.is_none_or(|b| differs(b, &entry, compare));
    let opaque = entry.stat.is_dir() && before.is_some_and(|b| !b.stat.is_dir());
    Ok(Some(Looked {
        path,
        entry,
        changed,
        opaque,
    }))
}

/// `read_entry`, where a path that vanished since it was listed is `None`.
fn read_vanishing(
    root: &Path,
    path: PathBuf,
    stat: Stat,
    old: Option<&Entry>,
    compare: Compare,
) -> io::Result<Option<(PathBuf, Entry)>> {
    match read_entry(&root.join(&path), stat, old, compare) {
        Ok(entry) => Ok(Some((path, entry))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whiteouts go only where the parent is (still) a directory: if the parent
/// became a file or symlink, its new entry already hides everything below.
fn parent_is_dir(now: &Manifest, path: &Path) -> bool {
    match path.parent() {
        None => true,
        Some(p) if p.as_os_str().is_empty() => true,
        Some(p) => now.is_dir(p),
    }
}
