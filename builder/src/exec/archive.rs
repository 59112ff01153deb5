//! Tar archives as ADD and `tar://` contexts see them: compression sniffed
//! from the first bytes (gzip, bzip2, xz, zstd or none), entries extracted
//! confined to a destination directory.
//!
//! Entries are treated as hostile: `..` components are rejected, every parent
//! is resolved inside the destination (a symlink an earlier entry made cannot
//! redirect a later one out of it), hard links must point inside the
//! destination, and device nodes are refused.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::scoped;

/// A compression format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    /// Recognises the format from the first bytes of a stream.
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// Wraps `reader` in the decompressor its first bytes call for.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let head = reader.fill_buf()?.to_vec();
    Ok(match Compression::sniff(&head) {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    })
}

/// Whether `path` is a tar archive, possibly compressed, as ADD decides:
/// by content, not by name. A readable first header with a valid checksum
/// makes it an archive.
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let Ok(mut reader) = decompress(file) else { return false };
    let mut header = [0u8; 512];
    if reader.read_exact(&mut header).is_err() {
        return false;
    }
    let header = tar::Header::from_byte_slice(&header);
    let Ok(stored) = header.cksum() else { return false };
    // The checksum counts the checksum field as spaces.
    let computed: u32 = header.as_bytes().iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u32 }).sum();
    stored == computed && header.path().is_ok()
}

/// How to extract.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Keep the archive's uid/gid (ADD as root does); otherwise files belong to the caller.
    pub preserve_owners: bool,
    /// Force this owner on every entry (ADD --chown).
    pub owner: Option<(u32, u32)>,
}

/// Extracts the (possibly compressed) tar `archive` into `dest`, which must
/// exist. Returns the paths written, relative to `dest`, parents first.
pub fn extract(archive: &Path, dest: &Path, opts: ExtractOptions) -> Result<Vec<PathBuf>> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    extract_from(file, dest, opts).with_context(|| format!("extracting {}", archive.display()))
}

/// Like [`extract`], from a stream.
pub fn extract_from<R: Read>(reader: R, dest: &Path, opts: ExtractOptions) -> Result<Vec<PathBuf>> {
    let mut archive = tar::Archive::new(decompress(reader)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    archive.set_preserve_ownerships(opts.preserve_owners && opts.owner.is_none());
    let mut written = Vec::new();
    let mut dirs = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = sanitize(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => scoped::resolve(dest, p, true)?,
            _ => dest.to_path_buf(),
        };
        for created in scoped::create_dir_all_tracked(&parent).with_context(|| format!("creating the parent of {}", raw.display()))? {
            if let Some((uid, gid)) = opts.owner {
                std::os::unix::fs::lchown(&created, Some(uid), Some(gid))?;
            }
            written.push(created.strip_prefix(dest).unwrap_or(&created).to_path_buf());
        }
        let target = parent.join(rel.file_name().expect("sanitized paths end in a name"));
        match kind {
            tar::EntryType::Block | tar::EntryType::Char | tar::EntryType::Fifo => {
                bail!("entry {} is a device node or fifo, which is not extracted", raw.display())
            }
            tar::EntryType::Link => {
                let link = entry.link_name()?.context("hard link without a target")?.into_owned();
                let source = scoped::resolve(dest, &sanitize(&link)?, false)?;
                remove_existing(&target)?;
                std::fs::hard_link(&source, &target)
                    .with_context(|| format!("hard link {} -> {}", raw.display(), link.display()))?;
            }
            tar::EntryType::Symlink => {
                remove_existing(&target)?;
                entry.unpack(&target).with_context(|| format!("entry {}", raw.display()))?;
            }
            tar::EntryType::Directory => {
                if std::fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                    remove_existing(&target)?;
                }
                entry.unpack(&target).with_context(|| format!("entry {}", raw.display()))?;
                // Directory mtimes change as entries land inside: set them last.
                dirs.push((target.clone(), entry.header().mtime().unwrap_or(0)));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_existing(&target)?;
                entry.unpack(&target).with_context(|| format!("entry {}", raw.display()))?;
            }
            // PAX/GNU headers are consumed by the tar crate; anything else is skipped.
            _ => continue,
        }
        if let Some((uid, gid)) = opts.owner {
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", raw.display()))?;
        }
        written.push(target.strip_prefix(dest).unwrap_or(&rel).to_path_buf());
    }
    for (dir, mtime) in dirs.into_iter().rev() {
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        let _ = filetime::set_symlink_file_times(&dir, t, t);
    }
    Ok(written)
}

/// The relative form of an entry's path; `..` anywhere is refused.
fn sanitize(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => bail!("entry {} leaves the destination (..)", path.display()),
        }
    }
    Ok(out)
}

/// Removes what is at `path` (not following symlinks) so an entry can replace it.
fn remove_existing(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_mtime(1000);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn extracts_gzip_and_stays_inside() {
        let data = tar_with(&[
            ("a/b.txt", tar::EntryType::Regular, "hello"),
            ("esc", tar::EntryType::Symlink, "/"),
            ("esc/etc/evil", tar::EntryType::Regular, "x"),
            ("a/hl", tar::EntryType::Link, "a/b.txt"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = ExtractOptions { preserve_owners: false, owner: None };
        let written = extract_from(&gz[..], dir.path(), opts).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a/b.txt")).unwrap(), "hello");
        // The symlink points at "/", which inside the destination is the destination.
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/evil")).unwrap(), "x");
        assert_eq!(std::fs::read_to_string(dir.path().join("a/hl")).unwrap(), "hello");
        assert!(written.contains(&PathBuf::from("a/b.txt")));
        assert!(written.contains(&PathBuf::from("etc/evil")));
    }

    #[test]
    fn refuses_dotdot() {
        let mut raw = tar_with(&[("x", tar::EntryType::Regular, "x")]);
        // Rewrite the name in place: the tar builder itself refuses "..".
        raw[..5].copy_from_slice(b"../x\0");
        let h = tar::Header::from_byte_slice(&raw[..512]);
        let mut h = h.clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let err = extract_from(&raw[..], dir.path(), ExtractOptions { preserve_owners: false, owner: None }).unwrap_err();
        assert!(format!("{err:#}").contains("leaves the destination"), "{err:#}");
    }

    #[test]
    fn sniffs_archives() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::write(&t, tar_with(&[("f", tar::EntryType::Regular, "1")])).unwrap();
        let n = dir.path().join("n");
        std::fs::write(&n, "just text").unwrap();
        assert!(is_archive(&t));
        assert!(!is_archive(&n));
    }
}
