//! Helpers shared by the snapshotter's integration tests: building small
//! trees, ageing them, applying layers the way a container runtime does, and
//! comparing trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

/// The time every entry of an aged tree has: any later change moves it.
pub const AGED: i64 = 1_600_000_000;

/// Is this test allowed to do what only root can (chown, mknod)?
/// Skips with a message elsewhere, except in CI where it must not.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root, and CI=true forbids skipping"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// Root and /dev/fuse available? Skips (returns false) only outside CI.
pub fn fuse_available() -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else {
        strata_snapshotter::fuse::probe().err().map(|e| e.to_string())
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("FUSE test cannot run in CI: {why}"),
        Some(why) => {
            eprintln!("skipping FUSE test: {why}");
            false
        }
    }
}

/// The lines of /proc/self/mountinfo that name something under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(String::from)
        .collect()
}

pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

pub fn mkdir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
}

pub fn link(root: &Path, target: &str, rel: &str) {
    symlink(target, root.join(rel)).unwrap();
}

/// Sets `rel`'s mtime (and atime) without following a symlink.
pub fn set_mtime(root: &Path, rel: &str, secs: i64, nanos: i64) {
    let t = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        &root.join(rel),
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Sets every entry's mtime to `AGED`, so that whatever a step touches shows.
pub fn age(root: &Path) {
    for (rel, _) in walk(root) {
        set_mtime(root, rel.to_str().unwrap(), AGED, 0);
    }
}

/// Every entry under `root`, sorted, with the relative path.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        let mut names: Vec<_> = fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = dir.join(name);
            let md = fs::symlink_metadata(root.join(&rel)).unwrap();
            let is_dir = md.is_dir();
            out.push((rel.clone(), md));
            if is_dir {
                go(root, &rel, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, Path::new(""), &mut out);
    out
}

/// What a tree comparison looks at for one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// sha256 of the content or link target (short assertion messages).
    pub content: String,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A comparable picture of a tree, minus the `skip` paths.
pub fn picture(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Seen> {
    walk(root)
        .into_iter()
        .filter(|(rel, _)| !skip.iter().any(|s| rel.starts_with(s)))
        .map(|(rel, md)| {
            let abs = root.join(&rel);
            let ft = md.file_type();
            let (kind, content) = if ft.is_dir() {
                ("dir", Vec::new())
            } else if ft.is_symlink() {
                (
                    "symlink",
                    fs::read_link(&abs)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if ft.is_file() {
                ("file", fs::read(&abs).unwrap())
            } else {
                ("other", Vec::new())
            };
            let mut xattrs: Vec<_> = xattr::list(&abs)
                .map(|names| {
                    names
                        .map(|n| (n.clone(), xattr::get(&abs, &n).unwrap().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            let seen = Seen {
                kind,
                mode: md.permissions().mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: if ft.is_symlink() || ft.is_dir() {
                    0
                } else {
                    md.mtime()
                },
                content: sha256_hex(&content),
                xattrs,
            };
            (rel, seen)
        })
        .collect()
}

/// Applies a layer tar (uncompressed bytes) to `dir` as a container runtime
/// does: whiteouts remove, an opaque marker empties its directory, any other
/// entry replaces what was there (a directory over a directory merges).
pub fn apply_layer(dir: &Path, tar_bytes: &[u8]) {
    let mut archive = tar::Archive::new(tar_bytes);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let parent = dir.join(path.parent().unwrap());
        if name == ".wh..wh..opq" {
            for child in fs::read_dir(&parent).unwrap() {
                remove(&child.unwrap().path());
            }
            continue;
        }
        if let Some(gone) = name.strip_prefix(".wh.") {
            remove(&parent.join(gone));
            continue;
        }
        let target = parent.join(&name);
        let is_dir_entry = entry.header().entry_type().is_dir();
        if fs::symlink_metadata(&target).is_ok_and(|md| !(md.is_dir() && is_dir_entry)) {
            remove(&target);
        }
        assert!(
            entry.unpack_in(dir).unwrap(),
            "entry {} escaped the root",
            path.display()
        );
    }
}

fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).unwrap(),
        Ok(_) => fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// Decompresses a layer blob with the tools users have (`gzip`, `zstd`).
pub fn decompress(blob: &Path, compression: strata_snapshotter::layer::Compression) -> Vec<u8> {
    use strata_snapshotter::layer::Compression;
    let tool = match compression {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None => return fs::read(blob).unwrap(),
    };
    let out = std::process::Command::new(tool)
        .arg("-dc")
        .arg(blob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} -dc {}: {}",
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs::File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// Uncompressed layers, so that tests can read them back as tar.
pub fn plain() -> strata_snapshotter::layer::LayerOptions {
    strata_snapshotter::layer::LayerOptions {
        compression: strata_snapshotter::layer::Compression::None,
        ..Default::default()
    }
}

/// A tree a build starts from, and its copy made only from a layer.
pub struct BaseTree {
    pub tmp: tempfile::TempDir,
    /// Made by `setup`, then aged.
    pub root: PathBuf,
    /// Rebuilt from one layer of everything in `root` but what is under `skip`.
    pub applied: PathBuf,
    /// Where layers are written.
    pub blobs: PathBuf,
}

pub fn base_tree(setup: impl Fn(&Path), skip: &[&str]) -> BaseTree {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let applied = tmp.path().join("applied");
    let blobs = tmp.path().join("blobs");
    mkdir(&root, "");
    mkdir(&applied, "");
    setup(&root);
    age(&root);
    let all = walk(&root)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !skip.iter().any(|s| p.starts_with(s)))
        .collect();
    let base = strata_snapshotter::ChangeSet { changed: all, ..Default::default() };
    let blob = strata_snapshotter::layer::write_layer(&root, &base, &plain(), &blobs).unwrap();
    apply_layer(&applied, &fs::read(&blob.path).unwrap());
    BaseTree { tmp, root, applied, blobs }
}
