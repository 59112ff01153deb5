//! `RUN --mount` as BuildKit does it: parsing the spec (`type=bind|cache|tmpfs|
//! secret|ssh` and their options) and preparing, on the host side, what each
//! mount brings in (a source opened inside the context or a stage root, a
//! persistent cache directory with its lock, a secret written to a private
//! temporary file). The sandbox then mounts them; nothing they bring in is
//! ever written into the root.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};

use super::SecretSpec;
use super::rootfs::{self, RootDir};

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Everyone uses the same directory at once.
    Shared,
    /// A writer that finds it in use gets a fresh, throwaway directory.
    Private,
    /// Writers wait for each other.
    Locked,
}

/// One parsed `--mount` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    Bind {
        target: String,
        source: String,
        from: Option<String>,
        readwrite: bool,
    },
    Cache {
        target: String,
        id: String,
        sharing: Sharing,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl MountSpec {
    /// The in-image path the mount appears at, if it is mounted at all
    /// (a secret given only as `env=` is not).
    pub fn target(&self) -> Option<String> {
        match self {
            MountSpec::Bind { target, .. }
            | MountSpec::Cache { target, .. }
            | MountSpec::Tmpfs { target, .. } => Some(target.clone()),
            MountSpec::Secret {
                id, target, env, ..
            } => match (target, env) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(_)) => None,
                (None, None) => Some(format!("/run/secrets/{id}")),
            },
        }
    }
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool> {
    match v {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => bail!("invalid value {v:?} for {key}: expected true or false"),
    }
}

fn parse_u32(key: &str, v: Option<&str>, radix: u32) -> Result<u32> {
    let v = v.ok_or_else(|| anyhow!("{key} needs a value"))?;
    u32::from_str_radix(v, radix).map_err(|_| anyhow!("invalid value {v:?} for {key}"))
}

/// Bytes from `64m`, `1g`, `512k` or a plain number.
fn parse_size(v: &str) -> Result<u64> {
    let lower = v.to_ascii_lowercase();
    let t = lower.trim_end_matches('b').trim_end_matches('i');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("invalid size {v:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("size {v:?} is too large"))
}

fn absolute_target(t: &str) -> String {
    rootfs::join_abs(&rootfs::components(t))
}

/// Parses one `--mount` value, e.g. `type=cache,target=/root/.cache,sharing=locked`.
pub fn parse_mount(spec: &str) -> Result<MountSpec> {
    parse_mount_inner(spec).with_context(|| format!("invalid --mount {spec:?}"))
}

fn parse_mount_inner(spec: &str) -> Result<MountSpec> {
    let mut fields: Vec<(String, Option<String>)> = Vec::new();
    for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        fields.push((k, v));
    }
    let kind = fields
        .iter()
        .find(|(k, _)| k == "type")
        .and_then(|(_, v)| v.clone())
        .unwrap_or_else(|| "bind".into());
    let (mut target, mut source, mut from, mut id, mut env) = (None, None, None, None, None);
    let (mut readonly, mut sharing, mut mode, mut uid, mut gid, mut size, mut required) =
        (None, Sharing::Shared, None, 0, 0, None, false);
    for (k, v) in &fields {
        let v = v.as_deref();
        match k.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => {
                target = Some(v.ok_or_else(|| anyhow!("{k} needs a value"))?.to_string())
            }
            "source" | "src" => {
                source = Some(v.ok_or_else(|| anyhow!("{k} needs a value"))?.to_string())
            }
            "from" => from = Some(v.ok_or_else(|| anyhow!("from needs a value"))?.to_string()),
            "id" => id = Some(v.ok_or_else(|| anyhow!("id needs a value"))?.to_string()),
            "env" => env = Some(v.ok_or_else(|| anyhow!("env needs a value"))?.to_string()),
            "ro" | "readonly" => readonly = Some(parse_bool(k, v)?),
            "rw" | "readwrite" => readonly = Some(!parse_bool(k, v)?),
            "sharing" => {
                sharing = match v {
                    Some("shared") => Sharing::Shared,
                    Some("private") => Sharing::Private,
                    Some("locked") => Sharing::Locked,
                    other => bail!("invalid sharing {other:?}: expected shared, private or locked"),
                }
            }
            "mode" => mode = Some(parse_u32(k, v, 8)?),
            "uid" => uid = parse_u32(k, v, 10)?,
            "gid" => gid = parse_u32(k, v, 10)?,
            "size" => size = Some(parse_size(v.ok_or_else(|| anyhow!("size needs a value"))?)?),
            "required" => required = parse_bool(k, v)?,
            other => bail!("unknown option {other:?}"),
        }
    }
    let need_target = |t: Option<String>| -> Result<String> {
        match t {
            Some(t) if !t.is_empty() => Ok(absolute_target(&t)),
            _ => bail!("type={kind} needs target="),
        }
    };
    let only = |allowed: &[&str]| -> Result<()> {
        for (k, _) in &fields {
            if !allowed.contains(&k.as_str()) {
                bail!("option {k:?} does not apply to type={kind}");
            }
        }
        Ok(())
    };
    match kind.as_str() {
        "bind" => {
            only(&[
                "type",
                "target",
                "dst",
                "destination",
                "source",
                "src",
                "from",
                "ro",
                "readonly",
                "rw",
                "readwrite",
            ])?;
            Ok(MountSpec::Bind {
                target: need_target(target)?,
                source: source.unwrap_or_else(|| "/".into()),
                from,
                readwrite: readonly == Some(false),
            })
        }
        "cache" => {
            only(&[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "sharing",
                "ro",
                "readonly",
                "rw",
                "readwrite",
                "mode",
                "uid",
                "gid",
                "from",
                "source",
                "src",
            ])?;
            if from.is_some() || source.is_some() {
                bail!(
                    "type=cache with from= or source= (seeding a cache from a stage) is not supported yet"
                );
            }
            let target = need_target(target)?;
            Ok(MountSpec::Cache {
                id: id.unwrap_or_else(|| target.clone()),
                target,
                sharing,
                readonly: readonly.unwrap_or(false),
                mode: mode.unwrap_or(0o755),
                uid,
                gid,
            })
        }
        "tmpfs" => {
            only(&["type", "target", "dst", "destination", "size"])?;
            Ok(MountSpec::Tmpfs {
                target: need_target(target)?,
                size,
            })
        }
        "secret" => {
            only(&[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "env",
                "required",
                "mode",
                "uid",
                "gid",
            ])?;
            let target = target
                .filter(|t| !t.is_empty())
                .map(|t| absolute_target(&t));
            let id = match (id, &target) {
                (Some(id), _) => id,
                (None, Some(t)) => t.rsplit('/').next().unwrap_or_default().to_string(),
                (None, None) => bail!("type=secret needs id= or target="),
            };
            if id.is_empty() || id.contains('/') {
                bail!("invalid secret id {id:?}");
            }
            Ok(MountSpec::Secret {
                id,
                target,
                env,
                required,
                mode: mode.unwrap_or(0o400),
                uid,
                gid,
            })
        }
        "ssh" => bail!(
            "type=ssh is not supported: strata has no SSH agent forwarding; use type=secret for a key"
        ),
        other => bail!("unknown mount type {other:?}: expected bind, cache, tmpfs, secret or ssh"),
    }
}

/// Where a prepared mount's content comes from, ready for the sandbox.
#[derive(Debug)]
pub(crate) enum Source {
    /// A file or directory inside a context or stage root (`base`), looked
    /// up again inside the sandbox's mount namespace, never leaving `base`.
    InTree { base: PathBuf, path: String },
    /// A directory or file strata owns (cache directory, secret file).
    Path(PathBuf),
    /// A fresh tmpfs.
    Tmpfs { size: Option<u64> },
}

/// One mount, prepared on the host side.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub target: String,
    pub source: Source,
    pub readonly: bool,
    /// Whether the source is a directory (the mountpoint must be one too).
    pub is_dir: bool,
    /// For a secret: its content and mode, for levels that cannot mount and
    /// must write the file into the root for the step (and remove it after).
    pub file_content: Option<(Vec<u8>, u32, u32, u32)>,
}

/// Everything the prepared mounts hold until the step ends: cache locks,
/// private cache directories, the secrets' private directory.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    locks: Vec<Flock<File>>,
    temp_dirs: Vec<tempfile::TempDir>,
}

/// What preparing the `--mount`s of one RUN gives.
#[derive(Debug, Default)]
pub(crate) struct PreparedMounts {
    pub mounts: Vec<Prepared>,
    /// Extra environment variables (secrets with `env=`): never logged.
    pub env: Vec<(String, String)>,
    pub leases: Leases,
}

/// Inputs for preparing mounts.
pub(crate) struct MountInputs<'a> {
    pub context_dir: Option<&'a Path>,
    pub stage_roots: &'a HashMap<String, PathBuf>,
    pub cache_root: &'a Path,
    pub secrets: &'a [SecretSpec],
}

fn secret_value(secrets: &[SecretSpec], id: &str) -> Result<Option<Vec<u8>>> {
    let Some(s) = secrets.iter().find(|s| s.id == id) else {
        return Ok(None);
    };
    match &s.source {
        super::SecretSource::File(path) => std::fs::read(path)
            .map(Some)
            .with_context(|| format!("reading secret {id:?} from {}", path.display())),
        super::SecretSource::Env(var) => match std::env::var_os(var) {
            Some(v) => Ok(Some(
                std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
            )),
            None => bail!("secret {id:?}: environment variable {var} is not set"),
        },
    }
}

/// The persistent directory of cache `id`, created with `mode`/`uid`/`gid`
/// the first time, and locked as `sharing` asks for the length of the step.
fn cache_dir(
    inputs: &MountInputs,
    id: &str,
    sharing: Sharing,
    mode: u32,
    uid: u32,
    gid: u32,
    leases: &mut Leases,
) -> Result<PathBuf> {
    let key = blake3::hash(id.as_bytes()).to_hex();
    let base = inputs.cache_root.join(&key[..32]);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .with_context(|| format!("creating cache directory {}", base.display()))?;
    let data = base.join("data");
    if !data.exists() {
        let staging = tempfile::Builder::new().prefix(".new-").tempdir_in(&base)?;
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(mode))?;
        chown_for_run(staging.path(), uid, gid)
            .with_context(|| format!("setting the owner of cache {id:?}"))?;
        // Another build may have created it meanwhile: then keep theirs.
        let staged = staging.keep();
        if std::fs::rename(&staged, &data).is_err() {
            let _ = std::fs::remove_dir(&staged);
        }
    }
    let lock_path = base.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match sharing {
        Sharing::Shared => Ok(data),
        Sharing::Locked => {
            let held = Flock::lock(lock, FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow!("locking cache {id:?}: {e}"))?;
            leases.locks.push(held);
            Ok(data)
        }
        Sharing::Private => match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                leases.locks.push(held);
                Ok(data)
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                // In use by another step: this one gets a throwaway directory.
                let fresh = tempfile::Builder::new()
                    .prefix("private-")
                    .tempdir_in(&base)?;
                std::fs::set_permissions(fresh.path(), std::fs::Permissions::from_mode(mode))?;
                chown_for_run(fresh.path(), uid, gid)?;
                let path = fresh.path().to_path_buf();
                leases.temp_dirs.push(fresh);
                Ok(path)
            }
            Err((_, e)) => Err(anyhow!("locking cache {id:?}: {e}")),
        },
    }
}

/// Gives `path` the owner the RUN sees as `uid:gid`. Unprivileged, strata's
/// own uid is uid 0 in the RUN's user namespace, and no other id exists there.
fn chown_for_run(path: &Path, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: getter.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    } else if uid != 0 || gid != 0 {
        bail!(
            "uid={uid}/gid={gid} needs strata to run as root: unprivileged, only uid 0 exists in RUN"
        );
    }
    Ok(())
}

/// Writes a secret where only strata can read it until it is bound in.
fn write_private(path: &Path, value: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value)?;
    chown_for_run(path, uid, gid)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies a file or tree as it is (symlinks as symlinks, modes and owners kept).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if ft.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, meta.permissions())?;
    } else if ft.is_file() {
        std::fs::copy(from, to)?;
    } else {
        // Sockets, fifos and devices are not copied into a throwaway tree.
        return Ok(());
    }
    use std::os::unix::fs::MetadataExt;
    let _ = std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

/// Opens `source` inside `base` for a bind mount, never leaving `base`.
fn check_bind_source(base: &Path, source: &str) -> Result<bool> {
    let dir = RootDir::open(base).with_context(|| format!("opening {}", base.display()))?;
    let fd = dir
        .open_in(source, libc::O_PATH)
        .with_context(|| format!("bind source {source:?} in {}", base.display()))?;
    let meta = nix::sys::stat::fstat(&fd)?;
    Ok(meta.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Prepares every `--mount` of a RUN (sorted by target so parents mount first).
pub(crate) fn prepare(specs: &[MountSpec], inputs: &MountInputs) -> Result<PreparedMounts> {
    let mut out = PreparedMounts::default();
    let mut secret_dir: Option<tempfile::TempDir> = None;
    for spec in specs {
        match spec {
            MountSpec::Bind {
                target,
                source,
                from,
                readwrite,
            } => {
                let base = match from {
                    None => inputs
                        .context_dir
                        .ok_or_else(|| {
                            anyhow!("--mount type=bind without from= needs a build context")
                        })?
                        .to_path_buf(),
                    Some(f) => inputs.stage_roots.get(f).cloned().ok_or_else(|| {
                        anyhow!("--mount from={f}: no stage or image of that name is available")
                    })?,
                };
                let is_dir = check_bind_source(&base, source)?;
                let source = if *readwrite {
                    // BuildKit discards what a RUN writes to a rw bind: the
                    // RUN gets a throwaway copy, removed with the step.
                    let copy_dir = tempfile::Builder::new()
                        .prefix("strata-rw-bind-")
                        .tempdir()?;
                    let copy = copy_dir.path().join("copy");
                    let real = RootDir::open(&base)?
                        .real_host_path(source)
                        .with_context(|| format!("bind source {source:?} in {}", base.display()))?;
                    copy_tree(&real, &copy)
                        .with_context(|| format!("copying {} for a rw bind", real.display()))?;
                    out.leases.temp_dirs.push(copy_dir);
                    Source::Path(copy)
                } else {
                    Source::InTree {
                        base,
                        path: source.clone(),
                    }
                };
                out.mounts.push(Prepared {
                    target: target.clone(),
                    source,
                    readonly: !readwrite,
                    is_dir,
                    file_content: None,
                });
            }
            MountSpec::Cache {
                target,
                id,
                sharing,
                readonly,
                mode,
                uid,
                gid,
            } => {
                let dir = cache_dir(inputs, id, *sharing, *mode, *uid, *gid, &mut out.leases)?;
                out.mounts.push(Prepared {
                    target: target.clone(),
                    source: Source::Path(dir),
                    readonly: *readonly,
                    is_dir: true,
                    file_content: None,
                });
            }
            MountSpec::Tmpfs { target, size } => {
                out.mounts.push(Prepared {
                    target: target.clone(),
                    source: Source::Tmpfs { size: *size },
                    readonly: false,
                    is_dir: true,
                    file_content: None,
                });
            }
            MountSpec::Secret {
                id,
                env,
                required,
                mode,
                uid,
                gid,
                ..
            } => {
                let Some(value) = secret_value(inputs.secrets, id)? else {
                    if *required {
                        bail!(
                            "secret {id:?} is required but was not given with --secret id={id},..."
                        );
                    }
                    continue;
                };
                if let Some(var) = env {
                    out.env
                        .push((var.clone(), String::from_utf8_lossy(&value).into_owned()));
                }
                let Some(target) = spec.target() else {
                    continue;
                };
                let dir = match &secret_dir {
                    Some(d) => d,
                    None => secret_dir.insert(
                        tempfile::Builder::new()
                            .prefix("strata-secrets-")
                            .tempdir()?,
                    ),
                };
                let path = dir.path().join(format!("{}", out.mounts.len()));
                write_private(&path, &value, *mode, *uid, *gid)?;
                out.mounts.push(Prepared {
                    target,
                    source: Source::Path(path),
                    readonly: true,
                    is_dir: false,
                    file_content: Some((value, *mode, *uid, *gid)),
                });
            }
        }
    }
    if let Some(d) = secret_dir {
        out.leases.temp_dirs.push(d);
    }
    out.mounts
        .sort_by_key(|m| rootfs::components(&m.target).len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_buildkit_mount_specs() {
        assert_eq!(
            parse_mount("type=bind,source=src,target=/app").unwrap(),
            MountSpec::Bind {
                target: "/app".into(),
                source: "src".into(),
                from: None,
                readwrite: false
            }
        );
        assert_eq!(
            parse_mount("target=/app/,from=builder,rw").unwrap(),
            MountSpec::Bind {
                target: "/app".into(),
                source: "/".into(),
                from: Some("builder".into()),
                readwrite: true
            }
        );
        assert_eq!(
            parse_mount(
                "type=cache,target=/root/.cache/go-build,sharing=locked,mode=0700,uid=1000"
            )
            .unwrap(),
            MountSpec::Cache {
                target: "/root/.cache/go-build".into(),
                id: "/root/.cache/go-build".into(),
                sharing: Sharing::Locked,
                readonly: false,
                mode: 0o700,
                uid: 1000,
                gid: 0,
            }
        );
        assert_eq!(
            parse_mount("type=tmpfs,dst=/t,size=64m").unwrap(),
            MountSpec::Tmpfs {
                target: "/t".into(),
                size: Some(64 << 20)
            }
        );
        let secret = parse_mount("type=secret,id=aws,required").unwrap();
        assert_eq!(secret.target().as_deref(), Some("/run/secrets/aws"));
        let by_target = parse_mount("type=secret,target=/root/.npmrc").unwrap();
        assert!(matches!(&by_target, MountSpec::Secret { id, .. } if id == ".npmrc"));
        assert_eq!(
            parse_mount("type=secret,id=t,env=TOKEN").unwrap().target(),
            None
        );
    }

    #[test]
    fn rejects_bad_specs() {
        for (spec, want) in [
            ("type=bind", "needs target="),
            ("type=bind,target=/a,size=1", "does not apply"),
            ("type=cache,target=/a,mode=9", "invalid value"),
            ("type=secret", "needs id= or target="),
            ("type=secret,id=a/b", "invalid secret id"),
            ("type=cache,target=/a,from=x", "not supported yet"),
            ("type=tmpfs,target=/a,size=lots", "invalid size"),
            ("type=bind,target=/a,ro=maybe", "expected true or false"),
        ] {
            let err = format!("{:#}", parse_mount(spec).unwrap_err());
            assert!(err.contains(want) && err.contains(spec), "{spec}: {err}");
        }
    }
}
