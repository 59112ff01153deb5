//! Host-side preparation of one RUN step and its undoing: the WORKDIR, the
//! mountpoints the sandbox needs in the root (created only when missing, and
//! removed afterwards), the /etc files it provides, and at the levels that
//! cannot mount, the device nodes, /etc files and secrets written into the
//! root for the step and taken out again. Also the final environment.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::RunRequest;
use super::isolation::Isolation;
use super::mounts::{self, MountInputs, MountSpec, PreparedMounts, Source};
use super::rootfs::{self, Created, Kind, Replaced, RootDir};
use crate::exec::user::RunUser;

/// The /etc files every RUN gets.
pub(crate) const ETC_FILES: [&str; 3] = ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"];
/// Kernel filesystems mounted fresh at the namespace levels.
const KERNEL_DIRS: [&str; 3] = ["/proc", "/dev", "/sys"];
/// Device nodes of a minimal /dev: name, major, minor.
pub(crate) const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host file bound over an in-image path for the step (namespace levels).
#[derive(Debug)]
pub(crate) struct FileBind {
    pub target: String,
    pub host: PathBuf,
}

/// Everything prepared for one step; [`StepSetup::cleanup`] undoes it.
#[derive(Debug)]
pub(crate) struct StepSetup {
    pub root: RootDir,
    /// WORKDIR directories made: they belong to the layer and stay.
    pub created_workdir: Vec<String>,
    /// Build-owned paths (real in-image paths) the snapshotter ignores.
    pub excluded: Vec<String>,
    /// Entries made in the root for the step only, removed afterwards.
    created: Vec<Created>,
    /// Files of the root whose content was swapped for the step.
    replaced: Vec<Replaced>,
    pub mounts: PreparedMounts,
    pub etc_binds: Vec<FileBind>,
    pub heredoc_binds: Vec<FileBind>,
    pub env: Vec<(String, String)>,
    /// Holds the provided /etc files and heredoc files (namespace levels).
    host_dir: Option<tempfile::TempDir>,
    cleaned: bool,
}

/// The in-image targets a request keeps out of the layer, before resolution.
pub(crate) fn planned_targets(req: &RunRequest, specs: &[MountSpec]) -> Vec<String> {
    let mut out: Vec<String> = match req.isolation {
        Isolation::Namespaces | Isolation::UserNamespace | Isolation::HostRoot => KERNEL_DIRS
            .iter()
            .chain(ETC_FILES.iter())
            .map(|s| s.to_string())
            .collect(),
        Isolation::Chroot => std::iter::once("/dev")
            .chain(ETC_FILES)
            .map(str::to_string)
            .collect(),
    };
    out.extend(specs.iter().filter_map(MountSpec::target));
    out.extend(
        req.files
            .iter()
            .map(|f| rootfs::join_abs(&rootfs::components(&f.path))),
    );
    out.sort();
    out.dedup();
    out
}

/// The environment the command gets: ENV/ARG (later wins, first position
/// kept), secrets exposed with `env=`, and PATH and HOME when not set.
fn final_env(
    req: &RunRequest,
    extra: &[(String, String)],
    user: &RunUser,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in req.env.iter().chain(extra) {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), user.home.clone()));
    }
    env
}

/// The resolver configuration RUN gets: the host's, or systemd-resolved's
/// upstream list when the host's points at its local stub.
fn resolv_conf() -> Vec<u8> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if host
        .lines()
        .any(|l| l.trim().starts_with("nameserver 127.0.0.53"))
        && let Ok(upstream) = std::fs::read("/run/systemd/resolve/resolv.conf")
    {
        return upstream;
    }
    host.into_bytes()
}

fn etc_contents(req: &RunRequest) -> [(&'static str, Vec<u8>); 3] {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        req.hostname
    );
    [
        (ETC_FILES[0], resolv_conf()),
        (ETC_FILES[1], hosts.into_bytes()),
        (ETC_FILES[2], format!("{}\n", req.hostname).into_bytes()),
    ]
}

/// Whether `target` lies strictly under another mount's target.
fn under_another_mount(target: &str, all: &[String]) -> bool {
    let t = rootfs::components(target);
    all.iter().any(|other| {
        let o = rootfs::components(other);
        o.len() < t.len() && t.starts_with(&o)
    })
}

/// Prepares the step for `req.isolation`.
pub(crate) fn prepare(req: &RunRequest, specs: &[MountSpec], user: &RunUser) -> Result<StepSetup> {
    let root_path = req.root.as_path();
    if req.isolation == Isolation::HostRoot {
        let canon = std::fs::canonicalize(root_path)
            .with_context(|| format!("stage root {}", root_path.display()))?;
        if canon != Path::new("/") {
            bail!(
                "isolation level \"{}\" runs RUN in the container's own root, so the stage root must be /, not {}",
                req.isolation,
                root_path.display()
            );
        }
    }
    if req.isolation == Isolation::UserNamespace
        && unsafe { libc::geteuid() } != 0
        && (user.uid != 0 || user.gid != 0)
    {
        bail!(
            "USER {}:{} cannot run: strata runs unprivileged in a user namespace that maps only uid 0 (to uid {}); \
             run strata as root or with CAP_SYS_ADMIN",
            user.uid,
            user.gid,
            unsafe { libc::geteuid() }
        );
    }
    let root = RootDir::open(root_path)
        .with_context(|| format!("opening the stage root {}", root_path.display()))?;
    let mut workdir_created = Vec::new();
    let workdir = if req.workdir.is_empty() {
        "/"
    } else {
        req.workdir.as_str()
    };
    root.ensure_dirs(workdir, &mut workdir_created)
        .with_context(|| format!("creating WORKDIR {workdir}"))?;

    let inputs = MountInputs {
        context_dir: req.context_dir.as_deref(),
        stage_roots: &req.stage_roots,
        cache_root: &req.cache_root,
        secrets: &req.secrets,
    };
    let prepared = mounts::prepare(specs, &inputs)?;
    let env = final_env(req, &prepared.env, user);
    let mut setup = StepSetup {
        root,
        created_workdir: workdir_created.into_iter().map(|c| c.path).collect(),
        excluded: Vec::new(),
        created: Vec::new(),
        replaced: Vec::new(),
        mounts: prepared,
        etc_binds: Vec::new(),
        heredoc_binds: Vec::new(),
        env,
        host_dir: None,
        cleaned: false,
    };
    let result = if req.isolation.uses_namespaces() {
        setup.for_namespaces(req)
    } else {
        setup.for_chroot(req)
    };
    if let Err(e) = result {
        let _ = setup.cleanup();
        return Err(e);
    }
    Ok(setup)
}

impl StepSetup {
    fn exclude(&mut self, path: &str) {
        let real = self
            .root
            .real_path(path)
            .unwrap_or_else(|| rootfs::join_abs(&rootfs::components(path)));
        if !self.excluded.contains(&real) {
            self.excluded.push(real);
        }
    }

    fn for_namespaces(&mut self, req: &RunRequest) -> Result<()> {
        let host_dir = tempfile::Builder::new().prefix("strata-run-").tempdir()?;
        for dir in KERNEL_DIRS {
            self.root
                .ensure_mountpoint(dir, Kind::Dir, &mut self.created)
                .with_context(|| format!("preparing the mountpoint {dir} in the root"))?;
            self.exclude(dir);
        }
        for (i, (target, contents)) in etc_contents(req).into_iter().enumerate() {
            let host = host_dir.path().join(format!("etc-{i}"));
            std::fs::write(&host, contents)?;
            match self
                .root
                .ensure_mountpoint(target, Kind::File, &mut self.created)
            {
                Ok(()) => {
                    self.exclude(target);
                    self.etc_binds.push(FileBind {
                        target: target.to_string(),
                        host,
                    });
                }
                // An image whose /etc/resolv.conf is a dangling symlink keeps it.
                Err(e) => tracing::warn!("{}: not providing {target}: {e}", req.step_label),
            }
        }
        let targets: Vec<String> = self
            .mounts
            .mounts
            .iter()
            .map(|m| m.target.clone())
            .collect();
        for i in 0..self.mounts.mounts.len() {
            let (target, kind) = {
                let m = &self.mounts.mounts[i];
                (
                    m.target.clone(),
                    if m.is_dir { Kind::Dir } else { Kind::File },
                )
            };
            if !under_another_mount(&target, &targets) {
                self.root
                    .ensure_mountpoint(&target, kind, &mut self.created)
                    .with_context(|| format!("preparing the --mount target {target}"))?;
            }
            self.exclude(&target);
        }
        for (i, f) in req.files.iter().enumerate() {
            let host = host_dir.path().join(format!("file-{i}"));
            std::fs::write(&host, &f.contents)?;
            std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(f.mode))?;
            self.root
                .ensure_mountpoint(&f.path, Kind::File, &mut self.created)
                .with_context(|| format!("preparing the heredoc file {}", f.path))?;
            self.exclude(&f.path);
            self.heredoc_binds.push(FileBind {
                target: f.path.clone(),
                host,
            });
        }
        self.host_dir = Some(host_dir);
        Ok(())
    }

    /// Chroot and container-root levels: no mounts, so what RUN needs is
    /// written into the root for the step and removed or restored after.
    fn for_chroot(&mut self, req: &RunRequest) -> Result<()> {
        for m in &self.mounts.mounts {
            if !matches!(m.source, Source::Path(_)) || m.file_content.is_none() {
                bail!(
                    "RUN --mount with target {} needs mount namespaces, which this environment does not allow \
                     (isolation: {}); only type=secret works here",
                    m.target,
                    req.isolation
                );
            }
        }
        if req.isolation == Isolation::Chroot {
            self.root
                .ensure_dirs("/dev", &mut self.created)
                .context("creating /dev in the root")?;
            let mut missing = Vec::new();
            for (name, major, minor) in DEVICES {
                let path = format!("/dev/{name}");
                if self
                    .root
                    .open_in(&path, libc::O_PATH | libc::O_NOFOLLOW)
                    .is_ok()
                {
                    continue;
                }
                if let Err(e) = self
                    .root
                    .mknod_char(&path, major, minor, 0o666, &mut self.created)
                {
                    missing.push(format!("{name} ({e})"));
                }
            }
            if !missing.is_empty() {
                tracing::warn!(
                    "{}: RUN has no /dev/{}",
                    req.step_label,
                    missing.join(", /dev/")
                );
            }
            self.exclude("/dev");
            self.root
                .ensure_dirs("/etc", &mut self.created)
                .context("creating /etc in the root")?;
            for (target, contents) in etc_contents(req) {
                let is_file = self
                    .root
                    .open_in(target, libc::O_PATH | libc::O_NOFOLLOW)
                    .ok()
                    .and_then(|fd| nix::sys::stat::fstat(&fd).ok())
                    .map(|st| st.st_mode & libc::S_IFMT);
                match is_file {
                    None => {
                        self.root
                            .create_file(target, &contents, 0o644, 0, 0, &mut self.created)?
                    }
                    Some(libc::S_IFREG) => self
                        .replaced
                        .push(self.root.replace_file(target, &contents)?),
                    Some(_) => {
                        tracing::warn!(
                            "{}: not providing {target}: it is not a regular file",
                            req.step_label
                        );
                        continue;
                    }
                }
                self.exclude(target);
            }
        } else {
            for dir in KERNEL_DIRS.iter().chain(ETC_FILES.iter()) {
                self.exclude(dir);
            }
        }
        let files: Vec<(String, Vec<u8>, u32, u32, u32)> = self
            .mounts
            .mounts
            .iter()
            .filter_map(|m| {
                m.file_content
                    .as_ref()
                    .map(|(c, mode, uid, gid)| (m.target.clone(), c.clone(), *mode, *uid, *gid))
            })
            .chain(
                req.files
                    .iter()
                    .map(|f| (f.path.clone(), f.contents.clone(), f.mode, 0, 0)),
            )
            .collect();
        for (target, contents, mode, uid, gid) in files {
            self.root
                .create_file(&target, &contents, mode, uid, gid, &mut self.created)
                .map_err(|e| anyhow!("providing {target} for the step: {e}"))?;
            self.exclude(&target);
        }
        Ok(())
    }

    /// Restores swapped files, removes what was created for the step (not the
    /// WORKDIR) and releases cache locks and temporary files. Idempotent.
    pub fn cleanup(&mut self) -> Result<()> {
        if self.cleaned {
            return Ok(());
        }
        self.cleaned = true;
        let mut failures = Vec::new();
        for r in self.replaced.drain(..) {
            if let Err(e) = self.root.restore(&r) {
                failures.push(format!("restoring {}: {e}", r.path));
            }
        }
        failures.extend(self.root.remove_created(&self.created));
        self.created.clear();
        self.mounts = PreparedMounts::default();
        self.host_dir = None;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("{}", failures.join("; ")))
        }
    }
}

impl Drop for StepSetup {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::warn!("cleaning up after a RUN step: {e}");
        }
    }
}
