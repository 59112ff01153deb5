//! Fuzzes layer extraction: layers of tar entries (structured, so that names
//! with `..`, absolute paths, symlinks and hard links aimed at a canary folder
//! next to the root come up often) or raw bytes (gzip, zstd or tar as they
//! come) are applied to a scratch root. Nothing may panic, and nothing may
//! appear outside the root.
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use strata_fuzz::image::layer::apply_layer;
use tar::{EntryType, Header};

#[derive(Arbitrary, Debug)]
enum Part {
    Up,
    Dot,
    Empty,
    Climb,
    Canary,
    Word(u8),
    Raw(Vec<u8>),
}

const WORDS: [&str; 8] = ["a", "b", "etc", "keep", ".wh.a", ".wh..wh..opq", ".wh.", "link"];

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<Part>),
    Hardlink(Vec<Part>),
    Fifo,
    Char(u8, u8),
    // Offset in 512-byte blocks and hole after the data (bounded: reading a hole costs time).
    Sparse(u16, u16),
}

#[derive(Arbitrary, Debug)]
struct Spec {
    absolute: bool,
    name: Vec<Part>,
    kind: Kind,
    mode: u16,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Layers(Vec<Vec<Spec>>),
    Raw(Vec<u8>),
}

fn path(parts: &[Part], absolute: bool, canary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if absolute {
        out.push(b'/');
    }
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        match p {
            Part::Up => out.extend_from_slice(b".."),
            Part::Dot => out.push(b'.'),
            Part::Empty => {}
            Part::Climb => out.extend_from_slice("../".repeat(12).as_bytes()),
            Part::Canary => out.extend_from_slice(canary.as_bytes()),
            Part::Word(w) => out.extend_from_slice(WORDS[*w as usize % WORDS.len()].as_bytes()),
            Part::Raw(r) => out.extend(r.iter().copied().filter(|b| *b != 0).take(64)),
        }
    }
    out
}

fn long_record(b: &mut tar::Builder<Vec<u8>>, kind: u8, bytes: &[u8]) {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::new(kind));
    let mut data = bytes.to_vec();
    data.push(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
}

fn layer(specs: &[Spec], canary: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for s in specs {
        let name = path(&s.name, s.absolute, canary);
        let mut h = Header::new_gnu();
        h.set_mode(u32::from(s.mode) & 0o7777);
        h.set_mtime(0);
        let (kind, data, link): (EntryType, Vec<u8>, Option<Vec<u8>>) = match &s.kind {
            Kind::File(d) => (EntryType::Regular, d.clone(), None),
            Kind::Dir => (EntryType::Directory, Vec::new(), None),
            Kind::Symlink(t) => (EntryType::Symlink, Vec::new(), Some(path(t, false, canary))),
            Kind::Hardlink(t) => (EntryType::Link, Vec::new(), Some(path(t, false, canary))),
            Kind::Fifo => (EntryType::Fifo, Vec::new(), None),
            Kind::Char(ma, mi) => {
                h.set_device_major(u32::from(*ma)).unwrap();
                h.set_device_minor(u32::from(*mi)).unwrap();
                (EntryType::Char, Vec::new(), None)
            }
            Kind::Sparse(offset, real) => {
                let gnu = h.as_gnu_mut().unwrap();
                let offset = u64::from(*offset) * 512;
                gnu.sparse[0].set_offset(offset);
                gnu.sparse[0].set_length(512);
                gnu.sparse[1].set_offset(offset + 512 + u64::from(*real));
                gnu.sparse[1].set_length(0);
                gnu.set_real_size(offset + 512 + u64::from(*real));
                (EntryType::GNUSparse, vec![b'x'; 512], None)
            }
        };
        h.set_entry_type(kind);
        if name.len() > 99 {
            long_record(&mut b, b'L', &name);
        }
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        if let Some(link) = link {
            if link.len() > 99 {
                long_record(&mut b, b'K', &link);
            }
            let n = link.len().min(99);
            h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The sandbox must hold exactly `root/` and `canary/keep`, untouched.
fn assert_nothing_outside(sandbox: &Path) {
    let mut names: Vec<String> =
        std::fs::read_dir(sandbox).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["blob", "canary", "root"], "something was written next to the root");
    let canary = sandbox.join("canary");
    let names: Vec<String> =
        std::fs::read_dir(&canary).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["keep"], "something was written into the canary folder");
    let keep = std::fs::symlink_metadata(canary.join("keep")).unwrap();
    assert!(keep.is_file() && keep.nlink() == 1 && keep.len() == 6, "the canary file was changed");
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary(&mut arbitrary::Unstructured::new(data)) else {
        return;
    };
    let sandbox = tempfile::tempdir().expect("tempdir");
    let canary = sandbox.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), "canary").unwrap();
    let root = sandbox.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let blob = sandbox.path().join("blob");
    let canary_abs = canary.display().to_string();
    let layers = match &input {
        Input::Layers(layers) => layers.iter().take(4).map(|l| layer(l, &canary_abs)).collect(),
        Input::Raw(bytes) => vec![bytes.clone()],
    };
    for l in layers {
        std::fs::write(&blob, &l).unwrap();
        if let Err(e) = apply_layer(&blob, "fuzz", &root) {
            let _ = format!("{e:#}");
        }
        assert_nothing_outside(sandbox.path());
    }
});
