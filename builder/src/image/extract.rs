//! Safe, streaming extraction of base-image layers into a root directory.
//! The layer format and its hostile cases are handled in [`layer`]; this
//! module extracts whole images, with `--image-fs-extract-retry`.

mod layer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use layer::{apply_layer, extract_layers};
use layer::make_writable_tree;

use super::resolve::BaseImage;
use super::store::BlobStore;

/// Extracts all of `image`'s layers into `root`, in order, decompressing the
/// next layers while the current one is applied. On failure the root's
/// contents are removed and extraction starts again, up to `retries` more
/// times (`--image-fs-extract-retry`); the last failure leaves `root` empty.
pub fn extract_image(image: &BaseImage, store: &BlobStore, root: &Path, retries: u32) -> Result<()> {
    let layers: Vec<(PathBuf, String)> = image
        .layers
        .iter()
        .map(|l| (store.path(&l.digest), l.media_type.clone()))
        .collect();
    let mut attempt = 0;
    loop {
        match extract_layers(&layers, root) {
            Ok(()) => return Ok(()),
            Err(e) => {
                empty_dir(root).with_context(|| format!("cleaning {} after a failed extraction", root.display()))?;
                if attempt >= retries {
                    return Err(e.context(format!("extracting {} into {}", image.reference, root.display())));
                }
                attempt += 1;
                tracing::warn!("extracting {} failed ({e:#}); retry {attempt} of {retries}", image.reference);
            }
        }
    }
}

fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let p = entry?.path();
        if fs::symlink_metadata(&p)?.is_dir() {
            make_writable_tree(&p);
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

