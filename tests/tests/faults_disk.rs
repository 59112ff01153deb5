//! A full disk: a small tmpfs as the work directory (`--kaniko-dir`), then as
//! the output directory (`--tar-path`, `--oci-layout-path`). The build fails
//! with one clear error naming what was being written and "No space left on
//! device", and leaves nothing behind: no build directory, no mount, no
//! partial output.

mod build_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use build_support::*;
use strata_tests::{require, tools};

/// A tmpfs of `size` mounted at `<parent>/<name>`, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(parent: &Path, name: &str, size: &str) -> Tmpfs {
        let path = parent.join(name);
        std::fs::create_dir_all(&path).unwrap();
        tools::run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&path));
        Tmpfs { path }
    }

    /// Entries left on the tmpfs.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.path)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// A no-push build of `context` on the base image, writing its `output`
/// (flag, path) and working in `kaniko_dir`.
fn build_args(s: &Scratch, context: &Path, output: (&str, &Path), kaniko_dir: &Path) -> Vec<String> {
    args(&[
        "--context",
        context.to_str().unwrap(),
        "--build-context",
        &s.base_context(),
        "--no-push",
        output.0,
        output.1.to_str().unwrap(),
        "--kaniko-dir",
        kaniko_dir.to_str().unwrap(),
    ])
}

fn fails_with_enospc(a: &[String], cwd: &Path, expect: &[&str]) -> String {
    let out = strata(a, cwd, &[]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("ERRO")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{log}");
    assert!(errors[0].contains("No space left on device"), "{}", errors[0]);
    for e in expect {
        assert!(errors[0].contains(e), "{:?} should contain {e:?}", errors[0]);
    }
    errors[0].to_string()
}

#[test]
fn full_disk_fails_clearly_and_leaves_nothing() {
    let t = "full_disk_fails_clearly_and_leaves_nothing";
    if !requirements(t) || !require::fuse(t) {
        return;
    }
    let s = Scratch::new();
    let context = s.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    // 40 MB that does not compress: the layer does not fit beside the stage root in 64 MiB.
    std::fs::write(context.join("Dockerfile"), "FROM base\nRUN head -c 40000000 /dev/urandom > /big\n").unwrap();

    // The work directory is full.
    {
        let work = Tmpfs::mount(s.path(), "small-work", "64m");
        let layout = s.path().join("layout");
        let a = build_args(&s, &context, ("--oci-layout-path", &layout), &work.path);
        let error = fails_with_enospc(&a, &context, &[]);
        println!("work dir full: {error}");
        assert!(
            error.contains(work.path.to_str().unwrap()) || error.contains("RUN"),
            "names what was written: {error}"
        );
        assert!(leftover_builds(&work.path).is_empty(), "build directory left: {:?}", work.entries());
        assert!(mounts_under(&work.path).iter().all(|m| !m.contains("fuse")), "{:?}", mounts_under(&work.path));
        assert!(!layout.exists(), "no output after a failure");
        assert!(work.entries().iter().all(|e| e == "blobs" || e == "run-cache"), "{:?}", work.entries());
    }

    // The output directory is full.
    for (flag, name) in [("--tar-path", "image.tar"), ("--oci-layout-path", "layout")] {
        let out = Tmpfs::mount(s.path(), "small-out", "16m");
        let target = out.path.join(name);
        let a = build_args(&s, &context, (flag, &target), &s.work());
        let error = fails_with_enospc(&a, &context, &[flag]);
        println!("{flag} full: {error}");
        assert!(out.entries().is_empty(), "{flag}: left on the full disk: {:?}", out.entries());
        assert!(leftover_builds(&s.work()).is_empty());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(s.path().to_str().unwrap()), "tmpfs left mounted");
}
