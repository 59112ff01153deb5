//! The deterministic layer tar: which entries a ChangeSet becomes, in which
//! order, and their exact bytes.
//!
//! Entries are sorted by path component by component, so every directory
//! comes before what is in it; every ancestor of an entry is emitted first
//! with its current metadata. Deleted paths become `.wh.NAME` entries, opaque
//! directories are followed at once by `.wh..wh..opq`, and a file with several
//! links in the layer is written once, then as hard-link entries. Headers are
//! ustar, preceded by a PAX header when a name, link target, size, owner or
//! time does not fit, a time has nanoseconds, or the entry has xattrs. User
//! and group names are left empty; atime and ctime are never recorded.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::changeset::{ChangeSet, relative};
use crate::walk::Stat;

/// How entry times are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// As on disk, with nanoseconds.
    Keep,
    /// Times later than this (SOURCE_DATE_EPOCH) are clamped to it.
    Clamp(i64),
    /// Every entry gets this time (`--reproducible`).
    Fixed(i64),
}

impl Times {
    fn apply(self, (secs, nanos): (i64, i64)) -> (i64, i64) {
        match self {
            Times::Keep => (secs, nanos),
            Times::Clamp(max) if secs >= max => (max, 0),
            Times::Clamp(_) => (secs, nanos),
            Times::Fixed(t) => (t, 0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// The path as it is on disk now.
    Real,
    /// `.wh.NAME`: NAME was deleted.
    Whiteout,
}

/// The ordered entries of the layer for `changes`.
fn plan(changes: &ChangeSet) -> BTreeMap<PathBuf, What> {
    let mut plan = BTreeMap::new();
    let add_with_ancestors = |plan: &mut BTreeMap<PathBuf, What>, path: &Path, what: What| {
        for ancestor in path
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
        {
            plan.entry(ancestor.to_path_buf()).or_insert(What::Real);
        }
        plan.insert(path.to_path_buf(), what);
    };
    for path in changes
        .changed
        .iter()
        .chain(&changes.opaque)
        .map(|p| relative(p))
    {
        if !path.as_os_str().is_empty() {
            add_with_ancestors(&mut plan, &path, What::Real);
        }
    }
    for path in changes.deleted.iter().map(|p| relative(p)) {
        let Some(name) = path.file_name() else {
            continue;
        };
        let mut whiteout = OsString::from(".wh.");
        whiteout.push(name);
        add_with_ancestors(&mut plan, &path.with_file_name(whiteout), What::Whiteout);
    }
    plan
}

/// Writes the layer tar for `changes`, read from `root`, into `out`.
pub fn write_tar(
    root: &Path,
    changes: &ChangeSet,
    times: Times,
    out: &mut impl Write,
) -> io::Result<()> {
    write_tar_cancellable(root, changes, times, out, &AtomicBool::new(false))
}

/// [`write_tar`], giving up with [`io::ErrorKind::Interrupted`] before the
/// next entry once `cancel` is set (a build stopped by a signal).
pub fn write_tar_cancellable(
    root: &Path,
    changes: &ChangeSet,
    times: Times,
    out: &mut impl Write,
    cancel: &AtomicBool,
) -> io::Result<()> {
    let opaque: std::collections::HashSet<PathBuf> =
        changes.opaque.iter().map(|p| relative(p)).collect();
    let mut first_link: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    // Directories emitted so far: every entry's parent must be one, so that
    // no path is ever read through a symlink (which could point out of the root).
    let mut dirs: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for (path, what) in plan(changes) {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "interrupted while writing the layer",
            ));
        }
        if let Some(parent) = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !dirs.contains(*p))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "archiving {}: {} is not a directory",
                    root.join(&path).display(),
                    root.join(parent).display()
                ),
            ));
        }
        match what {
            What::Whiteout => write_marker(out, &path)?,
            What::Real => {
                if write_real(root, &path, times, &mut first_link, &mut buf, out)? {
                    dirs.insert(path.clone());
                }
                if opaque.contains(&path) {
                    write_marker(out, &path.join(".wh..wh..opq"))?;
                }
            }
        }
    }
    out.write_all(&[0u8; 1024])
}

/// An empty regular file carrying a whiteout name.
fn write_marker(out: &mut impl Write, path: &Path) -> io::Result<()> {
    let header = Header {
        name: path.as_os_str().as_bytes().to_vec(),
        mode: 0,
        kind: b'0',
        ..Header::default()
    };
    header.write(out)
}

/// Writes the entry for `path`; says whether it was a directory.
fn write_real(
    root: &Path,
    path: &Path,
    times: Times,
    first_link: &mut HashMap<(u64, u64), PathBuf>,
    buf: &mut [u8],
    out: &mut impl Write,
) -> io::Result<bool> {
    let abs = root.join(path);
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("archiving {}: {e}", abs.display()));
    let st = Stat::lstat(&abs).map_err(context)?;
    let mut header = Header {
        name: path.as_os_str().as_bytes().to_vec(),
        mode: st.mode & 0o7777,
        uid: st.uid as u64,
        gid: st.gid as u64,
        mtime: times.apply(st.mtime),
        xattrs: read_xattrs(&abs).map_err(context)?,
        ..Header::default()
    };
    let fmt = st.mode & libc::S_IFMT;
    let mut body = None;
    match fmt {
        libc::S_IFREG => {
            if st.nlink > 1 {
                if let Some(first) = first_link.get(&(st.dev, st.ino)) {
                    header.kind = b'1';
                    header.link = first.as_os_str().as_bytes().to_vec();
                    return header.write(out).map(|()| false);
                }
                first_link.insert((st.dev, st.ino), path.to_path_buf());
            }
            header.kind = b'0';
            header.size = st.size;
            body = Some(st.size);
        }
        libc::S_IFDIR => {
            header.kind = b'5';
            header.name.push(b'/');
        }
        libc::S_IFLNK => {
            header.kind = b'2';
            header.link = std::fs::read_link(&abs)
                .map_err(context)?
                .into_os_string()
                .into_vec();
        }
        libc::S_IFCHR | libc::S_IFBLK => {
            header.kind = if fmt == libc::S_IFCHR { b'3' } else { b'4' };
            header.dev = (libc::major(st.rdev) as u64, libc::minor(st.rdev) as u64);
        }
        libc::S_IFIFO => header.kind = b'6',
        // A socket cannot be archived (nor used from an image): it is left out.
        _ => return Ok(false),
    }
    header.write(out)?;
    if let Some(size) = body {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&abs)
            .map_err(context)?;
        copy_exact(file, size, buf, out).map_err(context)?;
        let pad = (512 - (size % 512) as usize) % 512;
        out.write_all(&[0u8; 512][..pad])?;
    }
    Ok(fmt == libc::S_IFDIR)
}

use std::os::unix::ffi::OsStringExt;

/// Copies exactly `size` bytes: a file that changed size since its header
/// was written would corrupt the tar.
fn copy_exact(mut file: File, size: u64, buf: &mut [u8], out: &mut impl Write) -> io::Result<()> {
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while it was archived",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn read_xattrs(abs: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(abs) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut pairs = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(abs, &name)? {
            pairs.push((name, value));
        }
    }
    pairs.sort();
    Ok(pairs)
}

/// One tar entry's header fields, before encoding.
#[derive(Debug, Default)]
struct Header {
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: (i64, i64),
    kind: u8,
    dev: (u64, u64),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// The largest value an 11-digit octal field holds; 7 digits for ids.
const MAX_OCTAL_11: u64 = 0o77777777777;
const MAX_OCTAL_7: u64 = 0o7777777;

impl Header {
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if self.name.len() > 100 {
            pax.push(("path".into(), self.name.clone()));
        }
        if self.link.len() > 100 {
            pax.push(("linkpath".into(), self.link.clone()));
        }
        if self.size > MAX_OCTAL_11 {
            pax.push(("size".into(), self.size.to_string().into_bytes()));
        }
        if self.uid > MAX_OCTAL_7 {
            pax.push(("uid".into(), self.uid.to_string().into_bytes()));
        }
        if self.gid > MAX_OCTAL_7 {
            pax.push(("gid".into(), self.gid.to_string().into_bytes()));
        }
        let (secs, nanos) = self.mtime;
        if nanos != 0 || secs < 0 || secs as u64 > MAX_OCTAL_11 {
            pax.push(("mtime".into(), pax_time(secs, nanos).into_bytes()));
        }
        for (name, value) in &self.xattrs {
            pax.push((
                format!("SCHILY.xattr.{}", name.to_string_lossy()),
                value.clone(),
            ));
        }
        if !pax.is_empty() {
            pax.sort();
            let mut records = Vec::new();
            for (key, value) in &pax {
                records.extend(pax_record(key, value));
            }
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(&self.name[self.name.len().saturating_sub(89)..]);
            let pax_header = Header {
                name,
                mode: 0o644,
                size: records.len() as u64,
                kind: b'x',
                ..Header::default()
            };
            out.write_all(&pax_header.ustar())?;
            out.write_all(&records)?;
            let pad = (512 - records.len() % 512) % 512;
            out.write_all(&[0u8; 512][..pad])?;
        }
        out.write_all(&self.ustar())
    }

    /// The 512-byte ustar header; fields that do not fit are truncated or
    /// zeroed (their PAX record, written before, is what readers use).
    fn ustar(&self) -> [u8; 512] {
        let mut h = [0u8; 512];
        put_bytes(&mut h[0..100], &self.name);
        put_octal(&mut h[100..108], self.mode as u64);
        put_octal(
            &mut h[108..116],
            if self.uid > MAX_OCTAL_7 { 0 } else { self.uid },
        );
        put_octal(
            &mut h[116..124],
            if self.gid > MAX_OCTAL_7 { 0 } else { self.gid },
        );
        put_octal(
            &mut h[124..136],
            if self.size > MAX_OCTAL_11 {
                0
            } else {
                self.size
            },
        );
        let secs = self.mtime.0;
        put_octal(
            &mut h[136..148],
            if secs < 0 || secs as u64 > MAX_OCTAL_11 {
                0
            } else {
                secs as u64
            },
        );
        h[156] = self.kind;
        put_bytes(&mut h[157..257], &self.link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        if matches!(self.kind, b'3' | b'4') {
            put_octal(&mut h[329..337], self.dev.0);
            put_octal(&mut h[337..345], self.dev.1);
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        put_octal(&mut h[148..155], sum as u64);
        h[155] = b' ';
        h
    }
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal ending in NUL, as wide as the field allows.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

/// `LEN key=value\n`, where LEN counts the whole record including itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// A PAX time: seconds, then nanoseconds without trailing zeros.
fn pax_time(secs: i64, nanos: i64) -> String {
    if nanos == 0 {
        return secs.to_string();
    }
    // Negative times with a fraction: -1.25 is secs = -2, nanos = 750000000.
    let (sign, whole, frac) = if secs < 0 {
        ("-", -(secs + 1), 1_000_000_000 - nanos)
    } else {
        ("", secs, nanos)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", b"abc");
        assert_eq!(r, b"12 path=abc\n");
        let long = vec![b'x'; 95];
        let r = pax_record("path", &long);
        assert_eq!(
            r.len().to_string(),
            String::from_utf8_lossy(&r[..r.iter().position(|&b| b == b' ').unwrap()])
        );
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(-2, 750_000_000), "-1.25");
    }
}
