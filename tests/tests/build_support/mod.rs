//! Shared by the build_* end-to-end tests: run the strata binary, build a
//! fixture against the local busybox base, unpack and inspect the result.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_tests::{fixtures, require, tools};

/// The tools every build test needs; false (after a skip message) when one is missing.
pub fn requirements(test: &str) -> bool {
    require::root(test) && require::tool(test, "umoci") && require::tool(test, "skopeo") && require::tool(test, "busybox")
}

/// A scratch directory with the busybox base layout at `base/`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        fixtures::busybox_layout(&dir.path().join("base"));
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `--build-context base=oci-layout://…` for the busybox base.
    pub fn base_context(&self) -> String {
        format!("base=oci-layout://{}", self.path().join("base").display())
    }

    /// A work directory for `--kaniko-dir`, so tests can check it is left clean.
    pub fn work(&self) -> PathBuf {
        let w = self.path().join("work");
        std::fs::create_dir_all(&w).unwrap();
        w
    }

    /// Arguments of an offline build of `context` on the busybox base (as
    /// `base`), not pushed, written to the OCI layout `out`, in [`Scratch::work`].
    pub fn offline_args(&self, context: &str, out: &Path) -> Vec<String> {
        let work = self.work();
        args(&[
            "--context",
            context,
            "--build-context",
            &self.base_context(),
            "--no-push",
            "--oci-layout-path",
            out.to_str().unwrap(),
            "--kaniko-dir",
            work.to_str().unwrap(),
        ])
    }
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures::fixtures_dir().join(name)
}

/// Runs strata with `args` in `cwd`.
pub fn strata(args: &[String], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(strata_tests::strata_bin());
    cmd.args(args).current_dir(cwd).env_remove("CI_SKIP").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running strata")
}

/// Runs strata and panics with its logs when it fails; returns stderr (the log).
pub fn strata_ok(args: &[String], cwd: &Path, env: &[(&str, &str)]) -> String {
    let out = strata(args, cwd, env);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "strata {args:?} failed ({}):\n{log}\n{}", out.status, String::from_utf8_lossy(&out.stdout));
    log
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Unpacks `layout:tag` with umoci into `<scratch>/<name>` and returns the rootfs.
pub fn unpack(layout: &Path, tag: &str, into: &Path) -> PathBuf {
    tools::umoci_unpack(layout, tag, into)
}

/// The image config, read by skopeo.
pub fn config(layout: &Path, tag: &str) -> serde_json::Value {
    tools::skopeo_config(&format!("oci:{}:{tag}", layout.display()), &[])
}

/// The manifest digest, read by skopeo.
pub fn digest(layout: &Path, tag: &str) -> String {
    tools::skopeo_inspect(&format!("oci:{}:{tag}", layout.display()), &[])["Digest"].as_str().unwrap().to_string()
}

/// Runs `argv` chrooted into `root` with `env`, returns stdout.
pub fn chroot_run(root: &Path, env: &[String], argv: &[String]) -> String {
    let mut cmd = Command::new("chroot");
    cmd.arg(root).arg("/bin/env").arg("-i").args(env).args(argv);
    tools::run_ok(&mut cmd)
}

/// Mounts under `dir` that are still there (none may be).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_string_lossy().to_string();
    info.lines().filter(|l| l.contains(&dir)).map(str::to_string).collect()
}

/// Asserts that a build in the work directory `work` left no build directory
/// and nothing mounted there; `log` is shown if it did.
pub fn assert_work_clean(work: &Path, log: &str) {
    assert!(leftover_builds(work).is_empty(), "build directory left behind: {:?}\n{log}", leftover_builds(work));
    assert!(mounts_under(work).is_empty(), "mounts left behind: {:?}\n{log}", mounts_under(work));
}

/// Entries left in a work directory (blobs and run-cache may persist; build-* may not).
pub fn leftover_builds(work: &Path) -> Vec<String> {
    std::fs::read_dir(work)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("build-"))
                .collect()
        })
        .unwrap_or_default()
}

pub fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The config blob exactly as written (skopeo drops Docker-only fields such
/// as Healthcheck from OCI configs), found through index.json and the manifest.
pub fn raw_config(layout: &Path) -> serde_json::Value {
    let read = |p: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap() };
    let blob = |d: &serde_json::Value| layout.join("blobs/sha256").join(d.as_str().unwrap().trim_start_matches("sha256:"));
    let index = read(layout.join("index.json"));
    let manifest = read(blob(&index["manifests"][0]["digest"]));
    read(blob(&manifest["config"]["digest"]))
}
