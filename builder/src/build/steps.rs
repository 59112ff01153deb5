//! The steps that change a stage's root: RUN (an isolated process, changes
//! found by the snapshotter), COPY and ADD (written by strata, which declares
//! exactly what it wrote), and WORKDIR (its directory created if missing).
//! Every step ends its snapshot step even when it fails, so that no FUSE
//! mount outlives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use strata_snapshotter::{Snapshotter, StepKind};

use super::stage::StepChanges;
use super::{Build, sources};
use crate::dockerfile::{self, Command, Heredoc, InlineSource};
use crate::exec::copy::{self as copier, CopyOptions, Excluder, NothingExcluded, SourceTree, Written};
use crate::exec::metadata::{self, StageVars};
use crate::exec::run::{self, MountSpec, RunFile, RunRequest};
use crate::exec::chmod::Chmod;
use crate::exec::{scoped, user};
use crate::image::config::ImageConfig;

/// Proxy variables a RUN gets from `--build-arg` without an ARG (as Docker).
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
    "all_proxy",
];

/// Runs one RUN step.
pub fn run(
    build: &Build,
    snap: &mut Snapshotter,
    config: &ImageConfig,
    vars: &StageVars,
    instr: &dockerfile::Run,
    label: &str,
) -> Result<StepChanges> {
    if instr.security == Some(dockerfile::Security::Insecure) {
        bail!("RUN --security=insecure is not supported");
    }
    let network = match instr.network {
        None | Some(dockerfile::Network::Default) => run::Network::Default,
        Some(dockerfile::Network::None) => run::Network::None,
        Some(dockerfile::Network::Host) => bail!("RUN --network=host is not supported (use default or none)"),
    };
    let isolation = build.isolation()?;
    if isolation == run::Isolation::HostRoot && build.host_root.is_none() {
        // The build chose where to build before its first stage, from the Dockerfile's RUNs.
        bail!(
            "at isolation level \"{isolation}\" RUN runs in the container's own root, which strata prepares only \
             for a Dockerfile with a RUN of its own; this RUN comes from the base image's ONBUILD triggers (add a \
             RUN to the Dockerfile, e.g. `RUN true`)"
        );
    }
    let (argv, files) = run_argv(config, &instr.command, &instr.heredocs);

    let mut env = metadata::env_pairs(config);
    env.extend(vars.arg_env(config));
    for name in PROXY_ARGS {
        if let Some(Some(v)) = vars.build_args.get(*name) {
            if !env.iter().any(|(k, _)| k == name) {
                env.push((name.to_string(), v.clone()));
            }
        }
    }

    let mut stage_roots = HashMap::new();
    for raw in &instr.mounts {
        if let MountSpec::Bind { from: Some(from), .. } = run::parse_mount(raw)? {
            stage_roots.insert(from.clone(), sources::source_root(build, &from)?);
        }
    }

    let start = snap.begin_step(StepKind::Run)?;
    if let Some(why) = &start.fallback {
        tracing::info!("{why}");
    }
    let mut req = RunRequest::new(start.dir.clone(), argv, label, isolation);
    req.env = env;
    req.user = config.config.user.clone().filter(|u| !u.is_empty());
    req.workdir = metadata::workdir(config);
    req.mounts = instr.mounts.clone();
    req.network = network;
    req.secrets = build.args.input.secrets.clone();
    req.context_dir = Some(build.context.dir().to_path_buf());
    req.stage_roots = stage_roots;
    req.cache_root = build.work.run_cache();
    req.files = files;
    let parents = ParentTimes::record(&req);
    let outcome = run::execute(&req);
    parents.restore();
    let t = Instant::now();
    if let Ok(o) = &outcome {
        snap.declare_written(&o.created_paths);
    }
    let changes = snap.finish_step();
    outcome?;
    Ok(StepChanges::Changed(changes.context("finding what the RUN changed")?, t.elapsed()))
}

/// The times of the directories holding a RUN's mountpoints and provided
/// files (/etc for /etc/hosts, …): making and removing those entries changes
/// the directory's mtime, which is not the command's doing and must not put
/// the directory into the step's layer.
struct ParentTimes(Vec<(PathBuf, filetime::FileTime, filetime::FileTime)>);

impl ParentTimes {
    fn record(req: &RunRequest) -> ParentTimes {
        let mut out = Vec::new();
        let planned = run::excluded_paths(req).unwrap_or_default();
        let mut parents: Vec<PathBuf> = planned.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
        parents.sort();
        parents.dedup();
        for parent in parents {
            let Ok(host) = scoped::resolve(&req.root, &parent, true) else { continue };
            if let Ok(meta) = std::fs::symlink_metadata(&host) {
                let atime = filetime::FileTime::from_last_access_time(&meta);
                let mtime = filetime::FileTime::from_last_modification_time(&meta);
                out.push((host, atime, mtime));
            }
        }
        ParentTimes(out)
    }

    fn restore(&self) {
        for (host, atime, mtime) in &self.0 {
            if let Err(e) = filetime::set_symlink_file_times(host, *atime, *mtime) {
                tracing::debug!("restoring the times of {}: {e}", host.display());
            }
        }
    }
}

/// The argv of a RUN: SHELL + command for the shell form. Heredocs: a
/// command that is only a heredoc runs its body (as a script file when it
/// starts with `#!`); otherwise the bodies follow the command line, for the
/// shell to read as it reads any heredoc.
fn run_argv(config: &ImageConfig, command: &Command, heredocs: &[Heredoc]) -> (Vec<String>, Vec<RunFile>) {
    let text = match command {
        Command::Shell(text) if !heredocs.is_empty() => text,
        other => return (metadata::command_argv(config, other), Vec::new()),
    };
    let only_heredoc = heredocs.len() == 1 && text.trim().starts_with("<<") && !text.trim().contains(char::is_whitespace);
    if only_heredoc {
        let body = heredocs[0].file_content();
        if body.starts_with("#!") {
            let path = "/.strata-heredoc-run".to_string();
            let file = RunFile { path: path.clone(), contents: body.into_bytes(), mode: 0o755 };
            return (vec![path], vec![file]);
        }
        return (metadata::command_argv(config, &Command::Shell(body)), Vec::new());
    }
    let mut script = text.clone();
    for h in heredocs {
        script.push('\n');
        script.push_str(&h.content);
        script.push_str(&h.name);
    }
    script.push('\n');
    (metadata::command_argv(config, &Command::Shell(script)), Vec::new())
}

/// COPY.
pub fn copy(build: &Build, snap: &mut Snapshotter, root: &Path, config: &ImageConfig, instr: &dockerfile::Copy) -> Result<StepChanges> {
    if instr.link {
        tracing::debug!("COPY --link: the layer holds the same files either way");
    }
    let exclude = copier::exclude_patterns(&instr.exclude)?;
    let opts = CopyOptions {
        owner: chown(root, instr.chown.as_deref())?,
        chmod: instr.chmod.as_deref().map(Chmod::parse).transpose()?,
        parents: instr.parents,
        exclude: exclude.as_ref().map(|m| m as &dyn Excluder),
    };
    let from_root = instr.from.as_deref().map(|f| sources::source_root(build, f)).transpose()?;
    let tree = match (&from_root, &instr.from) {
        (Some(r), Some(f)) => SourceTree { root: r, ignore: &NothingExcluded, name: format!("source {f}") },
        _ => SourceTree { root: build.context.dir(), ignore: build.context.ignore(), name: "build context".into() },
    };
    let workdir = PathBuf::from(metadata::workdir(config));
    write_step(snap, || {
        let mut written = Written::default();
        if !instr.files.sources.is_empty() {
            written = copier::copy(&tree, &instr.files.sources, &instr.files.dest, &workdir, root, &opts)?;
        }
        copy_inline(build, &instr.files.inline, &instr.files.dest, &workdir, root, &opts, &mut written)?;
        Ok(written)
    })
}

/// ADD.
pub fn add(build: &Build, snap: &mut Snapshotter, root: &Path, config: &ImageConfig, instr: &dockerfile::Add) -> Result<StepChanges> {
    if instr.keep_git_dir == Some(true) {
        bail!("ADD --keep-git-dir=true is not supported");
    }
    let exclude = copier::exclude_patterns(&instr.exclude)?;
    let opts = CopyOptions {
        owner: chown(root, instr.chown.as_deref())?,
        chmod: instr.chmod.as_deref().map(Chmod::parse).transpose()?,
        parents: false,
        exclude: exclude.as_ref().map(|m| m as &dyn Excluder),
    };
    let scratch = tempfile::Builder::new().prefix("add-").tempdir_in(build.work.build_dir())?;
    let tree = SourceTree { root: build.context.dir(), ignore: build.context.ignore(), name: "build context".into() };
    let workdir = PathBuf::from(metadata::workdir(config));
    write_step(snap, || {
        let mut written = Written::default();
        if !instr.files.sources.is_empty() {
            let (files, dest) = (&instr.files.sources, &instr.files.dest);
            written = copier::add(&tree, files, dest, &workdir, root, &opts, instr.checksum.as_deref(), scratch.path())?;
        }
        copy_inline(build, &instr.files.inline, &instr.files.dest, &workdir, root, &opts, &mut written)?;
        Ok(written)
    })
}

/// `--chown` resolved against the stage's /etc/passwd and /etc/group.
fn chown(root: &Path, spec: Option<&str>) -> Result<Option<(u32, u32)>> {
    spec.map(|c| user::resolve_chown(root, c).with_context(|| format!("--chown={c}"))).transpose()
}

/// COPY/ADD heredoc sources (`COPY <<EOF /file`): files made from the
/// bodies, copied like context files (mode 0644).
fn copy_inline(
    build: &Build,
    inline: &[InlineSource],
    dest: &str,
    workdir: &Path,
    root: &Path,
    opts: &CopyOptions,
    written: &mut Written,
) -> Result<()> {
    if inline.is_empty() {
        return Ok(());
    }
    let dir = tempfile::Builder::new().prefix("heredoc-").tempdir_in(build.work.build_dir())?;
    let mut names = Vec::new();
    for (i, src) in inline.iter().enumerate() {
        let name = Path::new(&src.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("heredoc-{i}"));
        let file = dir.path().join(&name);
        std::fs::write(&file, &src.data)?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        names.push(name);
    }
    let tree = SourceTree { root: dir.path(), ignore: &NothingExcluded, name: "heredoc".into() };
    let more = copier::copy(&tree, &names, dest, workdir, root, opts)?;
    written.paths.extend(more.paths);
    Ok(())
}

/// A step strata writes itself: the snapshotter is told exactly what changed.
fn write_step(snap: &mut Snapshotter, write: impl FnOnce() -> Result<Written>) -> Result<StepChanges> {
    snap.begin_step(StepKind::Write)?;
    let result = write();
    let t = Instant::now();
    if let Ok(w) = &result {
        snap.declare_written(w.with_parents());
    }
    let changes = snap.finish_step();
    result?;
    Ok(StepChanges::Changed(changes.context("recording what the step wrote")?, t.elapsed()))
}

/// WORKDIR: its directory is created (owned by USER, as BuildKit does) when missing.
pub fn workdir(snap: &mut Snapshotter, root: &Path, config: &ImageConfig) -> Result<StepChanges> {
    let path = metadata::workdir(config);
    let host = scoped::resolve(root, Path::new(&path), true)?;
    if std::fs::symlink_metadata(&host).is_ok() {
        if !host.is_dir() {
            bail!("WORKDIR {path}: exists in the image and is not a directory");
        }
        return Ok(StepChanges::None);
    }
    let owner = match config.config.user.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => Some(user::resolve_chown(root, u).with_context(|| format!("USER {u}"))?),
        None => None,
    };
    write_step(snap, || {
        let mut written = Written::default();
        for dir in scoped::create_dir_all_tracked(&host)? {
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))?;
            }
            if let Ok(rel) = dir.strip_prefix(root) {
                written.paths.insert(rel.to_path_buf());
            }
        }
        Ok(written)
    })
    .map_err(|e: anyhow::Error| anyhow!("WORKDIR {path}: {e:#}"))
}
