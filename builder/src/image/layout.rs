//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`): reading
//! an image out of one into the blob store (for `--build-context
//! NAME=oci-layout://DIR`), and writing a built image into one
//! (`--oci-layout-path`). Images are named by the
//! `org.opencontainers.image.ref.name` annotation, as skopeo and umoci do.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;

use super::config::{Descriptor, Index, ManifestDoc, Platform, media};
use super::digest::Digest;
use super::resolve::{self, BaseImage};
use super::store::BlobStore;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm()).join(d.hex())
}

fn read_index(dir: &Path) -> Result<Index> {
    let path = dir.join("index.json");
    let bytes = fs::read(&path).with_context(|| format!("{} is not an OCI image layout: cannot read index.json", dir.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: malformed OCI index: {e}", path.display()))
}

/// Copies blob `d` from the layout into the store, verifying its digest.
fn import(dir: &Path, d: &Digest, store: &BlobStore) -> Result<()> {
    if store.contains(d) {
        return Ok(());
    }
    let src = blob_path(dir, d);
    let mut f = File::open(&src).with_context(|| format!("blob {d} is missing from layout {}", dir.display()))?;
    store
        .put_reader(&mut f, Some(d))
        .with_context(|| format!("blob {} in layout {}", d, dir.display()))?;
    Ok(())
}

/// Reads the image named by `tag` or `digest` (or the layout's only image, or
/// `latest`) from the layout at `dir`, copying its blobs into `store`.
pub fn read_image(
    dir: &Path,
    tag: Option<&str>,
    digest: Option<&Digest>,
    platform: &Platform,
    store: &BlobStore,
) -> Result<BaseImage> {
    let index = read_index(dir)?;
    let ref_name = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
    let (desc_digest, label) = match (digest, tag) {
        (Some(d), _) => (d.clone(), format!("oci-layout://{}@{d}", dir.display())),
        (None, Some(t)) => {
            let d = index
                .manifests
                .iter()
                .find(|d| ref_name(d).as_deref() == Some(t))
                .ok_or_else(|| anyhow!("no image tagged {t:?} in OCI layout {}", dir.display()))?;
            (d.digest.clone(), format!("oci-layout://{}:{t}", dir.display()))
        }
        (None, None) => {
            let d = if index.manifests.len() == 1 {
                &index.manifests[0]
            } else {
                index
                    .manifests
                    .iter()
                    .find(|d| ref_name(d).as_deref() == Some("latest"))
                    .ok_or_else(|| anyhow!("OCI layout {} holds {} images; name one with :TAG or @DIGEST", dir.display(), index.manifests.len()))?
            };
            (d.digest.clone(), format!("oci-layout://{}", dir.display()))
        }
    };
    import(dir, &desc_digest, store)?;
    let bytes = store.read_verified(&desc_digest)?;
    let (manifest, digest) = match ManifestDoc::parse(&bytes, None).with_context(|| label.clone())? {
        ManifestDoc::Image(m) => (m, desc_digest),
        ManifestDoc::Index(nested) => {
            let chosen = resolve::select_platform(&nested, platform).with_context(|| label.clone())?;
            import(dir, &chosen.digest, store)?;
            let bytes = store.read_verified(&chosen.digest)?;
            match ManifestDoc::parse(&bytes, Some(&chosen.media_type)).with_context(|| label.clone())? {
                ManifestDoc::Image(m) => (m, chosen.digest.clone()),
                ManifestDoc::Index(_) => bail!("{label}: nested image indexes are not supported"),
            }
        }
    };
    import(dir, &manifest.config.digest, store)?;
    manifest.layers.par_iter().try_for_each(|l| import(dir, &l.digest, store))?;
    resolve::base_from_layout(dir, label, digest, manifest, store, platform)
}

/// Writes an image into the layout at `dir` (created if needed; other images
/// in it are kept). `blobs` are the config and layers, all in `store`; the
/// manifest is added to `index.json` once per tag in `tags`, replacing an image
/// of the same tag. `index.json` is replaced atomically, after every blob is in place.
pub fn write_image(
    dir: &Path,
    manifest: &[u8],
    manifest_media_type: &str,
    blobs: &[&Descriptor],
    store: &BlobStore,
    tags: &[String],
) -> Result<Digest> {
    fs::create_dir_all(dir.join("blobs/sha256")).with_context(|| format!("creating OCI layout {}", dir.display()))?;
    let index = if dir.join("index.json").exists() {
        read_index(dir)?
    } else {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
            extra: Default::default(),
        }
    };
    for b in blobs {
        copy_blob(store, &b.digest, &blob_path(dir, &b.digest))?;
    }
    let digest = Digest::of(manifest);
    write_atomic(&blob_path(dir, &digest), manifest)?;
    write_atomic(&dir.join("oci-layout"), LAYOUT_FILE.as_bytes())?;

    let mut index = index;
    index.manifests.retain(|d| {
        let name = d.annotations.as_ref().and_then(|a| a.get(REF_NAME));
        !name.is_some_and(|n| tags.iter().any(|t| t == n))
    });
    for tag in tags {
        let mut d = Descriptor::new(manifest_media_type, digest.clone(), manifest.len() as u64);
        d.annotations = Some(BTreeMap::from([(REF_NAME.to_string(), tag.clone())]));
        index.manifests.push(d);
    }
    if tags.is_empty() {
        index.manifests.push(Descriptor::new(manifest_media_type, digest.clone(), manifest.len() as u64));
    }
    let json = serde_json::to_vec(&index).context("serialising index.json")?;
    write_atomic(&dir.join("index.json"), &json)?;
    Ok(digest)
}

/// Hard-links (or copies) a blob out of the store; existing files are kept.
pub(crate) fn copy_blob(store: &BlobStore, d: &Digest, dst: &Path) -> Result<()> {
    if dst.exists() {
        return Ok(());
    }
    let src = store.path(d);
    let parent = dst.parent().expect("blob paths have a parent");
    let tmp = crate::image::store::temp_path(parent, &d.hex());
    if fs::hard_link(&src, &tmp).is_err() {
        fs::copy(&src, &tmp).with_context(|| format!("copying blob {d} to {}", parent.display()))?;
    }
    fs::rename(&tmp, dst).with_context(|| format!("writing {}", dst.display()))?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers
/// see the old content or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".strata-")
        .tempfile_in(parent)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_data().ok();
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
