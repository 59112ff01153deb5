//! `strata warm`: kaniko's warmer. Pulls base images into `--cache-dir` so
//! that builds using the same directory start from local disk, e.g. in CI
//! pods sharing a volume, or with no registry access at build time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::local::LocalCache;
use super::parse_duration;
use crate::image::options::RegistryOptions;
use crate::image::reference::ImageRef;
use crate::image::Session;
use crate::image::resolve::pull;
use crate::image::store::BlobStore;

/// `strata warm` flags (kaniko warmer's names).
#[derive(Debug, Clone, Args)]
pub struct WarmArgs {
    /// Image to cache (repeatable): a tag or a digest reference.
    #[arg(short = 'i', long = "image", value_name = "REF", required = true)]
    pub images: Vec<String>,

    /// The cache directory builds will use with --cache-dir.
    #[arg(short = 'c', long, value_name = "DIR", default_value = "/cache")]
    pub cache_dir: PathBuf,

    /// Pull again even when the image is cached and fresh.
    #[arg(short = 'f', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub force: bool,

    /// How long a cached image stays fresh (Go duration syntax).
    #[arg(long, value_name = "DURATION", default_value = "336h", value_parser = parse_duration)]
    pub cache_ttl: Duration,

    #[command(flatten)]
    pub registry: RegistryOptions,
}

/// Runs the warmer; the exit status is 0 when every image is cached, 1 when
/// any failed (each failure is logged), 2 for bad flags.
pub fn run(args: WarmArgs) -> i32 {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).try_init();
    match warm(&args) {
        Ok(0) => 0,
        Ok(failed) => {
            tracing::error!("warm: {failed} of {} images could not be cached", args.images.len());
            1
        }
        Err(e) => {
            tracing::error!("warm: {}", format!("{e:#}").replace('\n', " "));
            2
        }
    }
}

/// Caches each image; returns how many failed.
pub fn warm(args: &WarmArgs) -> Result<usize> {
    let refs: Vec<ImageRef> = args
        .images
        .iter()
        .map(|s| ImageRef::parse(s).with_context(|| format!("--image {s:?}")))
        .collect::<Result<_>>()?;
    let session = Session::new(&args.registry)?;
    let cache = LocalCache::open(&args.cache_dir, args.cache_ttl)
        .with_context(|| format!("--cache-dir {}", args.cache_dir.display()))?;
    // Downloads land in a store inside the cache directory, so that moving
    // them into the cache is a hard link; it is removed when done.
    let staging = tempfile::Builder::new()
        .prefix(".warm-")
        .tempdir_in(&args.cache_dir)
        .with_context(|| format!("creating a staging directory in {}", args.cache_dir.display()))?;
    let store = BlobStore::new(staging.path())?;
    let platform = args.registry.platform();
    let mut failed = 0;
    for (spec, r) in args.images.iter().zip(&refs) {
        if !args.force && cache.get_image(&r.to_string(), &store)?.is_some() {
            tracing::info!("warm: {spec} is already cached in {}", args.cache_dir.display());
            continue;
        }
        let result = pull(&session, r, &store, &platform).and_then(|image| {
            let digest = image.manifest_digest.clone().context("pulled image has no manifest digest")?;
            cache.put_image(&r.to_string(), &digest, &store)?;
            Ok(digest)
        });
        match result {
            Ok(digest) => tracing::info!("warm: cached {spec} ({digest}) in {}", args.cache_dir.display()),
            Err(e) => {
                failed += 1;
                tracing::error!("warm: {spec}: {}", format!("{e:#}").replace('\n', " "));
            }
        }
    }
    Ok(failed)
}
