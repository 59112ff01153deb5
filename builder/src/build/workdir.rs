//! The work directory (kaniko's `--kaniko-dir`): where stage roots, the
//! unpacked context, blobs and RUN cache mounts live.
//!
//! `--kaniko-dir DIR`, else `/kaniko` when it exists and is writable, else a
//! fresh temporary directory (`$TMPDIR/strata-PID@HOST-XXXX`, removed at the
//! end, or by the next build if this one is killed). Each build works in its own `build-PID@HOST-XXXX`
//! subdirectory, removed when the build ends whatever the outcome; one left
//! by a killed build (its PID no longer running) is removed by the next
//! build that starts in the same work directory. Blobs
//! (`blobs/sha256/…`) and `type=cache` mounts (`run-cache/`) persist in a
//! chosen work directory between builds, unless `--cleanup`; in a temporary
//! one everything is removed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct WorkDir {
    base: PathBuf,
    build: Option<tempfile::TempDir>,
    /// Set when the whole base is ours (a temporary directory).
    temp_base: Option<tempfile::TempDir>,
    cleanup: bool,
}

impl WorkDir {
    pub fn new(requested: Option<&Path>, cleanup: bool) -> Result<WorkDir> {
        let (base, temp_base) = match requested {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("--kaniko-dir {}", dir.display()))?;
                (dir.to_path_buf(), None)
            }
            None if writable(Path::new("/kaniko")) => (PathBuf::from("/kaniko"), None),
            None => {
                let tmp = std::env::temp_dir();
                remove_abandoned(&tmp, "strata-");
                let t = tempfile::Builder::new()
                    .prefix(&format!("strata-{}-", crate::image::store::owner_tag()))
                    .tempdir_in(&tmp)
                    .context("creating a work directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        remove_abandoned(&base, "build-");
        let build = tempfile::Builder::new()
            .prefix(&format!("build-{}-", crate::image::store::owner_tag()))
            .tempdir_in(&base)
            .with_context(|| format!("creating a build directory in {}", base.display()))?;
        Ok(WorkDir { base, build: Some(build), temp_base, cleanup })
    }

    /// This build's own directory (stage roots, context, scratch files).
    pub fn build_dir(&self) -> &Path {
        self.build.as_ref().expect("the build directory lives as long as the WorkDir").path()
    }

    /// The content-addressed blob store's directory.
    pub fn blobs(&self) -> PathBuf {
        self.base.join("blobs")
    }

    /// Where `RUN --mount=type=cache` directories persist.
    pub fn run_cache(&self) -> PathBuf {
        self.base.join("run-cache")
    }

    pub fn base(&self) -> &Path {
        &self.base
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(build) = self.build.take() {
            let path = build.path().to_path_buf();
            if let Err(e) = build.close() {
                tracing::warn!("could not remove {}: {e}", path.display());
            }
        }
        if self.cleanup && self.temp_base.is_none() {
            for dir in [self.blobs(), self.run_cache()] {
                if dir.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!("--cleanup: could not remove {}: {e}", dir.display());
                    }
                }
            }
        }
    }
}

/// Removes `PREFIX PID@HOST-*` directories (`build-…` in a work directory,
/// `strata-…` temporary work directories in $TMPDIR) of this host whose
/// process is gone (killed with SIGKILL), unless something is still mounted
/// under one.
fn remove_abandoned(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.strip_prefix(prefix).is_some_and(crate::image::store::owner_gone) {
            continue;
        }
        let path = e.path();
        let under = format!(" {}/", path.display());
        if mounts.lines().any(|l| l.contains(&under) || l.contains(&format!(" {} ", path.display()))) {
            tracing::warn!("not removing {} left by a killed build: something is still mounted in it", path.display());
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!("removed {} left by a killed build", path.display()),
            Err(e) => tracing::warn!("could not remove {} left by a killed build: {e}", path.display()),
        }
    }
}

fn writable(dir: &Path) -> bool {
    dir.is_dir() && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}
