//! A faithful copy of a finished stage's root for `FROM <stage>`: file types,
//! contents, modes (setuid included), owners, hard links, symlinks, device
//! nodes, xattrs and mtimes. Done in-process, because strata's own executor
//! image has no `cp`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// Copies the tree under `from` into `to` (created if missing). Symlinks are
/// copied as links, never followed.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    copy_tree_filtered(from, to, &|_| true)
}

/// Like [`copy_tree`], leaving out every entry (and what is under it) whose
/// path relative to `from` fails `keep`. Directories already at the
/// destination are reused (their attributes are set from the source).
pub fn copy_tree_filtered(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut links = HashMap::new();
    let mut dirs = Vec::new();
    let mut walk = Walk {
        from,
        keep,
        links: &mut links,
        dirs: &mut dirs,
    };
    walk.copy_dir(from, to)?;
    // Directory times last: filling a directory changes its mtime.
    for (dir, meta) in dirs.iter().rev() {
        set_times(dir, meta)?;
    }
    Ok(())
}

type Links = HashMap<(u64, u64), std::path::PathBuf>;

struct Walk<'a> {
    from: &'a Path,
    keep: &'a dyn Fn(&Path) -> bool,
    links: &'a mut Links,
    dirs: &'a mut Vec<(std::path::PathBuf, fs::Metadata)>,
}

impl Walk<'_> {
    fn copy_dir(&mut self, from: &Path, to: &Path) -> Result<()> {
        let meta =
            fs::symlink_metadata(from).with_context(|| format!("reading {}", from.display()))?;
        copy_attrs(from, to, &meta)?;
        self.dirs.push((to.to_path_buf(), meta));
        let mut entries: Vec<_> = fs::read_dir(from)
            .with_context(|| format!("listing {}", from.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let src = entry.path();
            if !(self.keep)(src.strip_prefix(self.from).unwrap_or(&src)) {
                continue;
            }
            let dst = to.join(entry.file_name());
            let meta =
                fs::symlink_metadata(&src).with_context(|| format!("reading {}", src.display()))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                if !fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
                    fs::create_dir(&dst).with_context(|| format!("creating {}", dst.display()))?;
                }
                self.copy_dir(&src, &dst)?;
                continue;
            }
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    fs::hard_link(first, &dst)
                        .with_context(|| format!("linking {}", dst.display()))?;
                    continue;
                }
                self.links.insert((meta.dev(), meta.ino()), dst.clone());
            }
            if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)
                    .with_context(|| format!("creating {}", dst.display()))?;
            } else if ft.is_file() {
                fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            } else {
                let kind = if ft.is_block_device() {
                    SFlag::S_IFBLK
                } else if ft.is_char_device() {
                    SFlag::S_IFCHR
                } else if ft.is_fifo() {
                    SFlag::S_IFIFO
                } else {
                    // Sockets mean nothing in an image; layers leave them out too.
                    continue;
                };
                let rdev = meta.rdev();
                let dev = makedev(nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
                mknod(
                    &dst,
                    kind,
                    Mode::from_bits_truncate(meta.mode() & 0o7777),
                    dev,
                )
                .with_context(|| format!("creating {}", dst.display()))?;
            }
            copy_attrs(&src, &dst, &meta)?;
            set_times(&dst, &meta)?;
        }
        Ok(())
    }
}

/// Owner, then mode (chown clears setuid bits), then xattrs.
pub(super) fn copy_attrs(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("chown {}", dst.display()))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .with_context(|| format!("chmod {}", dst.display()))?;
    }
    if let Ok(names) = xattr::list(src) {
        for name in names {
            if let Ok(Some(value)) = xattr::get(src, &name) {
                xattr::set(dst, &name, &value)
                    .with_context(|| format!("setting xattrs on {}", dst.display()))?;
            }
        }
    }
    Ok(())
}

pub(super) fn set_times(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    let atime = filetime::FileTime::from_last_access_time(meta);
    filetime::set_symlink_file_times(path, atime, mtime)
        .with_context(|| format!("setting times on {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_links_modes_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        fs::create_dir_all(from.join("d/e")).unwrap();
        fs::write(from.join("d/file"), b"data").unwrap();
        fs::set_permissions(from.join("d/file"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(from.join("d/file"), from.join("hard")).unwrap();
        std::os::unix::fs::symlink("../outside", from.join("d/link")).unwrap();
        filetime::set_file_mtime(
            from.join("d/e"),
            filetime::FileTime::from_unix_time(1000, 0),
        )
        .unwrap();
        let to = dir.path().join("to");
        copy_tree(&from, &to).unwrap();
        assert_eq!(fs::read(to.join("hard")).unwrap(), b"data");
        let a = fs::metadata(to.join("d/file")).unwrap();
        let b = fs::metadata(to.join("hard")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard links stay linked");
        assert_eq!(a.mode() & 0o7777, 0o4755);
        assert_eq!(
            fs::read_link(to.join("d/link")).unwrap(),
            Path::new("../outside")
        );
        assert_eq!(fs::metadata(to.join("d/e")).unwrap().mtime(), 1000);
    }
}
