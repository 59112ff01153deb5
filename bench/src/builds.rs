//! Whole builds of the fixtures in `fixtures/bench/` by strata in every
//! snapshot mode and by buildah, side by side in the same run, alternating
//! in rotating order, each with a fresh work directory on a fresh loop ext4
//! file system and a local registry per fixture. Writes the `builds` section
//! of `docs/benchmarks.md` and `docs/bench/builds-time.svg`,
//! `docs/bench/builds-memory.svg`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Common;
use crate::builders::{self, ALL, Builder, Job};
use crate::proc::{Run, remove_tree};
use crate::registry::Registry;
use crate::report;
use crate::stats::{Samples, rotation};
use crate::workbench::{Base, Workbench};

#[derive(Args, Clone)]
pub struct Options {
    /// Fixtures to build (labels from the table), comma-separated; default all.
    #[arg(long, value_delimiter = ',')]
    pub fixtures: Vec<String>,
}

struct Fixture {
    label: &'static str,
    dir: &'static str,
    base: Base,
    /// A rebuild with every step cached (strata: `--cache=true --cache-repo`
    /// on the local registry, primed by an untimed build; buildah: `--layers`
    /// with the storage of an untimed earlier build).
    cached: bool,
    what: &'static str,
}

const FIXTURES: [Fixture; 6] = [
    Fixture {
        label: "small-app",
        dir: "small-app",
        base: Base::Busybox,
        cached: false,
        what: "busybox base; ENV, WORKDIR, COPY of two files, two small RUN steps, USER, EXPOSE, CMD",
    },
    Fixture {
        label: "20k-small-files",
        dir: "20k-small-files",
        base: Base::Busybox,
        cached: false,
        what: "COPY of a context of 20,000 files of 200–900 bytes (generated), then a RUN changing three of them",
    },
    Fixture {
        label: "debian-minbase",
        dir: "debian-minbase",
        base: Base::Debian,
        cached: false,
        what: "Debian bookworm minbase (debootstrap, 6,600 entries) and five RUN steps each changing one or two files",
    },
    Fixture {
        label: "big-data",
        dir: "big-data",
        base: Base::Busybox,
        cached: false,
        what: "a RUN writing 500 MiB from /dev/urandom, a RUN writing 500 MiB of zeros",
    },
    Fixture {
        label: "multi-stage",
        dir: "multi-stage",
        base: Base::Busybox,
        cached: false,
        what: "a stage generating 2,000 files into a tarball; the final stage COPY --from it and unpacks it",
    },
    Fixture {
        label: "small-app-cached",
        dir: "small-app",
        base: Base::Busybox,
        cached: true,
        what: "small-app rebuilt with every step cached: strata `--cache=true --cache-copy-layers=true --cache-repo REG/…` primed by an earlier build; buildah `--layers` on the storage of an earlier build",
    },
];

struct Row {
    fixture: &'static str,
    builder: Builder,
    time: Samples,
    cpu: Samples,
    rss: Samples,
}

pub fn run(common: &Common, o: &Options) -> Result<()> {
    let fixtures: Vec<&Fixture> = FIXTURES
        .iter()
        .filter(|f| o.fixtures.is_empty() || o.fixtures.iter().any(|n| n == f.label))
        .collect();
    if fixtures.is_empty() {
        bail!(
            "no fixture matches {:?}; the fixtures are: {}",
            o.fixtures,
            FIXTURES.map(|f| f.label).join(", ")
        );
    }
    let load_before = report::load();
    let mut wb = Workbench::new(&common.scratch, 32, 500_000)?;
    let mut rows = Vec::new();
    for f in fixtures {
        rows.extend(
            run_fixture(&mut wb, f, common.rounds)
                .with_context(|| format!("fixture {}", f.label))?,
        );
    }
    let load_after = report::load();
    let floor = crate::proc::own_peak_mib();
    drop(wb);

    let plot_dir = common.docs.join("bench");
    std::fs::create_dir_all(&plot_dir)?;
    let groups: Vec<String> = dedup(rows.iter().map(|r| r.fixture.to_string()));
    let series = |value: &dyn Fn(&Row) -> f64| -> Vec<(String, Vec<f64>)> {
        ALL.iter()
            .map(|b| {
                let values = groups
                    .iter()
                    .map(|g| {
                        rows.iter()
                            .find(|r| r.fixture == g && r.builder == *b)
                            .map_or(0.0, value)
                    })
                    .collect();
                (b.name(), values)
            })
            .collect()
    };
    crate::plot::grouped_bars_log(
        &plot_dir.join("builds-time.svg"),
        "Whole build, pull to push: median time",
        "seconds",
        &groups,
        &series(&|r| r.time.median()),
    )?;
    crate::plot::grouped_bars(
        &plot_dir.join("builds-memory.svg"),
        "Peak memory of one process (largest of the rounds)",
        "MiB",
        &groups,
        &series(&|r| r.rss.max()),
    )?;
    let body = markdown(&rows, common.rounds, &load_before, &load_after, floor);
    println!("{body}");
    report::write_section(&common.docs, "builds", &body)
}

fn run_fixture(wb: &mut Workbench, f: &Fixture, rounds: usize) -> Result<Vec<Row>> {
    eprintln!("builds: {}", f.label);
    let reg_dir = wb.fresh("registry")?;
    let registry = Registry::start(&reg_dir)?;
    let layout = wb.base_layout(f.base)?;
    let base = registry.push_layout(&layout, &format!("base/{}", f.dir))?;
    let ctx = wb.context(f.dir)?;
    let addr = registry.addr.clone();
    let cache_flags = |b: Builder| -> Vec<String> {
        if f.cached {
            vec![
                "--cache=true".into(),
                "--cache-copy-layers=true".into(),
                "--cache-repo".into(),
                format!("{addr}/bench/cache-{}", b.tag()),
            ]
        } else {
            Vec::new()
        }
    };
    let build =
        |wb: &Workbench, b: Builder, dest_tag: &str, storage: Option<&PathBuf>| -> Result<Run> {
            let work = wb.fresh("work")?;
            let job = Job {
                ctx: &ctx,
                base: &base,
                registry: &addr,
                dest: format!("{addr}/bench/{}:{}-{dest_tag}", f.dir, b.tag()),
                work: &work,
            };
            sync();
            let run = match (b, storage) {
                (Builder::Strata(mode), _) => {
                    builders::strata(&wb.strata, &job, mode, &cache_flags(b))
                }
                (Builder::Buildah, Some(storage)) => builders::buildah(&job, storage),
                (Builder::Buildah, None) => builders::buildah(&job, &work.join("storage")),
            };
            remove_tree(&work)?;
            run.with_context(|| format!("{} building {}", b.name(), f.label))
        };
    let storage = if f.cached {
        let storage = wb.fresh("buildah-cached")?;
        for b in ALL {
            build(wb, b, "prime", Some(&storage))?;
        }
        Some(storage)
    } else {
        None
    };
    let mut rows: Vec<Row> = ALL
        .iter()
        .map(|&builder| Row {
            fixture: f.label,
            builder,
            time: Samples::default(),
            cpu: Samples::default(),
            rss: Samples::default(),
        })
        .collect();
    for round in 0..rounds {
        for i in rotation(ALL.len(), round) {
            let b = ALL[i];
            let run = build(wb, b, &round.to_string(), storage.as_ref())?;
            if f.cached {
                check_all_hit(b, &run)?;
            }
            eprintln!(
                "  round {round}: {:<12} {:.2} s, peak {:.0} MiB",
                b.name(),
                run.secs,
                run.max_rss_mib
            );
            rows[i].time.push(run.secs);
            rows[i].cpu.push(run.cpu);
            rows[i].rss.push(run.max_rss_mib);
        }
    }
    drop(registry);
    remove_tree(&reg_dir)?;
    if let Some(storage) = storage {
        remove_tree(&storage)?;
    }
    Ok(rows)
}

/// A cached rebuild must not run any step.
fn check_all_hit(b: Builder, run: &Run) -> Result<()> {
    let ok = match b {
        Builder::Strata(_) => run.log.contains("): hit ") && !run.log.contains("): miss "),
        Builder::Buildah => run.log.contains("Using cache"),
    };
    if !ok {
        bail!(
            "{}: the cached rebuild did not hit the cache; its log:\n{}",
            b.name(),
            run.log
        );
    }
    Ok(())
}

fn markdown(
    rows: &[Row],
    rounds: usize,
    load_before: &str,
    load_after: &str,
    floor: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Whole builds: strata against buildah\n");
    let _ = writeln!(
        s,
        "{} 1-minute load average {load_before} before, {load_after} after (the machine is shared).\n",
        report::machine()
    );
    let _ = writeln!(
        s,
        "Each fixture in `fixtures/bench/` is built from its base image in a local registry (`docker-registry` on 127.0.0.1, a fresh one per fixture) to an image pushed to that registry. \
         Every build has a fresh work directory on a fresh journaled ext4 loop file system (`TMPDIR` too). {rounds} rounds, contenders alternating in rotating order; median (min–max). \
         `× strata fuse` is the median time over strata fuse's (above 1 means slower than strata fuse). \
         CPU is user + system time of the builder and the processes it waited for. Peak RSS is `ru_maxrss` from `wait4`: the largest single process of the build (the builder itself or a RUN command), the largest of the rounds; it cannot be below the benchmark process's own peak ({floor:.0} MiB here), which a child inherits at exec.\n"
    );
    let _ = writeln!(s, "Contenders:\n");
    let _ = writeln!(
        s,
        "- **strata fuse / full / redo**: `strata --context CTX --build-arg BASE=REF --destination REG/… --insecure-registry REG --snapshot-mode=MODE --kaniko-dir WORK/kaniko` (pull, build, push; gzip layers)."
    );
    let _ = writeln!(
        s,
        "- **buildah**: `buildah --root WORK/storage --runroot WORK/run --storage-driver overlay bud --isolation chroot --layers --tls-verify=false --build-arg BASE=REF -t bench CTX`, then `buildah push --tls-verify=false bench docker://REG/…` (pull into fresh storage, build with a layer per step, push; gzip layers); the time is the sum of both commands. `--isolation chroot` because no OCI runtime (runc, crun) is installed; kaniko and strata also run RUN without one."
    );
    for note in builders::others() {
        let _ = writeln!(s, "- {note}");
    }
    let _ = writeln!(s, "\nFixtures:\n");
    for f in &FIXTURES {
        let _ = writeln!(s, "- **{}**: {}", f.label, f.what);
    }
    let _ = writeln!(
        s,
        "\n| fixture | builder | time | × strata fuse | CPU | peak RSS |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let fuse = rows
            .iter()
            .find(|x| x.fixture == r.fixture && x.builder == Builder::Strata("fuse"))
            .map_or(f64::NAN, |x| x.time.median());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2}× | {} | {:.0} MiB |",
            r.fixture,
            r.builder.name(),
            r.time.summary(),
            r.time.median() / fuse,
            crate::stats::secs(r.cpu.median()),
            r.rss.max()
        );
    }
    let _ = writeln!(
        s,
        "\n![whole-build time per builder](bench/builds-time.svg)\n\n![peak memory per builder](bench/builds-memory.svg)"
    );
    s
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

pub fn sync() {
    let _ = std::process::Command::new("sync").status();
}
