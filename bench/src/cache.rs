//! Cold against warm rebuilds with strata's layer cache (issue 7): each
//! round builds a fixture with an empty cache (cold), then again with the
//! cache that build filled (warm, every step a hit), in fresh work
//! directories as a new CI job would. Three ways of caching:
//!
//! - registry: `--cache=true --cache-repo REG/…`, image pushed to REG;
//! - cache dir: `--cache=true --cache-dir DIR --no-push --oci-layout-path …`
//!   (no registry for the cache nor the image; the cold build pulls the base
//!   from the registry and keeps it in DIR);
//! - both: `--cache-dir DIR` and `--cache-repo REG/…`, image pushed.
//!
//! The registry's request log tells where a warm rebuild's time goes:
//! manifest look-ups, blob downloads (and their bytes), uploads.
//! Writes the `cache` section of `docs/benchmarks.md`.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Common;
use crate::builders::{self, Job};
use crate::proc::remove_tree;
use crate::registry::Registry;
use crate::report;
use crate::stats::{Samples, rotation};
use crate::workbench::{Base, Workbench};

#[derive(Args, Clone)]
pub struct Options {
    /// Snapshot mode of the builds.
    #[arg(long, default_value = "fuse")]
    pub cache_mode: String,
}

const FIXTURES: [(&str, Base); 2] = [
    ("five-steps", Base::Busybox),
    ("debian-minbase", Base::Debian),
];
const VARIANTS: [&str; 3] = ["registry", "cache dir", "both"];

struct Row {
    fixture: &'static str,
    variant: &'static str,
    cold: Samples,
    warm: Samples,
    /// Registry requests of the last warm build of the `registry` variant.
    requests: Option<Requests>,
}

pub fn run(common: &Common, o: &Options) -> Result<()> {
    let mode: &'static str = match o.cache_mode.as_str() {
        "fuse" => "fuse",
        "full" => "full",
        "redo" => "redo",
        other => bail!("--cache-mode must be fuse, full or redo, not {other}"),
    };
    let load_before = report::load();
    let mut wb = Workbench::new(&common.scratch, 8, 200_000)?;
    let mut rows = Vec::new();
    for (fixture, base) in FIXTURES {
        rows.extend(
            run_fixture(&mut wb, fixture, base, mode, common.rounds)
                .with_context(|| format!("cache benchmark of {fixture}"))?,
        );
    }
    let load_after = report::load();
    drop(wb);
    let body = markdown(&rows, mode, common.rounds, &load_before, &load_after);
    println!("{body}");
    report::write_section(&common.docs, "cache", &body)
}

fn run_fixture(
    wb: &mut Workbench,
    fixture: &'static str,
    base: Base,
    mode: &'static str,
    rounds: usize,
) -> Result<Vec<Row>> {
    eprintln!("cache: {fixture}");
    let reg_dir = wb.fresh("registry")?;
    let registry = Registry::start(&reg_dir)?;
    let base_ref = registry.push_layout(&wb.base_layout(base)?, &format!("base/{fixture}"))?;
    let ctx = wb.context(fixture)?;
    let mut rows: Vec<Row> = VARIANTS
        .iter()
        .map(|&variant| Row {
            fixture,
            variant,
            cold: Samples::default(),
            warm: Samples::default(),
            requests: None,
        })
        .collect();
    for round in 0..rounds {
        for i in rotation(VARIANTS.len(), round) {
            let variant = VARIANTS[i];
            let cache_dir = wb.fresh("cache-dir")?;
            let flags = {
                let mut f: Vec<String> =
                    vec!["--cache=true".into(), "--cache-copy-layers=true".into()];
                if variant != "registry" {
                    f.extend(["--cache-dir".into(), cache_dir.display().to_string()]);
                }
                if variant != "cache dir" {
                    f.extend([
                        "--cache-repo".into(),
                        format!("{}/bench/cache-{round}-{i}", registry.addr),
                    ]);
                }
                f
            };
            for warm in [false, true] {
                let work = wb.fresh("work")?;
                let mut flags = flags.clone();
                if variant == "cache dir" {
                    flags.extend([
                        "--no-push".into(),
                        "--oci-layout-path".into(),
                        work.join("out").display().to_string(),
                    ]);
                }
                let job = Job {
                    ctx: &ctx,
                    base: &base_ref,
                    registry: &registry.addr,
                    dest: format!("{}/bench/{fixture}:{round}-{i}-{warm}", registry.addr),
                    work: &work,
                };
                crate::builds::sync();
                let log_start = registry.log().len();
                let run = builders::strata(&wb.strata, &job, mode, &flags).with_context(|| {
                    format!("{variant}, {}", if warm { "warm" } else { "cold" })
                })?;
                remove_tree(&work)?;
                let (hits, misses) = (
                    run.log.matches("): hit ").count(),
                    run.log.matches("): miss ").count(),
                );
                if warm && (misses > 0 || hits == 0) {
                    bail!(
                        "{fixture}, {variant}: the warm rebuild had {hits} hits and {misses} misses; its log:\n{}",
                        run.log
                    );
                }
                eprintln!(
                    "  round {round}: {variant:<9} {} {:.2} s ({hits} hits, {misses} misses)",
                    if warm { "warm" } else { "cold" },
                    run.secs
                );
                if warm {
                    rows[i].warm.push(run.secs);
                    if variant == "registry" {
                        rows[i].requests = Some(Requests::from_log(&registry.log()[log_start..]));
                    }
                } else {
                    rows[i].cold.push(run.secs);
                }
            }
            remove_tree(&cache_dir)?;
        }
    }
    drop(registry);
    remove_tree(&reg_dir)?;
    Ok(rows)
}

/// Registry requests of one build, by kind, from the registry's log.
#[derive(Debug, Clone, Copy, Default)]
struct Requests {
    manifests: usize,
    blob_checks: usize,
    blob_downloads: usize,
    downloaded: u64,
    uploads: usize,
}

impl Requests {
    fn from_log(log: &str) -> Requests {
        let mut r = Requests::default();
        for line in log
            .lines()
            .filter(|l| l.contains("msg=\"response completed\""))
        {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .map(|v| v.trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let (method, uri) = (field("http.request.method="), field("http.request.uri="));
            if uri.contains("/manifests/") {
                r.manifests += 1;
            } else if uri.contains("/blobs/uploads") {
                r.uploads += usize::from(method == "POST");
            } else if uri.contains("/blobs/") {
                if method == "GET" {
                    r.blob_downloads += 1;
                    r.downloaded += field("http.response.written=").parse::<u64>().unwrap_or(0);
                } else {
                    r.blob_checks += 1;
                }
            }
        }
        r
    }
}

fn markdown(
    rows: &[Row],
    mode: &str,
    rounds: usize,
    load_before: &str,
    load_after: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Layer cache: cold and warm rebuilds\n");
    let _ = writeln!(
        s,
        "{} 1-minute load average {load_before} before, {load_after} after (the machine is shared).\n",
        report::machine()
    );
    let _ = writeln!(
        s,
        "strata `--snapshot-mode={mode} --cache=true --cache-copy-layers=true`, each build in a fresh work directory on a fresh journaled ext4 loop file system, base images in a local `docker-registry` on 127.0.0.1. \
         Each round builds with an empty cache (cold), then rebuilds unchanged with the cache that build filled (warm: every step must hit, or the benchmark fails). \
         {rounds} rounds, the three ways of caching alternating in rotating order; median (min–max).\n"
    );
    let _ = writeln!(
        s,
        "- **registry**: `--cache-repo REG/…`, the image pushed to the registry;"
    );
    let _ = writeln!(
        s,
        "- **cache dir**: `--cache-dir DIR --no-push --oci-layout-path …`: no registry for the cache nor the image (the cold build pulls the base and keeps it in DIR);"
    );
    let _ = writeln!(
        s,
        "- **both**: `--cache-dir DIR --cache-repo REG/…`, the image pushed.\n"
    );
    let _ = writeln!(
        s,
        "Fixtures: `five-steps` (busybox base; four RUN and one COPY) and `debian-minbase` (Debian minbase base; five RUN).\n"
    );
    let _ = writeln!(
        s,
        "| fixture | cache | cold | warm | cold / warm | warm < 1 s |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
    for r in rows {
        let met = if r.warm.max() < 1.0 {
            "yes (every round)"
        } else if r.warm.median() < 1.0 {
            "median only"
        } else {
            "**no**"
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1}× | {met} |",
            r.fixture,
            r.variant,
            r.cold.summary(),
            r.warm.summary(),
            r.cold.median() / r.warm.median()
        );
    }
    let _ = writeln!(
        s,
        "\nRegistry requests of a warm rebuild with the registry cache (last round), from the registry's log:\n"
    );
    let _ = writeln!(
        s,
        "| fixture | manifest requests | blob existence checks | blob downloads | bytes downloaded | uploads started |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for r in rows {
        if let Some(q) = r.requests {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} KiB | {} |",
                r.fixture,
                q.manifests,
                q.blob_checks,
                q.blob_downloads,
                q.downloaded as f64 / 1024.0,
                q.uploads
            );
        }
    }
    let verdicts: Vec<String> = rows
        .iter()
        .filter(|r| r.variant == "registry")
        .map(|r| {
            let met = if r.warm.median() < 1.0 {
                "**met**"
            } else {
                "**not met**"
            };
            format!(
                "{}: {met} (median {})",
                r.fixture,
                crate::stats::secs(r.warm.median())
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nTarget (issue 7): a fully cached rebuild of a five-step Dockerfile against a local registry in under one second. With the registry cache: {}.",
        verdicts.join("; ")
    );
    s
}
