//! One stage: its base extracted into a fresh root, the base image's ONBUILD
//! triggers, then each instruction in turn; a layer for every step that
//! changed the root (or one for the whole stage with `--single-snapshot`),
//! and the config and history as Docker records them. In the target stage a
//! base image is extracted only when a step first works on the root.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use strata_snapshotter::{ChangeSet, Snapshotter};

use super::base::{RootState, Unextracted};
use super::deferred::DeferredHits;
use super::{Build, StageOutput, steps};
use crate::dockerfile::{Command, Instruction};
use crate::exec::metadata::{self, StageVars};
use crate::image::config::{History, ImageConfig, Platform};
use crate::image::deliver::{BuiltImage, LayerDescriptor};
use crate::image::options::PlatformSpec;
use crate::plan::{self, Base};

/// How logs name a stage: `stage 1 (builder)`.
pub fn stage_title(st: &plan::Stage) -> String {
    match &st.name {
        Some(name) => format!("stage {} ({name})", st.index),
        None => format!("stage {}", st.index),
    }
}

/// What a step did to the root.
pub enum StepChanges {
    /// The step only changed the config.
    None,
    /// The snapshotter's answer, and how long it took.
    Changed(ChangeSet, Duration),
}

/// Builds one stage.
pub fn build_stage(build: &Build, st: &plan::Stage) -> Result<StageOutput> {
    let title = stage_title(st);
    build_stage_inner(build, st).with_context(|| title)
}

fn build_stage_inner(build: &Build, st: &plan::Stage) -> Result<StageOutput> {
    let staged = build.work.build_dir().join(format!("stage-{}", st.index));
    // Only the target stage's root is used by no other stage: there a hit's
    // layer need not be applied until a later step runs on the root, nor the
    // base extracted. (In the container's own root, kaniko's way, the root is
    // left holding the image.)
    let defer_hits = st.index == build.plan.target && build.host_root.is_none();
    let (mut image, unextracted) = prepare_root(build, st, &staged, defer_hits)?;
    build.check_cancelled()?;
    let root = match &build.host_root {
        Some(host) => host.enter(&staged)?,
        None => staged.clone(),
    };

    let triggers = image.config.config.on_build.take().unwrap_or_default();
    prepare_config(&mut image.config);
    let mut vars = StageVars {
        global_args: build.plan.global_args.iter().cloned().collect(),
        build_args: build.plan.build_args.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
        ..Default::default()
    };

    let mut instructions = Vec::new();
    for trigger in &triggers {
        let df = crate::dockerfile::parse(trigger, Path::new("ONBUILD"))
            .map_err(|d| anyhow!("the base image's ONBUILD trigger {trigger:?}: {d}"))?;
        instructions.extend(df.instructions);
    }
    instructions.extend(st.instructions.iter().cloned());

    let (mode, excluded) = match &build.host_root {
        Some(host) => (host.snapshot_mode(), host.excluded()),
        None => (build.settings.snapshot_mode, build.settings.excluded.clone()),
    };
    let mut state = RootState { root: root.clone(), mode, excluded, base: unextracted, snap: None };
    if state.base.is_none() {
        state.snapshotter(build)?;
    }
    let total = instructions.len();
    let mut pending = ChangeSet::default();
    let prefix = match &st.name {
        Some(n) => format!("{}:{n}", st.index),
        None => st.index.to_string(),
    };
    let planned = cache_plan(build, st, &image, &vars, &instructions);
    let mut deferred = DeferredHits::default();
    // Steps whose deferred hit proved unusable: they run, uncached.
    let mut uncached = std::collections::HashSet::new();
    let mut n = 0;
    while n < total {
        let instr = &instructions[n];
        build.check_cancelled()?;
        let label = format!("[{prefix} {}/{total}] {}", n + 1, instr.keyword());
        let started = Instant::now();
        let src = instr.source();
        tracing::info!("[{prefix} {}/{total}] {}", n + 1, src.original);
        let lookup = |name: &str| vars.lookup(&image.config, name);
        let expanded = instr.expand(&lookup).map_err(|d| anyhow!("{d}"))?;
        let at = |e: anyhow::Error| e.context(format!("{}:{}: {}", src.file.display(), src.start_line, instr.keyword()));
        let cached_step = planned[n].as_ref().filter(|_| !uncached.contains(&n));
        if let Some(step) = cached_step
            && let crate::cache::Lookup::Hit(hit) = build.cache.lookup(&step.name, &step.inputs, &build.store)
        {
            // Some(layer or None for a step that made no layer), or None to run the step.
            let outcome = if hit.layer.is_none() {
                // Nothing to apply to the root, so nothing deferred either.
                build.cache.fetch(&hit, &build.store).ok().map(|()| None)
            } else if defer_hits {
                deferred.defer((*hit).clone(), n, &step.name, &image, &vars);
                Some(hit.descriptor())
            } else {
                match build.cache.fetch(&hit, &build.store) {
                    Ok(()) => Some(Some(apply_hit(build, state.snapshotter(build)?, &root, &step.name, &hit)?)),
                    Err(e) => {
                        tracing::warn!("cache: {}: the cached layer is unusable, running the step: {e:#}", step.name);
                        None
                    }
                }
            };
            if let Some(layer) = outcome {
                let created_by = match &expanded {
                    Instruction::Run(run) => run_history(&image.config, &vars, &run.command),
                    _ => format!("{} # buildkit", src.original),
                };
                let empty_layer = layer.is_none();
                image.layers.extend(layer);
                image.config.history.push(History {
                    created: Some(build.settings.now()),
                    created_by: Some(created_by),
                    empty_layer,
                    ..Default::default()
                });
                tracing::info!("{label} done in {:.2}s (cached)", started.elapsed().as_secs_f64());
                n += 1;
                continue;
            }
        }
        if needs_root(&expanded) && !deferred.is_empty() {
            // `Cache::apply` fetches the layer first.
            let mut apply = |snap: &mut Snapshotter, hit: &crate::cache::Hit, name: &str| {
                apply_hit(build, snap, &root, name, hit).map(|_| ())
            };
            if let Some(rewind) = deferred.apply_all(&mut apply, state.snapshotter(build)?, &mut image, &mut vars) {
                uncached.insert(rewind.step);
                n = rewind.step;
                continue;
            }
        }
        let (changes, created_by) = match &expanded {
            Instruction::From(_) => bail!("{}:{}: FROM inside a stage", src.file.display(), src.start_line),
            Instruction::Run(run) => {
                let changes = steps::run(build, state.snapshotter(build)?, &image.config, &vars, run, &label).map_err(at)?;
                (changes, run_history(&image.config, &vars, &run.command))
            }
            Instruction::Copy(copy) => {
                let changes = steps::copy(build, state.snapshotter(build)?, &root, &image.config, copy).map_err(at)?;
                (changes, format!("{} # buildkit", src.original))
            }
            Instruction::Add(add) => {
                let changes = steps::add(build, state.snapshotter(build)?, &root, &image.config, add).map_err(at)?;
                (changes, format!("{} # buildkit", src.original))
            }
            Instruction::Workdir(_) => {
                metadata::apply(&mut image.config, &mut vars, &expanded).map_err(at)?;
                let changes = steps::workdir(state.snapshotter(build)?, &root, &image.config).map_err(at)?;
                (changes, src.original.clone())
            }
            other => {
                metadata::apply(&mut image.config, &mut vars, other).map_err(at)?;
                (StepChanges::None, src.original.clone())
            }
        };
        let mut history = History { created: Some(build.settings.now()), created_by: Some(created_by), ..Default::default() };
        match changes {
            StepChanges::None => history.empty_layer = true,
            StepChanges::Changed(cs, took) if build.settings.single_snapshot => {
                tracing::debug!("{label}: {} paths changed (snapshot {})", cs.len(), ms(took));
                pending.merge(cs);
                history.empty_layer = true;
            }
            StepChanges::Changed(cs, took) => match write_layer(build, &root, &cs, &label, state.snapshotter(build)?.mode(), took)? {
                Some(layer) => {
                    if let Some(step) = &planned[n]
                        && let Err(e) = build.cache.store(&step.name, &step.inputs, &layer, &build.store)
                    {
                        tracing::warn!("{label}: {e:#}");
                    }
                    image.layers.push(layer)
                }
                None => {
                    if let Some(step) = &planned[n]
                        && let Err(e) = build.cache.store_empty(&step.name, &step.inputs, &build.store)
                    {
                        tracing::warn!("{label}: {e:#}");
                    }
                    history.empty_layer = true
                }
            },
        }
        image.config.history.push(history);
        tracing::info!("{label} done in {:.2}s", started.elapsed().as_secs_f64());
        n += 1;
    }
    if build.settings.single_snapshot && !pending.is_empty() {
        let label = format!("[{prefix}] single snapshot");
        let mode = state.snapshotter(build)?.mode();
        if let Some(layer) = write_layer(build, &root, &pending, &label, mode, Duration::ZERO)? {
            image.layers.push(layer);
            match image.config.history.last_mut() {
                Some(h) if h.empty_layer && total > 0 => h.empty_layer = false,
                _ => image.config.history.push(History {
                    created: Some(build.settings.now()),
                    created_by: Some("single snapshot".into()),
                    ..Default::default()
                }),
            }
        }
    }
    let lazy_base = match state.base.take() {
        Some(Unextracted::Fetched(base)) => {
            tracing::info!("Base image {} not extracted: no step of {} needed the root", base.reference, stage_title(st));
            None
        }
        Some(Unextracted::Unfetched { base, .. }) => {
            let image = &base.image;
            tracing::info!(
                "Base image {} not extracted: no step of {} needed the root (its {} layer(s) not downloaded)",
                image.reference,
                stage_title(st),
                image.layers.len()
            );
            Some(base)
        }
        None => None,
    };
    let root = match &build.host_root {
        Some(host) => host.leave(build, st, &staged)?,
        None => root,
    };
    let lazy_hits = deferred.into_hits();
    if !lazy_hits.is_empty() {
        tracing::info!("cache: {} cached layer(s) of {} not downloaded: no later step needed them", lazy_hits.len(), stage_title(st));
    }
    Ok(StageOutput { root, image, lazy_hits, lazy_base })
}

/// The cache keys of the stage's steps (None for steps not cached), computed
/// before the first runs; their shared-cache look-ups start at once.
fn cache_plan(
    build: &Build,
    st: &plan::Stage,
    image: &BuiltImage,
    vars: &StageVars,
    instructions: &[Instruction],
) -> Vec<Option<crate::cache::stage::PlannedStep>> {
    use crate::cache::StepKind as CacheKind;
    let none = || vec![None; instructions.len()];
    if build.settings.single_snapshot || !(build.cache.caches(CacheKind::Run) || build.cache.caches(CacheKind::Copy)) {
        return none();
    }
    // The base is named by its layers: the same filesystem, the same base.
    let base: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_str()).collect();
    let base = format!("layers:{}", base.join(","));
    let context = crate::cache::stage::ContextTree { dir: build.context.dir(), ignore: build.context.ignore() };
    match crate::cache::stage::plan_stage(&format!("stage {}", st.index), &base, &image.config, vars, instructions, &context) {
        Ok(planned) => {
            let planned: Vec<_> =
                planned.into_iter().map(|p| p.filter(|p| build.cache.caches(p.inputs.kind))).collect();
            let keys: Vec<_> = planned.iter().flatten().map(|p| p.key()).collect();
            build.cache.prefetch(&keys);
            planned
        }
        Err(e) => {
            tracing::warn!("cache: stage {}: its cache keys cannot be computed ({e:#}); its steps run uncached", st.index);
            none()
        }
    }
}

/// Applies a hit's layer (fetched first if needed) to the root as a step strata writes itself
/// (the snapshotter is told what it wrote); returns the layer.
fn apply_hit(build: &Build, snap: &mut Snapshotter, root: &Path, name: &str, hit: &crate::cache::Hit) -> Result<LayerDescriptor> {
    snap.begin_step(strata_snapshotter::StepKind::Write)?;
    let applied = build.cache.apply(hit, &build.store, root);
    if let Ok(paths) = &applied {
        snap.declare_written(paths);
    }
    let finished = snap.finish_step();
    applied.with_context(|| format!("{name}: applying the cached layer"))?;
    finished.context("recording what the cached layer wrote")?;
    hit.descriptor().ok_or_else(|| anyhow!("{name}: the cached entry has no layer to apply"))
}

/// Whether a step works on the stage root (the others only change the config).
fn needs_root(instr: &Instruction) -> bool {
    matches!(instr, Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) | Instruction::Workdir(_))
}

/// Extracts (or copies) the stage's base into `root`; returns the base image,
/// and with `lazy` a base image left to extract (`root` is then empty).
fn prepare_root(build: &Build, st: &plan::Stage, root: &Path, lazy: bool) -> Result<(BuiltImage, Option<Unextracted>)> {
    let platform = match &st.platform {
        Some(p) => p.parse::<PlatformSpec>().map_err(|e| anyhow!("FROM --platform: {e}"))?.0,
        None => build.args.registry.platform(),
    };
    match &st.base {
        Base::Stage(parent) => {
            let parent = build.wait_for_stage(*parent)?;
            super::tree::copy_tree(&parent.root, root)?;
            Ok((parent.image.clone(), None))
        }
        Base::Scratch => {
            std::fs::create_dir_all(root)?;
            let base = crate::image::resolve::BaseImage::scratch(&platform);
            Ok((BuiltImage { config: base.config, layers: Vec::new(), mount_sources: Vec::new() }, None))
        }
        Base::Image(name) => {
            tracing::info!("Retrieving image {name}");
            let base = super::base::base_image(build, name, &platform, lazy)?;
            let image = BuiltImage::from_base(base.image())?;
            if lazy {
                std::fs::create_dir_all(root)?;
                return Ok((image, Some(base)));
            }
            base.extract(build, root)?;
            Ok((image, None))
        }
    }
}

/// The config a stage starts from: platform fields set, BuildKit's default PATH.
fn prepare_config(config: &mut ImageConfig) {
    if metadata::env_get(config, "PATH").is_none() && (config.os.is_empty() || config.os == "linux") {
        metadata::env_set(config, "PATH", metadata::DEFAULT_PATH);
    }
    config.created = None;
}

/// `RUN |2 A=1 B=2 /bin/sh -c make # buildkit`, as BuildKit records it.
fn run_history(config: &ImageConfig, vars: &StageVars, command: &Command) -> String {
    let argv = metadata::command_argv(config, command);
    let args = vars.arg_env(config);
    let prefix = if args.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("|{} {} ", args.len(), list.join(" "))
    };
    format!("RUN {prefix}{} # buildkit", argv.join(" "))
}

/// Writes the layer for `changes`; None when nothing changed.
fn write_layer(
    build: &Build,
    root: &Path,
    changes: &ChangeSet,
    label: &str,
    mode: strata_snapshotter::SnapshotMode,
    snapshot_time: Duration,
) -> Result<Option<LayerDescriptor>> {
    if changes.is_empty() {
        tracing::info!("{label} snapshot: mode={mode}, no changes, no layer (snapshot {})", ms(snapshot_time));
        return Ok(None);
    }
    let t = Instant::now();
    let blob = strata_snapshotter::layer::write_layer_cancellable(root, changes, &build.settings.layer, build.store.dir(), &build.cancelled)
        .with_context(|| format!("{label}: writing the layer"))?;
    tracing::info!(
        "{label} snapshot: mode={mode}, {} paths changed, layer {} ({}), snapshot {}, layer {}",
        changes.len(),
        human_size(blob.size),
        short(&blob.digest),
        ms(snapshot_time),
        ms(t.elapsed())
    );
    Ok(Some(super::layer_descriptor(&blob)?))
}

/// The target image's last touches: `--label`s, `created`.
pub fn finalize_config(build: &Build, image: &mut BuiltImage) -> Result<()> {
    if !build.settings.labels.is_empty() {
        let labels = image.config.config.labels.get_or_insert_with(Default::default);
        for (k, v) in &build.settings.labels {
            labels.insert(k.clone(), v.clone());
        }
    }
    image.config.created = Some(build.settings.now());
    let platform: Platform = build.args.registry.platform();
    if image.config.architecture.is_empty() {
        image.config.architecture = platform.architecture;
    }
    if image.config.os.is_empty() {
        image.config.os = platform.os;
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    if d.as_secs() >= 1 { format!("{:.2}s", d.as_secs_f64()) } else { format!("{}ms", d.as_millis()) }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}
