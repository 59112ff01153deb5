//! What the whole-build benchmarks share: a fresh loop ext4 file system for
//! every work directory, the strata binary, the base images (made locally:
//! busybox from busybox-static, Debian minbase from debootstrap) and the
//! fixtures' build contexts, copied or generated onto the loop file system.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::loopfs::{self, LoopFs, output, run};
use crate::proc::remove_tree;

/// Which base image a fixture builds on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Base {
    Busybox,
    Debian,
}

pub struct Workbench {
    pub fs: LoopFs,
    pub strata: PathBuf,
    busybox: Option<PathBuf>,
    debian: Option<PathBuf>,
}

impl Workbench {
    /// A loop file system of `size_gib` (sparse) with room for `inodes`.
    pub fn new(scratch: &Path, size_gib: u64, inodes: u64) -> Result<Workbench> {
        if output(Command::new("id").arg("-u"))? != "0" {
            bail!("the build benchmarks need root (loop mounts, FUSE, buildah)");
        }
        let strata = strata_binary()?;
        Ok(Workbench {
            fs: LoopFs::create(scratch, size_gib, inodes, loopfs::INLINE_DATA)?,
            strata,
            busybox: None,
            debian: None,
        })
    }

    /// An empty directory `name` on the loop file system (emptied if it exists).
    pub fn fresh(&self, name: &str) -> Result<PathBuf> {
        let dir = self.fs.path().join(name);
        remove_tree(&dir)?;
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The OCI layout of a base image, made on first use.
    pub fn base_layout(&mut self, base: Base) -> Result<PathBuf> {
        let (slot, name, script) = match base {
            Base::Busybox => (
                &mut self.busybox,
                "busybox",
                fixtures().join("make-base-images.sh"),
            ),
            Base::Debian => (
                &mut self.debian,
                "debian",
                fixtures().join("bench/make-debian-base.sh"),
            ),
        };
        if let Some(dir) = slot {
            return Ok(dir.clone());
        }
        let dir = self.fs.path().join("bases").join(name);
        eprintln!("bench: making the {name} base image ({})", script.display());
        run(Command::new("bash").arg(&script).arg(&dir))
            .with_context(|| format!("making the {name} base"))?;
        *slot = Some(dir.clone());
        Ok(dir)
    }

    /// The build context of `fixtures/bench/NAME` on the loop file system,
    /// with generated files where the fixture needs them.
    pub fn context(&self, name: &str) -> Result<PathBuf> {
        let ctx = self.fs.path().join("contexts").join(name);
        if ctx.exists() {
            return Ok(ctx);
        }
        std::fs::create_dir_all(&ctx)?;
        run(Command::new("cp")
            .arg("-a")
            .arg(fixtures().join("bench").join(name).join("."))
            .arg(&ctx))?;
        if name == "20k-small-files" {
            generate_small_files(&ctx.join("files"), 20_000)?;
        }
        Ok(ctx)
    }
}

/// The repository's `fixtures/` directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// `$STRATA_BIN`, or the `strata` built next to this benchmark binary.
fn strata_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("STRATA_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("strata"),
    };
    if !path.is_file() {
        bail!(
            "strata binary not found at {} (build it first: cargo build --release -p strata-builder --bin strata, or set STRATA_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// `files` small files of 200–900 bytes, 100 per directory (`d0/f0` ...),
/// the same on every run.
fn generate_small_files(root: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let line = format!("file {i}\n");
        let body = line.repeat((200 + i % 700) / line.len() + 1);
        std::fs::write(dir.join(format!("f{i}")), body)?;
    }
    Ok(())
}
