//! RUN execution: runs one RUN step's command inside the stage root (or the
//! snapshotter's FUSE view of it), isolated as much as the environment allows
//! (see [`Isolation`]), with the step's environment, user, working directory
//! and `--mount`s, streaming its output line by line under the step's label.
//!
//! Contract with the caller (the build orchestrator):
//! - `argv` is final: for the shell form the caller prepends SHELL
//!   (`["/bin/sh", "-c", "…"]`).
//! - Heredocs: a heredoc that is fed to the command goes in `stdin`; a
//!   heredoc that must exist as a file (e.g. a script run by path) goes in
//!   `files`, and is present, read-only, only for the length of the step.
//! - Paths in [`RunOutcome`] are absolute in-image paths (`/etc/hosts`).
//!   `created_paths` (the WORKDIR directories made) belong to the step's layer;
//!   `excluded_paths` never do, so the snapshotter must ignore them (they can be
//!   known before the step with [`excluded_paths`], for the FUSE journal).
//! - Nothing a `--mount` brings in is written into the root, whatever the level.

pub mod isolation;
pub mod mounts;
pub mod network;

mod caps;
mod output;
pub(crate) mod rootfs;
mod sandbox;
mod setup;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};

pub use isolation::Isolation;
pub use mounts::{MountSpec, Sharing, parse_mount};
pub use network::Network;

/// Where a build secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// A `--secret` flag: `id=ID,src=FILE` or `id=ID,env=VAR` (as BuildKit; a
/// bare `id=ID` reads the environment variable `ID`). Parsable by clap
/// (`#[arg(long = "secret")] secrets: Vec<SecretSpec>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub id: String,
    pub source: SecretSource,
}

impl FromStr for SecretSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
        for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("invalid --secret {s:?}: {field:?} is not key=value"))?;
            match k.trim() {
                "id" => id = Some(v.to_string()),
                "src" | "source" => src = Some(v.to_string()),
                "env" => env = Some(v.to_string()),
                "type" => kind = Some(v.to_string()),
                other => {
                    return Err(format!(
                        "invalid --secret {s:?}: unknown key {other:?} (expected id, src, env, type)"
                    ));
                }
            }
        }
        let id = id
            .filter(|i| !i.is_empty())
            .ok_or_else(|| format!("invalid --secret {s:?}: id= is required"))?;
        let source = match (kind.as_deref(), src, env) {
            (_, Some(_), Some(_)) => {
                return Err(format!(
                    "invalid --secret {s:?}: give src= or env=, not both"
                ));
            }
            (Some("env"), Some(v), None) | (None | Some("env"), None, Some(v)) => {
                SecretSource::Env(v)
            }
            (None | Some("file"), Some(f), None) => SecretSource::File(PathBuf::from(f)),
            (Some("file"), None, None) => {
                return Err(format!("invalid --secret {s:?}: type=file needs src="));
            }
            (None | Some("env"), None, None) => SecretSource::Env(id.clone()),
            (Some(t), _, _) => {
                return Err(format!(
                    "invalid --secret {s:?}: unknown type {t:?} (expected file or env)"
                ));
            }
        };
        Ok(SecretSpec { id, source })
    }
}

/// A file that must exist in the root only while the step runs (a heredoc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFile {
    /// Absolute in-image path.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// Where the prefixed output lines go; None in [`RunRequest::output`] means
/// strata's standard output.
pub type OutputSink = Arc<Mutex<dyn Write + Send>>;

/// Everything one RUN step needs.
#[derive(Clone)]
pub struct RunRequest {
    /// The directory the command sees as `/`: the stage root, or the FUSE
    /// mountpoint in fuse mode. Must be `/` at [`Isolation::HostRoot`].
    pub root: PathBuf,
    /// The final argv (SHELL already prepended for the shell form).
    pub argv: Vec<String>,
    /// ENV and ARG values, in order; later entries win.
    pub env: Vec<(String, String)>,
    /// The USER value (`name|uid[:group|gid]`); None runs as root.
    pub user: Option<String>,
    /// WORKDIR, absolute in-image path; created if missing.
    pub workdir: String,
    /// Raw `--mount` values of the RUN instruction.
    pub mounts: Vec<String>,
    pub network: Network,
    /// The build's `--secret`s.
    pub secrets: Vec<SecretSpec>,
    /// The build context, for `--mount type=bind` without `from=`.
    pub context_dir: Option<PathBuf>,
    /// Roots for `--mount from=NAME`: stage names and indices (and image
    /// references the caller has extracted).
    pub stage_roots: HashMap<String, PathBuf>,
    /// Where `type=cache` directories persist (under the work directory).
    pub cache_root: PathBuf,
    /// Prefix for each output line and name of the step in errors, e.g. `[2/5] RUN`.
    pub step_label: String,
    pub isolation: Isolation,
    /// Fed to the command's standard input (a heredoc); None gives /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Heredoc files present only during the step.
    pub files: Vec<RunFile>,
    /// The UTS hostname, also in /etc/hostname and /etc/hosts.
    pub hostname: String,
    pub output: Option<OutputSink>,
}

impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No env values: build args and secret-backed variables stay out of logs.
        f.debug_struct("RunRequest")
            .field("root", &self.root)
            .field("argv", &self.argv)
            .field(
                "env_names",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("user", &self.user)
            .field("workdir", &self.workdir)
            .field("mounts", &self.mounts)
            .field("network", &self.network)
            .field("isolation", &self.isolation)
            .field("step_label", &self.step_label)
            .finish_non_exhaustive()
    }
}

impl RunRequest {
    /// A request with defaults: root user, `/` as workdir, default network,
    /// no mounts, secrets or stdin, cache under `<root>/../cache`.
    pub fn new(
        root: impl Into<PathBuf>,
        argv: Vec<String>,
        step_label: impl Into<String>,
        isolation: Isolation,
    ) -> Self {
        let root = root.into();
        let cache_root = root.parent().unwrap_or(Path::new("/tmp")).join("run-cache");
        RunRequest {
            root,
            argv,
            env: Vec::new(),
            user: None,
            workdir: "/".into(),
            mounts: Vec::new(),
            network: Network::Default,
            secrets: Vec::new(),
            context_dir: None,
            stage_roots: HashMap::new(),
            cache_root,
            step_label: step_label.into(),
            isolation,
            stdin: None,
            files: Vec::new(),
            hostname: "strata".into(),
            output: None,
        }
    }
}

/// What a finished RUN reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Directories created for WORKDIR: part of the step's layer.
    pub created_paths: Vec<PathBuf>,
    /// Paths that belong to the build, never to a layer (mountpoints, the
    /// provided /etc files, secrets): the snapshotter must ignore them.
    pub excluded_paths: Vec<PathBuf>,
    pub isolation: Isolation,
}

/// The in-image paths a RUN with `req` keeps out of layers, known before it
/// runs (for the FUSE journal's exclusion list). [`RunOutcome::excluded_paths`]
/// gives the same set, with symlinks in the root resolved.
pub fn excluded_paths(req: &RunRequest) -> Result<Vec<PathBuf>> {
    let specs = parse_mounts(&req.mounts)?;
    Ok(setup::planned_targets(req, &specs)
        .into_iter()
        .map(PathBuf::from)
        .collect())
}

fn parse_mounts(raw: &[String]) -> Result<Vec<MountSpec>> {
    raw.iter().map(|m| parse_mount(m)).collect()
}

/// Runs one RUN step. Blocks until the command and everything it started
/// have ended; on every path out, nothing stays mounted or running.
pub fn execute(req: &RunRequest) -> Result<RunOutcome> {
    let label = &req.step_label;
    if req.argv.is_empty() {
        bail!("{label}: RUN has an empty command");
    }
    let specs = parse_mounts(&req.mounts).with_context(|| label.to_string())?;
    let user = match &req.user {
        Some(spec) if !spec.trim().is_empty() => {
            crate::exec::user::resolve_user(&req.root, spec)
                .with_context(|| format!("{label}: USER {spec}"))?
        }
        _ => crate::exec::user::RunUser::root(),
    };
    let mut prepared = setup::prepare(req, &specs, &user).with_context(|| label.to_string())?;
    let result = sandbox::run(req, &prepared, &user);
    let cleanup = prepared.cleanup();
    let status =
        result.with_context(|| format!("{label}: could not run {}", display_command(&req.argv)))?;
    if let Err(e) = cleanup {
        return Err(e.context(format!("{label}: cleaning up after the step")));
    }
    if let Some(failure) = status.failure() {
        return Err(anyhow!("{label}: {} {failure}", display_command(&req.argv)));
    }
    Ok(RunOutcome {
        created_paths: prepared.created_workdir.iter().map(PathBuf::from).collect(),
        excluded_paths: prepared.excluded.iter().map(PathBuf::from).collect(),
        isolation: req.isolation,
    })
}

/// The command as shown in errors: shell form shows the script.
fn display_command(argv: &[String]) -> String {
    let shown = if argv.len() >= 3 && argv[argv.len() - 2] == "-c" {
        argv[argv.len() - 1].clone()
    } else {
        argv.join(" ")
    };
    let mut shown = shown.trim().to_string();
    if shown.chars().count() > 200 {
        shown = shown.chars().take(200).collect::<String>() + "…";
    }
    format!("`{shown}`")
}

/// Kills every RUN process strata has running (for Ctrl-C and SIGTERM
/// handlers): their `execute` calls then return an error and clean up.
pub fn kill_running() {
    sandbox::kill_running();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_flags_parse() {
        assert_eq!(
            "id=npm,src=/tmp/npmrc".parse::<SecretSpec>().unwrap(),
            SecretSpec {
                id: "npm".into(),
                source: SecretSource::File("/tmp/npmrc".into())
            }
        );
        assert_eq!(
            "id=tok,env=GH_TOKEN".parse::<SecretSpec>().unwrap(),
            SecretSpec {
                id: "tok".into(),
                source: SecretSource::Env("GH_TOKEN".into())
            }
        );
        assert_eq!(
            "id=TOKEN".parse::<SecretSpec>().unwrap().source,
            SecretSource::Env("TOKEN".into())
        );
        assert!("src=/x".parse::<SecretSpec>().is_err());
        assert!("id=a,src=/x,env=B".parse::<SecretSpec>().is_err());
        assert!("id=a,foo=b".parse::<SecretSpec>().is_err());
    }

    #[test]
    fn secret_and_network_are_clap_values() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[arg(long = "secret")]
            secrets: Vec<SecretSpec>,
            #[arg(long)]
            network: Option<Network>,
        }
        let f = Flags::try_parse_from([
            "x",
            "--secret",
            "id=a,src=/f",
            "--secret=id=b,env=B",
            "--network=none",
        ])
        .unwrap();
        assert_eq!(f.secrets.len(), 2);
        assert_eq!(f.network, Some(Network::None));
        let err = Flags::try_parse_from(["x", "--secret", "src=/f"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("id= is required"), "{err}");
    }

    #[test]
    fn command_display_shows_the_script() {
        let argv = vec!["/bin/sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(display_command(&argv), "`exit 3`");
    }
}
