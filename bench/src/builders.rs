//! The contenders of the whole-build benchmarks and exactly what each does.
//!
//! - strata, in one snapshot mode: `strata --context CTX --build-arg BASE=REF
//!   --destination REG/… --insecure-registry REG --snapshot-mode MODE
//!   --kaniko-dir WORK/kaniko`: pulls the base from the local registry,
//!   builds, and pushes the image (gzip layers) to the local registry.
//! - buildah (Debian's): `buildah --root WORK/storage --runroot WORK/run
//!   --storage-driver overlay bud --isolation chroot --layers
//!   --tls-verify=false --build-arg BASE=REF -t bench CTX`, then `buildah push
//!   --tls-verify=false bench docker://REG/…`: pulls the base into its own
//!   fresh storage, builds with a layer per step, pushes (gzip layers).
//!
//! Both take the base from the same registry, push to it, and keep their
//! work directories on the loop file system (`TMPDIR` too).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::proc::{Run, measure};
use crate::report;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Builder {
    Strata(&'static str),
    Buildah,
}

pub const ALL: [Builder; 4] = [
    Builder::Strata("fuse"),
    Builder::Strata("full"),
    Builder::Strata("redo"),
    Builder::Buildah,
];

impl Builder {
    pub fn name(self) -> String {
        match self {
            Builder::Strata(mode) => format!("strata {mode}"),
            Builder::Buildah => "buildah".into(),
        }
    }

    /// A short tag for destinations and cache repositories.
    pub fn tag(self) -> String {
        match self {
            Builder::Strata(mode) => format!("strata-{mode}"),
            Builder::Buildah => "buildah".into(),
        }
    }
}

/// One build: context, base reference, registry, destination, and a work
/// directory the caller created (and removes).
pub struct Job<'a> {
    pub ctx: &'a Path,
    pub base: &'a str,
    pub registry: &'a str,
    pub dest: String,
    pub work: &'a Path,
}

/// Runs strata in `mode` with `extra` flags (cache flags, outputs).
pub fn strata(bin: &Path, job: &Job, mode: &str, extra: &[String]) -> Result<Run> {
    let tmp = job.work.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut cmd = Command::new(bin);
    cmd.current_dir(job.work)
        .env("TMPDIR", &tmp)
        .arg("--context")
        .arg(job.ctx)
        .arg("--dockerfile")
        .arg(job.ctx.join("Dockerfile"))
        .arg("--build-arg")
        .arg(format!("BASE={}", job.base))
        .args(["--insecure-registry", job.registry])
        .arg(format!("--snapshot-mode={mode}"))
        .arg("--kaniko-dir")
        .arg(job.work.join("kaniko"))
        .args(["--log-format", "text"])
        .args(extra);
    if !extra.iter().any(|a| a == "--no-push") {
        cmd.args(["--destination", &job.dest]);
    }
    let run = measure(&mut cmd)?;
    // A RUN step logs its snapshot mode: make sure fuse did not fall back.
    let modes: Vec<&str> = run
        .log
        .lines()
        .filter(|l| l.contains("snapshot: mode="))
        .collect();
    if let Some(line) = modes.iter().find(|l| !l.contains(&format!("mode={mode}"))) {
        bail!("asked for --snapshot-mode={mode}, strata used another: {line}");
    }
    Ok(run)
}

/// Runs buildah (build, then push) with its storage in `storage`: a fresh
/// directory, or one kept from an earlier build for a cached rebuild.
pub fn buildah(job: &Job, storage: &Path) -> Result<Run> {
    let tmp = job.work.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let global = |cmd: &mut Command| {
        cmd.current_dir(job.work)
            .env("TMPDIR", &tmp)
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "overlay"]);
    };
    let mut bud = Command::new("buildah");
    global(&mut bud);
    bud.args([
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--tls-verify=false",
    ])
    .arg("--build-arg")
    .arg(format!("BASE={}", job.base))
    .args(["-t", "bench"])
    .arg(job.ctx);
    let built = measure(&mut bud)?;
    let mut push = Command::new("buildah");
    global(&mut push);
    push.args(["push", "--tls-verify=false", "bench"])
        .arg(format!("docker://{}", job.dest));
    Ok(built.then(measure(&mut push)?))
}

/// Other builders looked for, and what became of each: a line per builder.
pub fn others() -> Vec<String> {
    let mut notes = Vec::new();
    let kaniko = ["/kaniko/executor"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .or_else(|| which("executor"));
    notes.push(match kaniko {
        Some(p) => format!(
            "kaniko's executor found at {}, not run: it builds in its own root file system, so it may only run inside a container",
            p.display()
        ),
        None => "kaniko's executor: not installed".into(),
    });
    notes.push(match which("docker") {
        None => "docker: not installed".into(),
        Some(_) => {
            let buildx = Command::new("docker")
                .args(["buildx", "version"])
                .output()
                .is_ok_and(|o| o.status.success());
            let daemon = Command::new("docker")
                .arg("info")
                .output()
                .is_ok_and(|o| o.status.success());
            match (buildx, daemon) {
                (true, true) => {
                    "docker buildx found with a daemon, not yet a contender of this benchmark"
                        .into()
                }
                _ => format!(
                    "docker: client only ({}, {}): not a usable builder here",
                    if buildx {
                        "buildx present"
                    } else {
                        "no buildx plugin"
                    },
                    if daemon {
                        "daemon running"
                    } else {
                        "no daemon"
                    }
                ),
            }
        }
    });
    notes.push(format!("buildah: {}", report::version("buildah")));
    notes
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}
