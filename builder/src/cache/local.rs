//! The local cache (`--cache-dir`): base images and cached layers on disk,
//! shared safely by concurrent builds on one machine.
//!
//! Layout of the directory:
//! - `blobs/sha256/<hex>`: content-addressed blobs (layers, configs, manifests),
//!   written to a temporary file and renamed into place ([`BlobStore`]);
//! - `layers/<key>.json`: a cached layer ([`LayerRecord`]) for a step key, or
//!   the record that the step made no layer;
//! - `images/<hash of reference>.json`: a base image ([`ImageRecord`]);
//! - `steps/<hash of step>.json`: the inputs of the last build of a step, to
//!   explain a later miss;
//! - `.lock`: every open cache holds a shared `flock` on it; pruning expired
//!   entries and unreferenced blobs needs the exclusive lock, so it only runs
//!   when no other build uses the directory (and is skipped otherwise).
//!
//! Every blob is re-hashed when read: a corrupt blob is reported, removed with
//! its record, and reported to the caller as a miss, never used. A build killed
//! mid-write leaves at most a `.incoming-*` temporary file, removed by the
//! next prune.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::keys::{CacheKey, InputDigests};
use crate::image::config::{Descriptor, ImageConfig, Manifest, ManifestDoc};
use crate::image::deliver::LayerDescriptor;
use crate::image::digest::Digest;
use crate::image::layout::write_atomic;
use crate::image::resolve::BaseImage;
use crate::image::store::BlobStore;

/// Temporary files older than this are left-overs of killed builds.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// A cached layer: the blob, as the executor's layer writer described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
}

impl From<&LayerDescriptor> for CachedLayer {
    fn from(l: &LayerDescriptor) -> CachedLayer {
        CachedLayer { media_type: l.media_type.clone(), digest: l.digest.clone(), size: l.size, diff_id: l.diff_id.clone() }
    }
}

impl From<&CachedLayer> for LayerDescriptor {
    fn from(l: &CachedLayer) -> LayerDescriptor {
        LayerDescriptor { media_type: l.media_type.clone(), digest: l.digest.clone(), size: l.size, diff_id: l.diff_id.clone() }
    }
}

/// `layers/<key>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    pub key: CacheKey,
    /// None for a step that changed nothing (no layer). Left out of the JSON
    /// then, so an older strata finds the record malformed: a miss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<CachedLayer>,
    /// Seconds since the epoch when the layer was cached.
    pub created: u64,
    pub inputs: InputDigests,
}

/// `images/<hash of reference>.json`: a base image whose manifest, config
/// and layers are in `blobs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub reference: String,
    pub manifest_digest: Digest,
    pub created: u64,
}

/// What a look-up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalLookup {
    /// The record and its blob are there and the blob's digest checks out;
    /// None when the step made no layer (no blob).
    Hit(Option<CachedLayer>),
    /// Nothing cached for the key.
    Absent,
    /// Cached longer ago than `--cache-ttl`; the entry was removed.
    Expired { age: Duration },
    /// The blob or record was damaged; it was removed. The text says how.
    Corrupt(String),
}

/// An open `--cache-dir`.
pub struct LocalCache {
    dir: PathBuf,
    blobs: BlobStore,
    ttl: Duration,
    /// Held for as long as the cache is open; see the module comment.
    _lock: Flock<File>,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn name_hash(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex().to_string()
}

impl LocalCache {
    /// Opens (creating) the cache at `dir`. If no other build has it open,
    /// first prunes entries older than `ttl`, unreferenced blobs and
    /// left-over temporary files.
    pub fn open(dir: &Path, ttl: Duration) -> Result<LocalCache> {
        for sub in ["layers", "images", "steps"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating cache directory {}", dir.join(sub).display()))?;
        }
        let blobs = BlobStore::new(dir.join("blobs"))?;
        let lock_path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let cache = LocalCache { dir: dir.to_path_buf(), blobs: blobs.clone(), ttl, _lock: lock };
                if let Err(e) = cache.prune() {
                    tracing::warn!("cache: pruning {} failed: {e:#}", dir.display());
                }
                cache._lock.relock(FlockArg::LockShared).with_context(|| format!("locking {}", lock_path.display()))?;
                return Ok(cache);
            }
            Err((file, _busy)) => Flock::lock(file, FlockArg::LockShared)
                .map_err(|(_, e)| anyhow!("locking {}: {e}", lock_path.display()))?,
        };
        Ok(LocalCache { dir: dir.to_path_buf(), blobs, ttl, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cache's own blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn layer_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join("layers").join(format!("{key}.json"))
    }

    fn image_path(&self, reference: &str) -> PathBuf {
        self.dir.join("images").join(format!("{}.json", name_hash(reference)))
    }

    fn step_path(&self, step: &str) -> PathBuf {
        self.dir.join("steps").join(format!("{}.json", name_hash(step)))
    }

    fn expired(&self, created: u64) -> Option<Duration> {
        let age = Duration::from_secs(now_secs().saturating_sub(created));
        (age > self.ttl).then_some(age)
    }

    /// Looks `key` up. A hit's blob has been re-hashed and linked (or copied)
    /// into `into`, so the caller can use it right away.
    pub fn lookup(&self, key: &CacheKey, into: &BlobStore) -> Result<LocalLookup> {
        let path = self.layer_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LocalLookup::Absent),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record: LayerRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Ok(LocalLookup::Corrupt(format!("record {} is malformed ({e}); removed", path.display())));
            }
        };
        if &record.key != key {
            let _ = fs::remove_file(&path);
            return Ok(LocalLookup::Corrupt(format!("record {} names another key; removed", path.display())));
        }
        if let Some(age) = self.expired(record.created) {
            let _ = fs::remove_file(&path);
            return Ok(LocalLookup::Expired { age });
        }
        let Some(layer) = record.layer else { return Ok(LocalLookup::Hit(None)) };
        match self.export_blob(&layer.digest, into) {
            Ok(()) => Ok(LocalLookup::Hit(Some(layer))),
            Err(e) => {
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(self.blobs.path(&layer.digest));
                Ok(LocalLookup::Corrupt(format!("{e:#}; removed")))
            }
        }
    }

    /// Re-hashes blob `digest` and puts it into `into` (a hard link when both
    /// are on one filesystem, else a verified copy).
    pub fn export_blob(&self, digest: &Digest, into: &BlobStore) -> Result<()> {
        self.blobs.verify(digest)?;
        if into.contains(digest) {
            return Ok(());
        }
        link_or_copy(&self.blobs, into, digest)
    }

    /// Caches `layer` (its blob in `from`) under `key`, with the inputs that made the key.
    pub fn put_layer(&self, key: &CacheKey, inputs: &InputDigests, layer: &CachedLayer, from: &BlobStore) -> Result<()> {
        if !self.blobs.contains(&layer.digest) {
            link_or_copy(from, &self.blobs, &layer.digest)?;
        }
        self.put_record(key, inputs, Some(layer.clone()))
    }

    /// Records that the step with `key` made no layer (its RUN changed nothing).
    pub fn put_empty(&self, key: &CacheKey, inputs: &InputDigests) -> Result<()> {
        self.put_record(key, inputs, None)
    }

    fn put_record(&self, key: &CacheKey, inputs: &InputDigests, layer: Option<CachedLayer>) -> Result<()> {
        let record = LayerRecord { key: key.clone(), layer, created: now_secs(), inputs: inputs.clone() };
        write_atomic(&self.layer_path(key), &serde_json::to_vec_pretty(&record)?)
    }

    /// The inputs the last build of `step` (a name stable across builds, such
    /// as "stage 0 step 3") recorded, if any.
    pub fn last_inputs(&self, step: &str) -> Option<InputDigests> {
        let bytes = fs::read(self.step_path(step)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn record_inputs(&self, step: &str, inputs: &InputDigests) -> Result<()> {
        write_atomic(&self.step_path(step), &serde_json::to_vec(inputs)?)
    }

    /// Stores a base image whose manifest, config and layers are in `from`
    /// under `reference` (and under its manifest digest).
    pub fn put_image(&self, reference: &str, manifest_digest: &Digest, from: &BlobStore) -> Result<()> {
        let manifest = read_manifest(from, manifest_digest)?;
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !self.blobs.contains(&d.digest) {
                link_or_copy(from, &self.blobs, &d.digest)?;
            }
        }
        if !self.blobs.contains(manifest_digest) {
            link_or_copy(from, &self.blobs, manifest_digest)?;
        }
        let record = ImageRecord { reference: reference.to_string(), manifest_digest: manifest_digest.clone(), created: now_secs() };
        let json = serde_json::to_vec_pretty(&record)?;
        write_atomic(&self.image_path(reference), &json)?;
        write_atomic(&self.image_path(manifest_digest.as_str()), &json)
    }

    /// The base image cached under `reference` (a name as given to the
    /// warmer, or a manifest digest), with every blob verified and linked into
    /// `into`. `None` when absent, expired or damaged (the reason is logged).
    pub fn get_image(&self, reference: &str, into: &BlobStore) -> Result<Option<BaseImage>> {
        let path = self.image_path(reference);
        let Ok(bytes) = fs::read(&path) else { return Ok(None) };
        let record: ImageRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cache: {} is malformed ({e}); removed", path.display());
                let _ = fs::remove_file(&path);
                return Ok(None);
            }
        };
        if let Some(age) = self.expired(record.created) {
            tracing::info!("cache: base image {reference} was cached {}h ago, beyond --cache-ttl; fetching it again", age.as_secs() / 3600);
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        match self.export_image(&record, into) {
            Ok(image) => Ok(Some(image)),
            Err(e) => {
                tracing::warn!("cache: base image {reference} in {} is damaged ({e:#}); removed, fetching it again", self.dir.display());
                let _ = fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    fn export_image(&self, record: &ImageRecord, into: &BlobStore) -> Result<BaseImage> {
        let manifest = read_manifest(&self.blobs, &record.manifest_digest)?;
        let mut blobs: Vec<&Descriptor> = vec![&manifest.config];
        blobs.extend(&manifest.layers);
        for d in &blobs {
            if let Err(e) = self.export_blob(&d.digest, into) {
                let _ = fs::remove_file(self.blobs.path(&d.digest));
                return Err(e);
            }
        }
        self.export_blob(&record.manifest_digest, into)?;
        let config: ImageConfig = serde_json::from_slice(&into.read_verified(&manifest.config.digest)?)
            .with_context(|| format!("malformed config {}", manifest.config.digest))?;
        let registry_ref = crate::image::reference::ImageRef::parse(&record.reference).ok();
        Ok(BaseImage {
            reference: record.reference.clone(),
            registry_ref,
            manifest_digest: Some(record.manifest_digest.clone()),
            config,
            layers: manifest.layers,
        })
    }

    /// Removes expired records, blobs no record references, and temporary
    /// files of killed builds. Needs the exclusive lock (taken in [`open`](Self::open)).
    fn prune(&self) -> Result<()> {
        let mut keep = std::collections::HashSet::new();
        let mut removed = 0usize;
        for entry in read_dir_sorted(&self.dir.join("layers"))? {
            let record = fs::read(&entry).ok().and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok());
            match record {
                Some(r) if self.expired(r.created).is_none() => {
                    keep.extend(r.layer.map(|l| l.digest));
                }
                _ => {
                    fs::remove_file(&entry).ok();
                    removed += 1;
                }
            }
        }
        for entry in read_dir_sorted(&self.dir.join("images"))? {
            let record = fs::read(&entry).ok().and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok());
            let manifest = record
                .as_ref()
                .filter(|r| self.expired(r.created).is_none())
                .and_then(|r| read_manifest(&self.blobs, &r.manifest_digest).ok());
            match (record, manifest) {
                (Some(r), Some(m)) => {
                    keep.insert(r.manifest_digest);
                    keep.insert(m.config.digest);
                    keep.extend(m.layers.into_iter().map(|l| l.digest));
                }
                _ => {
                    fs::remove_file(&entry).ok();
                    removed += 1;
                }
            }
        }
        for entry in read_dir_sorted(&self.blobs.dir().join("sha256"))? {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let referenced = Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| keep.contains(&d));
            if !referenced {
                fs::remove_file(&entry).ok();
                removed += 1;
            }
        }
        for entry in read_dir_sorted(self.blobs.dir())? {
            let stale = entry.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".incoming-"))
                && fs::metadata(&entry).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_TEMP);
            if stale {
                fs::remove_file(&entry).ok();
            }
        }
        if removed > 0 {
            tracing::info!("cache: pruned {removed} expired or unreferenced entries from {}", self.dir.display());
        }
        Ok(())
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

fn read_manifest(store: &BlobStore, digest: &Digest) -> Result<Manifest> {
    match ManifestDoc::parse(&store.read_verified(digest)?, None)? {
        ManifestDoc::Image(m) => Ok(m),
        ManifestDoc::Index(_) => Err(anyhow!("{digest} is an index, not an image manifest")),
    }
}

/// Puts blob `digest` of `from` into `to`: a hard link (then `to` shares the
/// verified file) or else a copy checked against the digest.
fn link_or_copy(from: &BlobStore, to: &BlobStore, digest: &Digest) -> Result<()> {
    let src = from.path(digest);
    let dst = to.path(digest);
    // Unique per call: two stages of one build may store the same blob at once.
    let tmp = crate::image::store::temp_path(to.dir(), &digest.hex());
    if fs::hard_link(&src, &tmp).is_ok() {
        return fs::rename(&tmp, &dst).with_context(|| format!("storing blob {}", dst.display()));
    }
    let mut f = File::open(&src).with_context(|| format!("blob {digest} is missing ({})", src.display()))?;
    to.put_reader(&mut f, Some(digest)).with_context(|| format!("copying blob {digest}"))?;
    Ok(())
}
