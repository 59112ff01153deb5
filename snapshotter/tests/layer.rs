//! The layer writer: every kind of entry read back with the `tar` crate and
//! compared with the tree, blobs checked with the system's gzip and zstd,
//! identical bytes on 1 and 2 threads, and reproducible mode.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use strata_snapshotter::ChangeSet;
use strata_snapshotter::layer::{Compression, LayerBlob, LayerOptions, write_layer};

/// A tree with one of everything a layer must carry.
fn rich_tree(root: &Path) {
    write(root, "etc/hello", b"hello\n");
    let deep = format!("{}/{}", "d".repeat(60), "e".repeat(70));
    write(root, &format!("{deep}/file-with-a-long-path"), b"long");
    // Spans several compression blocks, and is poorly compressible.
    let mut big = Vec::with_capacity(9 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while big.len() < 9 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes()[..if x.is_multiple_of(3) { 8 } else { 2 }]);
    }
    write(root, "usr/lib/big.bin", &big);
    write(root, "usr/bin/tool", b"#!/bin/sh\necho tool\n");
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-alias")).unwrap();
    link(root, "../lib/big.bin", "usr/bin/big-link");
    link(root, &"t".repeat(150), "usr/bin/long-target");
    xattr::set(root.join("etc/hello"), "user.note", b"\x00binary\xff").unwrap();
    nix::unistd::mkfifo(
        &root.join("run-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    mkdir(root, "empty");
    set_mtime(root, "etc/hello", 1_700_000_000, 123_456_789);
    if nix::unistd::Uid::effective().is_root() {
        std::os::unix::fs::lchown(root.join("usr/bin/tool"), Some(3_000_000), Some(42)).unwrap();
        nix::sys::stat::mknod(
            &root.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
}

/// A scratch directory holding `root`, a [`rich_tree`].
fn rich_root() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    mkdir(&root, "");
    rich_tree(&root);
    (tmp, root)
}

fn everything(root: &Path) -> ChangeSet {
    let changed: BTreeSet<PathBuf> = walk(root).into_iter().map(|(p, _)| p).collect();
    ChangeSet {
        changed,
        ..ChangeSet::default()
    }
}

fn layer(
    root: &Path,
    changes: &ChangeSet,
    options: LayerOptions,
    blobs: &Path,
) -> (LayerBlob, Vec<u8>) {
    let blob = write_layer(root, changes, &options, blobs).unwrap();
    let bytes = fs::read(&blob.path).unwrap();
    assert_eq!(blob.size, bytes.len() as u64);
    assert_eq!(blob.digest, format!("sha256:{}", sha256_hex(&bytes)));
    assert_eq!(
        blob.path,
        blobs.join("sha256").join(&blob.digest["sha256:".len()..])
    );
    let tar = decompress(&blob.path, options.compression);
    assert_eq!(
        blob.diff_id,
        format!("sha256:{}", sha256_hex(&tar)),
        "diffID is the sha256 of the tar"
    );
    (blob, tar)
}

#[test]
fn entries_read_back_match_the_tree() {
    let (tmp, root) = rich_root();
    let (_, tar_bytes) = layer(
        &root,
        &everything(&root),
        LayerOptions::default(),
        &tmp.path().join("blobs"),
    );

    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let rel = PathBuf::from(path.to_string_lossy().trim_end_matches('/'));
        let md = fs::symlink_metadata(root.join(&rel)).unwrap();
        let h = entry.header().clone();
        assert_eq!(
            h.mode().unwrap(),
            md.permissions().mode() & 0o7777,
            "{}",
            rel.display()
        );
        assert_eq!(h.uid().unwrap(), md.uid() as u64, "{}", rel.display());
        assert_eq!(h.gid().unwrap(), md.gid() as u64, "{}", rel.display());
        let kind = h.entry_type();
        if kind.is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(
                data,
                fs::read(root.join(&rel)).unwrap(),
                "{}",
                rel.display()
            );
        } else if kind.is_symlink() {
            assert_eq!(
                entry.link_name().unwrap().unwrap(),
                fs::read_link(root.join(&rel)).unwrap()
            );
        } else if kind.is_hard_link() {
            assert_eq!(rel, Path::new("usr/bin/tool-alias"));
            assert_eq!(
                entry.link_name().unwrap().unwrap(),
                Path::new("usr/bin/tool")
            );
        } else if kind.is_character_special() {
            assert_eq!(
                (h.device_major().unwrap(), h.device_minor().unwrap()),
                (Some(1), Some(3))
            );
        } else {
            assert!(
                kind.is_dir() || kind.is_fifo(),
                "{}: {kind:?}",
                rel.display()
            );
        }
        if rel == Path::new("etc/hello") {
            let pax: Vec<(String, Vec<u8>)> = entry
                .pax_extensions()
                .unwrap()
                .expect("PAX header for the xattr and the sub-second mtime")
                .map(|e| {
                    let e = e.unwrap();
                    (e.key().unwrap().to_owned(), e.value_bytes().to_vec())
                })
                .collect();
            assert!(
                pax.contains(&("mtime".into(), b"1700000000.123456789".to_vec())),
                "{pax:?}"
            );
            assert!(
                pax.contains(&("SCHILY.xattr.user.note".into(), b"\x00binary\xff".to_vec())),
                "{pax:?}"
            );
        }
        seen.push(rel);
    }
    // Every path exactly once, parents before children.
    let all: Vec<PathBuf> = walk(&root).into_iter().map(|(p, _)| p).collect();
    assert_eq!(seen.len(), all.len());
    for (i, p) in seen.iter().enumerate() {
        if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
            assert!(
                seen[..i].iter().any(|s| s == parent),
                "{} before its parent",
                p.display()
            );
        }
    }

    // And a runtime unpacking it gets the same tree.
    let applied = tmp.path().join("applied");
    mkdir(&applied, "");
    apply_layer(&applied, &tar_bytes);
    // (The `tar` crate unpacks neither FIFOs nor devices: those were checked above.)
    assert_eq!(
        picture(&applied, &["null", "run-fifo"]),
        picture(&root, &["null", "run-fifo"])
    );
}

#[test]
fn same_bytes_on_one_and_two_threads() {
    let (tmp, root) = rich_root();
    let changes = everything(&root);
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let blobs = |n: usize| tmp.path().join(format!("blobs-{compression}-{n}"));
        let [one, two, eight] = [1, 2, 8].map(|threads| {
            let options = LayerOptions {
                compression,
                threads,
                ..LayerOptions::default()
            };
            layer(&root, &changes, options, &blobs(threads))
        });
        assert_eq!(one.0.digest, two.0.digest, "{compression}");
        assert_eq!(one.0.digest, eight.0.digest, "{compression}");
        assert_eq!(one.0.diff_id, two.0.diff_id, "{compression}");
        assert_eq!(
            read_all(&one.0.path),
            read_all(&two.0.path),
            "{compression}"
        );
    }
}

#[test]
fn gzip_is_one_member_readable_by_flate2() {
    let (tmp, root) = rich_root();
    let (blob, tar_bytes) = layer(
        &root,
        &everything(&root),
        LayerOptions::default(),
        &tmp.path().join("blobs"),
    );
    // A single-member decoder stops after the first member: it must see everything.
    let mut one_member = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(&blob.path).unwrap())
        .read_to_end(&mut one_member)
        .unwrap();
    assert_eq!(one_member, tar_bytes);
}

#[test]
fn whiteouts_and_opaque_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    mkdir(&root, "");
    write(&root, "a/kept", b"k");
    write(&root, "b/inner/file", b"f");
    let changes = ChangeSet {
        changed: [PathBuf::from("b/inner/file")].into(),
        deleted: [PathBuf::from("a/gone"), PathBuf::from("top-gone")].into(),
        opaque: [PathBuf::from("b/inner")].into(),
    };
    let options = LayerOptions {
        compression: Compression::Zstd,
        ..LayerOptions::default()
    };
    let (_, tar_bytes) = layer(&root, &changes, options, &tmp.path().join("blobs"));
    let names: Vec<String> = tar::Archive::new(tar_bytes.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            ".wh.top-gone",
            "a/",
            "a/.wh.gone",
            "b/",
            "b/inner/",
            "b/inner/.wh..wh..opq",
            "b/inner/file"
        ]
    );
}

#[test]
fn reproducible_layers_do_not_depend_on_times() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    let make = |name: &str, secs: i64| {
        let root = tmp.path().join(name);
        write(&root, "app/a.txt", b"same content");
        write(&root, "app/b.txt", b"other content");
        age(&root);
        set_mtime(&root, "app/a.txt", secs, 987);
        root
    };
    let first = make("one", 1_650_000_000);
    let second = make("two", 1_750_000_000);
    let reproducible = LayerOptions {
        reproducible: true,
        source_date_epoch: Some(1_000),
        ..LayerOptions::default()
    };
    let (x, tar_bytes) = layer(&first, &everything(&first), reproducible.clone(), &blobs);
    let (y, _) = layer(&second, &everything(&second), reproducible, &blobs);
    assert_eq!(x.digest, y.digest);
    for entry in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
        assert_eq!(entry.unwrap().header().mtime().unwrap(), 1_000);
    }

    // SOURCE_DATE_EPOCH alone clamps later times and keeps earlier ones.
    let clamp = LayerOptions {
        source_date_epoch: Some(1_700_000_000),
        ..LayerOptions::default()
    };
    let (_, tar_bytes) = layer(&second, &everything(&second), clamp, &blobs);
    let times: Vec<(String, u64)> = tar::Archive::new(tar_bytes.as_slice())
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        times,
        [
            ("app/".into(), AGED as u64),
            ("app/a.txt".into(), 1_700_000_000),
            ("app/b.txt".into(), AGED as u64)
        ]
    );
}

#[test]
fn empty_change_set_is_a_valid_empty_layer() {
    let tmp = tempfile::tempdir().unwrap();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let options = LayerOptions {
            compression,
            ..LayerOptions::default()
        };
        let (_, tar_bytes) = layer(
            tmp.path(),
            &ChangeSet::default(),
            options,
            &tmp.path().join("blobs"),
        );
        assert_eq!(tar_bytes, vec![0u8; 1024]);
    }
}

#[test]
fn bad_options_and_missing_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    let bad = LayerOptions {
        level: Some(12),
        ..LayerOptions::default()
    };
    let err = write_layer(tmp.path(), &ChangeSet::default(), &bad, &blobs).unwrap_err();
    assert!(
        err.to_string().contains("gzip compression level 12"),
        "{err}"
    );
    let bad = LayerOptions {
        compression: Compression::Zstd,
        level: Some(0),
        ..LayerOptions::default()
    };
    assert!(write_layer(tmp.path(), &ChangeSet::default(), &bad, &blobs).is_err());

    let missing = ChangeSet {
        changed: [PathBuf::from("not/there")].into(),
        ..ChangeSet::default()
    };
    let err = write_layer(tmp.path(), &missing, &LayerOptions::default(), &blobs).unwrap_err();
    assert!(err.to_string().contains("not"), "{err}");
    // Nothing half-written stays in the blob store.
    let left: Vec<_> = fs::read_dir(blobs.join("sha256")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn incompressible_and_mixed_data_round_trip_through_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mut state: u64 = 0x1234_5678_9abc_def1;
    let mut noise = Vec::with_capacity(6 << 20);
    while noise.len() < 6 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        noise.extend_from_slice(&state.to_le_bytes());
    }
    write(&root, "noise.bin", &noise);
    // Noise then text inside one block: must not be stored as a whole.
    let mut mixed = noise[..300_000].to_vec();
    mixed.extend(std::iter::repeat_n(b"compressible text ".as_slice(), 60_000).flatten());
    write(&root, "mixed.bin", &mixed);
    for threads in [1, 2] {
        let options = LayerOptions {
            threads,
            ..LayerOptions::default()
        };
        let (blob, tar_bytes) = layer(
            &root,
            &everything(&root),
            options,
            &tmp.path().join(format!("blobs{threads}")),
        );
        assert!(
            blob.size < tar_bytes.len() as u64,
            "{} vs {}",
            blob.size,
            tar_bytes.len()
        );
        assert!(blob.size > noise.len() as u64, "noise cannot shrink");
    }
}

#[test]
fn never_reads_through_a_symlink_out_of_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    mkdir(&root, "");
    write(tmp.path(), "outside/secret", b"host secret");
    link(
        &root,
        tmp.path().join("outside").to_str().unwrap(),
        "escape",
    );
    let hostile = ChangeSet {
        changed: [PathBuf::from("escape/secret")].into(),
        ..ChangeSet::default()
    };
    let err = write_layer(
        &root,
        &hostile,
        &LayerOptions::default(),
        &tmp.path().join("blobs"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
}

#[test]
fn a_cancelled_layer_stops_and_keeps_no_blob() {
    let (tmp, root) = rich_root();
    let changes = everything(&root);
    let blobs = tmp.path().join("blobs");
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let err = strata_snapshotter::layer::write_layer_cancellable(
        &root,
        &changes,
        &LayerOptions::default(),
        &blobs,
        &cancel,
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "{err}");
    let left: Vec<_> = fs::read_dir(blobs.join("sha256")).unwrap().collect();
    assert!(left.is_empty(), "no blob nor temporary file left: {left:?}");
}
