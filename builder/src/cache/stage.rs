//! The cache keys of a whole stage, computed before any of its steps runs,
//! so that every look-up can start at once ([`super::Cache::prefetch`]).
//!
//! Walks the stage's instructions as the executor will: each is expanded with
//! the variables in effect, metadata instructions (ENV, ARG, USER, WORKDIR,
//! SHELL, …) are applied to a copy of the config, and each RUN, COPY and ADD
//! gets its [`KeyInputs`]. What a step can observe of the config (user,
//! working directory, shell) is part of its instruction text; what it cannot
//! (LABEL, EXPOSE, CMD…) is not, so changing a label busts no cache.
//!
//! Steps whose inputs cannot be known before the build are not cached, nor
//! is anything after them in the stage: `COPY --from` (another stage's or an
//! image's files) and ADD of a URL or a git repository.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::keys::{CacheKey, KeyInputs, StepKind, hash_sources};
use crate::dockerfile::{Files, Instruction};
use crate::exec::copy::{Excluder, component_match};
use crate::exec::metadata::{self, StageVars};
use crate::image::config::ImageConfig;

/// A step of the stage that can be cached.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    /// Stable across builds: "stage 0 step 3 (RUN)", for logs and explanations.
    pub name: String,
    pub inputs: KeyInputs,
}

impl PlannedStep {
    pub fn key(&self) -> CacheKey {
        self.inputs.key()
    }
}

/// The build context COPY and ADD read from.
pub struct ContextTree<'a> {
    pub dir: &'a Path,
    pub ignore: &'a dyn Excluder,
}

/// For each of `instructions` (the stage's, after FROM, ONBUILD triggers
/// first), the cacheable step it is, if any. `base` names the base image (its
/// manifest digest, or `scratch`); `config` and `vars` are the stage's before
/// its first instruction; `stage` labels the stage ("stage 0").
pub fn plan_stage(
    stage: &str,
    base: &str,
    config: &ImageConfig,
    vars: &StageVars,
    instructions: &[Instruction],
    context: &ContextTree,
) -> Result<Vec<Option<PlannedStep>>> {
    let mut config = config.clone();
    let mut vars = vars.clone();
    let mut parent: Option<CacheKey> = None;
    let mut chain_broken = false;
    let mut out = Vec::with_capacity(instructions.len());
    for (n, instr) in instructions.iter().enumerate() {
        let lookup = |name: &str| vars.lookup(&config, name);
        let expanded = instr.expand(&lookup).map_err(|d| anyhow!("{d}"))?;
        let planned = match &expanded {
            Instruction::Run(run) => Some((
                StepKind::Run,
                format!(
                    "RUN {:?} heredocs={:?} mounts={:?} network={:?} security={:?} user={:?} workdir={:?} shell={:?}",
                    run.command,
                    run.heredocs,
                    run.mounts,
                    run.network,
                    run.security,
                    config.config.user,
                    metadata::workdir(&config),
                    metadata::shell(&config)
                ),
                BTreeMap::new(),
            )),
            Instruction::Copy(copy) if copy.from.is_none() => {
                let text = format!(
                    "COPY {:?} chown={:?} chmod={:?} link={} parents={} exclude={:?} workdir={:?}",
                    copy.files,
                    copy.chown,
                    copy.chmod,
                    copy.link,
                    copy.parents,
                    copy.exclude,
                    metadata::workdir(&config)
                );
                Some((StepKind::Copy, text, sources_of(&copy.files, context)?))
            }
            Instruction::Add(add) if add.files.sources.iter().all(|s| !is_remote(s)) => {
                let text = format!(
                    "ADD {:?} chown={:?} chmod={:?} link={} keep_git_dir={:?} checksum={:?} exclude={:?} workdir={:?}",
                    add.files,
                    add.chown,
                    add.chmod,
                    add.link,
                    add.keep_git_dir,
                    add.checksum,
                    add.exclude,
                    metadata::workdir(&config)
                );
                Some((StepKind::Copy, text, sources_of(&add.files, context)?))
            }
            Instruction::Copy(_) | Instruction::Add(_) => {
                chain_broken = true;
                None
            }
            other => {
                metadata::apply(&mut config, &mut vars, other)?;
                None
            }
        };
        let step = match planned {
            Some((kind, instruction, sources)) if !chain_broken => {
                let inputs = KeyInputs {
                    kind,
                    base: base.to_string(),
                    parent: parent.clone(),
                    instruction,
                    args: vars.args.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect(),
                    env: metadata::env_pairs(&config).into_iter().collect(),
                    sources,
                };
                parent = Some(inputs.key());
                Some(PlannedStep { name: format!("{stage} step {} ({})", n + 1, expanded.keyword()), inputs })
            }
            _ => None,
        };
        out.push(step);
    }
    Ok(out)
}

fn is_remote(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://") || source.starts_with("git@") || source.contains(".git#")
}

/// Hashes the context files a COPY/ADD names (wildcards expanded as COPY does).
fn sources_of(files: &Files, context: &ContextTree) -> Result<BTreeMap<String, String>> {
    let mut matched = Vec::new();
    for source in &files.sources {
        let rel = clean(source);
        let before = matched.len();
        expand(context.dir, &rel, PathBuf::new(), &mut matched)
            .with_context(|| format!("COPY source {source}"))?;
        if matched.len() == before {
            bail!("COPY source {source}: no such file or directory in the build context");
        }
    }
    hash_sources(context.dir, &matched, context.ignore)
}

/// `source` as a path relative to the context root (`..` cannot climb out).
fn clean(source: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(source).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Expands wildcards in `rest`, component by component, under `root/done`.
fn expand(root: &Path, rest: &Path, done: PathBuf, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut comps = rest.components();
    let Some(first) = comps.next() else {
        if fs::symlink_metadata(root.join(&done)).is_ok() {
            out.push(done);
        }
        return Ok(());
    };
    let name = first.as_os_str().to_string_lossy();
    let tail = comps.as_path();
    if !name.contains(['*', '?', '[']) {
        return expand(root, tail, done.join(first), out);
    }
    let dir = root.join(&done);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in names.into_iter().filter(|n| component_match(&name, n)) {
        expand(root, tail, done.join(n), out)?;
    }
    Ok(())
}
