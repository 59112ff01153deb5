//! Benchmarks of the FUSE journal (issue 6), self-contained:
//!
//! - RUN overhead: a metadata-heavy step (extract N small files, then
//!   `find` them) and a data-heavy step (write, then read, a large file),
//!   run in a plain directory, under kernel overlayfs, under bindfs (a
//!   ready-made libfuse passthrough file system, when installed) and through
//!   the FUSE journal with and without kernel passthrough. The journal's rows
//!   also give its `finish` (ChangeSet) time.
//! - Snapshot cost of a one-file change in `fuse`, `redo` and `full` modes
//!   side by side, on a Debian minbase root and on synthetic roots
//!   (`crate::fusesnap`).
//!
//! Everything runs on a fresh journaled ext4 loop file system made here and
//! removed afterwards. Contenders alternate within each round (rotating
//! order); results are medians with min–max. Needs root.
//!
//! `cargo run --release -p strata-bench -- fuse` writes the `fuse` section
//! of `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use strata_snapshotter::fuse;

use crate::loopfs::{self, LoopFs, run as run_cmd};
use crate::stats::Samples;

/// Command-line options of the `fuse` subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Files extracted by the metadata-heavy step.
    #[arg(long, default_value_t = 20_000)]
    pub fuse_small_files: usize,
    /// MiB written then read by the data-heavy step.
    #[arg(long, default_value_t = 1024)]
    pub fuse_data_mib: u64,
    /// Synthetic root sizes (files) for the one-file snapshot cost, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub fuse_root_sizes: Vec<usize>,
    /// Leave out the Debian minbase root of the one-file snapshot cost.
    #[arg(long)]
    pub fuse_skip_debian: bool,
    /// Leave out the RUN overhead measurements (to save time while developing).
    #[arg(long)]
    pub fuse_skip_run_overhead: bool,
}

/// The `fuse` subcommand: runs the benchmarks and rewrites their section.
pub fn run_cli(common: &crate::Common, opts: &Options) -> Result<()> {
    let cfg = Config {
        scratch: common.scratch.clone(),
        rounds: common.rounds,
        small_files: opts.fuse_small_files,
        data_mib: opts.fuse_data_mib,
        root_sizes: opts.fuse_root_sizes.clone(),
        debian: !opts.fuse_skip_debian,
        run_overhead: !opts.fuse_skip_run_overhead,
    };
    let report = run(&cfg)?;
    let plot_dir = common.docs.join("bench");
    std::fs::create_dir_all(&plot_dir)?;
    let mut body = format!("## FUSE journal\n\n{}", report.markdown());
    if !report.steps.is_empty() {
        let (groups, series) = report.ratios();
        crate::plot::grouped_bars(
            &plot_dir.join("fuse-run-overhead.svg"),
            "RUN step time / plain directory",
            "× plain",
            &groups,
            &series,
        )?;
        body.push_str("\n![RUN overhead under the FUSE journal](bench/fuse-run-overhead.svg)\n");
    }
    if !report.snapshots.is_empty() {
        let (groups, series) = crate::fusesnap::plot_series(&report.snapshots);
        crate::plot::grouped_bars_log(
            &plot_dir.join("fuse-snapshot.svg"),
            "One RUN step changing one file: begin_step + change + finish_step",
            "seconds (median, log scale)",
            &groups,
            &series,
        )?;
        body.push_str("\n![One-file step by snapshot mode and root](bench/fuse-snapshot.svg)\n");
    }
    println!("{body}");
    crate::report::write_section(&common.docs, "fuse", &body)
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for the sparse loop image (not on tmpfs).
    pub scratch: PathBuf,
    pub rounds: usize,
    /// Files in the metadata-heavy step's tarball.
    pub small_files: usize,
    /// Size of the data-heavy step's file.
    pub data_mib: u64,
    /// Synthetic root sizes (files) for the snapshot-cost measurement.
    pub root_sizes: Vec<usize>,
    /// Also measure the snapshot cost on a Debian minbase root.
    pub debian: bool,
    /// Measure the RUN overhead.
    pub run_overhead: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            scratch: PathBuf::from("/var/tmp"),
            rounds: 3,
            small_files: 20_000,
            data_mib: 1024,
            root_sizes: vec![100_000, 1_000_000],
            debian: true,
            run_overhead: true,
        }
    }
}

/// Timings of one contender on one workload, in seconds.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub workload: String,
    pub contender: String,
    pub samples: Samples,
    /// For FUSE contenders: time of `StepMount::finish` (journal → ChangeSet).
    pub finish: Samples,
}

impl Measurement {
    pub fn median(&self) -> f64 {
        self.samples.median()
    }
}

pub struct Report {
    pub machine: String,
    pub steps: Vec<Measurement>,
    pub snapshots: Vec<crate::fusesnap::Row>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Contender {
    Plain,
    Overlay,
    /// A ready-made passthrough FUSE file system (libfuse's high-level API),
    /// as a yardstick for strata's server.
    Bindfs,
    Fuse { passthrough: bool },
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Plain => "plain directory",
            Contender::Overlay => "overlayfs",
            Contender::Bindfs => "bindfs (libfuse), no journal",
            Contender::Fuse { passthrough: true } => "fuse journal, passthrough",
            Contender::Fuse { passthrough: false } => "fuse journal, no passthrough",
        }
    }
}

pub fn run(cfg: &Config) -> Result<Report> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().nth(1).map(String::from))
        })
        .flatten();
    if euid.as_deref() != Some("0") {
        bail!("the FUSE benchmarks need root (loop mounts, FUSE and overlayfs mounts)");
    }
    if let Err(e) = fuse::probe() {
        bail!("FUSE is not usable here: {e}");
    }
    let machine = machine();
    // The roots stay until the end: 4 KiB per synthetic file (no inline
    // data here, as on most hosts) and the Debian root's 0.5 GiB.
    let root_files: usize = cfg.root_sizes.iter().sum();
    let size_gib =
        (cfg.data_mib * 2).div_ceil(1024) + 3 + (root_files as u64 * 4096).div_ceil(1 << 30);
    let inodes = (root_files + root_files / 50 + cfg.small_files * 2 + 50_000) as u64;
    let fs = LoopFs::create(&cfg.scratch, size_gib, inodes, loopfs::EAGER_INIT)?;
    let base = fs.path().to_path_buf();
    let mut notes = Vec::new();
    let steps = if cfg.run_overhead {
        run_overhead(cfg, &base, &mut notes)?
    } else {
        Vec::new()
    };
    let snapshots = crate::fusesnap::run_all(&base, cfg.debian, &cfg.root_sizes, cfg.rounds)?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!(
        "load average {} at the end",
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    drop(fs);
    Ok(Report {
        machine,
        steps,
        snapshots,
        notes,
    })
}

/// The RUN overhead rows: each workload under each contender.
fn run_overhead(cfg: &Config, base: &Path, notes: &mut Vec<String>) -> Result<Vec<Measurement>> {
    let mut contenders = vec![
        Contender::Plain,
        Contender::Overlay,
        Contender::Fuse { passthrough: false },
    ];
    if Command::new("bindfs").arg("--version").output().is_ok_and(|o| o.status.success()) {
        contenders.insert(2, Contender::Bindfs);
    } else {
        notes.push("bindfs not installed (`apt-get install bindfs`): not measured".into());
    }
    if fuse::passthrough_allowed() {
        contenders.push(Contender::Fuse { passthrough: true });
    } else {
        notes.push("FUSE passthrough not allowed here (needs CAP_SYS_ADMIN in the initial user namespace): not measured".into());
    }

    let base = base.to_path_buf();
    let tarball = base.join("small.tar");
    make_tarball(&base.join("tarball-src"), &tarball, cfg.small_files)?;
    let workloads = [
        (
            format!("extract {} small files, then find", cfg.small_files),
            format!(
                "tar xf {} -C \"$T\" && find \"$T\" | wc -l >/dev/null",
                tarball.display()
            ),
        ),
        (
            format!("write (fsync) then read {} MiB", cfg.data_mib),
            format!(
                "dd if=/dev/zero of=\"$T/big\" bs=1M count={} conv=fsync status=none && dd if=\"$T/big\" of=/dev/null bs=1M status=none",
                cfg.data_mib
            ),
        ),
    ];

    let mut steps = Vec::new();
    for (name, script) in &workloads {
        let mut rows: Vec<Measurement> = contenders
            .iter()
            .map(|c| Measurement {
                workload: name.clone(),
                contender: c.name().into(),
                samples: Samples::default(),
                finish: Samples::default(),
            })
            .collect();
        for round in 0..cfg.rounds {
            for k in 0..contenders.len() {
                let i = (k + round) % contenders.len();
                let (step, finish) = run_step(&base, contenders[i], script)
                    .with_context(|| format!("{name} under {}", contenders[i].name()))?;
                rows[i].samples.push(step);
                if let Some(f) = finish {
                    rows[i].finish.push(f);
                }
            }
        }
        steps.extend(rows);
    }

    Ok(steps)
}

/// Runs `script` (with `$T` the step's directory) under `contender`.
/// Returns the step's wall time and, for FUSE, the `finish` time.
fn run_step(base: &Path, contender: Contender, script: &str) -> Result<(f64, Option<f64>)> {
    let dirs = ["lower", "upper", "work", "target", "root", "mnt"].map(|d| base.join(d));
    for d in &dirs {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
        std::fs::create_dir_all(d)?;
    }
    let [lower, upper, work, target, root, mnt] = dirs;
    sync();
    let shell = |dir: &Path| -> Result<f64> {
        let start = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("T", dir)
            .status()?;
        let took = start.elapsed().as_secs_f64();
        if !status.success() {
            bail!("`{script}` failed: {status}");
        }
        Ok(took)
    };
    let result = match contender {
        Contender::Plain => (shell(&target)?, None),
        Contender::Overlay => {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            run_cmd(
                Command::new("mount")
                    .args(["-t", "overlay", "overlay", "-o", &opts])
                    .arg(&mnt),
            )?;
            let took = shell(&mnt);
            run_cmd(Command::new("umount").arg(&mnt))?;
            (took?, None)
        }
        Contender::Bindfs => {
            // Multithreaded, with the kernel's attribute, entry and page caches
            // kept: the configuration issue 6 measured before strata's server existed.
            run_cmd(
                Command::new("bindfs")
                    .args(["--multithreaded", "-o", "attr_timeout=86400,entry_timeout=86400,negative_timeout=86400,kernel_cache"])
                    .arg(&root)
                    .arg(&mnt),
            )?;
            let took = shell(&mnt);
            run_cmd(Command::new("umount").arg(&mnt))?;
            (took?, None)
        }
        Contender::Fuse { passthrough } => {
            let opts = fuse::Options {
                passthrough,
                ..Default::default()
            };
            let step = fuse::mount_step_with(&root, &mnt, &[], &opts)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if step.stats().passthrough != passthrough {
                bail!(
                    "asked for passthrough={passthrough}, the kernel gave {:?}",
                    step.stats()
                );
            }
            let took = shell(&mnt)?;
            let start = Instant::now();
            let set = step.finish()?;
            let finish = start.elapsed().as_secs_f64();
            if set.changed.is_empty() {
                bail!("the journal saw no change");
            }
            (took, Some(finish))
        }
    };
    for d in [lower, upper, work, target, root] {
        std::fs::remove_dir_all(&d)?;
    }
    Ok(result)
}

impl Report {
    /// Step time relative to the plain directory: one group per workload,
    /// one series per contender.
    pub fn ratios(&self) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
        let groups = self.workloads();
        let mut series: Vec<(String, Vec<f64>)> = Vec::new();
        for m in &self.steps {
            if !series.iter().any(|(name, _)| *name == m.contender) {
                series.push((m.contender.clone(), Vec::new()));
            }
        }
        for (name, values) in &mut series {
            for g in &groups {
                let ratio = self
                    .steps
                    .iter()
                    .find(|m| &m.workload == g && m.contender == *name)
                    .map(|m| self.ratios_to_plain(m).0)
                    .filter(|r| r.is_finite());
                values.push(ratio.unwrap_or(0.0));
            }
        }
        (groups, series)
    }

    /// The workloads, in the order measured.
    fn workloads(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for m in &self.steps {
            if !names.contains(&m.workload) {
                names.push(m.workload.clone());
            }
        }
        names
    }

    /// `m`'s time over the plain directory's on the same workload: of the
    /// medians, and of the fastest runs.
    fn ratios_to_plain(&self, m: &Measurement) -> (f64, f64) {
        match self.steps.iter().find(|p| p.workload == m.workload && p.contender == Contender::Plain.name()) {
            Some(plain) => (m.median() / plain.median(), m.samples.min() / plain.samples.min()),
            None => (f64::NAN, f64::NAN),
        }
    }

    /// A markdown section: tables of medians (min–max) and ratios to the plain directory.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Machine: {}\n", self.machine);
        for note in &self.notes {
            let _ = writeln!(s, "- {note}");
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        if !self.steps.is_empty() {
            let _ = writeln!(s, "### RUN overhead\n");
            let _ = writeln!(
                s,
                "| step | contender | median s (min–max) | × plain (medians) | × plain (fastest runs) | journal finish s |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|");
            for m in &self.steps {
                let (median_ratio, fastest_ratio) = self.ratios_to_plain(m);
                let finish = if m.finish.0.is_empty() {
                    "–".to_string()
                } else {
                    format!("{:.3}", m.finish.median())
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} | {:.2} | {} |",
                    m.workload,
                    m.contender,
                    summary(&m.samples),
                    median_ratio,
                    fastest_ratio,
                    finish
                );
            }
            let _ = writeln!(
                s,
                "\nThe fastest runs are given too because this VM's noise only ever adds time: \
                 the write step's `fsync` swings with the host's disk from run to run, whatever the contender.\n"
            );
            for (index, target) in [(0, 1.3), (1, 1.1)] {
                let Some(workload) = self.workloads().get(index).cloned() else { continue };
                for m in self.steps.iter().filter(|m| m.workload == workload && m.contender.starts_with("fuse")) {
                    let (by_median, by_fastest) = self.ratios_to_plain(m);
                    let verdict = match (by_median <= target, by_fastest <= target) {
                        (true, true) => format!("**met** (medians {by_median:.2}×, fastest runs {by_fastest:.2}×)"),
                        (false, false) => format!("**not met** (medians {by_median:.2}×, fastest runs {by_fastest:.2}×)"),
                        (false, true) => format!("**met by the fastest runs** ({by_fastest:.2}×), **not by the medians** ({by_median:.2}×)"),
                        (true, false) => format!("**met by the medians** ({by_median:.2}×), **not by the fastest runs** ({by_fastest:.2}×)"),
                    };
                    let _ = writeln!(s, "- Target {target}× native for “{workload}”, {}: {verdict}.", m.contender);
                }
            }
        }
        if !self.snapshots.is_empty() {
            let _ = writeln!(
                s,
                "{}### One-file snapshot cost: fuse, redo and full side by side\n\n\
                 One RUN step that rewrites one file, driven through the snapshotter API as the builder \
                 does it: `begin_step` (for fuse, the FUSE mount), the change (through the mount for fuse), \
                 `finish_step` (the ChangeSet, checked against the file rewritten). Each mode has its own \
                 snapshotter over the same root (baselines taken once, as at the start of a build); the \
                 modes take turns in rotating order over the rounds, with the page cache warm. Median \
                 (min–max); the ratios are of medians.\n",
                if self.steps.is_empty() { "" } else { "\n" }
            );
            s.push_str(&crate::fusesnap::markdown(&self.snapshots));
        }
        s
    }
}

/// `median (min–max)` in seconds, three decimals (the RUN-overhead table's form).
fn summary(v: &Samples) -> String {
    format!("{:.3} ({:.3}–{:.3})", v.median(), v.min(), v.max())
}

/// `files` small files in directories of 100, tarred up with the system tar.
fn make_tarball(src: &Path, tarball: &Path, files: usize) -> Result<()> {
    make_tree(src, files)?;
    run_cmd(
        Command::new("tar")
            .arg("cf")
            .arg(tarball)
            .arg("-C")
            .arg(src)
            .arg("."),
    )?;
    std::fs::remove_dir_all(src)?;
    Ok(())
}

/// A tree of `files` small files, 100 per directory (`d0/f0` ...).
fn make_tree(root: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{i}")), vec![b'x'; 200 + i % 700])?;
    }
    Ok(())
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs, Linux {}, load average {} at start",
        kernel.trim(),
        load.join(" ")
    )
}
