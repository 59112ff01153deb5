//! Hostile base layers, end to end: each test crafts a layer with the `tar`
//! crate (raw headers, so names may hold `..`, absolute paths, newlines or
//! invalid UTF-8), stacks it on the busybox base in an OCI layout, builds
//! `FROM` it with the strata binary and checks that nothing was written next
//! to the work directory (a canary folder), and that the root holds what
//! containerd would make of the layer, or that the build fails with one clear
//! error naming the entry.

mod build_support;
mod hostile_support;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use build_support::*;
use hostile_support::{error_line, last_layer_file};
use tar::{EntryType, Header};

/// One tar entry, written byte for byte as given.
struct Entry {
    name: Vec<u8>,
    kind: EntryType,
    mode: u32,
    data: Vec<u8>,
    link: Option<Vec<u8>>,
    device: (u32, u32),
    /// GNU sparse file: (real size, [(offset, data)]).
    sparse: Option<(u64, Vec<(u64, Vec<u8>)>)>,
}

fn entry(name: impl AsRef<[u8]>, kind: EntryType) -> Entry {
    let mode = if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    };
    Entry {
        name: name.as_ref().to_vec(),
        kind,
        mode,
        data: Vec::new(),
        link: None,
        device: (0, 0),
        sparse: None,
    }
}

fn file(name: impl AsRef<[u8]>, data: &str) -> Entry {
    Entry {
        data: data.as_bytes().to_vec(),
        ..entry(name, EntryType::Regular)
    }
}

fn dir(name: impl AsRef<[u8]>) -> Entry {
    entry(name, EntryType::Directory)
}

fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
    Entry {
        link: Some(target.as_ref().to_vec()),
        mode: 0o777,
        ..entry(name, EntryType::Symlink)
    }
}

fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
    Entry {
        link: Some(target.as_ref().to_vec()),
        ..entry(name, EntryType::Link)
    }
}

/// Appends a GNU long name ('L') or long link ('K') record.
fn long_record(out: &mut tar::Builder<impl Write>, kind: u8, bytes: &[u8]) {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::new(kind));
    h.set_mode(0o644);
    let mut data = bytes.to_vec();
    data.push(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.append(&h, &data[..]).unwrap();
}

fn append(out: &mut tar::Builder<impl Write>, e: &Entry) {
    let mut h = Header::new_gnu();
    h.set_entry_type(e.kind);
    h.set_mode(e.mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000_000_000);
    if e.name.len() > 99 {
        long_record(out, b'L', &e.name);
    }
    let n = e.name.len().min(99);
    h.as_old_mut().name[..n].copy_from_slice(&e.name[..n]);
    if let Some(link) = &e.link {
        if link.len() > 99 {
            long_record(out, b'K', link);
        }
        let n = link.len().min(99);
        h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    }
    if matches!(e.kind, EntryType::Char | EntryType::Block) {
        h.set_device_major(e.device.0).unwrap();
        h.set_device_minor(e.device.1).unwrap();
    }
    let data: Vec<u8> = match &e.sparse {
        Some((real, chunks)) => {
            let gnu = h.as_gnu_mut().unwrap();
            assert!(chunks.len() <= 4);
            for (i, (offset, bytes)) in chunks.iter().enumerate() {
                gnu.sparse[i].set_offset(*offset);
                gnu.sparse[i].set_length(bytes.len() as u64);
            }
            gnu.set_real_size(*real);
            chunks.iter().flat_map(|c| c.1.clone()).collect()
        }
        None => e.data.clone(),
    };
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.append(&h, &data[..]).unwrap();
}

/// A gzip-compressed layer holding `entries`.
fn layer(entries: &[Entry]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        append(&mut b, e);
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn uncompressed_digest(gz: &[u8]) -> String {
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    sha256(&raw)
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let d = sha256(data);
    std::fs::write(layout.join("blobs/sha256").join(&d), data).unwrap();
    format!("sha256:{d}")
}

/// The busybox base (whose `index.json` is `base_index`) with `layers`
/// (gzipped tars, with their diff ids) on top, as the only image of the
/// layout at `base/`.
fn stack_on_base(s: &Scratch, base_index: &[u8], layers: &[(Vec<u8>, String)]) {
    let layout = s.path().join("base");
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let mut index: serde_json::Value = serde_json::from_slice(base_index).unwrap();
    let mut manifest = read_json(&blob(&index["manifests"][0]["digest"]));
    let mut config = read_json(&blob(&manifest["config"]["digest"]));
    for (gz, diff_id) in layers {
        let digest = write_blob(&layout, gz);
        manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": gz.len()
        }));
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(format!("sha256:{diff_id}").into());
        config["history"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"created_by": "hostile layer"}));
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = write_blob(&layout, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = write_blob(&layout, &manifest_bytes).into();
    index["manifests"][0]["size"] = manifest_bytes.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A build from a hostile base, with a canary folder next to the work directory.
struct Hostile {
    s: Scratch,
    canary: PathBuf,
    base_index: Vec<u8>,
}

impl Hostile {
    fn new() -> Hostile {
        let s = Scratch::new();
        let canary = s.path().join("canary");
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("keep"), "canary").unwrap();
        let base_index = std::fs::read(s.path().join("base/index.json")).unwrap();
        Hostile {
            s,
            canary,
            base_index,
        }
    }

    /// `../` enough times to climb from any build root to `/`, then the canary.
    fn climb_to_canary(&self, name: &str) -> String {
        format!(
            "{}{}/{name}",
            "../".repeat(24),
            self.canary.display().to_string().trim_start_matches('/')
        )
    }

    /// Stacks `layers` on busybox and builds `FROM` them with `RUN script > /report`.
    /// Returns the exit status, the log and (on success) the report.
    fn build(&self, layers: &[Vec<Entry>], script: &str) -> (bool, String, String) {
        let layers: Vec<(Vec<u8>, String)> = layers
            .iter()
            .map(|entries| {
                let gz = layer(entries);
                let diff_id = uncompressed_digest(&gz);
                (gz, diff_id)
            })
            .collect();
        self.build_layers(&layers, script)
    }

    fn build_layers(&self, layers: &[(Vec<u8>, String)], script: &str) -> (bool, String, String) {
        stack_on_base(&self.s, &self.base_index, layers);
        let context = self.s.path().join("context");
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM base\nRUN ({script}) > /report 2>&1\n"),
        )
        .unwrap();
        let out_dir = self.s.path().join("out");
        let a = self.s.offline_args(".", &out_dir);
        let out = strata(&a, &context, &[]);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        self.assert_canary_untouched(&log);
        assert_work_clean(&self.s.work(), &log);
        let report = if out.status.success() {
            last_layer_file(&out_dir, "report")
        } else {
            String::new()
        };
        (out.status.success(), log, report)
    }

    fn assert_canary_untouched(&self, log: &str) {
        let names: Vec<String> = std::fs::read_dir(&self.canary)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["keep"],
            "something was written next to the work directory:\n{log}"
        );
        let keep = std::fs::metadata(self.canary.join("keep")).unwrap();
        assert_eq!(
            keep.nlink(),
            1,
            "the canary file was hard-linked from a layer:\n{log}"
        );
        assert_eq!(
            std::fs::read_to_string(self.canary.join("keep")).unwrap(),
            "canary"
        );
    }
}

#[test]
fn dot_dot_absolute_names_and_symlinks_stay_in_the_root() {
    if !requirements("dot_dot_absolute_names_and_symlinks_stay_in_the_root") {
        return;
    }
    let h = Hostile::new();
    let canary = h.canary.display().to_string();
    let first = vec![
        file(h.climb_to_canary("dotdot"), "dotdot"),
        file(format!("{canary}/absolute"), "absolute"),
        // A symlink to the canary (absolute, and climbing), then files written through them.
        symlink("to-canary", &canary),
        file("to-canary/through-abs", "through-abs"),
        symlink("up", "../../../../../../../../../../../../../.."),
        file(format!("up{canary}/through-up"), "through-up"),
        // A symlink whose own name is then written as a file: the link is replaced, not followed.
        symlink("replaced", format!("{canary}/keep")),
        file("replaced", "replaced"),
        // A hard link through the climbing symlink: resolved inside the root.
        hardlink("passwd-link", "up/up/etc/passwd"),
    ];
    // A second layer: a whiteout and an opaque directory through the symlinks.
    let second = vec![
        file("to-canary/.wh.keep", ""),
        file("up/.wh.to-canary", ""),
        dir("opaque"),
        file("opaque/.wh..wh..opq", ""),
    ];
    let script = format!(
        "cat {canary}/dotdot {canary}/absolute {canary}/through-abs {canary}/through-up /replaced; echo; \
         test -L /replaced && echo replaced-is-link || echo replaced-is-file; \
         test -e /to-canary && echo to-canary-exists || echo to-canary-gone; \
         head -c 4 /passwd-link; echo; stat -c %h /etc/passwd"
    );
    let (ok, log, report) = h.build(&[first, second], &script);
    assert!(ok, "build failed:\n{log}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines,
        [
            "dotdotabsolutethrough-absthrough-upreplaced",
            "replaced-is-file",
            "to-canary-gone",
            "root",
            "2"
        ],
        "{log}"
    );
}

#[test]
fn hard_link_to_a_host_file_fails_naming_the_entry() {
    if !requirements("hard_link_to_a_host_file_fails_naming_the_entry") {
        return;
    }
    let h = Hostile::new();
    let keep = h.canary.join("keep").display().to_string();
    let (ok, log, _) = h.build(&[vec![hardlink("stolen", &keep)]], "true");
    assert!(!ok, "a hard link to a host path must not succeed:\n{log}");
    let err = error_line(&log);
    assert!(
        err.contains("\"stolen\"") && err.contains("does not exist in the image"),
        "{err}"
    );
    let (ok, log, _) = h.build(
        &[vec![hardlink("climb", h.climb_to_canary("keep"))]],
        "true",
    );
    assert!(!ok, "{log}");
    assert!(error_line(&log).contains("\"climb\""), "{log}");
}

#[test]
fn device_nodes_are_made_but_cannot_be_opened_and_setuid_is_kept() {
    if !requirements("device_nodes_are_made_but_cannot_be_opened_and_setuid_is_kept") {
        return;
    }
    let h = Hostile::new();
    // The host's root disk, as a hostile image would name it.
    let root_dev = std::fs::metadata("/").unwrap().dev();
    let (major, minor) = (nix::libc::major(root_dev), nix::libc::minor(root_dev));
    let entries = vec![
        Entry {
            device: (1, 3),
            mode: 0o666,
            ..entry("probe-null", EntryType::Char)
        },
        Entry {
            device: (major, minor),
            mode: 0o666,
            ..entry("probe-disk", EntryType::Block)
        },
        entry("probe-fifo", EntryType::Fifo),
        Entry {
            mode: 0o4755,
            data: b"#!/bin/sh\n".to_vec(),
            ..entry("suid", EntryType::Regular)
        },
    ];
    let script = "stat -c '%F %t:%T' /probe-null; stat -c %F /probe-disk /probe-fifo; \
                  (echo x > /probe-null) 2>/dev/null && echo null-opened || echo null-denied; \
                  (head -c 1 /probe-disk > /dev/null) 2>/dev/null && echo disk-opened || echo disk-denied; \
                  stat -c %a /suid";
    let (ok, log, report) = h.build(&[entries], script);
    assert!(ok, "build failed:\n{log}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 6, "{log}");
    assert_eq!(
        lines[..3],
        ["character special file 1:3", "block special file", "fifo"],
        "{log}"
    );
    assert_eq!(lines[5], "4755", "{log}");
    // Only the namespace levels mount the root nodev; chroot is no boundary (docs/security.md).
    if log.contains("RUN isolation: namespaces") || log.contains("RUN isolation: user namespace") {
        assert_eq!(lines[3..5], ["null-denied", "disk-denied"], "{log}");
    } else {
        eprintln!("device nodes can be opened at this isolation level; not checked:\n{log}");
    }
}

fn block(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    b.resize(512, 0);
    b
}

#[test]
fn huge_sparse_file_stays_sparse() {
    if !requirements("huge_sparse_file_stays_sparse") {
        return;
    }
    let h = Hostile::new();
    const GIB: u64 = 1 << 30;
    let sparse = Entry {
        // GNU tar stores sparse data in whole 512-byte blocks and ends the map
        // with an empty chunk at the real size.
        sparse: Some((
            4 * GIB,
            vec![
                (0, block(b"head")),
                (2 * GIB, block(b"middle")),
                (4 * GIB, Vec::new()),
            ],
        )),
        ..entry("sparse", EntryType::GNUSparse)
    };
    let script = "stat -c '%s' /sparse; du -k /sparse | cut -f1; head -c 4 /sparse; echo; \
                  dd if=/sparse bs=1 skip=2147483648 count=6 2>/dev/null; echo";
    let (ok, log, report) = h.build(&[vec![sparse]], script);
    assert!(ok, "build failed:\n{log}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 4, "{report}\n{log}");
    assert_eq!(lines[0], (4 * GIB).to_string());
    let used_kib: u64 = lines[1].trim().parse().unwrap();
    assert!(
        used_kib < 1024,
        "the 4 GiB sparse file takes {used_kib} KiB on disk"
    );
    assert_eq!(&lines[2..], ["head", "middle"]);
}

#[test]
fn a_thousandfold_layer_is_streamed() {
    if !requirements("a_thousandfold_layer_is_streamed") {
        return;
    }
    let h = Hostile::new();
    // 1 GiB of zeros, about 1 MiB compressed: written through a streaming encoder.
    const SIZE: u64 = 1 << 30;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    let mut hd = Header::new_gnu();
    hd.set_path("bomb").unwrap();
    hd.set_size(SIZE);
    hd.set_mode(0o644);
    hd.set_cksum();
    b.append(&hd, std::io::repeat(0).take(SIZE)).unwrap();
    let gz = b.into_inner().unwrap().finish().unwrap();
    assert!(
        (gz.len() as u64) * 500 < SIZE,
        "the bomb compresses {}x",
        SIZE / gz.len() as u64
    );
    let mut tar_sha = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc | sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = tar_sha.stdin.take().unwrap();
    let gz2 = gz.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&gz2).unwrap());
    let out = tar_sha.wait_with_output().unwrap();
    writer.join().unwrap();
    let diff_id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let (ok, log, report) =
        h.build_layers(&[(gz, diff_id)], "stat -c %s /bomb; du -k /bomb | cut -f1");
    assert!(ok, "build failed:\n{log}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], SIZE.to_string(), "{report}");
    // Zeros are written as holes: the expanded layer costs no disk.
    let used_kib: u64 = lines[1].trim().parse().unwrap();
    assert!(
        used_kib < 1024,
        "1 GiB of zeros takes {used_kib} KiB on disk"
    );
    // The largest child this test process has waited for (strata among
    // them) never held the expanded layer in memory.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid rusage to fill.
    assert_eq!(
        unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    let peak_mib = usage.ru_maxrss as u64 / 1024;
    assert!(
        peak_mib < 512,
        "a child peaked at {peak_mib} MiB while a 1 GiB layer was applied"
    );
}

#[test]
fn deep_paths_fail_clearly() {
    if !requirements("deep_paths_fail_clearly") {
        return;
    }
    let h = Hostile::new();
    // 5,000 bytes of nested directories: longer than PATH_MAX once under the root.
    let deep = "d23456789/".repeat(500) + "file";
    let (ok, log, _) = h.build(&[vec![file(&deep, "deep")]], "true");
    assert!(!ok, "{log}");
    let err = error_line(&log);
    assert!(
        err.contains("d23456789/d23456789") && err.contains("path too long"),
        "{err}"
    );
    assert!(
        err.len() < 1000,
        "the error line should not quote 5,000 bytes: {err}"
    );
}

#[test]
fn odd_names_and_duplicates_are_kept_as_containerd_keeps_them() {
    if !requirements("odd_names_and_duplicates_are_kept_as_containerd_keeps_them") {
        return;
    }
    let h = Hostile::new();
    let entries = vec![
        file(b"new\nline", "newline"),
        file(b"bad\xffutf8", "latin"),
        file("dup", "first"),
        file("dup", "second"),
        dir("dir-then-file"),
        file("dir-then-file/child", "child"),
        file("dir-then-file", "file wins"),
        file("file-then-dir", "lost"),
        dir("file-then-dir"),
        file("file-then-dir/child", "dir wins"),
        symlink("link-then-file", "/etc/passwd"),
        file("link-then-file", "file wins over link"),
    ];
    let script = "cat \"$(printf 'new\\nline')\" \"$(printf 'bad\\377utf8')\"; echo; cat /dup; echo; \
                  cat /dir-then-file; echo; cat /file-then-dir/child; echo; cat /link-then-file";
    let (ok, log, report) = h.build(&[entries], &format!("cd / && {script}"));
    assert!(ok, "build failed:\n{log}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines,
        [
            "newlinelatin",
            "second",
            "file wins",
            "dir wins",
            "file wins over link"
        ],
        "{log}"
    );
}

#[test]
fn whiteouts_of_the_root_are_rejected() {
    if !requirements("whiteouts_of_the_root_are_rejected") {
        return;
    }
    let h = Hostile::new();
    for name in [".wh..", "./.wh.", ".wh...", "bin/.wh..", "up/.wh.."] {
        let layer = vec![symlink("up", "../.."), file(name, "")];
        let (ok, log, _) = h.build(&[layer], "true");
        assert!(
            !ok,
            "{name}: a whiteout of the root must not succeed:\n{log}"
        );
        let err = error_line(&log);
        assert!(
            err.contains("invalid whiteout") && err.contains(&format!("{name:?}")),
            "{name}: {err}"
        );
    }
}
