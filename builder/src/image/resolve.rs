//! Resolving a `FROM` name to a base image whose blobs are in the store:
//! a `--build-context NAME=oci-layout://…` or `NAME=docker-image://…`, or a
//! registry reference. Indexes and manifest lists are narrowed to the build
//! platform; layers are fetched in parallel (or later: [`pull_config`]) and
//! every digest is verified.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;

use super::config::{Descriptor, ImageConfig, Index, Manifest, ManifestDoc, Platform, media};
use super::digest::Digest;
use super::layout;
use super::options::{BuildContextSpec, ContextSource, RegistryOptions};
use super::reference::ImageRef;
use super::registry::Registries;
use super::session::Session;
use super::store::BlobStore;

/// Parallel layer downloads per image.
const PARALLEL_DOWNLOADS: usize = 4;

/// A base image ready to extract: its config and layers are in the store.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// Where it came from, for messages: `docker.io/library/busybox:latest`,
    /// `oci-layout:///dir:latest`, or `scratch`.
    pub reference: String,
    /// The registry reference, when it came from a registry (used to mount its
    /// layers when pushing to the same registry).
    pub registry_ref: Option<ImageRef>,
    /// Digest of the platform-specific image manifest; `None` for `scratch`.
    pub manifest_digest: Option<Digest>,
    pub config: ImageConfig,
    /// Layer descriptors, bottom first; each blob is at `store.path(&digest)`.
    pub layers: Vec<Descriptor>,
}

impl BaseImage {
    /// The empty image `FROM scratch` starts from.
    pub fn scratch(platform: &Platform) -> BaseImage {
        BaseImage {
            reference: "scratch".to_string(),
            registry_ref: None,
            manifest_digest: None,
            config: ImageConfig {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                variant: platform.variant.clone(),
                ..Default::default()
            },
            layers: Vec::new(),
        }
    }
}

/// A registry base image resolved without its layers: its manifest and config
/// are in the store; [`fetch_layers`] downloads the layers when they are needed.
#[derive(Debug, Clone)]
pub struct UnfetchedBase {
    pub image: BaseImage,
    /// The repository (the image's own or a mirror) that served the manifest.
    pub source: ImageRef,
}

/// Resolves `name` (a `FROM` argument after ARG expansion) for `platform`,
/// outside a build: as [`resolve_base_in`], in a session of its own.
pub fn resolve_base(
    name: &str,
    contexts: &[BuildContextSpec],
    reg: &RegistryOptions,
    store: &BlobStore,
    platform: &Platform,
) -> Result<BaseImage> {
    resolve_base_in(&Session::new(reg)?, name, contexts, store, platform)
}

/// Resolves `name` (a `FROM` argument after ARG expansion) for `platform`,
/// pulling registry images through `session`.
///
/// Do not call it from inside an async context.
pub fn resolve_base_in(
    session: &Session,
    name: &str,
    contexts: &[BuildContextSpec],
    store: &BlobStore,
    platform: &Platform,
) -> Result<BaseImage> {
    if let Some(ctx) = contexts.iter().rev().find(|c| c.name == name) {
        return match &ctx.source {
            ContextSource::OciLayout { dir, tag, digest } => {
                layout::read_image(dir, tag.as_deref(), digest.as_ref(), platform, store)
                    .with_context(|| format!("build context {ctx}"))
            }
            ContextSource::DockerImage(r) => {
                pull(session, r, store, platform).with_context(|| format!("build context {ctx}"))
            }
        };
    }
    if name == "scratch" {
        return Ok(BaseImage::scratch(platform));
    }
    let r = ImageRef::parse(name)?;
    pull(session, &r, store, platform)
}

/// Pulls `r` from its registry (or mirrors) into `store`.
pub fn pull(session: &Session, r: &ImageRef, store: &BlobStore, platform: &Platform) -> Result<BaseImage> {
    session.block_on(async {
        let base = pull_config_async(session.registries(), r, store, platform).await?;
        fetch_layers_async(session.registries(), &base, store).await?;
        Ok(base.image)
    })
}

/// As [`pull`], but only the manifest and config are downloaded.
pub fn pull_config(session: &Session, r: &ImageRef, store: &BlobStore, platform: &Platform) -> Result<UnfetchedBase> {
    session.block_on(pull_config_async(session.registries(), r, store, platform))
}

/// Downloads the layers of `base` into `store`.
pub fn fetch_layers(session: &Session, base: &UnfetchedBase, store: &BlobStore) -> Result<()> {
    session.block_on(fetch_layers_async(session.registries(), base, store))
}

async fn fetch_layers_async(registries: &Registries, base: &UnfetchedBase, store: &BlobStore) -> Result<()> {
    futures_util::stream::iter(base.image.layers.iter().map(Ok::<_, anyhow::Error>))
        .map_ok(|l| registries.fetch_blob(&base.source, l, store))
        .try_buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn pull_config_async(
    registries: &Registries,
    r: &ImageRef,
    store: &BlobStore,
    platform: &Platform,
) -> Result<UnfetchedBase> {
    let (bytes, digest, source) = registries.fetch_manifest(r).await?;
    let (manifest, digest, source) = match ManifestDoc::parse(&bytes, None).with_context(|| format!("manifest of {r}"))? {
        ManifestDoc::Image(m) => {
            store.put(&bytes)?;
            (m, digest, source)
        }
        ManifestDoc::Index(index) => {
            let chosen = select_platform(&index, platform).with_context(|| format!("image {r}"))?;
            let pinned = source.with_digest(chosen.digest.clone());
            let (bytes, digest, _) = registries.fetch_manifest(&pinned).await?;
            store.put(&bytes)?;
            match ManifestDoc::parse(&bytes, Some(&chosen.media_type)).with_context(|| format!("manifest of {pinned}"))? {
                ManifestDoc::Image(m) => (m, digest, source),
                ManifestDoc::Index(_) => bail!("image {r}: nested image indexes are not supported"),
            }
        }
    };
    check_layers(&manifest).with_context(|| format!("image {r}"))?;
    registries.fetch_blob(&source, &manifest.config, store).await?;
    let config = read_config(store, &manifest.config.digest).with_context(|| format!("image {r}"))?;
    let image = finish(r.to_string(), Some(r.clone()), digest, manifest, config, platform)?;
    Ok(UnfetchedBase { image, source })
}

/// Parses a stored config blob.
pub(crate) fn read_config(store: &BlobStore, digest: &Digest) -> Result<ImageConfig> {
    let bytes = store.read_verified(digest)?;
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("config {digest} is not a valid image config: {e}"))
}

pub(crate) fn check_layers(m: &Manifest) -> Result<()> {
    if !matches!(m.config.media_type.as_str(), media::DOCKER_CONFIG | media::OCI_CONFIG) {
        bail!("not a container image: config media type is {}", m.config.media_type);
    }
    for l in &m.layers {
        if !media::is_layer(&l.media_type) {
            bail!("layer {} has unsupported media type {}", l.digest, l.media_type);
        }
    }
    Ok(())
}

pub(crate) fn finish(
    reference: String,
    registry_ref: Option<ImageRef>,
    digest: Digest,
    manifest: Manifest,
    config: ImageConfig,
    platform: &Platform,
) -> Result<BaseImage> {
    let layer_count = manifest.layers.len();
    if config.rootfs.diff_ids.len() != layer_count {
        bail!(
            "image {reference}: config lists {} diff_ids for {layer_count} layers",
            config.rootfs.diff_ids.len()
        );
    }
    if !config.architecture.is_empty()
        && (config.architecture != platform.architecture || config.os != platform.os)
    {
        tracing::warn!(
            "image {reference} is {}/{}, not the build platform {}/{}",
            config.os, config.architecture, platform.os, platform.architecture
        );
    }
    Ok(BaseImage { reference, registry_ref, manifest_digest: Some(digest), config, layers: manifest.layers })
}

/// Picks `platform`'s entry from an index: os and architecture must match; an
/// exact variant is preferred, then an entry without one.
pub fn select_platform<'a>(index: &'a Index, platform: &Platform) -> Result<&'a Descriptor> {
    let same = |p: &Platform| p.os == platform.os && p.architecture == platform.architecture;
    // arm64's only variant is v8: treat "v8" and no variant alike.
    fn normal<'v>(arch: &str, v: Option<&'v str>) -> Option<&'v str> {
        match (arch, v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v,
        }
    }
    let normal_variant = |v| normal(&platform.architecture, v);
    let candidates: Vec<&Descriptor> =
        index.manifests.iter().filter(|d| d.platform.as_ref().is_some_and(same)).collect();
    let want = normal_variant(platform.variant.as_deref());
    candidates
        .iter()
        .find(|d| normal_variant(d.platform.as_ref().and_then(|p| p.variant.as_deref())) == want)
        .or_else(|| candidates.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none())))
        .or_else(|| if want.is_none() { candidates.first() } else { None })
        .copied()
        .ok_or_else(|| {
            let available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            let wanted = match &platform.variant {
                Some(v) => format!("{}/{}/{v}", platform.os, platform.architecture),
                None => format!("{}/{}", platform.os, platform.architecture),
            };
            anyhow!("no manifest for platform {wanted} (available: {})", available.join(", "))
        })
}

/// Used by `layout` for images in OCI layouts.
pub(crate) fn base_from_layout(
    dir: &Path,
    label: String,
    digest: Digest,
    manifest: Manifest,
    store: &BlobStore,
    platform: &Platform,
) -> Result<BaseImage> {
    check_layers(&manifest).with_context(|| format!("image {label}"))?;
    let config = read_config(store, &manifest.config.digest).with_context(|| format!("image {label} in {}", dir.display()))?;
    finish(label, None, digest, manifest, config, platform)
}
