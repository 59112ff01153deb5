//! The work directory (kaniko's `--kaniko-dir`): where stage roots, the
//! unpacked context, blobs and RUN cache mounts live.
//!
//! `--kaniko-dir DIR`, else `/kaniko` when it exists and is writable, else a
//! fresh temporary directory. Each build works in its own `build-XXXX`
//! subdirectory, removed when the build ends whatever the outcome. Blobs
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
                let t = tempfile::Builder::new().prefix("strata-").tempdir().context("creating a work directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let build = tempfile::Builder::new()
            .prefix("build-")
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

fn writable(dir: &Path) -> bool {
    dir.is_dir() && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}
