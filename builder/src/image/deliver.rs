//! Delivering a built image: its config and manifest are written into the
//! blob store, then it is pushed to every `--destination` (all blobs to all
//! destinations first, tags last, so a failed push never leaves a tag
//! pointing at a half image), written as `--tar-path` and `--oci-layout-path`,
//! and its digest recorded in the digest files (each written atomically).

use std::path::Path;

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;

use super::archive;
use super::config::{Descriptor, ImageConfig, Manifest, media};
use super::digest::Digest;
use super::layout;
use super::options::{ImageFormat, OutputOptions, RegistryOptions};
use super::reference::ImageRef;
use super::registry::Registries;
use super::resolve::BaseImage;
use super::session::Session;
use super::store::BlobStore;

/// Set by [`interrupt`]: delivery stops before its next blob or tag.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops a delivery in progress (on SIGINT/SIGTERM): no further blob is
/// sent and no tag or output written, so nothing points at a partial image.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted: nothing was tagged or written");
    }
    Ok(())
}

/// Parallel blob uploads per destination.
const PARALLEL_UPLOADS: usize = 4;

/// One layer of a built image; its blob is at `store.path(&digest)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerDescriptor {
    /// Any OCI or Docker layer media type; it is translated to the chosen `--image-format`.
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
}

/// A built image ready to deliver.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The config; `rootfs.diff_ids` is set from `layers` on delivery.
    pub config: ImageConfig,
    /// All layers, base image's first.
    pub layers: Vec<LayerDescriptor>,
    /// Registry repositories known to hold some of the blobs (typically the
    /// base image), to mount them from when pushing to the same registry.
    pub mount_sources: Vec<MountSource>,
}

/// A repository that holds `blobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct MountSource {
    pub image: ImageRef,
    pub blobs: Vec<Digest>,
}

impl BuiltImage {
    /// Starts from `base`: its config and layers (diff_ids from its config),
    /// with its registry reference as a mount source. Add the build's layers to
    /// `layers` and edit `config` (history included) before delivering.
    pub fn from_base(base: &BaseImage) -> Result<BuiltImage> {
        let diff_ids = &base.config.rootfs.diff_ids;
        if diff_ids.len() != base.layers.len() {
            bail!(
                "image {}: config lists {} diff_ids for {} layers",
                base.reference,
                diff_ids.len(),
                base.layers.len()
            );
        }
        let layers = base
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(l, diff_id)| LayerDescriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
                diff_id: diff_id.clone(),
            })
            .collect();
        Ok(BuiltImage {
            config: base.config.clone(),
            layers,
            mount_sources: base
                .registry_ref
                .iter()
                .map(|r| MountSource {
                    image: r.clone(),
                    blobs: base.layers.iter().map(|l| l.digest.clone()).collect(),
                })
                .collect(),
        })
    }
}

/// What was delivered.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    /// The destinations pushed to (empty with `--no-push`).
    pub pushed: Vec<ImageRef>,
}

/// As [`deliver_in`], outside a build: in a registry session of its own.
pub fn deliver(image: &BuiltImage, out: &OutputOptions, reg: &RegistryOptions, store: &BlobStore) -> Result<Delivered> {
    deliver_in(&Session::new(reg)?, image, out, store)
}

/// Builds the manifest, then pushes (through `session`) and writes every
/// requested output.
///
/// Do not call it from inside an async context.
pub fn deliver_in(session: &Session, image: &BuiltImage, out: &OutputOptions, store: &BlobStore) -> Result<Delivered> {
    out.validate()?;
    let destinations = out.destination_refs()?;
    let (manifest_bytes, manifest, media_type) = assemble(image, out.image_format, store)?;
    let manifest_digest = store.put(&manifest_bytes)?;
    let config_digest = manifest.config.digest.clone();

    let pushed = if out.no_push {
        Vec::new()
    } else {
        session.block_on(push_all(
            session.registries(),
            &destinations,
            &manifest,
            &manifest_bytes,
            &media_type,
            &image.mount_sources,
            store,
        ))?;
        destinations.clone()
    };

    check_interrupted()?;
    if let Some(path) = &out.tar_path {
        archive::write_docker_archive(path, &config_digest, &manifest.layers, &destinations, store)
            .with_context(|| format!("--tar-path {}", path.display()))?;
        tracing::info!("wrote docker archive {}", path.display());
    }
    if let Some(dir) = &out.oci_layout_path {
        let mut tags: Vec<String> = destinations.iter().filter_map(|d| d.tag().map(str::to_string)).collect();
        tags.dedup();
        if tags.is_empty() {
            tags.push("latest".to_string());
        }
        // OCI layouts hold OCI manifests (skopeo and umoci ignore others), so
        // with --image-format=docker the layout's manifest digest differs from
        // the pushed one; the config and layers are the same blobs.
        let (oci_bytes, oci_manifest, oci_type) = match out.image_format {
            ImageFormat::Oci => (manifest_bytes.clone(), manifest.clone(), media_type.clone()),
            ImageFormat::Docker => assemble(image, ImageFormat::Oci, store)?,
        };
        let mut blobs: Vec<&Descriptor> = vec![&oci_manifest.config];
        blobs.extend(oci_manifest.layers.iter());
        write_layout(dir, &oci_bytes, &oci_type, &blobs, store, &tags)
            .with_context(|| format!("--oci-layout-path {}", dir.display()))?;
        tracing::info!("wrote OCI layout {}", dir.display());
    }
    write_digest_files(out, &destinations, &manifest_digest)?;
    Ok(Delivered { manifest_digest, manifest_media_type: media_type, config_digest, pushed })
}

/// Serialises the config into the store and builds the manifest for `format`.
pub fn assemble(image: &BuiltImage, format: ImageFormat, store: &BlobStore) -> Result<(Vec<u8>, Manifest, String)> {
    let mut config = image.config.clone();
    config.rootfs.kind = "layers".to_string();
    config.rootfs.diff_ids = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    let config_bytes = serde_json::to_vec(&config).context("serialising the image config")?;
    let config_digest = store.put(&config_bytes)?;
    let (manifest_mt, config_mt) = match format {
        ImageFormat::Docker => (media::DOCKER_MANIFEST, media::DOCKER_CONFIG),
        ImageFormat::Oci => (media::OCI_MANIFEST, media::OCI_CONFIG),
    };
    let mut layers = Vec::new();
    for l in &image.layers {
        // A layer absent from the store was mounted into the destination
        // registry instead (a cache hit never downloaded): its descriptor holds.
        if store.contains(&l.digest) {
            let actual = store.size(&l.digest)?;
            if actual != l.size {
                bail!("layer {} is {actual} bytes in the store, not the {} its descriptor says", l.digest, l.size);
            }
        }
        layers.push(Descriptor::new(&layer_media_type(&l.media_type, format)?, l.digest.clone(), l.size));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_mt.to_string()),
        config: Descriptor::new(config_mt, config_digest, config_bytes.len() as u64),
        layers,
        annotations: None,
        extra: Default::default(),
    };
    let bytes = serde_json::to_vec(&manifest).context("serialising the manifest")?;
    Ok((bytes, manifest, manifest_mt.to_string()))
}

fn layer_media_type(mt: &str, format: ImageFormat) -> Result<String> {
    const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    let compression = match mt {
        media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP => "gzip",
        media::OCI_LAYER_TAR | DOCKER_TAR => "none",
        media::OCI_LAYER_ZSTD => "zstd",
        other => bail!("layer media type {other} cannot be delivered"),
    };
    Ok(match (format, compression) {
        (ImageFormat::Docker, "gzip") => media::DOCKER_LAYER_GZIP,
        (ImageFormat::Docker, "none") => DOCKER_TAR,
        (ImageFormat::Docker, _) => bail!("zstd layers need OCI manifests: use --image-format=oci"),
        (ImageFormat::Oci, "gzip") => media::OCI_LAYER_GZIP,
        (ImageFormat::Oci, "none") => media::OCI_LAYER_TAR,
        (ImageFormat::Oci, _) => media::OCI_LAYER_ZSTD,
    }
    .to_string())
}

async fn push_all(
    registries: &Registries,
    destinations: &[ImageRef],
    manifest: &Manifest,
    manifest_bytes: &[u8],
    media_type: &str,
    mount_sources: &[MountSource],
    store: &BlobStore,
) -> Result<()> {
    let mut sources: Vec<MountSource> = mount_sources.to_vec();
    for dest in destinations {
        let blobs = manifest.layers.iter().chain(std::iter::once(&manifest.config));
        futures_util::stream::iter(blobs.map(Ok::<_, anyhow::Error>))
            .map_ok(|d| {
                let from: Vec<ImageRef> =
                    sources.iter().filter(|s| s.blobs.contains(&d.digest)).map(|s| s.image.clone()).collect();
                async move {
                    check_interrupted()?;
                    registries.push_blob(dest, d, store, &from).await
                }
            })
            .try_buffer_unordered(PARALLEL_UPLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        // Later destinations on the same registry can mount from this one.
        let blobs = manifest.layers.iter().chain(std::iter::once(&manifest.config));
        sources.push(MountSource { image: dest.clone(), blobs: blobs.map(|d| d.digest.clone()).collect() });
    }
    check_interrupted()?;
    for dest in destinations {
        registries.push_manifest(dest, manifest_bytes, media_type).await?;
        tracing::info!("pushed {dest}@{}", Digest::of(manifest_bytes));
    }
    Ok(())
}

/// Writes the image into the OCI layout at `dir`. A new layout is written
/// beside it under a temporary name and renamed into place, so `dir` never
/// holds a partial layout; an existing one gets the blobs first and its
/// `index.json` replaced last (see [`layout::write_image`]).
fn write_layout(
    dir: &Path,
    manifest: &[u8],
    media_type: &str,
    blobs: &[&Descriptor],
    store: &BlobStore,
    tags: &[String],
) -> Result<()> {
    if dir.exists() {
        layout::write_image(dir, manifest, media_type, blobs, store, tags)?;
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".strata-layout-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    layout::write_image(tmp.path(), manifest, media_type, blobs, store, tags)?;
    std::fs::rename(tmp.path(), dir).with_context(|| format!("renaming the finished layout to {}", dir.display()))?;
    // The directory was renamed away; nothing is left for the guard to remove.
    let _ = tmp.keep();
    Ok(())
}

fn write_digest_files(out: &OutputOptions, destinations: &[ImageRef], digest: &Digest) -> Result<()> {
    let write = |flag: &str, path: &Path, content: String| {
        layout::write_atomic(path, content.as_bytes()).with_context(|| format!("{flag} {}", path.display()))
    };
    if let Some(p) = &out.digest_file {
        write("--digest-file", p, digest.to_string())?;
    }
    if let Some(p) = &out.image_name_with_digest_file {
        let lines: String = destinations.iter().map(|d| format!("{}@{digest}\n", d.name())).collect();
        write("--image-name-with-digest-file", p, lines)?;
    }
    if let Some(p) = &out.image_name_tag_with_digest_file {
        let lines: String =
            destinations.iter().map(|d| format!("{}:{}@{digest}\n", d.name(), d.tag().unwrap_or("latest"))).collect();
        write("--image-name-tag-with-digest-file", p, lines)?;
    }
    Ok(())
}
