//! Sequences of steps, as a build runs them: the cross-step cases that broke
//! kaniko, COPY steps declared by the builder, and the fallback from `fuse`.
//! After every step the chain of layers, applied in order, must give the tree.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use strata_snapshotter::layer::write_layer;
use strata_snapshotter::{ChangeSet, SnapshotMode, Snapshotter, StepKind};

/// A root, a copy of it rebuilt only from layers, and a snapshotter.
struct Build {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    applied: PathBuf,
    blobs: PathBuf,
    snapshotter: Snapshotter,
    layers: Vec<Vec<String>>,
    /// Paths left out of the tree comparison.
    skip: Vec<&'static str>,
}

impl Build {
    fn new(mode: SnapshotMode, setup: impl Fn(&Path)) -> Build {
        let BaseTree { tmp, root, applied, blobs } = base_tree(setup, &[]);
        let snapshotter = Snapshotter::new(&root, mode, vec![]).unwrap();
        Build {
            _tmp: tmp,
            root,
            applied,
            blobs,
            snapshotter,
            layers: Vec::new(),
            skip: Vec::new(),
        }
    }

    /// One step: returns its ChangeSet, after checking its layer.
    fn step(&mut self, kind: StepKind, change: impl Fn(&Path) -> Vec<&'static str>) -> ChangeSet {
        let start = self.snapshotter.begin_step(kind).unwrap();
        // A RUN works in the directory begin_step gives (the FUSE mountpoint in fuse mode).
        let written = change(&start.dir);
        self.snapshotter.declare_written(written);
        let changes = self.snapshotter.finish_step().unwrap();
        let blob = write_layer(&self.root, &changes, &plain(), &self.blobs).unwrap();
        let tar = fs::read(&blob.path).unwrap();
        self.layers.push(entry_names(&tar));
        apply_layer(&self.applied, &tar);
        assert_eq!(
            picture(&self.applied, &self.skip),
            picture(&self.root, &self.skip),
            "after step {}",
            self.layers.len()
        );
        changes
    }

    fn last_layer(&self) -> &[String] {
        self.layers.last().unwrap()
    }
}

fn entry_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn set(paths: &[&str]) -> BTreeSet<PathBuf> {
    paths.iter().map(PathBuf::from).collect()
}

fn setup(root: &Path) {
    write(root, "etc/conf", b"conf");
    write(root, "d/old1", b"1");
    write(root, "d/sub/old2", b"2");
}

#[test]
fn file_added_deleted_added_again() {
    for mode in [SnapshotMode::Full, SnapshotMode::Redo, SnapshotMode::Fuse] {
        let mut b = Build::new(mode, setup);
        let c = b.step(StepKind::Run, |r| {
            write(r, "etc/x", b"first");
            vec![]
        });
        assert_eq!(c.changed, set(&["etc", "etc/x"]), "{mode}");
        let c = b.step(StepKind::Run, |r| {
            fs::remove_file(r.join("etc/x")).unwrap();
            vec![]
        });
        assert_eq!(c.deleted, set(&["etc/x"]), "{mode}");
        assert!(
            b.last_layer().contains(&"etc/.wh.x".to_owned()),
            "{mode}: {:?}",
            b.last_layer()
        );
        let c = b.step(StepKind::Run, |r| {
            write(r, "etc/x", b"second");
            vec![]
        });
        assert_eq!(c.changed, set(&["etc", "etc/x"]), "{mode}");
        assert!(c.deleted.is_empty(), "{mode}");
    }
}

#[test]
fn directory_replaced_by_file_then_directory_again() {
    for mode in [SnapshotMode::Full, SnapshotMode::Redo, SnapshotMode::Fuse] {
        let mut b = Build::new(mode, setup);
        let c = b.step(StepKind::Run, |r| {
            fs::remove_dir_all(r.join("d")).unwrap();
            write(r, "d", b"a file now");
            vec![]
        });
        assert_eq!(
            c,
            ChangeSet {
                changed: set(&["d"]),
                ..ChangeSet::default()
            },
            "{mode}"
        );
        let c = b.step(StepKind::Run, |r| {
            fs::remove_file(r.join("d")).unwrap();
            write(r, "d/new", b"new");
            vec![]
        });
        assert_eq!(c.changed, set(&["d", "d/new"]), "{mode}");
        assert_eq!(c.opaque, set(&["d"]), "{mode}");
        assert_eq!(b.last_layer(), ["d/", "d/.wh..wh..opq", "d/new"], "{mode}");
    }
}

#[test]
fn copy_steps_are_not_scanned() {
    for mode in [SnapshotMode::Full, SnapshotMode::Redo, SnapshotMode::Fuse] {
        let mut b = Build::new(mode, setup);
        b.skip = vec!["d"];
        let c = b.step(StepKind::Write, |r| {
            write(r, "app/bin/tool", b"tool");
            write(r, "etc/conf", b"new conf");
            // Not declared: a COPY step does not look for it.
            write(r, "d/undeclared", b"?");
            vec!["/app", "/app/bin", "/app/bin/tool", "etc/conf"]
        });
        assert!(
            c.changed
                .is_superset(&set(&["app", "app/bin", "app/bin/tool", "etc/conf"])),
            "{mode}: {c:?}"
        );
        assert!(!c.changed.contains(Path::new("d/undeclared")), "{mode}");
        // The next scan starts from what the COPY declared: nothing is
        // reported twice, and what it did not declare is found now.
        let c = b.step(StepKind::Run, |r| {
            write(r, "app/log", b"log");
            vec![]
        });
        if mode != SnapshotMode::Fuse {
            assert_eq!(
                c.changed,
                set(&["app", "app/log", "d", "d/undeclared"]),
                "{mode}"
            );
        }
    }
}

#[test]
fn declared_new_directory_brings_its_tree() {
    let mut b = Build::new(SnapshotMode::Full, setup);
    let c = b.step(StepKind::Write, |r| {
        write(r, "srv/www/index.html", b"<html>");
        vec!["srv"]
    });
    assert_eq!(c.changed, set(&["srv", "srv/www", "srv/www/index.html"]));
}

#[test]
fn fuse_falls_back_to_full_and_says_why_once() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let mut s = Snapshotter::new(tmp.path(), SnapshotMode::Fuse, vec![]).unwrap();
    let start = s.begin_step(StepKind::Run).unwrap();
    if s.mode() == SnapshotMode::Fuse {
        // The FUSE journal is usable here: RUN goes into its mountpoint.
        assert_ne!(start.dir, tmp.path());
        assert_eq!(start.fallback, None);
        s.finish_step().unwrap();
        return;
    }
    let why = start.fallback.expect("a fallback says why");
    assert!(!why.contains('\n') && why.contains("full"), "{why}");
    assert_eq!(start.dir, tmp.path());
    write(tmp.path(), "etc/new", b"n");
    let c = s.finish_step().unwrap();
    assert!(c.changed.contains(Path::new("etc/new")));
    let again = s.begin_step(StepKind::Run).unwrap();
    assert_eq!(again.fallback, None, "the reason is given once");
    s.finish_step().unwrap();
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Snapshotter::new(tmp.path(), SnapshotMode::Redo, vec![]).unwrap();
    assert!(s.finish_step().is_err());
    s.begin_step(StepKind::Run).unwrap();
    assert!(s.begin_step(StepKind::Run).is_err());
    let missing = tmp.path().join("missing");
    let err = Snapshotter::new(&missing, SnapshotMode::Full, vec![])
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing"), "{err}");
    assert!("bogus".parse::<SnapshotMode>().is_err());
    assert_eq!("redo".parse::<SnapshotMode>(), Ok(SnapshotMode::Redo));
}

#[test]
fn declared_paths_behind_a_symlink_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    mkdir(&root, "");
    write(tmp.path(), "outside/secret", b"host secret");
    let mut s = Snapshotter::new(&root, SnapshotMode::Full, vec![]).unwrap();
    s.begin_step(StepKind::Write).unwrap();
    link(
        &root,
        tmp.path().join("outside").to_str().unwrap(),
        "escape",
    );
    s.declare_written(["escape", "escape/secret"]);
    let c = s.finish_step().unwrap();
    assert_eq!(c.changed, set(&["escape"]));
}
