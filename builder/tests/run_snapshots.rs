//! A RUN with every kind of `--mount` under each snapshot mode (full, redo,
//! and fuse over the real FUSE journal): the step's change set holds what the
//! command wrote to the root and nothing of /proc, /dev, /sys, the /etc files,
//! the mountpoints or what the mounts brought in, even with no exclusions
//! given to the snapshotter.

mod run_support;

use std::path::PathBuf;

use run_support::*;
use strata_builder::exec::run::{self, Isolation};
use strata_snapshotter::snapshot::{SnapshotMode, Snapshotter, StepKind};

fn run_with_mounts(mode: SnapshotMode) {
    let t = busybox_root();
    let context = t.work.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("input"), "ctx").unwrap();
    let secret = t.work.join("secret");
    std::fs::write(&secret, "snapshot-secret").unwrap();

    let mut snap = Snapshotter::new(&t.root, mode, Vec::new()).unwrap();
    let start = snap.begin_step(StepKind::Run).unwrap();
    if mode == SnapshotMode::Fuse {
        assert!(
            start.fallback.is_none(),
            "FUSE journal unavailable: {:?}",
            start.fallback
        );
        assert_ne!(start.dir, t.root);
    }
    let (mut req, out) = request(
        &t,
        "cat /ctx/input /run/secrets/s > /dev/null; echo c > /cache/c; echo t > /scratch/t; \
         echo x > /rw/extra; echo result > /out.txt; echo done",
        Isolation::Namespaces,
    );
    req.root = start.dir.clone();
    req.workdir = "/work/dir".into();
    req.context_dir = Some(context.clone());
    req.secrets = vec![format!("id=s,src={}", secret.display()).parse().unwrap()];
    req.mounts = vec![
        "type=bind,target=/ctx".into(),
        "type=bind,target=/rw,rw".into(),
        "type=cache,target=/cache".into(),
        "type=tmpfs,target=/scratch".into(),
        "type=secret,id=s".into(),
    ];
    let outcome = run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["done"]);
    let changes = snap.finish_step().unwrap();
    let changed: Vec<PathBuf> = changes.changed.iter().cloned().collect();
    let want: Vec<PathBuf> = ["out.txt", "work", "work/dir"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(changed, want, "{mode}: {changes:?}");
    assert!(
        changes.deleted.is_empty() && changes.opaque.is_empty(),
        "{mode}: {changes:?}"
    );
    assert_eq!(
        outcome.created_paths,
        [PathBuf::from("/work"), "/work/dir".into()]
    );

    // A second step as another user: it can write where the image lets it.
    let start = snap.begin_step(StepKind::Run).unwrap();
    let (mut req, out) = request(&t, "id -u; echo hi > /tmp/by-app", Isolation::Namespaces);
    req.root = start.dir.clone();
    req.user = Some("app".into());
    run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["1000"]);
    let changes = snap.finish_step().unwrap();
    assert!(changes.changed.contains(&PathBuf::from("tmp/by-app")), "{mode}: {changes:?}");
    for p in &changes.changed {
        assert!(p.starts_with("tmp"), "{mode}: only /tmp changed: {changes:?}");
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(t.root.join("tmp/by-app")).unwrap().uid(), 1000);
    drop(snap);
    assert_no_mounts_under(t.dir.path());
}

#[test]
fn full_mode_sees_only_the_commands_writes() {
    if have_root("full_mode_sees_only_the_commands_writes") {
        run_with_mounts(SnapshotMode::Full);
    }
}

#[test]
fn redo_mode_sees_only_the_commands_writes() {
    if have_root("redo_mode_sees_only_the_commands_writes") {
        run_with_mounts(SnapshotMode::Redo);
    }
}

#[test]
fn fuse_mode_sees_only_the_commands_writes() {
    if !have_root("fuse_mode_sees_only_the_commands_writes") {
        return;
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        if matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1")) {
            panic!(
                "fuse_mode_sees_only_the_commands_writes: needs /dev/fuse, and CI=true forbids skipping"
            );
        }
        eprintln!("SKIP fuse_mode_sees_only_the_commands_writes: needs /dev/fuse");
        return;
    }
    run_with_mounts(SnapshotMode::Fuse);
}
