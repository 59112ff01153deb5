//! The build orchestrator: from the command line to delivered outputs.
//!
//! 1. Prepare the work directory ([`workdir`]), the build context and the
//!    Dockerfile; parse and plan (needed stages only, in dependency order).
//! 2. Build every needed stage ([`stage`]), each in its own root under the
//!    work directory; stages run in parallel threads, each waiting only for
//!    the stages it depends on (FROM, COPY --from, RUN --mount from=). At the
//!    last isolation level, the stages run one by one in the container's own
//!    root instead ([`hostroot`]).
//! 3. Deliver the target stage's image (push, docker-archive, OCI layout,
//!    digest files) and log its digest and where the outputs went.
//!
//! Everything the build creates lives under the work directory and is removed
//! on success, failure and Ctrl-C alike (a signal kills the running RUN, the
//! stage threads stop at their next instruction, and the directories drop);
//! at the container root level, `/` is left holding the target stage's files
//! (emptied with `--cleanup`), as kaniko leaves it.

mod base;
mod deferred;
mod hostroot;
mod settings;
mod sources;
mod stage;
mod steps;
mod tree;
mod workdir;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use crate::cli::BuildArgs;
use crate::exec::context::{BuildContext, ContextSource, GitOptions};
use crate::exec::run::Isolation;
use crate::image::Session;
use crate::image::deliver::{BuiltImage, LayerDescriptor};
use crate::image::store::BlobStore;
use crate::plan::{self, BuildPlan, PlanOptions};

pub use settings::Settings;

/// A finished stage: its root (for COPY --from and RUN --mount from=) and image.
pub struct StageOutput {
    pub root: PathBuf,
    pub image: BuiltImage,
    /// Cache hits in `image.layers` whose blobs were never fetched (see
    /// [`deferred`]): fetched or mounted only as the outputs need.
    pub lazy_hits: Vec<crate::cache::Hit>,
    /// The target stage's registry base image, when its layers were never
    /// downloaded (no step needed them); delivery provides them.
    pub lazy_base: Option<crate::image::resolve::UnfetchedBase>,
}

/// What every stage thread shares.
pub struct Build {
    pub args: BuildArgs,
    pub settings: Settings,
    pub context: BuildContext,
    pub store: BlobStore,
    pub plan: BuildPlan,
    pub work: workdir::WorkDir,
    pub started: Instant,
    isolation: OnceLock<std::result::Result<Isolation, String>>,
    outputs: Mutex<HashMap<usize, Option<Arc<StageOutput>>>>,
    finished: Condvar,
    cancelled: Arc<AtomicBool>,
    pub(crate) images: sources::ImageRoots,
    /// The build's one registry session, shared with the cache.
    pub session: Arc<Session>,
    /// The layer cache (`--cache`, `--cache-dir`, `--cache-repo`).
    pub cache: crate::cache::Cache,
    /// Set when the stages are built in the container's own root.
    host_root: Option<hostroot::HostRoot>,
}

impl Build {
    /// The RUN isolation level, detected (and logged) at the first RUN.
    pub fn isolation(&self) -> Result<Isolation> {
        self.isolation
            .get_or_init(|| Isolation::detect(self.args.options.force).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!(e))
    }

    /// Fails once the build was interrupted or another stage failed.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.cancelled.load(Ordering::SeqCst) {
            bail!("build interrupted");
        }
        Ok(())
    }

    /// Waits for stage `index` to finish; an error if it failed.
    pub fn wait_for_stage(&self, index: usize) -> Result<Arc<StageOutput>> {
        let mut outputs = self.outputs.lock().map_err(|_| anyhow!("a stage thread panicked"))?;
        loop {
            match outputs.get(&index) {
                Some(Some(out)) => return Ok(out.clone()),
                Some(None) => bail!("stage {index} failed"),
                None => {}
            }
            self.check_cancelled()?;
            outputs = self
                .finished
                .wait_timeout(outputs, std::time::Duration::from_millis(200))
                .map_err(|_| anyhow!("a stage thread panicked"))?
                .0;
        }
    }

    fn publish(&self, index: usize, out: Option<Arc<StageOutput>>) {
        if let Ok(mut outputs) = self.outputs.lock() {
            outputs.insert(index, out);
        }
        self.finished.notify_all();
    }
}

/// Builds what the command line asks for.
pub fn run(args: BuildArgs) -> Result<()> {
    args.unsupported.check()?;
    let started = Instant::now();
    let settings = Settings::from_args(&args)?;
    args.registry.validate()?;
    args.output.validate()?;
    if args.options.use_new_run {
        tracing::debug!("--use-new-run: strata always runs RUN isolated and snapshots with the chosen mode");
    }

    let cancelled = Arc::new(AtomicBool::new(false));
    let _signals = install_signal_handler(cancelled.clone())?;
    // A build killed with SIGKILL cannot unmount its FUSE journal; the next one does.
    match strata_snapshotter::fuse::cleanup_abandoned() {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} mount(s) left by a killed build"),
        Err(e) => tracing::warn!("cannot remove mounts left by a killed build: {e}"),
    }

    let work = workdir::WorkDir::new(args.options.kaniko_dir.as_deref(), args.options.cleanup)?;
    // Temporary files (FUSE mountpoints, a RUN's host-side files) go inside the
    // build directory: removed with it, and by the next build after a SIGKILL.
    let tmp = work.build_dir().join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // SAFETY: the only other thread now is the signal thread, which waits for
    // signals and does not read the environment.
    unsafe { std::env::set_var("TMPDIR", &tmp) };
    let store = BlobStore::new(work.blobs())?;
    let git = GitOptions::parse(&args.input.git)?;
    tracing::info!("Preparing build context {}", args.input.context);
    let context = BuildContext::prepare(&args.input.context, args.input.context_sub_path.as_deref(), &git, work.build_dir())?;
    let local = matches!(ContextSource::parse(&args.input.context)?, ContextSource::Dir(_));
    let (dockerfile_path, text) = context.read_dockerfile(&args.input.dockerfile, local)?;
    let dockerfile = crate::dockerfile::parse(&text, &dockerfile_path).map_err(|d| anyhow!("{d}"))?;
    for w in &dockerfile.warnings {
        tracing::warn!("{w}");
    }
    let platform = args.registry.platform();
    let plan_opts = PlanOptions {
        target: args.options.target.clone(),
        build_args: settings.build_args.clone(),
        build_platform: plan::Platform::host(),
        target_platform: plan::Platform {
            os: platform.os.clone(),
            arch: platform.architecture.clone(),
            variant: platform.variant.clone(),
        },
    };
    let plan = plan::plan(&dockerfile, &plan_opts).map_err(|d| anyhow!("{d}"))?;
    if !plan.unused_build_args.is_empty() {
        tracing::warn!("build args not consumed by any ARG: {}", plan.unused_build_args.join(", "));
    }
    let names: Vec<String> = plan.stages.iter().map(stage::stage_title).collect();
    tracing::info!("Building {} stage(s): {}", plan.stages.len(), names.join(", "));

    let session = Arc::new(Session::new(&args.registry)?);
    let cache = crate::cache::Cache::open(&args.cache, &args.output.destination_refs()?, session.clone())?;
    let mut build = Build {
        session,
        cache,
        args,
        settings,
        context,
        store,
        plan,
        work,
        started,
        isolation: OnceLock::new(),
        outputs: Mutex::new(HashMap::new()),
        finished: Condvar::new(),
        cancelled,
        images: sources::ImageRoots::default(),
        host_root: None,
    };
    build.host_root = hostroot::HostRoot::for_build(&build)?;
    let _cleanup = build.host_root.as_ref().and_then(|h| h.cleanup_guard(build.args.options.cleanup));
    let target = run_stages(&build)?;
    build.check_cancelled()?;

    let mut image = target.image.clone();
    stage::finalize_config(&build, &mut image)?;
    build.cache.provide_for_delivery(&target.lazy_hits, &build.args.output, &build.store)?;
    if let Some(base) = &target.lazy_base {
        base::provide_for_delivery(base, &build.args.output, &build.session, &build.store)?;
    }
    let delivered = crate::image::deliver_in(&build.session, &image, &build.args.output, &build.store)?;
    let failed_pushes = build.cache.finish();
    if failed_pushes > 0 {
        tracing::warn!("{failed_pushes} cache layer push(es) failed; the next build will run those steps again");
    }
    tracing::info!("Built image {} ({} layers) in {:.1}s", delivered.manifest_digest, image.layers.len(), started.elapsed().as_secs_f64());
    for r in &delivered.pushed {
        tracing::info!("Pushed {r}@{}", delivered.manifest_digest);
    }
    if let Some(p) = &build.args.output.tar_path {
        tracing::info!("Docker archive: {}", p.display());
    }
    if let Some(p) = &build.args.output.oci_layout_path {
        tracing::info!("OCI layout: {}", p.display());
    }
    Ok(())
}

/// Builds every planned stage, each in its own thread once its
/// dependencies are done; returns the target stage.
fn run_stages(build: &Build) -> Result<Arc<StageOutput>> {
    if build.host_root.is_some() {
        // One root for all: the stages take turns, in dependency order.
        for st in &build.plan.stages {
            let out = stage::build_stage(build, st)?;
            build.publish(st.index, Some(Arc::new(out)));
        }
        return build.wait_for_stage(build.plan.target);
    }
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for st in &build.plan.stages {
            let errors = &errors;
            scope.spawn(move || {
                let result = stage::build_stage(build, st);
                match result {
                    Ok(out) => build.publish(st.index, Some(Arc::new(out))),
                    Err(e) => {
                        // The first failure stops the others; later ones only echo it.
                        let first = !build.cancelled.swap(true, Ordering::SeqCst);
                        if first {
                            if let Ok(mut errs) = errors.lock() {
                                errs.push(e);
                            }
                        }
                        build.publish(st.index, None);
                    }
                }
            });
        }
    });
    let mut errors = errors.into_inner().map_err(|_| anyhow!("a stage thread panicked"))?;
    if let Some(e) = errors.pop() {
        return Err(e);
    }
    let target = build.plan.target;
    build.wait_for_stage(target)
}

/// On SIGINT/SIGTERM: kill running RUN processes and stop the stages; the
/// build then fails, and the work directory is removed as on any failure.
fn install_signal_handler(cancelled: Arc<AtomicBool>) -> Result<SignalGuard> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            tracing::warn!("signal {sig}: stopping the build");
            cancelled.store(true, Ordering::SeqCst);
            crate::exec::run::kill_running();
            crate::image::deliver::interrupt();
        }
    });
    Ok(SignalGuard(handle))
}

/// Restores default signal handling when the build ends.
struct SignalGuard(signal_hook::iterator::Handle);

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A layer blob written by the snapshotter, as the image module describes it.
pub(crate) fn layer_descriptor(blob: &strata_snapshotter::layer::LayerBlob) -> Result<LayerDescriptor> {
    Ok(LayerDescriptor {
        media_type: blob.compression.media_type().to_string(),
        digest: crate::image::digest::Digest::parse(&blob.digest)?,
        size: blob.size,
        diff_id: crate::image::digest::Digest::parse(&blob.diff_id)?,
    })
}
