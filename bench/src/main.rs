//! strata's benchmarks. Each family of benchmarks is a module with a
//! subcommand; every run creates its own journaled ext4 loop file system,
//! measures the contenders side by side (alternating, several rounds) and
//! rewrites its own section of `docs/benchmarks.md` plus its plots under
//! `docs/bench/`.
//!
//! `cargo run --release -p strata-bench -- all` (needs root for the loop mount).

mod builders;
mod builds;
mod cache;
mod fuse;
mod fusesnap;
mod layer;
mod load;
mod loopfs;
mod plot;
mod proc;
mod registry;
mod report;
mod snapshot;
mod stats;
mod workbench;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata-bench",
    about = "strata's benchmarks: results go to docs/benchmarks.md"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
}

/// Options every benchmark family shares.
#[derive(Args, Clone)]
pub struct Common {
    /// Rounds per contender (each round runs every contender once, in rotating order).
    #[arg(long, global = true, default_value_t = 3)]
    pub rounds: usize,
    /// Where `benchmarks.md` and `bench/` live.
    #[arg(long, global = true, default_value = "docs")]
    pub docs: PathBuf,
    /// Directory for the sparse loop-file image (not on tmpfs).
    #[arg(long, global = true, default_value = "/var/tmp")]
    pub scratch: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot time of `full` and `redo` against single-threaded walks.
    Snapshot(snapshot::Options),
    /// Layer writing throughput against tar | pigz and tar | zstd pipelines.
    Layer(layer::Options),
    /// RUN overhead of the FUSE journal (plain dir, overlayfs, passthrough or
    /// not) and the one-file snapshot cost in fuse, redo and full modes.
    Fuse(fuse::Options),
    /// Whole builds of fixtures/bench/ by strata (fuse, full, redo) and buildah.
    Builds(builds::Options),
    /// Cold against warm rebuilds with the layer cache.
    Cache(cache::Options),
    /// Concurrent builds sharing a --cache-dir, and a 2 GiB layer.
    Load(load::Options),
    /// Every benchmark, with default sizes.
    All {
        #[command(flatten)]
        snapshot: snapshot::Options,
        #[command(flatten)]
        layer: layer::Options,
        #[command(flatten)]
        fuse: fuse::Options,
        #[command(flatten)]
        builds: builds::Options,
        #[command(flatten)]
        cache: cache::Options,
        #[command(flatten)]
        load: load::Options,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    loopfs::clean_up_on_signals()?;
    match cli.command {
        Command::Snapshot(o) => snapshot::run(&cli.common, &o),
        Command::Layer(o) => layer::run(&cli.common, &o),
        Command::Fuse(o) => fuse::run_cli(&cli.common, &o),
        Command::Builds(o) => builds::run(&cli.common, &o),
        Command::Cache(o) => cache::run(&cli.common, &o),
        Command::Load(o) => load::run(&cli.common, &o),
        Command::All {
            snapshot: s,
            layer: l,
            fuse: f,
            builds: b,
            cache: c,
            load: d,
        } => {
            // The families that measure the peak RSS of builds go first:
            // a child's ru_maxrss starts from this process's high-water
            // mark, which `snapshot` and `layer` raise to gigabytes.
            builds::run(&cli.common, &b)?;
            cache::run(&cli.common, &c)?;
            load::run(&cli.common, &d)?;
            snapshot::run(&cli.common, &s)?;
            layer::run(&cli.common, &l)?;
            fuse::run_cli(&cli.common, &f)
        }
    }
}
