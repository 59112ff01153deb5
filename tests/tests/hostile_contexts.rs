//! Hostile build contexts, end to end through the strata binary: symlinks
//! leading out of the context, `COPY ../x`, `.dockerignore` exceptions aimed
//! outside, FIFOs, sockets and device nodes, and a 2 GiB sparse file. A
//! canary folder with a secret sits next to the context: its content must
//! never reach the image, and no build may hang.

mod build_support;
mod hostile_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use build_support::*;
use hostile_support::*;

const SECRET: &str = "TOP-SECRET-CANARY";

struct Ctx {
    s: Scratch,
    ctx: PathBuf,
    canary: PathBuf,
}

impl Ctx {
    fn new() -> Ctx {
        let s = Scratch::new();
        let canary = s.path().join("canary");
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("secret"), SECRET).unwrap();
        let ctx = s.path().join("context");
        std::fs::create_dir(&ctx).unwrap();
        Ctx { s, ctx, canary }
    }

    /// Builds `dockerfile` in the context; returns (success, log, output layout).
    fn build(&self, dockerfile: &str) -> (bool, String, PathBuf) {
        std::fs::write(self.ctx.join("Dockerfile"), dockerfile).unwrap();
        let out_dir = self.s.path().join("out");
        let _ = std::fs::remove_dir_all(&out_dir);
        let a = self.s.offline_args(".", &out_dir);
        let out = strata_within(&a, &self.ctx, Duration::from_secs(600));
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_work_clean(&self.s.work(), &log);
        assert_eq!(
            std::fs::read_to_string(self.canary.join("secret")).unwrap(),
            SECRET
        );
        if out.status.success() {
            for (i, layer) in layers(&out_dir).into_iter().enumerate() {
                assert!(
                    !stream_contains(layer, SECRET.as_bytes()),
                    "layer {i} holds the canary's secret:\n{log}"
                );
            }
        }
        (out.status.success(), log, out_dir)
    }

    fn fails(&self, dockerfile: &str, expect: &[&str]) {
        let (ok, log, _) = self.build(dockerfile);
        assert!(!ok, "{dockerfile:?} must fail:\n{log}");
        let err = error_line(&log);
        for e in expect {
            assert!(
                err.contains(e),
                "{dockerfile:?}: the error should name {e:?}: {err}"
            );
        }
    }
}

fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[test]
fn symlinks_out_of_the_context_are_copied_as_links_and_never_followed() {
    if !requirements("symlinks_out_of_the_context_are_copied_as_links_and_never_followed") {
        return;
    }
    let c = Ctx::new();
    let canary = c.canary.display().to_string();
    std::fs::create_dir(c.ctx.join("sub")).unwrap();
    std::fs::write(c.ctx.join("sub/plain"), "plain").unwrap();
    symlink("../../canary/secret", c.ctx.join("sub/relative"));
    symlink(format!("{canary}/secret"), c.ctx.join("sub/absolute"));
    symlink(&canary, c.ctx.join("dir-link"));
    symlink(format!("{canary}/secret"), c.ctx.join("out-link"));

    // Directory copies keep symlinks as symlinks, whatever they point at.
    let (ok, log, out) = c.build(
        "FROM base\nCOPY sub/ /sub/\nCOPY . /ctx/\n\
         RUN (for l in /sub/relative /sub/absolute /ctx/dir-link /ctx/out-link; do readlink $l; done; cat /sub/plain) > /report\n",
    );
    assert!(ok, "{log}");
    let report = last_layer_file(&out, "report");
    let lines: Vec<&str> = report.lines().collect();
    let (secret, secret_dir) = (format!("{canary}/secret"), canary.clone());
    assert_eq!(
        lines,
        [
            "../../canary/secret",
            secret.as_str(),
            secret_dir.as_str(),
            secret.as_str(),
            "plain"
        ]
    );

    // Named directly or walked through, a link out resolves inside the context: not found.
    c.fails(
        "FROM base\nCOPY out-link /x\n",
        &["out-link", "no such file"],
    );
    c.fails(
        "FROM base\nCOPY dir-link/secret /x\n",
        &["dir-link/secret", "no such file"],
    );
    c.fails(
        "FROM base\nCOPY dir-link/ /x/\n",
        &["dir-link/", "no such file"],
    );
    c.fails(
        "FROM base\nCOPY sub/relative /x\n",
        &["sub/relative", "no such file"],
    );
    c.fails("FROM base\nCOPY sub/* /x/\n", &["sub/*"]);
}

#[test]
fn copy_from_outside_the_context_fails_clearly() {
    if !requirements("copy_from_outside_the_context_fails_clearly") {
        return;
    }
    let c = Ctx::new();
    let canary = c.canary.display().to_string();
    c.fails(
        "FROM base\nCOPY ../canary/secret /x\n",
        &["../canary/secret", "no such file"],
    );
    c.fails(
        &format!("FROM base\nCOPY {canary}/secret /x\n"),
        &["canary/secret", "no such file"],
    );
    c.fails(
        "FROM base\nCOPY ../../../../../../../../etc/passwd /x\n",
        &["etc/passwd", "no such file"],
    );
    c.fails(
        "FROM base\nADD ../canary/secret /x\n",
        &["../canary/secret", "no such file"],
    );
}

#[test]
fn dockerignore_exceptions_aimed_outside_re_include_nothing() {
    if !requirements("dockerignore_exceptions_aimed_outside_re_include_nothing") {
        return;
    }
    let c = Ctx::new();
    let canary = c.canary.display().to_string();
    std::fs::write(c.ctx.join("kept"), "kept").unwrap();
    std::fs::write(c.ctx.join("hidden"), "hidden").unwrap();
    std::fs::write(
        c.ctx.join(".dockerignore"),
        format!("*\n!kept\n!Dockerfile\n!../canary/secret\n!../canary\n!{canary}/secret\n!/../../etc/passwd\n"),
    )
    .unwrap();
    let (ok, log, out) = c.build("FROM base\nCOPY . /ctx/\nRUN ls -A /ctx > /report\n");
    assert!(ok, "{log}");
    assert_eq!(
        last_layer_file(&out, "report").lines().collect::<Vec<_>>(),
        ["Dockerfile", "kept"]
    );
}

#[test]
fn fifos_sockets_and_devices_are_skipped_with_a_warning_and_never_opened() {
    if !requirements("fifos_sockets_and_devices_are_skipped_with_a_warning_and_never_opened") {
        return;
    }
    let c = Ctx::new();
    std::fs::create_dir(c.ctx.join("dir")).unwrap();
    std::fs::write(c.ctx.join("dir/file"), "file").unwrap();
    let fifo = c.ctx.join("dir/fifo");
    strata_tests::tools::run_ok(Command::new("mkfifo").arg(&fifo));
    strata_tests::tools::run_ok(
        Command::new("mknod")
            .arg(c.ctx.join("dir/null"))
            .args(["c", "1", "3"]),
    );
    let _socket = std::os::unix::net::UnixListener::bind(c.ctx.join("dir/socket")).unwrap();

    let (ok, log, out) = c.build(
        "FROM base\nCOPY dir/ /dir/\nCOPY . /ctx/\nRUN (ls -A /dir; ls -A /ctx/dir) > /report\n",
    );
    assert!(ok, "{log}");
    assert_eq!(
        last_layer_file(&out, "report").lines().collect::<Vec<_>>(),
        ["file", "file"]
    );
    assert!(
        log.contains("dir/fifo") && log.contains("not copied"),
        "skipped files are named in the log:\n{log}"
    );

    // Named as sources, they are skipped the same way: never opened, so never waited on.
    let (ok, log, out) = c.build(
        "FROM base\nCOPY dir/fifo /f\nCOPY dir/null /n\nCOPY dir/socket /s\nRUN ls -A / | grep -cx '[fns]' > /report || true\n",
    );
    assert!(ok, "{log}");
    assert_eq!(last_layer_file(&out, "report").trim(), "0");
    for name in ["dir/fifo", "dir/null", "dir/socket"] {
        assert!(
            log.lines()
                .any(|l| l.contains(name) && l.contains("not copied")),
            "{name} skipped, named in the log:\n{log}"
        );
    }
}

#[test]
fn a_2_gib_sparse_file_is_copied_in_bounded_memory() {
    if !requirements("a_2_gib_sparse_file_is_copied_in_bounded_memory") {
        return;
    }
    let c = Ctx::new();
    const GIB: u64 = 1 << 30;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(c.ctx.join("big")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(GIB + GIB / 2)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(2 * GIB).unwrap();
    }
    let (ok, log, out) = c.build(
        "FROM base\nCOPY big /big\n\
         RUN (stat -c %s /big; head -c 4 /big; echo; dd if=/big bs=1 skip=1610612736 count=6 2>/dev/null; echo) > /report\n",
    );
    assert!(ok, "{log}");
    let report = last_layer_file(&out, "report");
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [(2 * GIB).to_string().as_str(), "head", "middle"]
    );
    let peak = children_peak_rss_mib();
    assert!(
        peak < 512,
        "a child peaked at {peak} MiB while a 2 GiB file was copied"
    );
}
