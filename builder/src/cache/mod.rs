//! The layer cache: a step whose inputs are unchanged reuses the layer an
//! earlier build made instead of running again.
//!
//! - [`keys`]: the cache key of a step, and what changed when it misses;
//! - [`local`]: `--cache-dir`, base images and layers on local disk;
//! - [`remote`]: `--cache-repo`, layers in a registry or an OCI layout;
//! - [`warm`]: `strata warm`, which fills `--cache-dir` with base images.
//!
//! The executor uses [`Cache`]: compute every step's [`KeyInputs`] up front,
//! [`Cache::prefetch`] all their keys (shared-cache look-ups then run in
//! parallel while the build proceeds), and for each step [`Cache::lookup`]. A
//! hit's layer is in the build's blob store at once when it came from the local
//! cache; from the shared cache only its descriptor is known until
//! [`Cache::fetch`] (call it when a later RUN needs the files, or before
//! delivery). After running a step that missed, [`Cache::store`] keeps its
//! layer locally and pushes it in the background ([`Cache::store_empty`] for a
//! step that made no layer, whose hit then has none); [`Cache::finish`] waits
//! for those pushes at the end of the build.
//!
//! Cache failures never fail a build: a look-up error is logged and counts as a
//! miss; a failed push is logged.

pub mod entries;
pub mod keys;
pub mod local;
pub mod remote;
pub mod stage;
pub mod warm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

pub use keys::{CacheKey, InputDigests, KeyInputs, StepKind};
pub use local::{CachedLayer, LocalCache, LocalLookup};
pub use remote::{RemoteCache, RemoteHit, RemoteLookup};

use crate::image::deliver::LayerDescriptor;
use crate::image::reference::ImageRef;
use crate::image::Session;
use crate::image::resolve::BaseImage;
use crate::image::store::BlobStore;

/// Shared-cache look-ups in flight at once.
const PARALLEL_LOOKUPS: usize = 8;

/// kaniko's cache flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cache")]
pub struct CacheOptions {
    /// Cache layers: reuse the layer of a step whose inputs are unchanged.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub cache: bool,

    /// Where cached layers are shared: a repository (default
    /// `<destination repository>/cache`) or `oci:DIR` for an OCI layout.
    #[arg(long, value_name = "REPO")]
    pub cache_repo: Option<String>,

    /// Local cache of base images (see `strata warm`) and, with --cache, layers.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// How long a cached layer or base image is used: Go duration syntax
    /// (`336h`, `90m`, `1h30m`, `45s`).
    #[arg(long, value_name = "DURATION", default_value = "336h", value_parser = parse_duration)]
    pub cache_ttl: Duration,

    /// Cache the layers of RUN steps.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_name = "BOOL")]
    pub cache_run_layers: bool,

    /// Cache the layers of COPY and ADD steps.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub cache_copy_layers: bool,

    /// Do not push layers to the cache repository (use it read-only).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub no_push_cache: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            cache: false,
            cache_repo: None,
            cache_dir: None,
            cache_ttl: Duration::from_secs(336 * 3600),
            cache_run_layers: true,
            cache_copy_layers: false,
            no_push_cache: false,
        }
    }
}

/// Parses a Go duration (`336h`, `1h30m`, `90s`, `500ms`) as kaniko's flags take it.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || anyhow::anyhow!("invalid duration {s:?}: expected e.g. 336h, 1h30m, 90s");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Where a hit's layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HitSource {
    /// Already in the build's blob store (copied from `--cache-dir`).
    Local,
    /// In the shared cache; [`Cache::fetch`] downloads it.
    Remote,
}

/// A cached layer for a step.
#[derive(Debug, Clone)]
pub struct Hit {
    pub key: CacheKey,
    /// The inputs that made the key (kept with the layer in the local cache).
    pub inputs: InputDigests,
    /// None when the step made no layer (a RUN that changed nothing).
    pub layer: Option<CachedLayer>,
    pub source: HitSource,
}

impl Hit {
    /// The layer as the image module's delivery takes it; None for no layer.
    pub fn descriptor(&self) -> Option<LayerDescriptor> {
        self.layer.as_ref().map(LayerDescriptor::from)
    }
}

/// The outcome of [`Cache::lookup`].
#[derive(Debug, Clone)]
pub enum Lookup {
    Hit(Box<Hit>),
    /// Why it missed, in words (also logged).
    Miss(String),
}

type Pending = tokio::task::JoinHandle<Result<RemoteLookup>>;

/// The cache for one build.
pub struct Cache {
    opts: CacheOptions,
    local: Option<LocalCache>,
    remote: Option<RemoteCache>,
    /// The build's registry session, whose runtime runs look-ups and pushes.
    session: Arc<Session>,
    lookups: Mutex<HashMap<CacheKey, Pending>>,
    limit: Arc<tokio::sync::Semaphore>,
    pushes: Mutex<Vec<(String, tokio::task::JoinHandle<Result<()>>)>>,
}

impl Cache {
    /// Opens the caches the flags ask for. `destinations` give the default
    /// cache repository. With `--cache=false`, only base images are cached
    /// (when `--cache-dir` is given) and every layer look-up misses.
    pub fn open(opts: &CacheOptions, destinations: &[ImageRef], session: Arc<Session>) -> Result<Cache> {
        let registries = session.registries();
        let local = match &opts.cache_dir {
            Some(dir) => Some(LocalCache::open(dir, opts.cache_ttl).with_context(|| format!("--cache-dir {}", dir.display()))?),
            None => None,
        };
        let remote = if opts.cache {
            match (&opts.cache_repo, destinations.first()) {
                (Some(spec), _) => Some(RemoteCache::parse(spec, registries.clone())?),
                (None, Some(dest)) => Some(RemoteCache::parse(&RemoteCache::default_repo(dest), registries.clone())?),
                (None, None) if local.is_some() => None,
                (None, None) => bail!("--cache=true needs somewhere to keep layers: --cache-repo, a --destination or --cache-dir"),
            }
        } else {
            if opts.cache_repo.is_some() {
                tracing::warn!("--cache-repo is ignored without --cache=true");
            }
            None
        };
        if opts.cache {
            let mut places: Vec<String> = remote.iter().map(|r| r.describe()).collect();
            places.extend(local.iter().map(|l| l.dir().display().to_string()));
            tracing::info!("cache: layers cached in {} (ttl {})", places.join(" and "), age_text(opts.cache_ttl));
        }
        Ok(Cache {
            opts: opts.clone(),
            local,
            remote,
            session,
            lookups: Mutex::new(HashMap::new()),
            limit: Arc::new(tokio::sync::Semaphore::new(PARALLEL_LOOKUPS)),
            pushes: Mutex::new(Vec::new()),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.session.runtime().expect("starting the async runtime for the cache")
    }

    /// Whether layers of `kind` steps are looked up and stored.
    pub fn caches(&self, kind: StepKind) -> bool {
        self.opts.cache
            && match kind {
                StepKind::Run => self.opts.cache_run_layers,
                StepKind::Copy => self.opts.cache_copy_layers,
            }
    }

    /// Starts shared-cache look-ups for all `keys` at once; [`Cache::lookup`]
    /// then waits only for its own.
    pub fn prefetch(&self, keys: &[CacheKey]) {
        let Some(remote) = &self.remote else { return };
        let mut lookups = self.lookups.lock().expect("cache lookups lock");
        for key in keys {
            if lookups.contains_key(key) {
                continue;
            }
            let (remote, key2, limit, ttl) = (remote.clone(), key.clone(), self.limit.clone(), self.opts.cache_ttl);
            let task = self.rt().spawn(async move {
                let _permit = limit.acquire_owned().await;
                remote.lookup(&key2, ttl).await
            });
            lookups.insert(key.clone(), task);
        }
    }

    fn remote_lookup(&self, key: &CacheKey) -> Option<Result<RemoteLookup>> {
        self.remote.as_ref()?;
        self.prefetch(std::slice::from_ref(key));
        let task = self.lookups.lock().expect("cache lookups lock").remove(key)?;
        Some(self.rt().block_on(task).unwrap_or_else(|e| Err(anyhow::anyhow!("cache look-up task failed: {e}"))))
    }

    /// The inputs of the shared cache's latest entry for `step`, to explain a miss.
    fn remote_last_inputs(&self, step: &str) -> Option<InputDigests> {
        let remote = self.remote.as_ref()?;
        match self.rt().block_on(remote.last_inputs(step)) {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("cache: {step}: reading the shared cache's last entry of the step: {e:#}");
                None
            }
        }
    }

    /// Looks up the step named `step` (stable across builds, e.g. "stage 0
    /// step 3 (RUN make)"), logs the hit or the miss and why, and remembers the
    /// inputs for the next build's explanation. A local hit's blob is verified
    /// and put into `into`.
    pub fn lookup(&self, step: &str, inputs: &KeyInputs, into: &BlobStore) -> Lookup {
        let digests = inputs.digests();
        let key = digests.key();
        if !self.caches(inputs.kind) {
            // Nothing to log per step: the flags say so once.
            return self.lookup_key(step, inputs.kind, &key, &digests, into);
        }
        let outcome = self.lookup_key(step, inputs.kind, &key, &digests, into);
        if let Some(local) = &self.local
            && let Err(e) = local.record_inputs(step, &digests)
        {
            tracing::debug!("cache: recording the inputs of {step}: {e:#}");
        }
        match &outcome {
            Lookup::Hit(hit) => {
                let from = match hit.source {
                    HitSource::Local => "local cache",
                    HitSource::Remote => "shared cache",
                };
                tracing::info!("cache: {step}: hit {} ({from})", key.short());
            }
            Lookup::Miss(why) => tracing::info!("cache: {step}: miss {}: {why}", key.short()),
        }
        outcome
    }

    fn lookup_key(&self, step: &str, kind: StepKind, key: &CacheKey, digests: &InputDigests, into: &BlobStore) -> Lookup {
        if !self.caches(kind) {
            let why = match (self.opts.cache, kind) {
                (false, _) => "caching is off (--cache=false)",
                (true, StepKind::Run) => "RUN layers are not cached (--cache-run-layers=false)",
                (true, StepKind::Copy) => "COPY/ADD layers are not cached (--cache-copy-layers=false)",
            };
            return Lookup::Miss(why.to_string());
        }
        let mut notes = Vec::new();
        if let Some(local) = &self.local {
            match local.lookup(key, into) {
                Ok(LocalLookup::Hit(layer)) => {
                    return Lookup::Hit(Box::new(Hit { key: key.clone(), inputs: digests.clone(), layer, source: HitSource::Local }));
                }
                Ok(LocalLookup::Absent) => {}
                Ok(LocalLookup::Expired { age }) => notes.push(format!("local entry expired ({} old, --cache-ttl {})", age_text(age), age_text(self.opts.cache_ttl))),
                Ok(LocalLookup::Corrupt(why)) => {
                    tracing::warn!("cache: {step}: corrupt local cache entry: {why}");
                    notes.push("local entry was corrupt and was removed".to_string());
                }
                Err(e) => {
                    tracing::warn!("cache: {step}: local look-up failed: {e:#}");
                    notes.push("local look-up failed".to_string());
                }
            }
        }
        match self.remote_lookup(key) {
            Some(Ok(RemoteLookup::Hit(hit))) => {
                return Lookup::Hit(Box::new(Hit { key: key.clone(), inputs: digests.clone(), layer: hit.layer, source: HitSource::Remote }));
            }
            Some(Ok(RemoteLookup::Absent)) | None => {}
            Some(Ok(RemoteLookup::Expired { age })) => notes.push(format!("shared entry expired ({} old, --cache-ttl {})", age_text(age), age_text(self.opts.cache_ttl))),
            Some(Err(e)) => {
                tracing::warn!("cache: {step}: shared cache look-up failed, running the step: {e:#}");
                notes.push("shared look-up failed".to_string());
            }
        }
        if notes.is_empty() {
            let previous = self.local.as_ref().and_then(|l| l.last_inputs(step)).or_else(|| self.remote_last_inputs(step));
            notes = match previous {
                Some(prev) if prev.key() == *key => vec!["not in the cache".to_string()],
                Some(prev) => digests.changes_from(&prev),
                None => vec!["not in the cache (no earlier build of this step recorded)".to_string()],
            };
        }
        Lookup::Miss(notes.join(", "))
    }

    /// Puts a shared-cache hit's layer into `into` (downloading it if needed)
    /// and keeps it in the local cache too. A hit without a layer has nothing
    /// to fetch; a shared one is recorded in the local cache.
    pub fn fetch(&self, hit: &Hit, into: &BlobStore) -> Result<()> {
        let Some(layer) = &hit.layer else {
            if let (HitSource::Remote, Some(local)) = (&hit.source, &self.local)
                && let Err(e) = local.put_empty(&hit.key, &hit.inputs)
            {
                tracing::warn!("cache: keeping the entry {} (no layer) in {}: {e:#}", hit.key.short(), local.dir().display());
            }
            return Ok(());
        };
        if into.contains(&layer.digest) {
            return Ok(());
        }
        match (&hit.source, &self.remote) {
            (HitSource::Remote, Some(remote)) => {
                self.rt()
                    .block_on(remote.fetch(&hit.key, layer, into))
                    .with_context(|| format!("fetching cached layer {} from {}", layer.digest, remote.describe()))?;
            }
            _ => bail!("cached layer {} is no longer in the build's blob store", layer.digest),
        }
        if let Some(local) = &self.local
            && let Err(e) = local.put_layer(&hit.key, &hit.inputs, layer, into)
        {
            tracing::warn!("cache: keeping layer {} in {}: {e:#}", layer.digest, local.dir().display());
        }
        Ok(())
    }

    /// Applies a hit's layer to the stage root `root` (fetching it first if
    /// needed), so that later steps see its files as if the step had run.
    /// Returns the paths it wrote or removed, for the snapshotter's
    /// `declare_written` inside a `Write` step, as COPY does.
    pub fn apply(&self, hit: &Hit, into: &BlobStore, root: &std::path::Path) -> Result<std::collections::BTreeSet<PathBuf>> {
        self.fetch(hit, into)?;
        let Some(layer) = &hit.layer else { return Ok(Default::default()) };
        let blob = into.path(&layer.digest);
        let paths = entries::layer_paths(&blob, root)?;
        crate::image::extract::apply_layer(&blob, &layer.media_type, root)
            .with_context(|| format!("applying cached layer {} to {}", layer.digest, root.display()))?;
        Ok(paths)
    }

    /// Makes the layers of `hits` (cache hits never fetched) available to
    /// the outputs: nothing without outputs; mounted from the cache
    /// repository when every destination is on its registry and no local
    /// output needs the bytes; fetched otherwise.
    pub fn provide_for_delivery(&self, hits: &[Hit], out: &crate::image::options::OutputOptions, into: &BlobStore) -> Result<()> {
        if hits.is_empty() {
            return Ok(());
        }
        let Some((local_output, destinations)) = out.layer_needs()? else { return Ok(()) };
        for hit in hits {
            let Some(layer) = &hit.layer else { continue };
            if into.contains(&layer.digest) || (!local_output && self.mount_everywhere(&hit.key, layer, &destinations)) {
                continue;
            }
            self.fetch(hit, into)?;
        }
        Ok(())
    }

    /// Whether the layer cached under `key` could be mounted into every
    /// destination from the registry cache.
    fn mount_everywhere(&self, key: &CacheKey, layer: &CachedLayer, destinations: &[ImageRef]) -> bool {
        let Some(remote::RemoteCache::Registry { repo, registries }) = &self.remote else { return false };
        let Ok(source) = ImageRef::parse(&format!("{repo}:{key}")) else { return false };
        let desc = crate::image::config::Descriptor::new(&layer.media_type, layer.digest.clone(), layer.size);
        self.rt().block_on(registries.mount_everywhere(destinations, &desc, &source))
    }

    /// Caches the layer a missed step made: in the local cache now, and in the
    /// shared cache by a background push (unless `--no-push-cache`).
    pub fn store(&self, step: &str, inputs: &KeyInputs, layer: &LayerDescriptor, from: &BlobStore) -> Result<()> {
        self.store_entry(step, inputs, Some(CachedLayer::from(layer)), from)
    }

    /// Caches that a missed step made no layer (a RUN that changed nothing),
    /// as [`Cache::store`] does a layer: its hits then add no layer and need
    /// no root.
    pub fn store_empty(&self, step: &str, inputs: &KeyInputs, from: &BlobStore) -> Result<()> {
        self.store_entry(step, inputs, None, from)
    }

    fn store_entry(&self, step: &str, inputs: &KeyInputs, cached: Option<CachedLayer>, from: &BlobStore) -> Result<()> {
        if !self.caches(inputs.kind) {
            return Ok(());
        }
        let digests = inputs.digests();
        let key = digests.key();
        if let Some(local) = &self.local {
            match &cached {
                Some(layer) => local.put_layer(&key, &digests, layer, from),
                None => local.put_empty(&key, &digests),
            }
            .with_context(|| format!("caching the outcome of {step} in {}", local.dir().display()))?;
        }
        if let (Some(remote), false) = (&self.remote, self.opts.no_push_cache) {
            let (remote, from, key2, step2) = (remote.clone(), from.clone(), key.clone(), step.to_string());
            let task = self.rt().spawn(async move { remote.push(&step2, &key2, &digests, cached.as_ref(), &from).await });
            self.pushes.lock().expect("cache pushes lock").push((format!("{step} ({})", key.short()), task));
        }
        Ok(())
    }

    /// The base image `r` from `--cache-dir` (put there by `strata warm` or
    /// an earlier build), if cached and fresh; its blobs are verified and put
    /// into `into`. A digest reference is found by its digest alone.
    pub fn base_image(&self, r: &ImageRef, into: &BlobStore) -> Option<BaseImage> {
        let local = self.local.as_ref()?;
        let name = match r.digest() {
            Some(d) => d.to_string(),
            None => r.to_string(),
        };
        match local.get_image(&name, into) {
            Ok(Some(image)) => {
                tracing::info!("cache: base image {r} found in {}", local.dir().display());
                Some(image)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("cache: reading base image {r} from {}: {e:#}", local.dir().display());
                None
            }
        }
    }

    /// Keeps a pulled base image (its blobs in `from`) in `--cache-dir`.
    pub fn store_base_image(&self, r: &ImageRef, image: &BaseImage, from: &BlobStore) {
        let (Some(local), Some(digest)) = (&self.local, &image.manifest_digest) else { return };
        if let Err(e) = local.put_image(&r.to_string(), digest, from) {
            tracing::warn!("cache: keeping base image {r} in {}: {e:#}", local.dir().display());
        }
    }

    /// Waits for the background pushes; failures are logged, never fatal.
    /// Returns how many pushes failed.
    pub fn finish(&self) -> usize {
        let pushes = std::mem::take(&mut *self.pushes.lock().expect("cache pushes lock"));
        if pushes.is_empty() {
            return 0;
        }
        let mut failed = 0;
        for (what, task) in pushes {
            let result = self.rt().block_on(task).unwrap_or_else(|e| Err(anyhow::anyhow!("push task failed: {e}")));
            if let Err(e) = result {
                failed += 1;
                tracing::warn!("cache: pushing the layer of {what} failed: {e:#}");
            }
        }
        failed
    }
}

/// A cache age or TTL for the log: whole hours, or seconds below an hour.
fn age_text(d: Duration) -> String {
    match d.as_secs() {
        s if s < 3600 => format!("{s}s"),
        s => format!("{}h", s / 3600),
    }
}
