//! Building in the container's own root: what the last RUN isolation level
//! ([`Isolation::HostRoot`]) needs, kaniko's model. Where RUN can be neither
//! namespaced nor chrooted, the only root a command can run in is the
//! container's `/`, so each stage's filesystem is put there: before a stage,
//! everything in `/` but the ignore list is removed and the stage's base
//! (extracted or copied under the work directory as at every level) is moved
//! in; the stage's steps then run and are snapshotted with `/` as their root,
//! the ignore list excluded. Stages run one after another; one that later
//! stages read (FROM, COPY --from, RUN --mount from=) is copied back under the
//! work directory before the next replaces `/`.
//!
//! The ignore list, never removed, overwritten or snapshotted: /proc, /sys,
//! /dev, /etc/mtab, /busybox, every mountpoint (volumes, the /etc/resolv.conf
//! bind mounts, ...), the work directory, the build context, the strata
//! binary, local build contexts, secret files, registry certificates, `--cache-dir`, docker
//! credentials and CA certificates named by the environment, the output
//! paths, `--ignore-path` values and /var/run (unless `--ignore-var-run=false`).
//!
//! This replaces the container's files: it is only reached at the HostRoot
//! level, which is chosen only inside a container or with `--force`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use strata_snapshotter::SnapshotMode;

use super::{Build, tree};
use crate::dockerfile::Instruction;
use crate::exec::run::Isolation;
use crate::exec::scoped;
use crate::image::options::ContextSource;
use crate::plan;

/// Always left alone: kernel filesystems, the mount table, and the debug
/// executor image's busybox (which CI job scripts run from).
const DEFAULT_IGNORED: [&str; 5] = ["proc", "sys", "dev", "etc/mtab", "busybox"];

/// The container's root as the build's stage root.
pub struct HostRoot {
    /// Paths relative to `/`, each covering what is under it.
    ignored: Vec<PathBuf>,
    snapshot_mode: SnapshotMode,
}

impl HostRoot {
    /// Some when the build must happen in `/`: the plan has a RUN and the
    /// isolation level is [`Isolation::HostRoot`]. Detects the level now, as
    /// `/` must be prepared before the first stage.
    pub fn for_build(build: &Build) -> Result<Option<HostRoot>> {
        let has_run = build.plan.stages.iter().any(|st| {
            st.instructions
                .iter()
                .any(|i| matches!(i, Instruction::Run(_)))
        });
        if !has_run || !matches!(build.isolation(), Ok(Isolation::HostRoot)) {
            return Ok(None);
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo (building in the container's root must leave its mounts alone)")?;
        let host = HostRoot::new(
            &ignore_candidates(build)?,
            &mountinfo,
            build.settings.snapshot_mode,
        )?;
        tracing::warn!(
            "Building in this container's own root: each stage replaces everything in / but {} ignored paths \
             (kaniko's way); run this only in a throwaway container",
            host.ignored.len()
        );
        let list: Vec<String> = host
            .ignored
            .iter()
            .map(|p| format!("/{}", p.display()))
            .collect();
        tracing::debug!("ignored in /: {}", list.join(", "));
        if build.settings.snapshot_mode == SnapshotMode::Fuse {
            tracing::info!(
                "snapshot mode fuse unavailable, using full: RUN runs in the container's own root, which cannot be \
                 served through FUSE"
            );
        }
        Ok(Some(host))
    }

    /// The ignore list from `paths` (what each is, path) and the mountpoints
    /// in `mountinfo`.
    fn new(paths: &[(&str, PathBuf)], mountinfo: &str, mode: SnapshotMode) -> Result<HostRoot> {
        let mut ignored: Vec<PathBuf> = DEFAULT_IGNORED.iter().map(PathBuf::from).collect();
        for mountpoint in mountpoints(mountinfo) {
            let rel = scoped::clean(&mountpoint);
            if !rel.as_os_str().is_empty() {
                ignored.push(rel);
            }
        }
        for (what, path) in paths {
            let abs = if path.is_absolute() {
                path.clone()
            } else {
                std::env::current_dir()?.join(path)
            };
            let canonical = fs::canonicalize(&abs).ok();
            for p in std::iter::once(&abs).chain(canonical.as_ref()) {
                let rel = scoped::clean(p);
                if rel.as_os_str().is_empty() {
                    bail!(
                        "{what} ({}) is the whole root: building in the container's own root (isolation: {}) \
                         replaces everything in / but the paths the build needs, so none of them can be / itself",
                        path.display(),
                        Isolation::HostRoot
                    );
                }
                ignored.push(rel);
            }
        }
        ignored.sort();
        ignored.dedup();
        let snapshot_mode = if mode == SnapshotMode::Fuse {
            SnapshotMode::Full
        } else {
            mode
        };
        Ok(HostRoot {
            ignored,
            snapshot_mode,
        })
    }

    /// The snapshot mode (fuse cannot serve `/`: full takes over).
    pub fn snapshot_mode(&self) -> SnapshotMode {
        self.snapshot_mode
    }

    /// What snapshots leave out, relative to `/`.
    pub fn excluded(&self) -> Vec<PathBuf> {
        self.ignored.clone()
    }

    /// Replaces `/` with the stage root prepared in `staged` (which is
    /// consumed) and returns `/`.
    pub fn enter(&self, staged: &Path) -> Result<PathBuf> {
        let slash = Path::new("/");
        self.wipe(Path::new(""))
            .context("emptying / for the stage")?;
        if !self.move_in(staged, Path::new(""))? {
            // Another filesystem: what was not moved yet is copied.
            tracing::debug!(
                "{} is on another mount than /: copying the stage's root",
                staged.display()
            );
            tree::copy_tree_filtered(staged, slash, &|rel| self.installable(staged, rel))?;
        }
        fs::remove_dir_all(staged).with_context(|| format!("removing {}", staged.display()))?;
        Ok(slash.to_path_buf())
    }

    /// After a stage: a copy of `/` under `saved` when a later stage reads
    /// it, returned as the stage's root; else `/` (which the next stage replaces).
    pub fn leave(&self, build: &Build, st: &plan::Stage, saved: &Path) -> Result<PathBuf> {
        if !build
            .plan
            .stages
            .iter()
            .any(|later| later.depends_on.contains(&st.index))
        {
            return Ok(PathBuf::from("/"));
        }
        tree::copy_tree_filtered(Path::new("/"), saved, &|rel| !self.is_ignored(rel))
            .with_context(|| {
                format!(
                    "saving the stage's root to {} for later stages",
                    saved.display()
                )
            })?;
        Ok(saved.to_path_buf())
    }

    /// With `--cleanup`: a guard that empties `/` (but the ignore list) when
    /// the build ends, whatever the outcome, as kaniko's `--cleanup` does.
    pub fn cleanup_guard(&self, cleanup: bool) -> Option<CleanupGuard<'_>> {
        cleanup.then_some(CleanupGuard(self))
    }

    fn is_ignored(&self, rel: &Path) -> bool {
        self.ignored.iter().any(|i| rel.starts_with(i))
    }

    /// Whether an ignored path lies strictly under `rel`.
    fn holds_ignored(&self, rel: &Path) -> bool {
        self.ignored.iter().any(|i| i != rel && i.starts_with(rel))
    }

    /// Removes everything under `/rel` except ignored paths; directories
    /// holding ignored paths stay, emptied around them. Symlinks are removed,
    /// never followed.
    fn wipe(&self, rel: &Path) -> Result<()> {
        let dir = Path::new("/").join(rel);
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let path = entry.path();
            if self.is_ignored(&rel) {
                continue;
            }
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            if self.holds_ignored(&rel) {
                if meta.is_dir() {
                    self.wipe(&rel)?;
                }
                continue;
            }
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    /// Moves the entries under `staged/rel` to `/rel` by renaming them,
    /// leaving out ignored paths. False (having moved some) when the staging
    /// directory is on another filesystem than `/rel`.
    fn move_in(&self, staged: &Path, rel: &Path) -> Result<bool> {
        let mut entries: Vec<_> =
            fs::read_dir(staged.join(rel))?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            if !self.installable(staged, &rel) {
                continue;
            }
            let (src, dst) = (entry.path(), Path::new("/").join(&rel));
            if !self.holds_ignored(&rel) {
                match fs::rename(&src, &dst) {
                    Ok(()) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Ok(false),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("moving {} to {}", src.display(), dst.display())
                        });
                    }
                }
            }
            // A directory around ignored paths: filled entry by entry.
            if fs::symlink_metadata(&dst).is_err() {
                fs::create_dir(&dst).with_context(|| format!("creating {}", dst.display()))?;
            }
            if !self.move_in(staged, &rel)? {
                return Ok(false);
            }
            let meta = fs::symlink_metadata(&src)?;
            tree::copy_attrs(&src, &dst, &meta)?;
            tree::set_times(&dst, &meta)?;
        }
        Ok(true)
    }

    /// Whether the staged entry `rel` may go into `/`: not ignored, and, where
    /// ignored paths lie under it, a directory that `/rel` (if present) is too.
    fn installable(&self, staged: &Path, rel: &Path) -> bool {
        if self.is_ignored(rel) {
            tracing::debug!("/{}: ignored, the image's entry is left out", rel.display());
            return false;
        }
        if !self.holds_ignored(rel) {
            return true;
        }
        let is_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
        let dst = Path::new("/").join(rel);
        let ok = is_dir(&staged.join(rel)) && (is_dir(&dst) || fs::symlink_metadata(&dst).is_err());
        if !ok {
            tracing::warn!(
                "/{}: the image's entry is left out: it would replace a directory holding ignored paths",
                rel.display()
            );
        }
        ok
    }
}

/// Empties `/` when dropped; see [`HostRoot::cleanup_guard`].
pub struct CleanupGuard<'a>(&'a HostRoot);

impl Drop for CleanupGuard<'_> {
    fn drop(&mut self) {
        match self.0.wipe(Path::new("")) {
            Ok(()) => tracing::info!("--cleanup: emptied the container's root"),
            Err(e) => tracing::warn!("--cleanup: emptying the container's root: {e:#}"),
        }
    }
}

/// The paths of this build that `/` must keep, with what each is.
fn ignore_candidates(build: &Build) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut out = vec![
        ("the work directory", build.work.base().to_path_buf()),
        ("the build context", build.context.dir().to_path_buf()),
        (
            "strata's executable",
            std::env::current_exe().context("finding strata's own executable")?,
        ),
    ];
    for rel in &build.settings.excluded {
        out.push(("--ignore-path", Path::new("/").join(rel)));
    }
    for c in &build.args.input.build_contexts {
        if let ContextSource::OciLayout { dir, .. } = &c.source {
            out.push(("--build-context", dir.clone()));
        }
    }
    for c in &build.args.registry.registry_certificates {
        out.push(("--registry-certificate", c.path.clone()));
    }
    if let Some(dir) = &build.args.cache.cache_dir {
        out.push(("--cache-dir", dir.clone()));
    }
    // Credentials and CA certificates read from the environment, where present.
    let home_docker = std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker"));
    let from_env = ["DOCKER_CONFIG", "SSL_CERT_FILE", "SSL_CERT_DIR"]
        .map(|v| std::env::var_os(v).map(PathBuf::from));
    for p in from_env.into_iter().chain([home_docker]).flatten() {
        if p.is_absolute() && p.exists() {
            out.push(("a credentials or certificates path", p));
        }
    }
    for s in &build.args.input.secrets {
        if let crate::exec::run::SecretSource::File(f) = &s.source {
            out.push(("--secret", f.clone()));
        }
    }
    let o = &build.args.output;
    if let Some(p) = &o.oci_layout_path {
        out.push(("--oci-layout-path", p.clone()));
    }
    let files = [
        &o.tar_path,
        &o.digest_file,
        &o.image_name_with_digest_file,
        &o.image_name_tag_with_digest_file,
    ];
    for p in files.into_iter().flatten() {
        out.push(("an output file", p.clone()));
        // Its directory too (unless /), so that it can be written at the end.
        if let Some(dir) = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && *d != Path::new("/"))
        {
            out.push(("an output directory", dir.to_path_buf()));
        }
    }
    Ok(out)
}

/// The mountpoints listed in /proc/self/mountinfo (field 5, octal escapes undone).
fn mountpoints(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw
23 22 0:22 / /proc rw - proc proc rw
24 22 0:23 / /etc/resolv.conf rw - ext4 /dev/vda rw
25 22 0:24 / /my\\040volume rw - ext4 /dev/vda rw
";

    #[test]
    fn ignore_list_holds_kernel_dirs_mounts_and_given_paths() {
        let paths = [
            ("the work directory", PathBuf::from("/kaniko")),
            ("--ignore-path", PathBuf::from("/var/run")),
        ];
        let host = HostRoot::new(&paths, MOUNTINFO, SnapshotMode::Fuse).unwrap();
        for p in [
            "proc",
            "sys",
            "dev",
            "etc/resolv.conf",
            "my volume",
            "kaniko",
            "var/run",
        ] {
            assert!(host.is_ignored(Path::new(p)), "{p}");
        }
        assert!(host.is_ignored(Path::new("kaniko/build-1/stage-0")));
        assert!(!host.is_ignored(Path::new("etc")));
        assert!(host.holds_ignored(Path::new("etc")) && host.holds_ignored(Path::new("")));
        assert!(
            !host.holds_ignored(Path::new("etc/resolv.conf"))
                && !host.holds_ignored(Path::new("bin"))
        );
        assert_eq!(
            host.snapshot_mode(),
            SnapshotMode::Full,
            "fuse cannot serve /"
        );
    }

    #[test]
    fn refuses_to_keep_the_whole_root() {
        let err = HostRoot::new(
            &[("the build context", PathBuf::from("/"))],
            MOUNTINFO,
            SnapshotMode::Full,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("the build context (/) is the whole root"),
            "{err}"
        );
    }
}
