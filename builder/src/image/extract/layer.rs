//! Safe, streaming extraction of image layers into a root directory.
//!
//! Each layer is decompressed (gzip, zstd or none, recognised by its magic
//! bytes) on a helper thread while the tar entries are applied, so a layer is
//! never held in memory. Whiteouts (`.wh.NAME`, `.wh..wh..opq`), hard links,
//! symlinks, modes, owners (when running as root), mtimes, xattrs and device
//! nodes (as root) are applied as containerd does.
//!
//! Every layer is treated as hostile. Entry names are cleaned lexically as if
//! rooted at `/` (so `../../x` and `/x` land at `<root>/x`); parent
//! directories are resolved inside the root, following symlinks with the root
//! as `/` (so a symlink to `/` or `../..` never leads outside); files are
//! created without following a symlink at their own name; hard-link targets
//! are resolved the same way. What cannot be made safe is rejected with an
//! error naming the layer and the entry (elided in the middle when long).
//! Whole blocks of zeros are written as holes, so sparse entries and layers
//! of compressed zeros cost no disk.
//!
//! This module depends only on the standard library and the tar and
//! compression crates, so the fuzzer (fuzz/) compiles it on its own.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use filetime::FileTime;
use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 255;

/// Applies one layer blob to `root`. `media_type` is used only in messages:
/// the compression is recognised from the content, since registries in the
/// wild mislabel it.
pub fn apply_layer(blob_path: &Path, media_type: &str, root: &Path) -> Result<()> {
    let reader = DecompressingReader::spawn(blob_path)?;
    apply_tar(reader, root)
        .with_context(|| format!("layer {} ({media_type})", blob_path.display()))
}

/// Applies `layers` (blob path, media type) to `root` in order.
pub fn extract_layers(layers: &[(PathBuf, String)], root: &Path) -> Result<()> {
    const LOOKAHEAD: usize = 2;
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut pending: VecDeque<Result<DecompressingReader>> = VecDeque::new();
    let mut next = 0;
    for (i, (path, media_type)) in layers.iter().enumerate() {
        tracing::debug!("applying layer {}/{} {}", i + 1, layers.len(), path.display());
        while next < layers.len() && pending.len() <= LOOKAHEAD {
            pending.push_back(DecompressingReader::spawn(&layers[next].0));
            next += 1;
        }
        let reader = pending.pop_front().expect("one reader per layer")?;
        apply_tar(reader, root).with_context(|| format!("layer {} ({media_type})", path.display()))?;
    }
    Ok(())
}

/// Non-root extraction may leave read-only directories; make them removable.
pub fn make_writable_tree(dir: &Path) {
    if let Ok(m) = fs::symlink_metadata(dir)
        && m.is_dir()
    {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(m.permissions().mode() | 0o700));
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                make_writable_tree(&e.path());
            }
        }
    }
}

/// Decompresses a blob on its own thread into a bounded channel.
struct DecompressingReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    thread: Option<JoinHandle<()>>,
}

impl DecompressingReader {
    fn spawn(path: &Path) -> Result<DecompressingReader> {
        let file = File::open(path).with_context(|| format!("opening layer {}", path.display()))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let magic = {
            use std::io::BufRead;
            input.fill_buf().with_context(|| format!("reading layer {}", path.display()))?.to_vec()
        };
        let mut decoder: Box<dyn Read + Send> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(input))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
        } else {
            Box::new(input)
        };
        let (tx, rx): (SyncSender<io::Result<Vec<u8>>>, _) = sync_channel(8);
        let thread = std::thread::Builder::new()
            .name("layer-decompress".into())
            .spawn(move || loop {
                let mut chunk = vec![0u8; 256 << 10];
                match read_full(&mut decoder, &mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        chunk.truncate(n);
                        if tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            })
            .context("starting a decompression thread")?;
        Ok(DecompressingReader { rx, buf: Vec::new(), pos: 0, thread: Some(thread) })
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Read for DecompressingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk.map_err(|e| io::Error::new(e.kind(), format!("truncated or corrupt compressed layer: {e}")))?;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for DecompressingReader {
    fn drop(&mut self) {
        // Unblock the thread (its sends fail once rx is gone) and wait for it.
        let (_, rx) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// State for applying one layer.
struct Applier<'a> {
    root: &'a Path,
    as_root: bool,
    /// Paths this layer wrote: an opaque whiteout must not remove them.
    written: HashSet<PathBuf>,
    /// Directory modes and mtimes are set last: adding children changes them.
    dirs: Vec<(PathBuf, u32, FileTime)>,
    warned_devices: bool,
    warned_owners: bool,
    /// The last parent directory resolved (relative name, resolved path):
    /// entries come grouped by directory, so most lookups hit it. Cleared
    /// whenever a symlink is made or anything removed, the only changes that
    /// can alter how a name resolves.
    parent_cache: Option<(PathBuf, PathBuf)>,
}

fn apply_tar(reader: impl Read, root: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut applier = Applier {
        root,
        as_root: nix::unistd::geteuid().is_root(),
        written: HashSet::new(),
        dirs: Vec::new(),
        warned_devices: false,
        warned_owners: false,
        parent_cache: None,
    };
    let entries = archive.entries().context("reading tar stream")?;
    for entry in entries {
        let mut entry = entry.context("reading tar stream (truncated or corrupt layer?)")?;
        let name = shown_name(&entry.path_bytes());
        applier.apply(&mut entry).with_context(|| format!("entry {name:?}"))?;
    }
    // Deepest first, so setting a parent's mode cannot block its children.
    applier.dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (path, mode, mtime) in &applier.dirs {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("setting mode of {}", path.display()))?;
        filetime::set_symlink_file_times(path, *mtime, *mtime)
            .with_context(|| format!("setting mtime of {}", path.display()))?;
    }
    Ok(())
}

/// An entry name for messages: lossy UTF-8, its middle elided when long.
fn shown_name(name: &[u8]) -> String {
    const KEEP: usize = 120;
    let name = String::from_utf8_lossy(name);
    if name.len() <= 2 * KEEP {
        return name.into_owned();
    }
    let head: String = name.chars().take(KEEP).collect();
    let tail: Vec<char> = name.chars().rev().take(KEEP).collect();
    format!("{head}…{}", tail.into_iter().rev().collect::<String>())
}

/// Copies a file's data, leaving holes where whole blocks are zero, so a
/// sparse entry or a layer of compressed zeros takes no disk. Returns the size.
fn copy_sparse(from: &mut impl Read, to: &mut File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    const BLOCK: usize = 64 << 10;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut buf = vec![0u8; BLOCK];
    let mut size = 0u64;
    let mut hole = false;
    loop {
        let n = read_full(from, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if chunk == &ZEROS[..n] {
            to.seek(SeekFrom::Current(n as i64))?;
            hole = true;
        } else {
            to.write_all(chunk)?;
            hole = false;
        }
        size += n as u64;
    }
    if hole {
        to.set_len(size)?;
    }
    Ok(size)
}

/// Cleans an entry name as if rooted at `/`: `..` never climbs above the
/// root, `.` and empty components vanish. Returns the relative path.
fn clean_name(name: &[u8]) -> PathBuf {
    let mut out: Vec<&[u8]> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    let mut path = PathBuf::new();
    for p in out {
        path.push(OsStr::from_bytes(p));
    }
    path
}

/// Resolves relative path `rel` inside `root`, following symlinks with `root`
/// as `/`. The result is always `root` joined with symlink-free components.
fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<PathBuf> =
        rel.components().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_os_str().as_bytes() {
            b"/" | b"." | b"" => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    bail!("too many levels of symbolic links resolving {}", rel.display());
                }
                let target = fs::read_link(&full)
                    .with_context(|| format!("reading symlink {}", full.display()))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut expanded: VecDeque<PathBuf> = target
                    .components()
                    .filter(|c| !matches!(c, Component::RootDir))
                    .map(|c| PathBuf::from(c.as_os_str()))
                    .collect();
                expanded.extend(pending.drain(..));
                pending = expanded;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn lstat(p: &Path) -> Option<fs::Metadata> {
    fs::symlink_metadata(p).ok()
}

/// Removes whatever is at `p` (a directory tree, a file, a symlink; never followed).
fn remove_any(p: &Path) -> Result<()> {
    match lstat(p) {
        None => Ok(()),
        Some(m) if m.is_dir() => {
            make_writable_tree(p);
            fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
        }
        Some(_) => fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("path {} contains NUL", p.display()))
}

impl Applier<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink) {
            return Ok(());
        }
        let rel = clean_name(&entry.path_bytes());
        let Some(file_name) = rel.file_name().map(|f| f.to_os_string()) else {
            // The root itself ("./"): its metadata belongs to the build, not the layer.
            return Ok(());
        };
        // The kernel refuses longer paths; say so before trying (containerd fails too).
        let full_len = self.root.as_os_str().len() + 1 + rel.as_os_str().len();
        if full_len >= libc::PATH_MAX as usize {
            bail!("path too long: {full_len} bytes under the root, the limit is {}", libc::PATH_MAX);
        }
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = self.resolve_parent(parent_rel)?;
        let name = file_name.to_string_lossy();
        if !self.as_root {
            self.make_parent_writable(&parent)?;
        }

        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&parent, &name, hidden);
        }

        if !parent.is_dir() {
            if lstat(&parent).is_some() {
                bail!("parent {} is not a directory", parent.display());
            }
            fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let target = parent.join(&file_name);
        let header = entry.header().clone();
        let mode = header.mode().context("bad mode")? & 0o7777;
        let mtime = FileTime::from_unix_time(header.mtime().unwrap_or(0) as i64, 0);
        let (uid, gid) = (header.uid().unwrap_or(0) as u32, header.gid().unwrap_or(0) as u32);

        match kind {
            EntryType::Directory => {
                match lstat(&target) {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        self.remove(&target)?;
                        fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
                    }
                    None => fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?,
                }
                // Keep it writable until the end of the layer, whatever its mode.
                fs::set_permissions(&target, fs::Permissions::from_mode(0o700 | mode))?;
                self.chown(&target, uid, gid)?;
                self.xattrs(entry, &target)?;
                self.dirs.push((target.clone(), mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove(&target)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                copy_sparse(entry, &mut f).with_context(|| format!("writing {}", target.display()))?;
                drop(f);
                self.chown(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                self.xattrs(entry, &target)?;
                filetime::set_symlink_file_times(&target, mtime, mtime)?;
            }
            EntryType::Symlink => {
                let link = entry.link_name_bytes().ok_or_else(|| anyhow!("symlink without a target"))?;
                let link = PathBuf::from(OsStr::from_bytes(&link));
                self.remove(&target)?;
                self.parent_cache = None;
                std::os::unix::fs::symlink(&link, &target)
                    .with_context(|| format!("creating symlink {}", target.display()))?;
                self.chown(&target, uid, gid)?;
                self.xattrs(entry, &target)?;
                filetime::set_symlink_file_times(&target, mtime, mtime)?;
            }
            EntryType::Link => {
                let link = entry.link_name_bytes().ok_or_else(|| anyhow!("hard link without a target"))?;
                let link_rel = clean_name(&link);
                let Some(link_file) = link_rel.file_name() else {
                    bail!("hard link to the root directory");
                };
                let source = resolve_in_root(self.root, link_rel.parent().unwrap_or(Path::new("")))?.join(link_file);
                match lstat(&source) {
                    None => bail!("hard link target {:?} does not exist in the image", String::from_utf8_lossy(&link)),
                    Some(m) if m.is_dir() => bail!("hard link to a directory ({:?})", String::from_utf8_lossy(&link)),
                    Some(_) => {}
                }
                if source == target {
                    return Ok(());
                }
                self.remove(&target)?;
                fs::hard_link(&source, &target)
                    .with_context(|| format!("linking {} to {}", target.display(), source.display()))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind_bits = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if kind != EntryType::Fifo && !self.as_root {
                    if !self.warned_devices {
                        tracing::warn!("not running as root: device nodes in base layers are skipped");
                        self.warned_devices = true;
                    }
                    return Ok(());
                }
                self.remove(&target)?;
                let dev = libc::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                let c = cstr(&target)?;
                // SAFETY: c is a valid NUL-terminated path.
                let rc = unsafe { libc::mknod(c.as_ptr(), kind_bits | mode, dev) };
                if rc != 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() == Some(libc::EPERM) && kind != EntryType::Fifo {
                        tracing::warn!("cannot create device node {} here ({err}); skipped", target.display());
                        return Ok(());
                    }
                    return Err(err).with_context(|| format!("creating node {}", target.display()));
                }
                self.chown(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                filetime::set_symlink_file_times(&target, mtime, mtime)?;
            }
            other => bail!("unsupported tar entry type {other:?}"),
        }
        self.written.insert(target);
        Ok(())
    }

    fn whiteout(&mut self, parent: &Path, name: &str, hidden: &str) -> Result<()> {
        if name == OPAQUE_WHITEOUT {
            let Ok(children) = fs::read_dir(parent) else { return Ok(()) };
            for child in children {
                let child = child?.path();
                if !self.written.contains(&child) {
                    self.remove(&child)?;
                }
            }
            return Ok(());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.starts_with(WHITEOUT_PREFIX) {
            bail!("invalid whiteout {name:?}");
        }
        self.remove(&parent.join(hidden))
    }

    fn resolve_parent(&mut self, rel: &Path) -> Result<PathBuf> {
        if let Some((cached_rel, resolved)) = &self.parent_cache
            && cached_rel == rel
        {
            return Ok(resolved.clone());
        }
        let resolved = resolve_in_root(self.root, rel)?;
        self.parent_cache = Some((rel.to_path_buf(), resolved.clone()));
        Ok(resolved)
    }

    /// Without root, a read-only directory from an earlier layer must be made
    /// writable to add to it; its mode and mtime are restored at the end of the layer.
    fn make_parent_writable(&mut self, dir: &Path) -> Result<()> {
        let Some(m) = lstat(dir) else { return Ok(()) };
        let mode = m.permissions().mode() & 0o7777;
        if m.is_dir() && mode & 0o300 != 0o300 && !self.dirs.iter().any(|d| d.0 == dir) {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))
                .with_context(|| format!("making {} writable", dir.display()))?;
            let mtime = FileTime::from_last_modification_time(&m);
            self.dirs.push((dir.to_path_buf(), mode, mtime));
        }
        Ok(())
    }

    fn remove(&mut self, p: &Path) -> Result<()> {
        if lstat(p).is_some() {
            self.parent_cache = None;
        }
        remove_any(p)
    }

    fn chown(&mut self, p: &Path, uid: u32, gid: u32) -> Result<()> {
        if !self.as_root {
            return Ok(());
        }
        match std::os::unix::fs::lchown(p, Some(uid), Some(gid)) {
            Ok(()) => Ok(()),
            // In a user namespace that maps only some ids, other owners cannot be set.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) => {
                if !self.warned_owners {
                    tracing::warn!("cannot set owner {uid}:{gid} on {} ({e}): this user namespace does not map it; such files keep the builder's owner", p.display());
                    self.warned_owners = true;
                }
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("setting owner of {}", p.display())),
        }
    }

    fn xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, p: &Path) -> Result<()> {
        let Some(exts) = entry.pax_extensions().context("reading PAX headers")? else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext.context("reading PAX headers")?;
            let Ok(key) = ext.key() else { continue };
            let Some(attr) = key.strip_prefix("SCHILY.xattr.") else { continue };
            if let Err(e) = xattr::set(p, attr, ext.value_bytes()) {
                // Unprivileged runs cannot set trusted.* / security.*; some filesystems have no xattrs.
                if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) {
                    tracing::debug!("xattr {attr} on {} not set: {e}", p.display());
                } else {
                    return Err(e).with_context(|| format!("setting xattr {attr} on {}", p.display()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_names_inside_root() {
        assert_eq!(clean_name(b"../../etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(clean_name(b"/abs/./x/"), PathBuf::from("abs/x"));
        assert_eq!(clean_name(b"a/../../b"), PathBuf::from("b"));
        assert_eq!(clean_name(b"./"), PathBuf::new());
    }

    #[test]
    fn resolves_symlinks_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("real")).unwrap();
        std::os::unix::fs::symlink("/", r.join("up")).unwrap();
        std::os::unix::fs::symlink("../../../real", r.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, Path::new("up/etc")).unwrap(), r.join("etc"));
        assert_eq!(resolve_in_root(r, Path::new("rel/x")).unwrap(), r.join("real/x"));
        assert!(resolve_in_root(r, Path::new("loop/x")).is_err());
    }

    #[test]
    fn zero_blocks_become_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut data = vec![0u8; 8 << 20];
        data[3 << 20] = 7;
        let mut f = File::create(&path).unwrap();
        assert_eq!(copy_sparse(&mut &data[..], &mut f).unwrap(), data.len() as u64);
        drop(f);
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(fs::metadata(&path).unwrap().blocks() * 512 < 1 << 20, "zeros were written");
    }

    #[test]
    fn long_names_are_elided_in_messages_and_refused_before_the_kernel_does() {
        let long = "d/".repeat(3000) + "f";
        let shown = shown_name(long.as_bytes());
        assert!(shown.len() < 300 && shown.starts_with("d/d/") && shown.ends_with("/f"), "{shown}");
        assert_eq!(shown_name(b"bad\xffname"), "bad\u{fffd}name");

        let root = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &[][..]).unwrap();
        let err = apply_tar(&b.into_inner().unwrap()[..], root.path()).unwrap_err();
        assert!(format!("{err:#}").contains("path too long"), "{err:#}");
    }

    #[test]
    fn gnu_sparse_entries_keep_their_holes() {
        use std::os::unix::fs::MetadataExt;
        const GIB: u64 = 1 << 30;
        let mut h = tar::Header::new_gnu();
        h.set_path("sparse").unwrap();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(GIB);
        gnu.sparse[0].set_length(512);
        gnu.sparse[1].set_offset(2 * GIB);
        gnu.sparse[1].set_length(0);
        gnu.set_real_size(2 * GIB);
        h.set_size(512);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[b'x'; 512][..]).unwrap();
        let root = tempfile::tempdir().unwrap();
        apply_tar(&b.into_inner().unwrap()[..], root.path()).unwrap();
        let m = fs::metadata(root.path().join("sparse")).unwrap();
        assert_eq!(m.len(), 2 * GIB);
        assert!(m.blocks() * 512 < 1 << 20, "{} bytes allocated", m.blocks() * 512);
    }
}
