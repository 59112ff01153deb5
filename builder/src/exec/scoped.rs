//! Path resolution confined to a root, as if the process were chrooted there.
//!
//! Build contexts and images are hostile: a symlink in either may point
//! anywhere (`/etc`, `../../..`). Every path strata opens inside a context or
//! a stage root goes through [`resolve`], which follows symlinks component by
//! component and interprets absolute targets and `..` relative to the root, so
//! the result always lies inside it.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up (Linux's limit).
const MAX_LINKS: usize = 40;

/// Resolves `path` (absolute or relative, both taken from `root`) to a host
/// path inside `root`. Symlinks in intermediate components are always
/// followed within the root; the last component is followed only when
/// `follow_last` is set. Components that do not exist are kept as they are,
/// so the result may name a path to be created.
pub fn resolve(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let is_last = pending.is_empty();
        let candidate = join(root, &resolved).join(&name);
        if is_last && !follow_last {
            resolved.push(name);
            break;
        }
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: too many levels of symbolic links", path.display()),
                    ));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            _ => resolved.push(name),
        }
    }
    Ok(join(root, &resolved))
}

/// The relative form of a path inside a root: `/a/./b/` → `a/b`. `..` is kept
/// as a component so that [`resolve`] can clamp it at the root.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

/// `create_dir_all` that returns the directories it created, outermost first.
/// New directories get `mode` (subject to the umask unless set after).
pub fn create_dir_all_tracked(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        match std::fs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p.to_path_buf()),
            Err(e) => return Err(e),
        }
        cur = p.parent();
    }
    missing.reverse();
    for dir in &missing {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))),
        }
    }
    Ok(missing)
}

/// Normalises a path lexically, clamping `..` at the root: `a/../../b` → `b`.
pub fn clean(path: &Path) -> PathBuf {
    let mut out: Vec<OsString> = Vec::new();
    for c in components(path) {
        if c == ".." {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../..", root.join("real/up")).unwrap();
        symlink("real", root.join("rel")).unwrap();
        assert_eq!(resolve(root, Path::new("/abs/passwd"), true).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve(root, Path::new("real/up/etc"), true).unwrap(), root.join("etc"));
        assert_eq!(resolve(root, Path::new("rel/sub"), true).unwrap(), root.join("real/sub"));
        assert_eq!(resolve(root, Path::new("rel"), false).unwrap(), root.join("rel"));
        assert_eq!(resolve(root, Path::new("../../x"), true).unwrap(), root.join("x"));
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        assert!(resolve(dir.path(), Path::new("a/x"), true).is_err());
    }

    #[test]
    fn clean_clamps_at_root() {
        assert_eq!(clean(Path::new("/a/../../b/./c/")), PathBuf::from("b/c"));
    }
}
