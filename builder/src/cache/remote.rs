//! The shared layer cache (`--cache=true`): in a registry repository
//! (`--cache-repo`, by default `<destination repository>/cache` as in kaniko)
//! or in an OCI layout on a shared volume (`--cache-repo oci:DIR`).
//!
//! Each cached layer is a small image of one layer tagged with the step's key,
//! as kaniko stores it. The manifest's annotations carry what a look-up needs
//! (the layer's diffID and when it was cached), so a look-up is one manifest
//! request and no blob is read until the layer is wanted ([`RemoteCache::fetch`]).
//! A step that made no layer (a RUN that changed nothing) is an image of zero
//! layers with the same annotations but the diffID: a hit with nothing to fetch.
//! (Older strata read it as a failed look-up and run the step.)
//!
//! Each entry is also tagged `step-<hash of the step's name>`, pointing at
//! the latest layer of that step: a later miss reads its input digests from
//! there and says what changed, without any local state.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};

use super::keys::{CacheKey, InputDigests};
use super::local::{CachedLayer, now_secs};
use crate::image::config::{Descriptor, Index, Manifest, ManifestDoc, media};
use crate::image::digest::Digest;
use crate::image::layout::{self, REF_NAME};
use crate::image::reference::ImageRef;
use crate::image::registry::Registries;
use crate::image::store::BlobStore;

const ANN_DIFF_ID: &str = "dev.strata.cache.diff-id";
const ANN_CREATED: &str = "dev.strata.cache.created";
/// The digests of the step's inputs (values hashed), for explaining a later miss.
const ANN_INPUTS: &str = "dev.strata.cache.inputs";

/// Where the shared cache lives.
#[derive(Clone)]
pub enum RemoteCache {
    Registry { repo: String, registries: Arc<Registries> },
    Layout { dir: PathBuf },
}

/// A layer found in the shared cache; its blob is fetched only on [`RemoteCache::fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHit {
    /// None when the step made no layer.
    pub layer: Option<CachedLayer>,
    pub created: u64,
}

/// What a shared-cache look-up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteLookup {
    Hit(RemoteHit),
    Absent,
    Expired { age: Duration },
}

impl RemoteCache {
    /// Parses `--cache-repo`: `oci:DIR` or a repository (`host/path`, no tag).
    pub fn parse(spec: &str, registries: Arc<Registries>) -> Result<RemoteCache> {
        if let Some(dir) = spec.strip_prefix("oci:") {
            if dir.is_empty() {
                bail!("--cache-repo oci: needs a directory (oci:/path/to/layout)");
            }
            return Ok(RemoteCache::Layout { dir: PathBuf::from(dir) });
        }
        let repo = spec.trim_end_matches('/');
        let parsed = ImageRef::parse(repo).with_context(|| format!("--cache-repo {spec:?}"))?;
        if parsed.digest().is_some() || repo.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            bail!("--cache-repo {spec:?} must name a repository without a tag or digest (tags are the cache keys)");
        }
        Ok(RemoteCache::Registry { repo: parsed.name(), registries })
    }

    /// kaniko's default cache repository for a destination: `<repository>/cache`.
    pub fn default_repo(destination: &ImageRef) -> String {
        format!("{}/cache", destination.name())
    }

    /// Where the cache is, for log lines.
    pub fn describe(&self) -> String {
        match self {
            RemoteCache::Registry { repo, .. } => repo.clone(),
            RemoteCache::Layout { dir } => format!("oci:{}", dir.display()),
        }
    }

    fn tagged(repo: &str, key: &CacheKey) -> Result<ImageRef> {
        ImageRef::parse(&format!("{repo}:{key}"))
    }

    /// The tag naming the latest entry of the step called `step`.
    fn step_tag(step: &str) -> String {
        format!("step-{}", &blake3::hash(step.as_bytes()).to_hex()[..32])
    }

    /// The input digests of the latest entry stored for `step`, if any.
    pub async fn last_inputs(&self, step: &str) -> Result<Option<InputDigests>> {
        let tag = Self::step_tag(step);
        let manifest = match self {
            RemoteCache::Registry { repo, registries } => {
                match registries.fetch_manifest(&ImageRef::parse(&format!("{repo}:{tag}"))?).await {
                    Ok((bytes, _, _)) => Some(bytes),
                    Err(e) if format!("{e:#}").contains("image not found") => None,
                    Err(e) => return Err(e),
                }
            }
            RemoteCache::Layout { dir } => layout_manifest(dir, &tag)?,
        };
        let Some(bytes) = manifest else { return Ok(None) };
        let ManifestDoc::Image(m) = ManifestDoc::parse(&bytes, None)? else { return Ok(None) };
        let inputs = m.annotations.as_ref().and_then(|a| a.get(ANN_INPUTS));
        Ok(inputs.and_then(|json| serde_json::from_str(json).ok()))
    }

    /// Looks `key` up: one manifest request; no blob is read.
    pub async fn lookup(&self, key: &CacheKey, ttl: Duration) -> Result<RemoteLookup> {
        let manifest = match self {
            RemoteCache::Registry { repo, registries } => {
                let r = Self::tagged(repo, key)?;
                match registries.fetch_manifest(&r).await {
                    Ok((bytes, _, _)) => Some(bytes),
                    Err(e) if format!("{e:#}").contains("image not found") => None,
                    Err(e) => return Err(e),
                }
            }
            RemoteCache::Layout { dir } => layout_manifest(dir, key.as_str())?,
        };
        let Some(bytes) = manifest else { return Ok(RemoteLookup::Absent) };
        let hit = parse_cache_manifest(&bytes).with_context(|| format!("cache image {key} in {}", self.describe()))?;
        let age = Duration::from_secs(now_secs().saturating_sub(hit.created));
        if age > ttl {
            return Ok(RemoteLookup::Expired { age });
        }
        Ok(RemoteLookup::Hit(hit))
    }

    /// Downloads (or copies) the hit's layer into `store`, verifying its digest.
    pub async fn fetch(&self, key: &CacheKey, layer: &CachedLayer, store: &BlobStore) -> Result<()> {
        if store.contains(&layer.digest) {
            return Ok(());
        }
        match self {
            RemoteCache::Registry { repo, registries } => {
                let desc = Descriptor::new(&layer.media_type, layer.digest.clone(), layer.size);
                registries.fetch_blob(&Self::tagged(repo, key)?, &desc, store).await
            }
            RemoteCache::Layout { dir } => {
                let path = dir.join("blobs/sha256").join(layer.digest.hex());
                let mut f = File::open(&path).with_context(|| format!("cached layer {} is missing from {}", layer.digest, dir.display()))?;
                store
                    .put_reader(&mut f, Some(&layer.digest))
                    .with_context(|| format!("cached layer {} in {} is corrupt", layer.digest, dir.display()))?;
                Ok(())
            }
        }
    }

    /// Stores `layer` (its blob in `store`; None for a step that made no
    /// layer) under `key`, and as the latest entry of the step called `step`.
    pub async fn push(&self, step: &str, key: &CacheKey, inputs: &InputDigests, layer: Option<&CachedLayer>, store: &BlobStore) -> Result<()> {
        let diff_ids: Vec<&Digest> = layer.map(|l| &l.diff_id).into_iter().collect();
        let mut history = serde_json::json!({ "created_by": format!("strata cache layer {key}") });
        if layer.is_none() {
            history["empty_layer"] = true.into();
        }
        let config = serde_json::json!({
            "architecture": std::env::consts::ARCH,
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": [history],
        });
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = store.put(&config_bytes)?;
        let config_desc = Descriptor::new(media::OCI_CONFIG, config_digest, config_bytes.len() as u64);
        let layer_desc = layer.map(|l| Descriptor::new(&l.media_type, l.digest.clone(), l.size));
        let mut annotations = BTreeMap::from([
            (ANN_CREATED.to_string(), now_secs().to_string()),
            (ANN_INPUTS.to_string(), serde_json::to_string(inputs)?),
        ]);
        if let Some(layer) = layer {
            annotations.insert(ANN_DIFF_ID.to_string(), layer.diff_id.to_string());
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: config_desc.clone(),
            layers: layer_desc.iter().cloned().collect(),
            annotations: Some(annotations),
            extra: Default::default(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        match self {
            RemoteCache::Registry { repo, registries } => {
                let dest = Self::tagged(repo, key)?;
                if let Some(layer_desc) = &layer_desc {
                    registries.push_blob(&dest, layer_desc, store, &[]).await?;
                }
                registries.push_blob(&dest, &config_desc, store, &[]).await?;
                registries.push_manifest(&dest, &manifest_bytes, media::OCI_MANIFEST).await?;
                let step_ref = ImageRef::parse(&format!("{repo}:{}", Self::step_tag(step)))?;
                registries.push_manifest(&step_ref, &manifest_bytes, media::OCI_MANIFEST).await
            }
            RemoteCache::Layout { dir } => {
                let dir = dir.clone();
                let store = store.clone();
                let tags = [key.to_string(), Self::step_tag(step)];
                tokio::task::spawn_blocking(move || {
                    let _lock = lock_layout(&dir)?;
                    let blobs: Vec<&Descriptor> = std::iter::once(&config_desc).chain(&layer_desc).collect();
                    layout::write_image(&dir, &manifest_bytes, media::OCI_MANIFEST, &blobs, &store, &tags)
                })
                .await
                .map_err(|e| anyhow!("writing the cache layout: {e}"))?
                .map(|_| ())
            }
        }
    }
}

/// Writers of a cache layout take an exclusive lock on `DIR/.strata-cache.lock`
/// around the read-modify-write of `index.json`.
fn lock_layout(dir: &Path) -> Result<Flock<File>> {
    fs::create_dir_all(dir).with_context(|| format!("creating cache layout {}", dir.display()))?;
    let path = dir.join(".strata-cache.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))
}

/// The manifest tagged `tag` in the layout at `dir`, digest checked.
fn layout_manifest(dir: &Path, tag: &str) -> Result<Option<Vec<u8>>> {
    let index_path = dir.join("index.json");
    let bytes = match fs::read(&index_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", index_path.display())),
    };
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: malformed OCI index: {e}", index_path.display()))?;
    let found = index
        .manifests
        .iter()
        .rev()
        .find(|d| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).is_some_and(|n| n == tag));
    let Some(desc) = found else { return Ok(None) };
    let path = dir.join("blobs/sha256").join(desc.digest.hex());
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if Digest::of(&bytes) != desc.digest {
        bail!("manifest {} in {} is corrupt", desc.digest, dir.display());
    }
    Ok(Some(bytes))
}

/// A cache image: one layer, or none for a step that made no layer.
fn parse_cache_manifest(bytes: &[u8]) -> Result<RemoteHit> {
    let ManifestDoc::Image(m) = ManifestDoc::parse(bytes, None)? else {
        bail!("is an index, not a cache image");
    };
    let ann = m.annotations.clone().unwrap_or_default();
    let created = ann
        .get(ANN_CREATED)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("has no valid {ANN_CREATED} annotation (not written by strata)"))?;
    let layer = match m.layers.as_slice() {
        [] => None,
        [layer] => {
            let diff_id = ann.get(ANN_DIFF_ID).ok_or_else(|| anyhow!("has no {ANN_DIFF_ID} annotation (not written by strata)"))?;
            Some(CachedLayer {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                diff_id: Digest::parse(diff_id)?,
            })
        }
        more => bail!("has {} layers, not one", more.len()),
    };
    Ok(RemoteHit { layer, created })
}
