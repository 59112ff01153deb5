//! Load (issue 9, item 6): concurrent strata builds sharing one
//! `--cache-dir` (a cold wave on an empty cache, then a warm wave), and the
//! build and push of an image with a 2 GiB layer. Reports wall time and the
//! peak RSS of each process (the largest), checks every build succeeded and
//! verifies every image by copying it out of the registry with skopeo (which
//! checks every digest). Writes the `load` section of `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Common;
use crate::builders::{self, Job};
use crate::loopfs::run as run_ok;
use crate::proc::{Run, remove_tree};
use crate::registry::Registry;
use crate::report;
use crate::stats::Samples;
use crate::workbench::{Base, Workbench};

#[derive(Args, Clone)]
pub struct Options {
    /// Concurrent builds sharing one --cache-dir.
    #[arg(long, default_value_t = 20)]
    pub builds: usize,
    /// Size of the big layer, MiB.
    #[arg(long, default_value_t = 2048)]
    pub big_mib: u64,
}

struct Wave {
    name: &'static str,
    wall: f64,
    each: Samples,
    rss: Samples,
}

pub fn run(common: &Common, o: &Options) -> Result<()> {
    let load_before = report::load();
    let mut wb = Workbench::new(&common.scratch, o.big_mib * 5 / 1024 + 8, 400_000)?;
    let reg_dir = wb.fresh("registry")?;
    let registry = Registry::start(&reg_dir)?;
    let base = registry.push_layout(&wb.base_layout(Base::Busybox)?, "base/busybox")?;

    let cache_dir = wb.fresh("shared-cache")?;
    let mut waves = Vec::new();
    for name in ["cold", "warm"] {
        eprintln!("load: {} concurrent builds, {name} cache", o.builds);
        waves.push(wave(&wb, &registry, &base, name, o.builds, &cache_dir)?);
    }

    eprintln!("load: a {} MiB layer", o.big_mib);
    let ctx = wb.fresh("contexts/push-big")?;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "ARG BASE\nFROM ${{BASE}}\nRUN dd if=/dev/urandom of=/big bs=1048576 count={} 2>/dev/null\n",
            o.big_mib
        ),
    )?;
    let work = wb.fresh("work-big")?;
    let dest = format!("{}/bench/big:1", registry.addr);
    let job = Job {
        ctx: &ctx,
        base: &base,
        registry: &registry.addr,
        dest: dest.clone(),
        work: &work,
    };
    let digest_file = work.join("digest");
    crate::builds::sync();
    let big = builders::strata(
        &wb.strata,
        &job,
        "fuse",
        &["--digest-file".into(), digest_file.display().to_string()],
    )?;
    let digest = std::fs::read_to_string(&digest_file)?;
    remove_tree(&work)?;
    let verify = wb.fresh("verify-big")?;
    let (verified, verify_secs) = crate::stats::time(|| {
        verify_image(
            &format!("{}/bench/big@{}", registry.addr, digest.trim()),
            &verify,
        )
    });
    verified?;
    remove_tree(&verify)?;

    let load_after = report::load();
    let floor = crate::proc::own_peak_mib();
    drop(registry);
    drop(wb);
    let body = markdown(
        &waves,
        &big,
        o,
        verify_secs,
        &load_before,
        &load_after,
        floor,
    );
    println!("{body}");
    report::write_section(&common.docs, "load", &body)
}

/// `n` builds of `five-steps` started together, each with its own work
/// directory and destination, all sharing `cache_dir`; then every image is
/// verified.
fn wave(
    wb: &Workbench,
    registry: &Registry,
    base: &str,
    name: &'static str,
    n: usize,
    cache_dir: &std::path::Path,
) -> Result<Wave> {
    let ctx = wb.context("five-steps")?;
    let works: Vec<_> = (0..n)
        .map(|i| wb.fresh(&format!("load-{i}")))
        .collect::<Result<_>>()?;
    crate::builds::sync();
    let start = Instant::now();
    let runs: Vec<Result<(Run, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = works
            .iter()
            .enumerate()
            .map(|(i, work)| {
                let ctx = &ctx;
                s.spawn(move || -> Result<(Run, String)> {
                    let dest = format!("{}/bench/load-{i}:{name}", registry.addr);
                    let job = Job {
                        ctx,
                        base,
                        registry: &registry.addr,
                        dest: dest.clone(),
                        work,
                    };
                    let digest_file = work.join("digest");
                    let flags: Vec<String> = vec![
                        "--cache=true".into(),
                        "--cache-copy-layers=true".into(),
                        "--cache-dir".into(),
                        cache_dir.display().to_string(),
                        "--digest-file".into(),
                        digest_file.display().to_string(),
                    ];
                    let run = builders::strata(&wb.strata, &job, "fuse", &flags)
                        .with_context(|| format!("build {i} of the {name} wave"))?;
                    let digest = std::fs::read_to_string(&digest_file)?;
                    Ok((
                        run,
                        format!("{}/bench/load-{i}@{}", registry.addr, digest.trim()),
                    ))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a build thread panicked")))
            })
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut each = Samples::default();
    let mut rss = Samples::default();
    let verify = wb.fresh("verify")?;
    let mut failures = Vec::new();
    for r in runs {
        match r {
            Ok((run, reference)) => {
                each.push(run.secs);
                rss.push(run.max_rss_mib);
                if let Err(e) = verify_image(&reference, &verify) {
                    failures.push(format!("{e:#}"));
                }
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    for w in &works {
        remove_tree(w)?;
    }
    remove_tree(&verify)?;
    if !failures.is_empty() {
        bail!(
            "{} of {n} builds of the {name} wave failed or did not verify:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(Wave {
        name,
        wall,
        each,
        rss,
    })
}

/// Copies `reference` out of the registry into an OCI layout: skopeo
/// checks the digest of every blob and of the manifest.
fn verify_image(reference: &str, layout: &std::path::Path) -> Result<()> {
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:x", layout.display())),
    )
    .with_context(|| format!("verifying {reference}"))
}

fn markdown(
    waves: &[Wave],
    big: &Run,
    o: &Options,
    verify_secs: f64,
    load_before: &str,
    load_after: &str,
    floor: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Load: concurrent builds and a {} MiB layer\n",
        o.big_mib
    );
    let _ = writeln!(
        s,
        "{} 1-minute load average {load_before} before, {load_after} after (the machine is shared).\n",
        report::machine()
    );
    let _ = writeln!(
        s,
        "{} strata builds (`--snapshot-mode=fuse`) of `fixtures/bench/five-steps` started at once, each with its own work directory and destination in a local `docker-registry`, all sharing one `--cache-dir` with `--cache=true --cache-copy-layers=true`: \
         a cold wave on an empty cache, then a warm wave. Every build must succeed and every image is then verified by copying it out of the registry with skopeo (every digest checked). \
         Peak RSS is `ru_maxrss` from `wait4` for each build's process tree; the table gives the largest. No value can be below the benchmark process's own peak ({floor:.0} MiB here), which a child inherits at exec.\n",
        o.builds
    );
    let _ = writeln!(
        s,
        "| wave | wall time, all builds | one build, median (min–max) | peak RSS, median / max |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for w in waves {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} / {:.0} MiB |",
            w.name,
            crate::stats::secs(w.wall),
            w.each.summary(),
            w.rss.median(),
            w.rss.max()
        );
    }
    let _ = writeln!(
        s,
        "\nA RUN writing {} MiB from /dev/urandom (incompressible), its layer gzip-compressed and pushed to the local registry (one run): **{}** wall, {} CPU, peak RSS **{:.0} MiB**. \
         The image verified (skopeo copy out of the registry, {}).",
        o.big_mib,
        crate::stats::secs(big.secs),
        crate::stats::secs(big.cpu),
        big.max_rss_mib,
        crate::stats::secs(verify_secs)
    );
    s
}
