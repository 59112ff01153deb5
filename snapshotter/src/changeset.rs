//! What one build step changed under a root.
//!
//! Every snapshot mode (`full`, `redo`, `fuse`) must produce the same canonical
//! ChangeSet for the same step, so that they produce byte-identical layers:
//!
//! - `changed`: every path that exists after the step and either did not exist
//!   before it or differs from before (file type, mode, uid, gid, size, mtime,
//!   link target, xattrs, content). A new directory brings all its descendants.
//! - `deleted`: every path that existed before the step and does not exist
//!   after it, listing only the topmost such path (if `a/` is gone, `a/b` is not
//!   listed). A path whose type changed (a directory replaced by a file) is in
//!   `changed`, not here: the new entry replaces the old one when applied.
//!   Nor is a path whose parent is no longer a directory: the parent's new
//!   entry already hides it, and a whiteout cannot live under a file.
//! - `opaque`: directories that are directories after the step but were not
//!   directories before it (a file or symlink, replaced by a directory). Their
//!   layer carries `.wh..wh..opq`, so that a directory of the same name in an
//!   older layer never shows through.
//!
//! Paths are relative to the root, without a leading `/` or `.` component.
//! Nothing under an excluded path (the build's own mounts) ever appears.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub changed: BTreeSet<PathBuf>,
    pub deleted: BTreeSet<PathBuf>,
    pub opaque: BTreeSet<PathBuf>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty() && self.opaque.is_empty()
    }

    /// Number of paths the layer will hold entries for (not counting parents).
    pub fn len(&self) -> usize {
        self.changed.len() + self.deleted.len() + self.opaque.len()
    }

    /// Folds a later step's changes into this one, as `--single-snapshot`
    /// and squashing need: the result describes both steps at once.
    pub fn merge(&mut self, later: ChangeSet) {
        for path in &later.deleted {
            self.changed.retain(|p| !p.starts_with(path));
            self.opaque.retain(|p| !p.starts_with(path));
        }
        for path in later.deleted {
            if !self.deleted.iter().any(|d| path.starts_with(d)) {
                self.deleted.insert(path);
            }
        }
        for path in &later.changed {
            self.deleted.remove(path);
        }
        self.changed.extend(later.changed);
        self.opaque.extend(later.opaque);
    }
}

/// Turns an absolute or `./`-prefixed path into the relative form ChangeSets use.
pub fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}
