//! Roots that COPY --from and RUN --mount from= read: another stage's root
//! (waiting for it to finish), or an image's filesystem, extracted once per
//! build under the work directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow};

use super::Build;
use crate::image::extract::extract_image;
use crate::image::resolve_base_in;
use crate::plan::Base;

/// Images extracted for `--from`, by name.
#[derive(Default)]
pub struct ImageRoots {
    roots: Mutex<HashMap<String, PathBuf>>,
}

/// The root a `--from=NAME` (stage name, index or image) reads from.
pub fn source_root(build: &Build, name: &str) -> Result<PathBuf> {
    match build.plan.resolve_source(name) {
        Base::Stage(index) => Ok(build.wait_for_stage(index)?.root.clone()),
        Base::Scratch => empty_root(build),
        Base::Image(image) => image_root(build, &image),
    }
}

fn empty_root(build: &Build) -> Result<PathBuf> {
    let dir = build.work.build_dir().join("scratch-root");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn image_root(build: &Build, image: &str) -> Result<PathBuf> {
    let mut roots = build.images.roots.lock().map_err(|_| anyhow!("a stage thread panicked"))?;
    if let Some(root) = roots.get(image) {
        return Ok(root.clone());
    }
    tracing::info!("Retrieving image {image} for --from");
    let platform = build.args.registry.platform();
    let base = resolve_base_in(&build.session, image, &build.args.input.build_contexts, &build.store, &platform)
        .with_context(|| format!("--from={image}"))?;
    let root = build.work.build_dir().join(format!("image-{}", roots.len()));
    extract_image(&base, &build.store, &root, build.args.registry.image_fs_extract_retry)?;
    roots.insert(image.to_string(), root.clone());
    Ok(root)
}
