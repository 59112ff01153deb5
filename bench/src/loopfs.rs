//! A fresh journaled ext4 file system on a sparse loop file, mounted for the
//! length of one benchmark and unmounted and deleted afterwards (also when
//! the benchmark fails, or is interrupted: see `clean_up_on_signals`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// Mounted file systems (mountpoint, image), for the signal handler.
static ACTIVE: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

/// On SIGINT, SIGTERM or SIGHUP: unmount (lazily, in case a tool still has
/// files open) and delete every loop file system, then exit.
pub fn clean_up_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            // Held until exit: a benchmark failing because its file system
            // vanished blocks in LoopFs::drop instead of reporting that.
            let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
            for (mountpoint, image) in active.drain(..) {
                let _ = Command::new("umount").arg("-l").arg(&mountpoint).status();
                let _ = std::fs::remove_file(&image);
                let _ = std::fs::remove_dir(&mountpoint);
            }
            eprintln!("interrupted: loop file systems removed");
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

/// Small files in their inodes: trees of a million files fit in less space.
pub const INLINE_DATA: &[&str] = &["-O", "inline_data"];
/// Inode tables and journal written at mkfs time, so that no background
/// initialisation competes with what is measured; no inline data, as on most hosts.
pub const EAGER_INIT: &[&str] = &["-E", "lazy_itable_init=0,lazy_journal_init=0"];

pub struct LoopFs {
    image: PathBuf,
    mountpoint: tempfile::TempDir,
    mounted: bool,
}

impl LoopFs {
    /// Creates a `size_gib` sparse image in `scratch` with at least `inodes`
    /// inodes; `mkfs_options` go to mkfs.ext4 (see [`INLINE_DATA`], [`EAGER_INIT`]).
    pub fn create(scratch: &Path, size_gib: u64, inodes: u64, mkfs_options: &[&str]) -> Result<LoopFs> {
        let image = scratch.join(format!("strata-bench-{}.ext4", std::process::id()));
        let file = std::fs::File::create(&image)
            .with_context(|| format!("creating {}", image.display()))?;
        file.set_len(size_gib << 30)?;
        drop(file);
        let mountpoint = tempfile::Builder::new()
            .prefix("strata-bench-mnt-")
            .tempdir()?;
        let mut fs = LoopFs {
            image,
            mountpoint,
            mounted: false,
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .args(mkfs_options)
            .arg("-N")
            .arg(inodes.max(65536).to_string())
            .arg(&fs.image))?;
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&fs.image)
            .arg(fs.mountpoint.path()))?;
        active.push((fs.mountpoint.path().to_path_buf(), fs.image.clone()));
        fs.mounted = true;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        ACTIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(m, _)| m != self.mountpoint.path());
        if self.mounted {
            // FUSE journals a failed benchmark left mounted inside.
            let _ = strata_snapshotter::fuse::cleanup_stale(self.mountpoint.path());
            if let Err(e) = run(Command::new("umount").arg(self.mountpoint.path())) {
                eprintln!("warning: {e:#}");
            }
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The output of a command, trimmed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
