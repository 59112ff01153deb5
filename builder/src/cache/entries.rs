//! The paths a cached layer changes, so that the executor can tell the
//! snapshotter what applying it to a stage root wrote or removed (as it does
//! for COPY), without a scan.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// The paths a layer touches, relative to the root: every entry and its
/// parent directories, the target of each whiteout, and for an opaque
/// directory everything `root` now holds under it (all of it is removed).
pub fn layer_paths(blob: &Path, root: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut opaque = Vec::new();
    let mut archive = tar::Archive::new(decompressed(blob)?);
    for entry in archive.entries().with_context(|| format!("reading layer {}", blob.display()))? {
        let entry = entry.with_context(|| format!("reading layer {}", blob.display()))?;
        let raw = entry.path().with_context(|| format!("layer {}: bad entry name", blob.display()))?;
        let path = clean(&raw);
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let target = if name == OPAQUE_WHITEOUT {
            opaque.push(parent.clone());
            parent
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            parent.join(hidden)
        } else {
            path
        };
        let mut p = target.as_path();
        loop {
            if !p.as_os_str().is_empty() {
                out.insert(p.to_path_buf());
            }
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
    }
    for dir in opaque {
        existing_under(root, &dir, &mut out);
    }
    Ok(out)
}

/// `name` as a relative path with `.` and `..` resolved lexically inside the
/// root, as extraction treats it.
fn clean(name: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn existing_under(root: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else { return };
    for e in entries.flatten() {
        let child = rel.join(e.file_name());
        out.insert(child.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            existing_under(root, &child, out);
        }
    }
}

/// The layer's tar stream: gzip, zstd or plain, told apart by magic bytes.
fn decompressed(blob: &Path) -> Result<Box<dyn Read>> {
    let mut f = File::open(blob).with_context(|| format!("opening layer {}", blob.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).with_context(|| format!("reading layer {}", blob.display()))?;
    let f = BufReader::new(File::open(blob)?);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(f)?),
        _ => Box::new(f),
    })
}
