//! Layer extraction on real files: whiteouts, links, modes, owners, mtimes,
//! xattrs, compression formats, and hostile layers that try to write outside
//! the root (each confined or rejected naming the entry).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_builder::image::extract::{apply_layer, extract_layers};

/// One tar entry with a raw (possibly hostile) name.
struct E<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    link: Option<&'a [u8]>,
    data: &'a [u8],
    mode: u32,
    uid: u64,
    mtime: u64,
    xattr: Option<(&'a str, &'a [u8])>,
}

fn e<'a>(name: &'a str, kind: tar::EntryType) -> E<'a> {
    E { name: name.as_bytes(), kind, link: None, data: b"", mode: 0o644, uid: 0, mtime: 1_000_000, xattr: None }
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E { data, ..e(name, tar::EntryType::Regular) }
}

fn dir(name: &str) -> E<'_> {
    E { mode: 0o755, ..e(name, tar::EntryType::Directory) }
}

fn symlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
    E { link: Some(target.as_bytes()), mode: 0o777, ..e(name, tar::EntryType::Symlink) }
}

fn hardlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
    E { link: Some(target.as_bytes()), ..e(name, tar::EntryType::Link) }
}

/// An uncompressed tar of `entries`, names written byte for byte.
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        if let Some((k, v)) = en.xattr {
            b.append_pax_extensions([(format!("SCHILY.xattr.{k}").as_str(), v)]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..en.name.len()].copy_from_slice(en.name);
            if let Some(l) = en.link {
                g.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(en.kind);
        h.set_size(en.data.len() as u64);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(en.uid);
        h.set_mtime(en.mtime);
        h.set_cksum();
        b.append(&h, en.data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    blobs: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    let blobs = dir.path().join("blobs");
    for d in [&root, &outside, &blobs] {
        fs::create_dir(d).unwrap();
    }
    fs::write(outside.join("secret"), b"host file").unwrap();
    Scratch { _dir: dir, root, outside, blobs }
}

impl Drop for Scratch {
    /// Read-only directories from the layers must be writable to be removed without root.
    fn drop(&mut self) {
        fn writable(p: &Path) {
            if let Ok(m) = fs::symlink_metadata(p)
                && m.is_dir()
            {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
                for e in fs::read_dir(p).into_iter().flatten().flatten() {
                    writable(&e.path());
                }
            }
        }
        writable(&self.root);
    }
}

impl Scratch {
    fn layer(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.blobs.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    fn apply(&self, name: &str, entries: &[E]) -> anyhow::Result<()> {
        let p = self.layer(name, &gzip(&tar_of(entries)));
        apply_layer(&p, "application/vnd.oci.image.layer.v1.tar+gzip", &self.root)
    }

    /// The outside directory holds only what the test put there.
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")], "something was written outside the root");
        assert_eq!(fs::read(self.outside.join("secret")).unwrap(), b"host file");
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `uid` exists in this user namespace (it may not, in a rootless one).
fn uid_mapped(uid: u64) -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    map.lines().any(|l| {
        let f: Vec<u64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        f.len() == 3 && f[0] <= uid && uid < f[0] + f[2]
    })
}

#[test]
fn applies_files_links_metadata_and_whiteouts() {
    let s = scratch();
    s.apply(
        "l1",
        &[
            dir("etc"),
            E { mode: 0o4755, uid: 1000, xattr: Some(("user.strata", b"yes")), ..file("etc/tool", b"#!/bin/sh\n") },
            symlink("etc/tool-link", "tool"),
            hardlink("etc/tool-hard", "etc/tool"),
            E { mode: 0o555, ..dir("ro") },
            file("ro/inside", b"x"),
            dir("gone"),
            file("gone/a", b"a"),
            dir("opaque"),
            file("opaque/old", b"old"),
            file("kept", b"kept"),
            E { mode: 0o644, ..e("pipe", tar::EntryType::Fifo) },
        ],
    )
    .unwrap();
    let r = &s.root;
    let tool = fs::metadata(r.join("etc/tool")).unwrap();
    assert_eq!(fs::read(r.join("etc/tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), 1_000_000);
    assert_eq!(fs::read_link(r.join("etc/tool-link")).unwrap(), Path::new("tool"));
    assert_eq!(fs::metadata(r.join("etc/tool-hard")).unwrap().ino(), tool.ino());
    assert_eq!(fs::metadata(r.join("ro")).unwrap().permissions().mode() & 0o777, 0o555);
    assert_eq!(fs::metadata(r.join("ro")).unwrap().mtime(), 1_000_000, "directory mtimes are set last");
    assert!(fs::symlink_metadata(r.join("pipe")).unwrap().file_type().is_fifo_like());
    if is_root() && uid_mapped(1000) {
        assert_eq!(tool.uid(), 1000);
    }
    match xattr::get(r.join("etc/tool"), "user.strata") {
        Ok(v) => assert_eq!(v.as_deref(), Some(&b"yes"[..])),
        Err(e) => eprintln!("filesystem without user xattrs ({e}); xattr not checked"),
    }

    s.apply(
        "l2",
        &[
            file("gone/.wh..wh..opq", b""),
            e(".wh.gone", tar::EntryType::Regular),
            dir("opaque"),
            file("opaque/.wh..wh..opq", b""),
            file("opaque/new", b"new"),
            file("etc/tool", b"replaced"),
        ],
    )
    .unwrap();
    assert!(!r.join("gone").exists(), ".wh.gone removes the directory");
    assert!(!r.join("opaque/old").exists(), "opaque whiteout hides lower entries");
    assert_eq!(fs::read(r.join("opaque/new")).unwrap(), b"new", "but keeps this layer's");
    assert_eq!(fs::read(r.join("kept")).unwrap(), b"kept");
    assert_eq!(fs::read(r.join("etc/tool")).unwrap(), b"replaced");
    assert_eq!(fs::read(r.join("etc/tool-hard")).unwrap(), b"#!/bin/sh\n", "a new file breaks the hard link");
    assert!(!r.join(".wh.gone").exists());
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn later_layers_write_into_read_only_directories() {
    let s = scratch();
    s.apply("l1", &[E { mode: 0o555, ..dir("ro") }, file("ro/old", b"1")]).unwrap();
    s.apply("l2", &[file("ro/new", b"2"), e("ro/.wh.old", tar::EntryType::Regular)]).unwrap();
    assert_eq!(fs::read(s.root.join("ro/new")).unwrap(), b"2");
    assert!(!s.root.join("ro/old").exists());
    let m = fs::metadata(s.root.join("ro")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o555, "the directory's mode is restored");
}

#[test]
fn reads_gzip_zstd_and_plain_layers() {
    let s = scratch();
    let tar = tar_of(&[file("plain", b"1")]);
    apply_layer(&s.layer("a", &tar), "application/vnd.oci.image.layer.v1.tar", &s.root).unwrap();
    let z = zstd::encode_all(&tar_of(&[file("zst", b"2")])[..], 3).unwrap();
    apply_layer(&s.layer("b", &z), "application/vnd.oci.image.layer.v1.tar+zstd", &s.root).unwrap();
    let g = gzip(&tar_of(&[file("gz", b"3")]));
    // Mislabelled compression is recognised from the content.
    apply_layer(&s.layer("c", &g), "application/vnd.oci.image.layer.v1.tar", &s.root).unwrap();
    for (f, c) in [("plain", "1"), ("zst", "2"), ("gz", "3")] {
        assert_eq!(fs::read_to_string(s.root.join(f)).unwrap(), c);
    }
}

#[test]
fn dotdot_and_absolute_names_stay_inside() {
    let s = scratch();
    let up = format!("../../../..{}/dotdot", s.outside.display());
    let abs = format!("{}/absolute", s.outside.display());
    s.apply("l", &[file(&up, b"x"), file(&abs, b"y")]).unwrap();
    s.assert_outside_untouched();
    let inside = s.root.join(s.outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("dotdot")).unwrap(), b"x");
    assert_eq!(fs::read(inside.join("absolute")).unwrap(), b"y");
}

#[test]
fn symlinked_parents_resolve_inside_root() {
    let s = scratch();
    let outside = s.outside.display().to_string();
    s.apply(
        "l",
        &[
            symlink("abs", &outside),
            file("abs/pwned", b"1"),
            symlink("rel", "../../../../../../.."),
            file(&format!("rel{outside}/pwned2"), b"2"),
            symlink("chain", "abs"),
            file("chain/pwned3", b"3"),
            dir("d"),
            file("d/../../rel/../pwned4", b"4"),
            // A directory swapped for a symlink between two of its entries.
            dir("swap"),
            file("swap/1", b"1"),
            symlink("swap", &outside),
            file("swap/2", b"2"),
        ],
    )
    .unwrap();
    s.assert_outside_untouched();
    let inside = s.root.join(s.outside.strip_prefix("/").unwrap());
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(inside.join(f).is_file(), "{f} lands inside the root");
    }
    assert!(s.root.join("pwned4").is_file());
    assert!(inside.join("2").is_file(), "the swapped symlink resolves inside the root too");
}

#[test]
fn existing_symlink_is_replaced_not_followed() {
    let s = scratch();
    let target = s.outside.join("secret").display().to_string();
    s.apply("l1", &[symlink("f", &target)]).unwrap();
    s.apply("l2", &[file("f", b"layer")]).unwrap();
    s.assert_outside_untouched();
    assert_eq!(fs::read(s.root.join("f")).unwrap(), b"layer");
    assert!(!fs::symlink_metadata(s.root.join("f")).unwrap().file_type().is_symlink());
}

#[test]
fn hard_links_out_of_the_root_are_rejected() {
    let s = scratch();
    let outside = s.outside.display().to_string();
    let err = s
        .apply("l", &[symlink("o", &outside), hardlink("h", "o/secret")])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("\"h\"") && msg.contains("does not exist in the image"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    let err = s.apply("l2", &[hardlink("h2", "../../../../etc/passwd")]).unwrap_err();
    assert!(format!("{err:#}").contains("\"h2\""), "{err:#}");
    s.assert_outside_untouched();
    assert_eq!(fs::metadata(s.outside.join("secret")).unwrap().nlink(), 1);
}

#[test]
fn bad_whiteouts_are_rejected() {
    let s = scratch();
    let err = s.apply("l", &[dir("a"), file("a/.wh...", b"")]).unwrap_err();
    assert!(format!("{err:#}").contains("invalid whiteout"), "{err:#}");
    assert!(s.root.parent().unwrap().join("root").exists(), "the root itself is not removed");
}

#[test]
fn truncated_layer_fails_naming_the_layer() {
    let s = scratch();
    let big: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let good = gzip(&tar_of(&[file("first", b"1")]));
    let whole = gzip(&tar_of(&[file("a", b"a"), file("big", &big), file("z", b"z")]));
    let cut = &whole[..whole.len() / 2];
    let layers = vec![
        (s.layer("good", &good), "application/vnd.oci.image.layer.v1.tar+gzip".to_string()),
        (s.layer("cut", cut), "application/vnd.oci.image.layer.v1.tar+gzip".to_string()),
    ];
    let err = extract_layers(&layers, &s.root).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("cut"), "error names the layer: {msg}");
    assert!(msg.contains("truncated") || msg.contains("EOF") || msg.contains("unexpected end"), "{msg}");
}
