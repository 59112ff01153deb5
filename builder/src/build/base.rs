//! The base image of a stage, and the snapshotter of its root. In the target
//! stage a base image is extracted only when a step first works on the root,
//! and a registry base's layers are downloaded only then (or at delivery, if
//! an output needs them).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use strata_snapshotter::Snapshotter;

use super::Build;
use crate::image::config::Platform;
use crate::image::options::{BuildContextSpec, ContextSource};
use crate::image::reference::ImageRef;
use crate::image::resolve::{BaseImage, UnfetchedBase};

/// The stage root's snapshotter, created once the root holds the base: at
/// once, or (a base image in the target stage) when a step first needs the root.
pub struct RootState {
    pub root: PathBuf,
    pub mode: strata_snapshotter::SnapshotMode,
    pub excluded: Vec<PathBuf>,
    /// The base image not yet extracted into the root.
    pub base: Option<Unextracted>,
    pub snap: Option<Snapshotter>,
}

impl RootState {
    /// The snapshotter, the base extracted first if it was not yet.
    pub fn snapshotter(&mut self, build: &Build) -> Result<&mut Snapshotter> {
        if let Some(base) = self.base.take() {
            base.extract(build, &self.root)?;
        }
        let snap = match self.snap.take() {
            Some(snap) => snap,
            None => Snapshotter::new(&self.root, self.mode, self.excluded.clone())
                .with_context(|| format!("snapshotting {}", self.root.display()))?,
        };
        Ok(self.snap.insert(snap))
    }
}

/// A base image not extracted yet, its layers downloaded or not.
pub enum Unextracted {
    Fetched(BaseImage),
    /// A registry image resolved without its layers; `cache_as`: the name it
    /// is kept under in `--cache-dir` once they are downloaded (none for a
    /// build context).
    Unfetched { base: UnfetchedBase, cache_as: Option<ImageRef> },
}

impl Unextracted {
    pub fn image(&self) -> &BaseImage {
        match self {
            Unextracted::Fetched(base) => base,
            Unextracted::Unfetched { base, .. } => &base.image,
        }
    }

    /// Extracts the base into `root`, its layers downloaded first if need be.
    pub fn extract(self, build: &Build, root: &Path) -> Result<()> {
        if let Unextracted::Unfetched { base, cache_as } = &self {
            fetch_base_layers(build, base, cache_as.as_ref())?;
        }
        extract_base(build, self.image(), root)
    }
}

/// Extracts the base image's layers into `root`.
fn extract_base(build: &Build, base: &BaseImage, root: &Path) -> Result<()> {
    let t = Instant::now();
    crate::image::extract::extract_image(
        base,
        &build.store,
        root,
        build.args.registry.image_fs_extract_retry,
    )?;
    let digest = base
        .manifest_digest
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_default();
    tracing::info!(
        "Extracted {} {digest} ({} layers) in {:.2}s",
        base.reference,
        base.layers.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The base image `name`: from `--cache-dir` when `strata warm` or an
/// earlier build put it there (and it is fresh), else resolved and fetched,
/// then kept in `--cache-dir`. Build-context names never use the cache.
/// With `lazy`, a registry image's layers (a `FROM` reference's or a
/// `docker-image://` build context's) are left to [`fetch_base_layers`].
pub fn base_image(
    build: &Build,
    name: &str,
    platform: &Platform,
    lazy: bool,
) -> Result<Unextracted> {
    let context = build.args.input.build_contexts.iter().rev().find(|c| c.name == name);
    let reference = if context.is_some() { None } else { ImageRef::parse(name).ok() };
    if let Some(r) = &reference
        && let Some(base) = build.cache.base_image(r, &build.store)
    {
        return Ok(Unextracted::Fetched(base));
    }
    if lazy {
        if let Some(ctx @ BuildContextSpec { source: ContextSource::DockerImage(r), .. }) = context {
            let base = crate::image::resolve::pull_config(&build.session, r, &build.store, platform)
                .with_context(|| format!("build context {ctx}"))?;
            return Ok(Unextracted::Unfetched { base, cache_as: None });
        }
        if let Some(r) = reference.as_ref().filter(|_| name != "scratch") {
            let base = crate::image::resolve::pull_config(&build.session, r, &build.store, platform)?;
            return Ok(Unextracted::Unfetched { base, cache_as: Some(r.clone()) });
        }
    }
    let base = crate::image::resolve_base_in(
        &build.session,
        name,
        &build.args.input.build_contexts,
        &build.store,
        platform,
    )?;
    if let Some(r) = &reference {
        build.cache.store_base_image(r, &base, &build.store);
    }
    Ok(Unextracted::Fetched(base))
}

/// Downloads the layers of a base image resolved without them, then keeps it
/// in `--cache-dir` as `cache_as`.
fn fetch_base_layers(build: &Build, base: &UnfetchedBase, cache_as: Option<&ImageRef>) -> Result<()> {
    let t = Instant::now();
    crate::image::resolve::fetch_layers(&build.session, base, &build.store)
        .with_context(|| format!("downloading the layers of {}", base.image.reference))?;
    tracing::info!(
        "Downloaded the {} layer(s) of {} in {:.2}s",
        base.image.layers.len(),
        base.image.reference,
        t.elapsed().as_secs_f64()
    );
    if let Some(r) = cache_as {
        build.cache.store_base_image(r, &base.image, &build.store);
    }
    Ok(())
}

/// Makes the layers of `base` (a base image resolved without them) available
/// to the outputs, as `Cache::provide_for_delivery` does for cache hits:
/// nothing without outputs; mounted from the base's own repository when every
/// destination is on its registry and no local output needs the bytes;
/// downloaded otherwise.
pub fn provide_for_delivery(
    base: &crate::image::resolve::UnfetchedBase,
    out: &crate::image::options::OutputOptions,
    session: &crate::image::Session,
    into: &crate::image::store::BlobStore,
) -> Result<()> {
    let Some((local_output, destinations)) = out.layer_needs()? else { return Ok(()) };
    let image = &base.image;
    let registries = session.registries();
    let absent: Vec<_> = image.layers.iter().filter(|l| !into.contains(&l.digest)).collect();
    let mounted = match &image.registry_ref {
        Some(source) if !local_output => session.block_on(async {
            for layer in &absent {
                if !registries.mount_everywhere(&destinations, layer, source).await {
                    return Ok(false);
                }
            }
            Ok(true)
        })?,
        _ => false,
    };
    if mounted {
        tracing::info!("Base image {}: its {} layer(s) mounted into the destination(s), not downloaded", image.reference, absent.len());
        return Ok(());
    }
    let t = std::time::Instant::now();
    crate::image::resolve::fetch_layers(session, base, into)
        .with_context(|| format!("downloading the layers of {}", image.reference))?;
    tracing::info!("Downloaded the {} layer(s) of {} for the outputs in {:.2}s", image.layers.len(), image.reference, t.elapsed().as_secs_f64());
    Ok(())
}
