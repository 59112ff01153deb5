//! The `strata` command line.
//!
//! Kaniko's executor flags live at the top level, with kaniko's names and
//! meanings, so that a kaniko invocation works with the binary's name swapped:
//! `strata --context . --destination reg/app:1`. `strata build …` takes the
//! same flags. `strata check` parses and plans a Dockerfile without building.
//!
//! Boolean flags accept both `--flag` and `--flag=true|false`, as kaniko's
//! (pflag) do. Kaniko flags strata does not support yet are parsed only so that
//! they can be rejected with an error naming them (see [`Unsupported`]).

mod logging;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use logging::{LogFormat, Verbosity};

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Daemonless OCI image builder: a drop-in for kaniko's executor",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image (the same flags as the top level, kaniko style).
    Build(Box<BuildArgs>),
    /// Parse and plan a Dockerfile without building it.
    Check(crate::check::CheckArgs),
    /// Pre-fetch base images into a --cache-dir (kaniko's warmer).
    Warm(crate::cache::warm::WarmArgs),
}

/// Every flag of a build, grouped as `--help` shows them.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub options: BuildOptions,
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub registry: crate::image::options::RegistryOptions,
    #[command(flatten)]
    pub output: crate::image::options::OutputOptions,
    #[command(flatten)]
    pub cache: crate::cache::CacheOptions,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub unsupported: Unsupported,
}

/// Where the Dockerfile and the build context come from.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Context and Dockerfile")]
pub struct InputArgs {
    /// Build context: a directory (path or dir://), tar://FILE (tar or tar.gz),
    /// tar://stdin, git://HOST/REPO.git or https://…git with #REF and #REF:SUBDIR.
    #[arg(short = 'c', long, default_value = "/workspace/")]
    pub context: String,

    /// Subdirectory of the context to use as the context.
    #[arg(long, value_name = "PATH")]
    pub context_sub_path: Option<String>,

    /// Path to the Dockerfile: absolute, relative to the working directory, or
    /// relative to the context ("Dockerfile" in the context by default).
    #[arg(short = 'f', long, default_value = "Dockerfile")]
    pub dockerfile: String,

    /// Git options for a git context: branch=NAME, single-branch=BOOL,
    /// recurse-submodules=BOOL (comma separated or repeated).
    #[arg(long, value_name = "OPTIONS")]
    pub git: Vec<String>,

    /// Named build context for FROM NAME / COPY --from=NAME:
    /// NAME=oci-layout://DIR[:TAG|@DIGEST] or NAME=docker-image://REF.
    #[arg(long = "build-context", value_name = "NAME=SOURCE")]
    pub build_contexts: Vec<crate::image::options::BuildContextSpec>,

    /// Secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<crate::exec::run::SecretSpec>,
}

/// How the Dockerfile is built.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Build")]
pub struct BuildOptions {
    /// Build argument NAME=VALUE; a bare NAME takes its value from the environment.
    #[arg(long, value_name = "NAME[=VALUE]")]
    pub build_arg: Vec<String>,

    /// Build only up to this stage (name or index).
    #[arg(long)]
    pub target: Option<String>,

    /// Label NAME=VALUE added to the image's config (after the Dockerfile's).
    #[arg(long, value_name = "NAME=VALUE")]
    pub label: Vec<String>,

    /// Directory for stage roots, blobs and RUN caches (kaniko's --kaniko-dir).
    /// Default: /kaniko if it exists and is writable, else a temporary directory.
    #[arg(long, value_name = "DIR", env = "KANIKO_DIR")]
    pub kaniko_dir: Option<PathBuf>,

    /// Reproducible image: timestamps stripped (created and layer mtimes set to
    /// SOURCE_DATE_EPOCH or 0).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub reproducible: bool,

    /// Clean the work directory after the build (it always holds only strata's own data).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub cleanup: bool,

    /// Accepted for kaniko compatibility: strata always runs RUN as an isolated
    /// process and finds its changes with the snapshotter.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub use_new_run: bool,

    /// Allow building in the current root when no isolation is possible and no
    /// container is detected.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub force: bool,

    /// Accepted for kaniko compatibility: strata always skips stages the target does not need.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_name = "BOOL")]
    pub skip_unused_stages: bool,
}

/// How each step's changes become a layer.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Snapshots and layers")]
pub struct SnapshotArgs {
    /// How changes are found: fuse (journal of the RUN step; the default,
    /// falling back to full where FUSE cannot be mounted), full (content
    /// hash), redo (metadata). kaniko's "time" is not supported.
    #[arg(long, default_value = "fuse", value_name = "MODE")]
    pub snapshot_mode: String,

    /// Take a single snapshot of the filesystem at the end of each stage.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub single_snapshot: bool,

    /// Path to ignore when snapshotting (repeatable), relative to the image root.
    #[arg(long, value_name = "PATH")]
    pub ignore_path: Vec<String>,

    /// Ignore /var/run when snapshotting, as kaniko does by default.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_name = "BOOL")]
    pub ignore_var_run: bool,

    /// Layer compression: gzip, zstd or none.
    #[arg(long, default_value = "gzip", value_name = "ALGO")]
    pub compression: String,

    /// Compression level (gzip 1-9, zstd 1-22).
    #[arg(long, value_name = "LEVEL")]
    pub compression_level: Option<i32>,
}

/// Logging.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log level: trace, debug, info, warn, error, fatal, panic.
    #[arg(short = 'v', long, default_value = "info")]
    pub verbosity: Verbosity,

    /// Log format: text, color or json.
    #[arg(long, default_value = "color")]
    pub log_format: LogFormat,

    /// Put a timestamp on each log line.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub log_timestamp: bool,
}

/// Kaniko flags strata does not support yet. They are parsed so that the
/// error names them; see [`Unsupported::check`].
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kaniko flags not supported yet (rejected)")]
pub struct Unsupported {
    /// Compressed cache layers: strata always compresses them (=false is rejected).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub compressed_caching: Option<bool>,
    /// Kaniko's root-filesystem materialisation (rejected: see `check`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub materialize: Option<bool>,
    /// Kaniko's context preservation between stages (strata never changes the context).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub preserve_context: Option<bool>,
    /// Build metadata forcing (for kaniko's own tests).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub force_build_metadata: Option<bool>,
}

impl Unsupported {
    /// Fails naming the first unsupported flag that asks for something.
    /// Flags set to their "off" value (`--cache=false`) ask for nothing.
    pub fn check(&self) -> anyhow::Result<()> {
        let bools = [
            ("--compressed-caching=false", self.compressed_caching.map(|v| !v), "strata always caches layers compressed, as they are pushed"),
            ("--materialize", self.materialize, "strata builds in its own root only at the container-root isolation level, where that root always ends up holding the target stage (cache hits included), so there is nothing to ask for"),
            ("--preserve-context", self.preserve_context, "strata never modifies the build context, so it needs no preserving"),
            ("--force-build-metadata", self.force_build_metadata, "not supported"),
        ];
        for (flag, value, why) in bools {
            if value == Some(true) {
                anyhow::bail!("flag {flag} is not supported: {why}");
            }
        }
        Ok(())
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(args)) => crate::check::run(args),
        Some(Command::Warm(args)) => crate::cache::warm::run(args),
        Some(Command::Build(args)) => build(*args),
        None => build(cli.build),
    }
}

fn build(args: BuildArgs) -> i32 {
    let started = std::time::Instant::now();
    if let Err(e) = logging::init(&args.log, started) {
        eprintln!("error: {e:#}");
        return 2;
    }
    match crate::build::run(args) {
        Ok(()) => 0,
        Err(e) => {
            // One error line with the whole cause chain; a Dockerfile
            // diagnostic's quoted line and caret follow it as they are.
            let text = format!("{e:#}");
            let mut lines = text.lines();
            tracing::error!("{}", lines.next().unwrap_or("build failed"));
            for line in lines {
                eprintln!("{line}");
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn kaniko_and_subcommand_forms_parse_alike() {
        let top = Cli::try_parse_from(["strata", "--context", "ctx", "-d", "reg/app:1", "--no-push", "--reproducible"]).unwrap();
        assert!(top.command.is_none());
        assert_eq!(top.build.input.context, "ctx");
        assert!(top.build.options.reproducible);
        let sub = Cli::try_parse_from(["strata", "build", "--context=ctx", "--destination=reg/app:1", "--reproducible=true"]).unwrap();
        let Some(Command::Build(args)) = sub.command else { panic!("build subcommand") };
        assert_eq!(args.input.context, "ctx");
        assert_eq!(args.output.destinations, ["reg/app:1"]);
        assert!(args.options.reproducible);
        assert!(matches!(Cli::try_parse_from(["strata", "check"]).unwrap().command, Some(Command::Check(_))));
    }

    #[test]
    fn help_groups_the_flags() {
        let help = Cli::command().render_help().to_string();
        for heading in ["Context and Dockerfile:", "Build:", "Snapshots and layers:", "Logging:", "Registries:", "Outputs:"] {
            assert!(help.contains(heading), "--help lacks {heading}");
        }
    }

    #[test]
    fn unsupported_flags_are_named() {
        let cli = Cli::try_parse_from(["strata", "--materialize=true"]).unwrap();
        assert!(cli.build.unsupported.check().unwrap_err().to_string().contains("--materialize"));
        let cli = Cli::try_parse_from(["strata", "--preserve-context=false", "--materialize=false"]).unwrap();
        assert!(cli.build.unsupported.check().is_ok());
        let cli = Cli::try_parse_from(["strata", "--compressed-caching=false"]).unwrap();
        assert!(cli.build.unsupported.check().unwrap_err().to_string().contains("--compressed-caching"));
    }
}
