//! Issue 6, benchmark (a): the cost of one RUN step that changes one file,
//! in `fuse`, `redo` and `full` modes side by side, on a Debian minbase
//! root and on synthetic roots (100,000 and 1,000,000 files by default).
//!
//! Each mode drives its own [`Snapshotter`] over the same root exactly as the
//! builder does: `begin_step` (for `fuse`, the mount), the change (through
//! the mount for `fuse`), `finish_step` (the ChangeSet). The modes take turns
//! in rotating order; each step rewrites a different file, so a scan also
//! finds the files the other modes changed since its own last step, and every
//! ChangeSet is checked against exactly those.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use strata_snapshotter::{SnapshotMode, Snapshotter, StepKind};

use crate::loopfs::run;
use crate::snapshot::make_tree;
use crate::stats::{Samples, rotation, secs, time};

const MODES: [SnapshotMode; 3] = [SnapshotMode::Fuse, SnapshotMode::Redo, SnapshotMode::Full];

/// The target of issue 6: a fuse snapshot this many times cheaper than
/// `full` on the 1M-file root.
const TARGET: f64 = 100.0;

/// One root's results.
pub struct Row {
    pub root: String,
    /// Entries in the root (files, directories, links).
    pub entries: usize,
    /// Synthetic roots: the number of files asked for.
    pub files: Option<usize>,
    /// Per mode (as in `MODES`): begin_step + change + finish_step.
    pub step: Vec<Samples>,
    /// Per mode: finish_step only.
    pub finish: Vec<Samples>,
    /// `full` and `redo`: the baseline walk, once per build (Snapshotter::new).
    pub baseline_full: f64,
    pub baseline_redo: f64,
}

impl Row {
    fn ratio(&self, mode: usize) -> f64 {
        self.step[mode].median() / self.step[0].median()
    }
}

/// Measures every root: the Debian minbase root first (when `debian`), then
/// synthetic roots of `sizes` files, all made under `base`.
pub fn run_all(base: &Path, debian: bool, sizes: &[usize], rounds: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    if debian {
        let root = base.join("root-debian");
        debian_root(base, &root)?;
        let files = regular_files(&root)?;
        let row = measure(&root, "Debian bookworm minbase", None, rounds, |k| {
            files[k.wrapping_mul(7919) % files.len()].clone()
        })?;
        rows.push(row);
    }
    for &files in sizes {
        let root = base.join(format!("root-{files}"));
        eprintln!("fuse: creating a root of {files} files");
        make_tree(&root, files)?;
        let label = format!("synthetic, {files} files");
        let row = measure(&root, &label, Some(files), rounds, |k| {
            file_path(k.wrapping_mul(104_729) % files)
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// `rounds` one-file steps per mode on `root`; step `k` (over all modes)
/// rewrites `pick(k)`, a regular file relative to the root.
fn measure(
    root: &Path,
    label: &str,
    files: Option<usize>,
    rounds: usize,
    pick: impl Fn(usize) -> PathBuf,
) -> Result<Row> {
    let entries = walkdir::WalkDir::new(root).min_depth(1).into_iter().count();
    eprintln!("fuse: {label}: {entries} entries, taking the baselines");
    let mut snaps = Vec::new();
    let mut baselines = Vec::new();
    for mode in MODES {
        let (snap, t) = time(|| Snapshotter::new(root, mode, vec![]));
        let snap = snap.with_context(|| format!("{mode} snapshotter on {}", root.display()))?;
        if snap.mode() != mode {
            bail!(
                "asked for {mode}, the snapshotter fell back to {}",
                snap.mode()
            );
        }
        snaps.push(snap);
        baselines.push(t);
    }
    let mut step = vec![Samples::default(); MODES.len()];
    let mut finish = vec![Samples::default(); MODES.len()];
    // Files changed since each mode's last step (what its scan must find).
    let mut pending: Vec<BTreeSet<PathBuf>> = vec![BTreeSet::new(); MODES.len()];
    let mut k = 0;
    for round in 0..rounds {
        for m in rotation(MODES.len(), round) {
            let path = pick(k);
            k += 1;
            let snap = &mut snaps[m];
            let (set, took) = time(|| -> Result<_> {
                let start = snap.begin_step(StepKind::Run)?;
                if let Some(why) = start.fallback {
                    bail!("{why}");
                }
                fs::write(
                    start.dir.join(&path),
                    format!("changed by {} in round {round}\n", MODES[m]),
                )?;
                let (set, f) = time(|| snap.finish_step());
                Ok((set?, f))
            });
            let (set, f) =
                set.with_context(|| format!("one-file step in {} mode on {label}", MODES[m]))?;
            step[m].push(took);
            finish[m].push(f);
            for p in pending.iter_mut() {
                p.insert(path.clone());
            }
            // fuse journals only its own step; a scan finds every file
            // rewritten since its last step, by any mode.
            let expected = match MODES[m] {
                SnapshotMode::Fuse => BTreeSet::from([path.clone()]),
                _ => pending[m].clone(),
            };
            pending[m].clear();
            if set.changed != expected || !set.deleted.is_empty() || !set.opaque.is_empty() {
                bail!(
                    "{label}, {}: rewriting {} gave {set:?}, expected changed = {expected:?}",
                    MODES[m],
                    path.display()
                );
            }
        }
        eprintln!("fuse: {label}, round {} done", round + 1);
    }
    Ok(Row {
        root: label.into(),
        entries,
        files,
        step,
        finish,
        baseline_full: baselines[2],
        baseline_redo: baselines[1],
    })
}

/// The markdown table, the target verdict and the plot's data.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| root | entries | fuse: mount + change + finish | fuse: finish only | redo | full | redo / fuse | full / fuse | full / redo baseline (once per build) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            r.root,
            r.entries,
            r.step[0].summary(),
            r.finish[0].summary(),
            r.step[1].summary(),
            r.step[2].summary(),
            times(r.ratio(1)),
            times(r.ratio(2)),
            secs(r.baseline_full),
            secs(r.baseline_redo),
        ));
    }
    s.push('\n');
    match rows.iter().find(|r| r.files == Some(1_000_000)) {
        Some(r) => {
            let ratio = r.ratio(2);
            let verdict = if ratio >= TARGET { "met" } else { "not met" };
            s.push_str(&format!(
                "Target (a fuse snapshot of a small change at least {TARGET:.0}× cheaper than `full` on the \
                 1M-file root): **{verdict}** ({}: fuse {} against full {}, medians).\n",
                times(ratio),
                secs(r.step[0].median()),
                secs(r.step[2].median()),
            ));
        }
        None => s.push_str("Target (1M-file root): not measured in this run.\n"),
    }
    s
}

/// A ratio of medians: one decimal below 10.
fn times(ratio: f64) -> String {
    if ratio < 10.0 {
        format!("{ratio:.1}×")
    } else {
        format!("{ratio:.0}×")
    }
}

/// Plot data: one group per root, one series per mode (median step time).
pub fn plot_series(rows: &[Row]) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let groups = rows
        .iter()
        .map(|r| match r.files {
            Some(files) => format!("{files} files"),
            None => format!("{}, {} entries", r.root, r.entries),
        })
        .collect();
    let series = MODES
        .iter()
        .enumerate()
        .map(|(m, mode)| {
            (
                mode.to_string(),
                rows.iter().map(|r| r.step[m].median()).collect(),
            )
        })
        .collect();
    (groups, series)
}

/// The Debian minbase root: the base image `fixtures/bench/make-debian-base.sh`
/// makes (debootstrap once, then cached), its one layer extracted into `root`.
fn debian_root(base: &Path, root: &Path) -> Result<()> {
    let layout = base.join("debian-layout");
    let script = crate::workbench::fixtures().join("bench/make-debian-base.sh");
    eprintln!(
        "fuse: making the Debian minbase base ({})",
        script.display()
    );
    run(Command::new("bash").arg(&script).arg(&layout))
        .context("making the Debian minbase base image")?;
    let blob = |digest: &str| -> PathBuf {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json = |path: &Path| -> Result<serde_json::Value> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let index = json(&layout.join("index.json"))?;
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json without a manifest")?;
    let manifest = json(&blob(manifest))?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest without layers")?;
    fs::create_dir_all(root)?;
    for layer in layers {
        let digest = layer["digest"].as_str().context("layer without a digest")?;
        run(Command::new("tar")
            .arg("xzf")
            .arg(blob(digest))
            .arg("-C")
            .arg(root)
            .arg("--numeric-owner"))
        .context("extracting the Debian minbase layer")?;
    }
    fs::remove_dir_all(&layout)?;
    Ok(())
}

/// Regular files of `root` with one link (a rewrite changes one path),
/// relative to it, in a stable order.
fn regular_files(root: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry?;
        let md = entry.metadata()?;
        if md.is_file() && md.nlink() == 1 {
            files.push(entry.path().strip_prefix(root)?.to_path_buf());
        }
    }
    if files.is_empty() {
        bail!("no regular file in {}", root.display());
    }
    Ok(files)
}

/// The path of file `k` of a synthetic root, relative to it.
fn file_path(k: usize) -> PathBuf {
    let d = k / 100;
    PathBuf::from(format!("d{}/d{}/f{}", d / 100, d % 100, k % 100))
}
