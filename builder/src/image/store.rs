//! The content-addressed blob store: every layer, config and manifest strata
//! handles lives at `<dir>/sha256/<hex>`, named by the sha256 of its bytes.
//! The snapshotter's layer writer writes into the same layout, so pulls, builds,
//! the cache and the outputs share one copy of each blob.
//!
//! Blobs are written to a temporary file in the store and renamed into place
//! only once their digest is checked, so a blob path never holds partial or
//! wrong content.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::digest::{Digest, DigestWriter};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) a store rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<BlobStore> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("sha256")).with_context(|| format!("creating blob store {}", dir.display()))?;
        remove_stale_incoming(&dir);
        Ok(BlobStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob named `digest` lives (whether or not it is there yet).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.algorithm()).join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let mut w = self.writer()?;
        w.write_all(bytes).context("writing blob")?;
        let (digest, _) = w.commit(None)?;
        Ok(digest)
    }

    /// Stores everything `r` yields; when `expected` is given the content must
    /// hash to it, or nothing is stored and the error names both digests.
    pub fn put_reader(&self, r: &mut impl Read, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let mut w = self.writer()?;
        io::copy(r, &mut w).context("writing blob")?;
        w.commit(expected)
    }

    /// A writer for a new blob; call [`BlobWriter::commit`] to keep it.
    pub fn writer(&self) -> Result<BlobWriter> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".incoming-{}-", owner_tag()))
            .tempfile_in(&self.dir)
            .with_context(|| format!("creating a temporary blob in {}", self.dir.display()))?;
        Ok(BlobWriter { store: self.clone(), inner: DigestWriter::new(tmp) })
    }

    /// Re-hashes a stored blob and fails if it does not match its name.
    pub fn verify(&self, digest: &Digest) -> Result<u64> {
        let path = self.path(digest);
        let mut f =
            File::open(&path).with_context(|| format!("blob {digest} is not in the store ({})", path.display()))?;
        let mut w = DigestWriter::new(io::sink());
        io::copy(&mut f, &mut w).with_context(|| format!("reading {}", path.display()))?;
        let (actual, size, _) = w.finish();
        if &actual != digest {
            bail!("blob {} is corrupt: its content hashes to {actual}", path.display());
        }
        Ok(size)
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.path(digest);
        fs::read(&path).with_context(|| format!("reading blob {digest} ({})", path.display()))
    }

    /// Reads a small blob (manifest, config) and checks its digest.
    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>> {
        let bytes = self.read(digest)?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            bail!("blob {} is corrupt: its content hashes to {actual}", self.path(digest).display());
        }
        Ok(bytes)
    }

    pub fn size(&self, digest: &Digest) -> Result<u64> {
        let path = self.path(digest);
        Ok(fs::metadata(&path).with_context(|| format!("blob {digest} is not in the store"))?.len())
    }
}

/// `PID@HOST` of this process, put in the names of temporary files and
/// directories so that a later build can tell whether their owner died. The
/// host name (its first 12 characters) keeps builds in other containers
/// sharing the directory (other PID namespaces) from being taken for dead.
pub(crate) fn owner_tag() -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').take(12).collect();
    format!("{}@{host}", std::process::id())
}

/// A temporary path in `dir` no other call (thread or process) uses:
/// `.incoming-PID@HOST-N-what`, which stale-temporary clean-ups recognise.
pub(crate) fn temp_path(dir: &Path, what: &str) -> std::path::PathBuf {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".incoming-{}-{call}-{what}", owner_tag()))
}

/// True when `name` starts with an [`owner_tag`] of this host whose process is
/// gone (killed); false for anything else, including other hosts' names.
pub(crate) fn owner_gone(name: &str) -> bool {
    let ours = owner_tag();
    let Some((_, host)) = ours.split_once('@') else { return false };
    let Some((pid, rest)) = name.split_once('@') else { return false };
    let same_host = rest.strip_prefix(host).is_some_and(|r| r.starts_with('-'));
    same_host
        && pid.parse::<u32>().is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes temporary blobs (`.incoming-PID@HOST-…`) left by a process that
/// was killed mid-download: those whose process is gone, and any a day old.
/// Another build may be writing into the same store now: its PID is running.
fn remove_stale_incoming(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".incoming-") else { continue };
        let stale = owner_gone(rest)
            || e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(24 * 3600));
        if stale {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A blob being written; dropped without `commit`, it leaves nothing behind.
pub struct BlobWriter {
    store: BlobStore,
    inner: DigestWriter<tempfile::NamedTempFile>,
}

impl BlobWriter {
    /// Moves the blob into place, checking it against `expected` if given.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let (digest, size, tmp) = self.inner.finish();
        if let Some(expected) = expected
            && &digest != expected
        {
            bail!("digest mismatch: expected {expected}, got {digest} ({size} bytes)");
        }
        tmp.as_file().sync_data().ok();
        let path = self.store.path(&digest);
        tmp.persist(&path).with_context(|| format!("storing blob {}", path.display()))?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verify_and_reject_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let d = store.put(b"hello").unwrap();
        assert!(store.contains(&d));
        assert_eq!(store.verify(&d).unwrap(), 5);
        let wrong = Digest::of(b"other");
        let err = store.put_reader(&mut &b"hello!"[..], Some(&wrong)).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!store.contains(&wrong));
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sha256")]);
        fs::write(store.path(&d), b"tampered").unwrap();
        assert!(store.verify(&d).unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn owners_of_temporaries_are_judged_on_this_host_only() {
        let ours = owner_tag();
        let host = ours.split_once('@').unwrap().1;
        assert!(!owner_gone(&format!("{ours}-x1")), "this process is running");
        assert!(owner_gone(&format!("999999999@{host}-x1")), "no such process here");
        assert!(!owner_gone("999999999@otherhost-x1"), "another container's build");
        assert!(!owner_gone("link-12-abc"), "not an owner tag");
    }

    #[test]
    fn temporary_paths_are_unique_and_carry_the_owner() {
        let dir = Path::new("/x");
        let (a, b) = (temp_path(dir, "abc"), temp_path(dir, "abc"));
        assert_ne!(a, b, "two calls with the same name");
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        let owner = name.strip_prefix(".incoming-").expect("the prefix clean-ups look for");
        assert!(owner.starts_with(&format!("{}-", owner_tag())), "{name}");
    }
}
