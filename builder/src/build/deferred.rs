//! Cache hits whose layers are not downloaded until something needs them.
//!
//! In the target stage a hit does not touch the root: its layer joins the
//! image by descriptor only. The hits are applied to the root (fetched first)
//! when a later step must run on it; those left at the end of the stage are
//! fetched only if an output needs their bytes ([`provide_for_delivery`]): a
//! push to the cache's own registry mounts them instead, and a build without
//! outputs never reads them.
//!
//! A deferred hit whose layer turns out to be unusable when it is finally
//! applied is not fatal: the stage rewinds to that step (layers, history,
//! config and variables as they were) and runs it.

use anyhow::Result;
use strata_snapshotter::Snapshotter;

use crate::cache::Hit;
use crate::exec::metadata::StageVars;
use crate::image::config::ImageConfig;
use crate::image::deliver::BuiltImage;

/// The stage as it was just before a deferred step.
struct Deferred {
    hit: Hit,
    step: usize,
    name: String,
    layers: usize,
    config: ImageConfig,
    vars: StageVars,
}

/// The hits of a stage not yet applied to its root, in step order.
#[derive(Default)]
pub struct DeferredHits {
    pending: Vec<Deferred>,
}

/// Where the stage must resume after a deferred hit could not be applied.
pub struct Rewind {
    pub step: usize,
}

impl DeferredHits {
    /// Records a hit at `step` instead of applying it; call before the hit's
    /// layer and history are added to `image`.
    pub fn defer(&mut self, hit: Hit, step: usize, name: &str, image: &BuiltImage, vars: &StageVars) {
        self.pending.push(Deferred {
            hit,
            step,
            name: name.to_string(),
            layers: image.layers.len(),
            config: image.config.clone(),
            vars: vars.clone(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Applies every pending hit to the root, in order. If one cannot be
    /// fetched or applied, the image and variables go back to just before its
    /// step and the stage must resume there (the earlier hits stay applied).
    pub fn apply_all(
        &mut self,
        apply: &mut dyn FnMut(&mut Snapshotter, &Hit, &str) -> Result<()>,
        snap: &mut Snapshotter,
        image: &mut BuiltImage,
        vars: &mut StageVars,
    ) -> Option<Rewind> {
        for d in std::mem::take(&mut self.pending) {
            if let Err(e) = apply(snap, &d.hit, &d.name) {
                tracing::warn!("cache: {}: the cached layer is unusable, running the step: {e:#}", d.name);
                image.layers.truncate(d.layers);
                image.config = d.config;
                *vars = d.vars;
                return Some(Rewind { step: d.step });
            }
        }
        None
    }

    /// The hits still pending at the end of the stage.
    pub fn into_hits(self) -> Vec<Hit> {
        self.pending.into_iter().map(|d| d.hit).collect()
    }
}
