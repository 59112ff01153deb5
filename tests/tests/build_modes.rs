//! The same build in every snapshot mode gives byte-identical images with
//! `--reproducible`, and `--single-snapshot` gives one layer per stage.

mod build_support;

use build_support::*;

fn build(s: &Scratch, mode: &str, name: &str, extra: &[&str]) -> (std::path::PathBuf, String) {
    let layout = s.path().join(name);
    let context = fixture("build/full");
    let mut a = args(&[
        "--context", context.to_str().unwrap(),
        "--build-context", &s.base_context(),
        "--no-push", "--reproducible",
        "--oci-layout-path", layout.to_str().unwrap(), "--image-format=oci",
        "--snapshot-mode", mode,
    ]);
    a.extend(args(extra));
    let log = strata_ok(&a, s.path(), &[]);
    (layout, log)
}

#[test]
fn full_and_redo_give_byte_identical_images() {
    if !requirements("full_and_redo_give_byte_identical_images") {
        return;
    }
    let s = Scratch::new();
    let (full, log) = build(&s, "full", "full", &[]);
    assert!(log.contains("mode=full"), "{log}");
    let (redo, log) = build(&s, "redo", "redo", &[]);
    assert!(log.contains("mode=redo"), "{log}");
    let (again, _) = build(&s, "full", "again", &[]);
    let d = digest(&full, "latest");
    assert_eq!(d, digest(&again, "latest"), "a reproducible build gives the same digest twice");
    assert_eq!(d, digest(&redo, "latest"), "full and redo must give the same image");
    let config = config(&full, "latest");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    if std::path::Path::new("/dev/fuse").exists() {
        let (fuse, _) = build(&s, "fuse", "fuse", &[]);
        assert_eq!(d, digest(&fuse, "latest"), "fuse must give the same image as full");
    }
}

#[test]
fn single_snapshot_makes_one_layer_per_stage() {
    if !requirements("single_snapshot_makes_one_layer_per_stage") {
        return;
    }
    let s = Scratch::new();
    let (layout, _) = build(&s, "full", "single", &["--single-snapshot"]);
    let config = config(&layout, "latest");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2, "the base layer and one snapshot");
    let root = unpack(&layout, "latest", &s.path().join("bundle"));
    assert_eq!(std::fs::read_to_string(root.join("opt/heredoc.txt")).unwrap(), "heredoc-run\n");
    assert!(!root.join("bin/vi").exists());
}
