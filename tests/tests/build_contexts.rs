//! The same context given as a directory, `dir://`, `tar://` (gzip), and
//! `tar://stdin` gives the same image (with --reproducible), with
//! .dockerignore applied in each; `--context-sub-path` selects a subdirectory.

mod build_support;

use std::process::{Command, Stdio};

use build_support::*;
use strata_tests::tools;

fn build(s: &Scratch, context: &str, name: &str, extra: &[&str], stdin: Option<&std::path::Path>) -> String {
    let layout = s.path().join(name);
    let mut a = args(&[
        "--context", context,
        "--build-context", &s.base_context(), "--no-push", "--reproducible",
        "--oci-layout-path", layout.to_str().unwrap(), "--image-format=oci",
    ]);
    a.extend(args(extra));
    let mut cmd = Command::new(strata_tests::strata_bin());
    cmd.args(&a).current_dir(s.path());
    if let Some(file) = stdin {
        cmd.stdin(Stdio::from(std::fs::File::open(file).unwrap()));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{context}: {}", String::from_utf8_lossy(&out.stderr));
    digest(&layout, "latest")
}

#[test]
fn directory_tar_and_stdin_contexts_agree() {
    if !requirements("directory_tar_and_stdin_contexts_agree") || !require_tar() {
        return;
    }
    let s = Scratch::new();
    let dir = fixture("build/full");
    let tarball = s.path().join("context.tar.gz");
    tools::run_ok(Command::new("tar").arg("-czf").arg(&tarball).arg("-C").arg(&dir).arg("."));
    let plain = build(&s, dir.to_str().unwrap(), "plain", &[], None);
    let dir_url = build(&s, &format!("dir://{}", dir.display()), "dir", &[], None);
    let tar = build(&s, &format!("tar://{}", tarball.display()), "tar", &[], None);
    let stdin = build(&s, "tar://stdin", "stdin", &[], Some(&tarball));
    assert_eq!(plain, dir_url);
    assert_eq!(plain, tar, "tar:// context");
    assert_eq!(plain, stdin, "tar://stdin context");

    // --context-sub-path: the fixtures directory with build/full below it.
    let sub = build(&s, fixture("").to_str().unwrap(), "sub", &["--context-sub-path", "build/full"], None);
    assert_eq!(plain, sub);
}

fn require_tar() -> bool {
    strata_tests::require::tool("directory_tar_and_stdin_contexts_agree", "tar")
}
