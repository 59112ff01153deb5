//! Turns a ChangeSet into an OCI layer blob in one pass: a deterministic tar
//! (see `tar`) streamed through sha256 (the diffID), a block-parallel
//! compressor (see `codec`), sha256 again (the digest) and into
//! `<blob_dir>/sha256/<hex>` (a temporary file, renamed when complete).

mod codec;
mod pipeline;
mod tar;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

pub use self::tar::{Times, write_tar, write_tar_cancellable};
use crate::changeset::ChangeSet;
use pipeline::{Codec, Pipeline};

/// `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" | "uncompressed" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression {other:?}: expected gzip, zstd or none"
            )),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        })
    }
}

/// How a layer is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// `--compression-level`: gzip 0–9 (default 6), zstd 1–22 (default 3);
    /// `None` for the default.
    pub level: Option<i32>,
    /// `SOURCE_DATE_EPOCH`: times later than this are clamped to it.
    pub source_date_epoch: Option<i64>,
    /// `--reproducible`: every entry's time becomes `source_date_epoch` (or 0).
    pub reproducible: bool,
    /// Compression threads; 0 for one per core.
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            level: None,
            source_date_epoch: None,
            reproducible: false,
            threads: 0,
        }
    }
}

impl LayerOptions {
    /// How entry times are written under these options.
    pub fn times(&self) -> Times {
        match (self.reproducible, self.source_date_epoch) {
            (true, epoch) => Times::Fixed(epoch.unwrap_or(0)),
            (false, Some(epoch)) => Times::Clamp(epoch),
            (false, None) => Times::Keep,
        }
    }

    fn codec(&self) -> io::Result<Codec> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        match (self.compression, self.level) {
            (Compression::Gzip, None) => Ok(Codec::Gzip { level: 6 }),
            (Compression::Gzip, Some(l @ 0..=9)) => Ok(Codec::Gzip { level: l as u32 }),
            (Compression::Gzip, Some(l)) => Err(invalid(format!(
                "gzip compression level {l} is out of range 0-9"
            ))),
            (Compression::Zstd, None) => Ok(Codec::Zstd { level: 3 }),
            (Compression::Zstd, Some(l @ 1..=22)) => Ok(Codec::Zstd { level: l }),
            (Compression::Zstd, Some(l)) => Err(invalid(format!(
                "zstd compression level {l} is out of range 1-22"
            ))),
            (Compression::None, _) => Ok(Codec::None),
        }
    }

    fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// A layer written into the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// `sha256:<hex>` of the compressed blob.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
    pub compression: Compression,
    /// `<blob_dir>/sha256/<hex>`.
    pub path: PathBuf,
}

/// Writes the layer for `changes` (read from `root`) into the blob store at
/// `blob_dir`.
pub fn write_layer(
    root: &Path,
    changes: &ChangeSet,
    options: &LayerOptions,
    blob_dir: &Path,
) -> io::Result<LayerBlob> {
    write_layer_cancellable(root, changes, options, blob_dir, &AtomicBool::new(false))
}

/// [`write_layer`], stopping (no blob kept) before the next entry once
/// `cancel` is set.
pub fn write_layer_cancellable(
    root: &Path,
    changes: &ChangeSet,
    options: &LayerOptions,
    blob_dir: &Path,
    cancel: &AtomicBool,
) -> io::Result<LayerBlob> {
    let codec = options.codec()?;
    let dir = blob_dir.join("sha256");
    std::fs::create_dir_all(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    let temp = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(&dir)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating a temporary blob in {}: {e}", dir.display()),
            )
        })?;
    let mut pipeline = Pipeline::new(codec, options.thread_count(), temp.as_file().try_clone()?)?;
    write_tar_cancellable(root, changes, options.times(), &mut pipeline, cancel)?;
    let out = pipeline.finish()?;
    let hex = hex::encode(out.digest);
    let path = dir.join(&hex);
    temp.persist(&path).map_err(|e| {
        io::Error::new(
            e.error.kind(),
            format!("storing blob {}: {}", path.display(), e.error),
        )
    })?;
    Ok(LayerBlob {
        digest: format!("sha256:{hex}"),
        diff_id: format!("sha256:{}", hex::encode(out.diff_id)),
        size: out.size,
        compression: options.compression,
        path,
    })
}
