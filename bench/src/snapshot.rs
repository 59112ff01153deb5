//! Benchmark (a): how long `full` and `redo` take to find 10 changed files in
//! trees of 10k, 100k and 1M files, on all cores and on one, against plain
//! single-threaded walks (`lstat` only, and `lstat` + hash of every file as
//! kaniko does after each RUN).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use rayon::prelude::*;
use strata_snapshotter::{SnapshotMode, Snapshotter, StepKind};

use crate::Common;
use crate::loopfs::{self, LoopFs};
use crate::report;
use crate::stats::{Samples, rotation, time};

#[derive(Args, Clone)]
pub struct Options {
    /// Tree sizes in files, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Files changed before each snapshot.
    #[arg(long, default_value_t = 10)]
    pub changed: usize,
}

const CONTENDERS: [&str; 6] = [
    "strata full",
    "strata redo",
    "strata full, 1 thread",
    "strata redo, 1 thread",
    "1-thread walk (lstat)",
    "1-thread walk + hash (kaniko)",
];

struct Row {
    files: usize,
    baseline_full: f64,
    baseline_redo: f64,
    samples: Vec<Samples>,
}

pub fn run(common: &Common, o: &Options) -> Result<()> {
    if o.sizes.is_empty() {
        bail!("--sizes needs at least one tree size");
    }
    let total: usize = o.sizes.iter().sum();
    let fs = LoopFs::create(
        &common.scratch,
        16,
        (total as u64) * 11 / 10 + total as u64 / 50 + 10_000,
        loopfs::INLINE_DATA,
    )?;
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let load_before = report::load();
    let mut rows = Vec::new();
    for &files in &o.sizes {
        let root = fs.path().join(format!("tree-{files}"));
        eprintln!("snapshot: creating a tree of {files} files");
        make_tree(&root, files)?;
        let (full, baseline_full) = time(|| Snapshotter::new(&root, SnapshotMode::Full, vec![]));
        let (redo, baseline_redo) = time(|| Snapshotter::new(&root, SnapshotMode::Redo, vec![]));
        let mut strata = vec![
            (full?, None),
            (redo?, None),
            (
                one.install(|| Snapshotter::new(&root, SnapshotMode::Full, vec![]))?,
                Some(&one),
            ),
            (
                one.install(|| Snapshotter::new(&root, SnapshotMode::Redo, vec![]))?,
                Some(&one),
            ),
        ];
        let mut samples = vec![Samples::default(); CONTENDERS.len()];
        for round in 0..common.rounds {
            for (s, _) in &mut strata {
                s.begin_step(StepKind::Run)?;
            }
            change_files(&root, files, o.changed, round)?;
            for c in rotation(CONTENDERS.len(), round) {
                let seconds = match c {
                    0..=3 => {
                        let (s, pool) = &mut strata[c];
                        let (changes, t) = match pool {
                            Some(pool) => pool.install(|| time(|| s.finish_step())),
                            None => time(|| s.finish_step()),
                        };
                        let changes = changes?;
                        if changes.changed.len() < o.changed.min(files) {
                            bail!(
                                "{} found {} changes, expected at least {}",
                                CONTENDERS[c],
                                changes.changed.len(),
                                o.changed
                            );
                        }
                        t
                    }
                    4 => time(|| walk_single(&root, false)).1,
                    _ => time(|| walk_single(&root, true)).1,
                };
                samples[c].push(seconds);
            }
            eprintln!("snapshot: {files} files, round {} done", round + 1);
        }
        rows.push(Row {
            files,
            baseline_full,
            baseline_redo,
            samples,
        });
    }
    drop(fs);
    let load = format!(
        "1-minute load average {load_before} before, {} after (the machine is shared).",
        report::load()
    );
    write_report(common, o, &rows, &load)
}

/// `files` files of 40 bytes, 100 per directory, two directory levels.
pub fn make_tree(root: &Path, files: usize) -> Result<()> {
    let dirs = files.div_ceil(100);
    (0..dirs).into_par_iter().try_for_each(|d| -> Result<()> {
        let dir = root.join(format!("d{}/d{}", d / 100, d % 100));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in (d * 100)..((d + 1) * 100).min(files) {
            fs::write(
                dir.join(format!("f{}", f % 100)),
                format!("file {f:>10} of the benchmark tree.\n"),
            )?;
        }
        Ok(())
    })
}

fn file_path(root: &Path, k: usize) -> PathBuf {
    let d = k / 100;
    root.join(format!("d{}/d{}/f{}", d / 100, d % 100, k % 100))
}

/// Rewrites `count` files spread over the tree (different ones each round).
fn change_files(root: &Path, files: usize, count: usize, round: usize) -> Result<()> {
    for i in 0..count {
        let k = (i * 7919 + round * 104_729) * (files / count.max(1)).max(1) % files;
        let k = (k + i) % files;
        fs::write(
            file_path(root, k),
            format!("changed in round {round} ({i})\n"),
        )?;
    }
    Ok(())
}

/// What a simple snapshotter does on one thread: walk and `lstat` every
/// entry, and (kaniko) read and hash every regular file.
fn walk_single(root: &Path, hash: bool) -> Result<u64> {
    let mut seen = 0u64;
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        let md = entry.metadata()?;
        seen += md.len();
        if hash && md.is_file() {
            let data = fs::read(entry.path())?;
            seen += blake3::hash(&data).as_bytes()[0] as u64;
        }
    }
    Ok(seen)
}

fn write_report(common: &Common, o: &Options, rows: &[Row], load: &str) -> Result<()> {
    let dir = common.docs.join("bench");
    fs::create_dir_all(&dir)?;
    let mut md = String::new();
    md.push_str("## Snapshot: finding what a RUN step changed\n\n");
    md.push_str(&format!("{} {load}\n\n", report::machine()));
    md.push_str(&format!(
        "Trees of small files (100 per directory) on a fresh journaled ext4 loop file system, page cache warm \
         (as right after the step). Before each snapshot {} files are rewritten; every contender then looks \
         for them. {} rounds, contenders alternating in rotating order; median (min–max). \
         The single-threaded walks are the reference: `lstat` of every entry (the least any scan does), \
         and `lstat` + blake3 of every file (what kaniko does after each RUN).\n\n",
        o.changed, common.rounds
    ));
    md.push_str("| files |");
    for c in CONTENDERS {
        md.push_str(&format!(" {c} |"));
    }
    md.push_str(" baseline full / redo (once per build) |\n|---:|");
    for _ in 0..=CONTENDERS.len() {
        md.push_str("---:|");
    }
    md.push('\n');
    for r in rows {
        md.push_str(&format!("| {} |", r.files));
        for s in &r.samples {
            md.push_str(&format!(" {} |", s.summary()));
        }
        md.push_str(&format!(
            " {} / {} |\n",
            crate::stats::secs(r.baseline_full),
            crate::stats::secs(r.baseline_redo)
        ));
    }
    md.push_str("\nSpeed-up (ratio of medians; higher is better for strata):\n\n");
    md.push_str("| files | redo vs 1-thread lstat walk | full vs 1-thread walk + hash | full, all cores vs 1 thread | redo, all cores vs 1 thread |\n|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let m = |i: usize| r.samples[i].median();
        md.push_str(&format!(
            "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
            r.files,
            m(4) / m(1),
            m(5) / m(0),
            m(2) / m(0),
            m(3) / m(1)
        ));
    }
    md.push_str("\n![snapshot time by tree size](bench/snapshot.svg)\n");
    let series: Vec<(String, Vec<(f64, f64)>)> = CONTENDERS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.to_string(),
                rows.iter()
                    .map(|r| (r.files as f64, r.samples[i].median()))
                    .collect(),
            )
        })
        .collect();
    crate::plot::log_lines(
        &dir.join("snapshot.svg"),
        "Snapshot time, 10 files changed",
        "files in the tree",
        "time (median)",
        &series,
    )?;
    report::write_section(&common.docs, "snapshot", &md)?;
    eprintln!(
        "snapshot: results written to {}",
        common.docs.join("benchmarks.md").display()
    );
    Ok(())
}
