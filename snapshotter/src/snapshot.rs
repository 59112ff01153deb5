//! The Snapshotter the builder drives: one `begin_step` / `finish_step` pair
//! per instruction that can change the root, in whichever mode was chosen.
//!
//! - `full` and `redo` keep a manifest of the root (taken in `new`, a parallel
//!   walk) and rescan the whole root after each RUN.
//! - `fuse` serves the root through the FUSE journal during each RUN and asks
//!   it what changed. When FUSE cannot be used, it falls back to `full` and
//!   says why once, through `StepStart::fallback`.
//! - After COPY/ADD (`StepKind::Write`), no mode scans: the builder declares
//!   the paths it wrote and only those (and their ancestors) are looked at.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::changeset::ChangeSet;
use crate::fuse;
use crate::manifest::{Compare, Manifest};
use crate::scan;
use crate::walk::{Excluded, Stat};

/// `--snapshot-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Journal the writes of each RUN through a FUSE passthrough mount.
    Fuse,
    /// Rescan the root after each RUN, comparing content hashes.
    Full,
    /// Rescan the root after each RUN, comparing metadata only.
    Redo,
}

impl FromStr for SnapshotMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fuse" => Ok(SnapshotMode::Fuse),
            "full" => Ok(SnapshotMode::Full),
            "redo" => Ok(SnapshotMode::Redo),
            other => Err(format!(
                "unknown snapshot mode {other:?}: expected fuse, full or redo"
            )),
        }
    }
}

impl fmt::Display for SnapshotMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotMode::Fuse => "fuse",
            SnapshotMode::Full => "full",
            SnapshotMode::Redo => "redo",
        })
    }
}

/// What kind of step is about to change the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A process runs in the root: changes must be discovered.
    Run,
    /// The builder writes into the root itself (COPY, ADD, WORKDIR) and
    /// declares every path it wrote with `declare_written`.
    Write,
}

/// What `begin_step` tells the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepStart {
    /// The directory a RUN must chroot into (the FUSE mountpoint, or the root).
    pub dir: PathBuf,
    /// Set once, when `fuse` mode could not be used and `full` took over: why, in one line.
    pub fallback: Option<String>,
}

/// Finds what each build step changed under one root.
pub struct Snapshotter {
    root: PathBuf,
    mode: SnapshotMode,
    excluded: Excluded,
    excluded_list: Vec<PathBuf>,
    /// Kept by `full` and `redo` (and `fuse` after a fallback).
    manifest: Manifest,
    unreported_fallback: Option<String>,
    step: Option<Step>,
    declared: Vec<PathBuf>,
    mountpoint: Option<tempfile::TempDir>,
}

struct Step {
    kind: StepKind,
    mount: Option<fuse::StepMount>,
}

impl Snapshotter {
    /// Prepares to snapshot `root`. `full` and `redo` record the baseline here
    /// (a parallel walk); `fuse` checks that FUSE is usable and otherwise falls
    /// back to `full` right away. `excluded` paths (relative to the root, such as
    /// `proc`, `sys`, `dev`, the build's tmp or `--ignore-path` values) are never
    /// scanned nor reported.
    pub fn new(
        root: impl Into<PathBuf>,
        mode: SnapshotMode,
        excluded: Vec<PathBuf>,
    ) -> io::Result<Snapshotter> {
        let root = root.into();
        let st = Stat::lstat(&root).map_err(|e| {
            io::Error::new(e.kind(), format!("snapshot root {}: {e}", root.display()))
        })?;
        if !st.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("snapshot root {} is not a directory", root.display()),
            ));
        }
        let excluded_list: Vec<PathBuf> = excluded
            .iter()
            .map(|p| crate::changeset::relative(p))
            .collect();
        let mut snapshotter = Snapshotter {
            excluded: Excluded::new(excluded_list.clone()),
            excluded_list,
            root,
            mode,
            manifest: Manifest::default(),
            unreported_fallback: None,
            step: None,
            declared: Vec::new(),
            mountpoint: None,
        };
        match mode {
            SnapshotMode::Fuse => {
                if let Err(why) = fuse::probe() {
                    snapshotter.fall_back(why.to_string())?;
                }
            }
            SnapshotMode::Full | SnapshotMode::Redo => snapshotter.take_baseline()?,
        }
        Ok(snapshotter)
    }

    /// The mode in use (`full` after a fallback from `fuse`).
    pub fn mode(&self) -> SnapshotMode {
        self.mode
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts a step. For a RUN in `fuse` mode this mounts the journal and
    /// returns the mountpoint to chroot into; otherwise it returns the root.
    pub fn begin_step(&mut self, kind: StepKind) -> io::Result<StepStart> {
        if self.step.is_some() {
            return Err(io::Error::other(
                "begin_step called while a step is still open",
            ));
        }
        let mut mount = None;
        if kind == StepKind::Run && self.mode == SnapshotMode::Fuse {
            let mountpoint = match &self.mountpoint {
                Some(dir) => dir.path().to_path_buf(),
                None => {
                    let dir = tempfile::Builder::new().prefix("strata-fuse-").tempdir()?;
                    let path = dir.path().to_path_buf();
                    self.mountpoint = Some(dir);
                    path
                }
            };
            match fuse::mount_step(&self.root, &mountpoint, &self.excluded_list) {
                Ok(m) => mount = Some(m),
                Err(why) => self.fall_back(format!("mounting the FUSE journal failed: {why}"))?,
            }
        }
        let dir = mount
            .as_ref()
            .map_or_else(|| self.root.clone(), |m| m.mountpoint().to_path_buf());
        self.step = Some(Step { kind, mount });
        Ok(StepStart {
            dir,
            fallback: self.unreported_fallback.take(),
        })
    }

    /// Declares paths the builder wrote itself during this step (relative to
    /// the root, or absolute as seen from inside it), including every directory
    /// it created and every file under a copied directory.
    pub fn declare_written<P: AsRef<Path>>(&mut self, paths: impl IntoIterator<Item = P>) {
        self.declared.extend(
            paths
                .into_iter()
                .map(|p| crate::changeset::relative(p.as_ref())),
        );
    }

    /// Ends the step and says what it changed.
    pub fn finish_step(&mut self) -> io::Result<ChangeSet> {
        let step = self
            .step
            .take()
            .ok_or_else(|| io::Error::other("finish_step called without begin_step"))?;
        let declared = std::mem::take(&mut self.declared);
        let compare = match self.mode {
            SnapshotMode::Redo => Compare::Metadata,
            SnapshotMode::Full | SnapshotMode::Fuse => Compare::Content,
        };
        match (self.mode, step.kind) {
            (SnapshotMode::Fuse, _) => {
                let mut changes = match step.mount {
                    Some(mount) => mount.finish()?,
                    None => ChangeSet::default(),
                };
                changes.merge(self.declared_without_manifest(&declared)?);
                Ok(changes)
            }
            (_, StepKind::Run) => {
                // A scan sees everything, declared paths included.
                scan::scan(&self.root, &self.excluded, &mut self.manifest, compare)
            }
            (_, StepKind::Write) => scan::update_declared(
                &self.root,
                &self.excluded,
                &mut self.manifest,
                &declared,
                compare,
            ),
        }
    }

    /// In `fuse` mode no manifest is kept: declared paths that exist are changed.
    fn declared_without_manifest(&self, declared: &[PathBuf]) -> io::Result<ChangeSet> {
        let mut changes = ChangeSet::default();
        for path in declared {
            if path.as_os_str().is_empty() || self.excluded.covers(path) {
                continue;
            }
            match Stat::lstat(&self.root.join(path)) {
                Ok(_) => {
                    changes.changed.insert(path.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", self.root.join(path).display()),
                    ));
                }
            }
        }
        Ok(changes)
    }

    fn take_baseline(&mut self) -> io::Result<()> {
        let compare = if self.mode == SnapshotMode::Redo {
            Compare::Metadata
        } else {
            Compare::Content
        };
        self.manifest = scan::baseline(&self.root, &self.excluded, compare)?;
        Ok(())
    }

    fn fall_back(&mut self, why: String) -> io::Result<()> {
        self.mode = SnapshotMode::Full;
        self.unreported_fallback =
            Some(format!("snapshot mode fuse unavailable, using full: {why}"));
        self.take_baseline()
    }
}
