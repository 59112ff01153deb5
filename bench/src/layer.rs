//! Benchmark (b): layer writing throughput on 1 GiB of incompressible and
//! 1 GiB of compressible files: strata's one pass (tar → sha256 → parallel
//! gzip/zstd → sha256 → blob file) against `tar -c | pigz | sha256sum` and
//! `tar -c | zstd -T0 | sha256sum` on the same data in the same run.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use rayon::prelude::*;
use strata_snapshotter::ChangeSet;
use strata_snapshotter::layer::{Compression, LayerOptions, write_layer};

use crate::Common;
use crate::loopfs::{self, LoopFs, run as run_cmd};
use crate::report;
use crate::stats::{Samples, rotation, time};

#[derive(Args, Clone)]
pub struct Options {
    /// Size of each data set in MiB.
    #[arg(long, default_value_t = 1024)]
    pub layer_mib: u64,
    /// Size of each file in the data sets, in MiB.
    #[arg(long, default_value_t = 4)]
    pub file_mib: u64,
}

const CONTENDERS: [&str; 4] = [
    "strata gzip",
    "tar | pigz | sha256sum",
    "strata zstd",
    "tar | zstd -T0 | sha256sum",
];
const DATASETS: [&str; 2] = ["incompressible", "compressible"];

struct Row {
    dataset: &'static str,
    samples: Vec<Samples>,
    sizes: Vec<u64>,
    /// CPU seconds (user + sys, the process and its children) per run.
    cpu: Vec<Samples>,
}

pub fn run(common: &Common, o: &Options) -> Result<()> {
    for tool in ["tar", "pigz", "zstd", "sha256sum"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("the layer benchmark needs {tool} on PATH");
        }
    }
    let gib = (o.layer_mib * 2 * 3 / 1024).max(2) + 2;
    let fs = LoopFs::create(&common.scratch, gib, 65536, loopfs::INLINE_DATA)?;
    let bytes = o.layer_mib << 20;
    let load_before = report::load();
    let mut rows = Vec::new();
    for dataset in DATASETS {
        let root = fs.path().join(dataset);
        eprintln!("layer: writing {} MiB of {dataset} data", o.layer_mib);
        let files = make_dataset(&root, dataset == "compressible", bytes, o.file_mib << 20)?;
        let changes = ChangeSet {
            changed: files,
            ..ChangeSet::default()
        };
        let blobs = fs.path().join("blobs");
        let mut samples = vec![Samples::default(); CONTENDERS.len()];
        let mut cpu = vec![Samples::default(); CONTENDERS.len()];
        let mut sizes = vec![0u64; CONTENDERS.len()];
        for round in 0..common.rounds {
            for c in rotation(CONTENDERS.len(), round) {
                run_cmd(&mut Command::new("sync"))?;
                let cpu_before = cpu_seconds();
                let seconds = match c {
                    0 | 2 => {
                        let compression = if c == 0 {
                            Compression::Gzip
                        } else {
                            Compression::Zstd
                        };
                        let options = LayerOptions {
                            compression,
                            ..LayerOptions::default()
                        };
                        let (blob, t) = time(|| write_layer(&root, &changes, &options, &blobs));
                        let blob = blob?;
                        sizes[c] = blob.size;
                        fs::remove_file(&blob.path)?;
                        t
                    }
                    _ => {
                        let (out, t) = time(|| pipeline_output(&root, compressor(c), "sha256sum"));
                        out?;
                        t
                    }
                };
                samples[c].push(seconds);
                cpu[c].push(cpu_seconds() - cpu_before);
            }
            eprintln!("layer: {dataset}, round {} done", round + 1);
        }
        // The pipelines' compressed sizes, measured once outside the timings.
        for c in [1, 3] {
            let out = pipeline_output(&root, compressor(c), "wc -c")?;
            sizes[c] = out
                .trim()
                .parse()
                .with_context(|| format!("wc -c said {out:?}"))?;
        }
        fs::remove_dir_all(&root)?;
        rows.push(Row {
            dataset,
            samples,
            sizes,
            cpu,
        });
    }
    drop(fs);
    let load = format!(
        "1-minute load average {load_before} before, {} after (the machine is shared).",
        report::load()
    );
    write_report(common, o, &rows, &load)
}

/// User + system CPU seconds used so far by this process and the children it waited for.
fn cpu_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } == 0 {
            for t in [usage.ru_utime, usage.ru_stime] {
                total += t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            }
        }
    }
    total
}

fn compressor(contender: usize) -> &'static str {
    if contender == 1 {
        "pigz"
    } else {
        "zstd -T0 -q"
    }
}

fn pipeline_output(root: &Path, compressor: &str, sink: &str) -> Result<String> {
    let script = format!(
        "set -o pipefail; tar -cf - -C '{}' . | {compressor} | {sink}",
        root.display()
    );
    let out = Command::new("bash").arg("-c").arg(&script).output()?;
    if !out.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Files of `file_size` bytes adding up to `total`; returns their relative paths.
fn make_dataset(
    root: &Path,
    compressible: bool,
    total: u64,
    file_size: u64,
) -> Result<BTreeSet<PathBuf>> {
    fs::create_dir_all(root)?;
    let count = total.div_ceil(file_size);
    (0..count).into_par_iter().try_for_each(|i| -> Result<()> {
        let size = file_size.min(total - i * file_size) as usize;
        let data = if compressible {
            text(size, i)
        } else {
            noise(size, i)
        };
        let mut f = fs::File::create(root.join(format!("f{i:05}")))?;
        f.write_all(&data)?;
        Ok(())
    })?;
    Ok((0..count)
        .map(|i| PathBuf::from(format!("f{i:05}")))
        .collect())
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Bytes no compressor can shrink.
fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        v.extend_from_slice(&xorshift(&mut state).to_le_bytes());
    }
    v.truncate(size);
    v
}

/// Text-like bytes (random words and numbers, like logs and sources),
/// which gzip shrinks about 3×.
fn text(size: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "layer",
        "image",
        "build",
        "strata",
        "snapshot",
        "file",
        "directory",
        "return",
        "error",
        "value",
        "config",
        "registry",
        "digest",
        "compress",
        "thread",
        "package",
        "install",
        "function",
        "struct",
        "impl",
        "for",
        "while",
        "match",
        "some",
        "none",
        "result",
        "string",
        "vector",
        "index",
        "buffer",
        "stream",
        "write",
        "read",
        "open",
        "close",
        "path",
        "root",
        "user",
        "group",
        "mode",
        "time",
        "size",
        "hash",
        "block",
        "level",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d ^ (seed + 7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut v = Vec::with_capacity(size + 64);
    while v.len() < size {
        let r = xorshift(&mut state);
        match r % 11 {
            0 => v.extend_from_slice(format!("{} ", r >> 40).as_bytes()),
            1 => v.extend_from_slice(b"\n    "),
            _ => {
                v.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()].as_bytes());
                v.push(b' ');
            }
        }
    }
    v.truncate(size);
    v
}

fn write_report(common: &Common, o: &Options, rows: &[Row], load: &str) -> Result<()> {
    let dir = common.docs.join("bench");
    fs::create_dir_all(&dir)?;
    let mib = o.layer_mib as f64;
    let mut md = String::new();
    md.push_str("## Layer writing: tar, digests and compression in one pass\n\n");
    md.push_str(&format!("{} {load}\n\n", report::machine()));
    md.push_str(&format!(
        "Each data set is {} MiB in {} MiB files on a fresh journaled ext4 loop file system (page cache warm). \
         strata writes the layer blob to disk and computes both the diffID and the digest; the pipelines only \
         print the digest of the compressed stream. Default levels everywhere (gzip 6, zstd 3), all cores. \
         {} rounds, contenders alternating in rotating order; median (min–max), throughput = data set size / median. \
         Tools: {}; {}; {}.\n\n",
        o.layer_mib,
        o.file_mib,
        common.rounds,
        report::version("pigz"),
        report::version("zstd"),
        report::version("tar"),
    ));
    md.push_str(
        "| data | contender | time | throughput | CPU time (user + sys) | compressed size |\n|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        for (c, name) in CONTENDERS.iter().enumerate() {
            md.push_str(&format!(
                "| {} | {} | {} | {:.0} MiB/s | {} | {:.1} MiB |\n",
                r.dataset,
                name.replace('|', "\\|"),
                r.samples[c].summary(),
                mib / r.samples[c].median(),
                r.cpu[c].summary(),
                r.sizes[c] as f64 / (1u64 << 20) as f64
            ));
        }
    }
    md.push_str(
        "\nstrata against each pipeline, ratio of medians (above 1× means strata is better): \
         wall-clock time, and CPU time, which a busy shared machine distorts much less.\n\n",
    );
    md.push_str(
        "| data | gzip: time | gzip: CPU | zstd: time | zstd: CPU |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let m = |i: usize| r.samples[i].median();
        let c = |i: usize| r.cpu[i].median();
        md.push_str(&format!(
            "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
            r.dataset,
            m(1) / m(0),
            c(1) / c(0),
            m(3) / m(2),
            c(3) / c(2)
        ));
    }
    md.push_str("\n![layer writing throughput](bench/layer.svg)\n");
    let groups: Vec<String> = rows.iter().map(|r| r.dataset.to_string()).collect();
    let series: Vec<(String, Vec<f64>)> = CONTENDERS
        .iter()
        .enumerate()
        .map(|(c, name)| {
            (
                name.to_string(),
                rows.iter().map(|r| mib / r.samples[c].median()).collect(),
            )
        })
        .collect();
    crate::plot::grouped_bars(
        &dir.join("layer.svg"),
        "Layer writing throughput (MiB/s, higher is better)",
        "MiB/s",
        &groups,
        &series,
    )?;
    report::write_section(&common.docs, "layer", &md)?;
    eprintln!(
        "layer: results written to {}",
        common.docs.join("benchmarks.md").display()
    );
    Ok(())
}
