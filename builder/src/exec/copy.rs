//! COPY and ADD: files from the context, another stage, an image, a URL or a
//! git repository into a stage root, following Docker's rules.
//!
//! - Sources are relative to their tree (the context, or a stage/image root
//!   for `--from`), may contain wildcards (`*`, `?`, `[…]`, per path
//!   component as Go's `filepath.Match`), and symlinks in them are followed
//!   only inside the tree.
//! - A directory source copies its contents. The destination is a directory
//!   when it ends in `/`, when a wildcard matched several paths, or when it
//!   already exists as one; several sources need a destination ending in `/`.
//!   A relative destination is relative to WORKDIR.
//! - Copied entries belong to 0:0 unless `--chown`, keep their mode unless
//!   `--chmod`, and keep their mtime; missing parent directories are created
//!   0755 (owned by the `--chown` user). Symlinks inside copied directories
//!   stay symlinks; hard links between copied files stay hard links.
//! - `--parents` keeps each source's path (below a `/./` pivot if any);
//!   `--exclude` patterns and `.dockerignore` hide files.
//! - ADD also extracts local tar archives (gzip, bzip2, xz, zstd, by content),
//!   downloads http(s) URLs (mode 0600, mtime from Last-Modified, checked
//!   against `--checksum`), and checks out git repositories.
//!
//! Every function returns the exact set of paths it wrote (relative to the
//! stage root, with the parents whose entries changed), for the snapshotter's
//! `declare_written`: a COPY never needs a scan.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::Digest;

use super::chmod::Chmod;
use super::{archive, context::GitOptions, context::GitSource, scoped};

/// Decides which files of a source tree COPY may see (`.dockerignore`,
/// `--exclude`). Paths are relative to the tree's root.
pub trait Excluder: Send + Sync {
    fn excluded(&self, rel: &Path) -> bool;
    /// Whether a walk must look inside the excluded directory `rel` because a
    /// later exception (`!pattern`) may bring back something under it.
    fn may_include_under(&self, _rel: &Path) -> bool {
        false
    }
}

/// The excluder of trees without rules (stage roots, images).
pub struct NothingExcluded;

impl Excluder for NothingExcluded {
    fn excluded(&self, _rel: &Path) -> bool {
        false
    }
}

impl Excluder for crate::dockerignore::Matcher {
    fn excluded(&self, rel: &Path) -> bool {
        self.matches(rel)
    }
    fn may_include_under(&self, rel: &Path) -> bool {
        self.may_reinclude_under(rel)
    }
}

/// `--exclude` patterns as an [`Excluder`].
pub fn exclude_patterns(patterns: &[String]) -> Result<Option<crate::dockerignore::Matcher>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let m = crate::dockerignore::Matcher::parse(&patterns.join("\n")).map_err(|e| anyhow::anyhow!("--exclude: {e}"))?;
    Ok(Some(m))
}

/// Where COPY reads from.
pub struct SourceTree<'a> {
    /// The tree's root on the host.
    pub root: &'a Path,
    /// `.dockerignore` for the context; [`NothingExcluded`] for stages and images.
    pub ignore: &'a dyn Excluder,
    /// How errors name the tree: "build context", "stage builder", …
    pub name: String,
}

/// COPY/ADD flags, resolved by the caller (`--chown` names are looked up in
/// the stage's /etc/passwd and /etc/group before coming here).
pub struct CopyOptions<'a> {
    pub owner: Option<(u32, u32)>,
    pub chmod: Option<Chmod>,
    pub parents: bool,
    pub exclude: Option<&'a dyn Excluder>,
}

/// What a COPY or ADD wrote, relative to the stage root.
#[derive(Debug, Default)]
pub struct Written {
    pub paths: BTreeSet<PathBuf>,
}

impl Written {
    fn add(&mut self, root: &Path, host: &Path) {
        if let Ok(rel) = host.strip_prefix(root) {
            if !rel.as_os_str().is_empty() {
                self.paths.insert(rel.to_path_buf());
            }
        }
    }

    /// The written paths and the directories holding them, whose mtimes
    /// changed as entries were added.
    pub fn with_parents(&self) -> BTreeSet<PathBuf> {
        let mut all = self.paths.clone();
        for p in &self.paths {
            if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                all.insert(parent.to_path_buf());
            }
        }
        all
    }
}

/// Whether a source contains wildcard characters.
fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[a-z]`, `[^a]`, `\\` escapes.
pub fn component_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(c) = n.first() else { return false };
                let mut i = 1;
                let negate = matches!(p.get(1), Some('^') | Some('!'));
                if negate {
                    i += 1;
                }
                let mut matched = false;
                let mut first = true;
                while i < p.len() && (first || p[i] != ']') {
                    first = false;
                    let mut lo = p[i];
                    if lo == '\\' && i + 1 < p.len() {
                        i += 1;
                        lo = p[i];
                    }
                    let mut hi = lo;
                    if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
                        hi = p[i + 2];
                        i += 2;
                    }
                    if lo <= *c && *c <= hi {
                        matched = true;
                    }
                    i += 1;
                }
                if i >= p.len() {
                    return false; // unterminated class: Go reports ErrBadPattern
                }
                matched != negate && go(&p[i + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// One matched source: its path in the tree, the part kept by `--parents`,
/// and where it is on the host.
struct Matched {
    rel: PathBuf,
    keep: PathBuf,
    host: PathBuf,
}

/// Expands one source (wildcards, `--parents` pivot) in a tree.
fn expand_source(tree: &SourceTree, source: &str) -> Result<Vec<Matched>> {
    let (pivot, rest) = match source.split_once("/./") {
        Some((before, after)) => (scoped::clean(Path::new(before)), after),
        None => (PathBuf::new(), source),
    };
    let full = pivot.join(scoped::clean(Path::new(rest)));
    let mut rels = Vec::new();
    if has_wildcard(source) {
        glob(tree, &full, &mut rels)?;
        rels.sort();
    } else {
        if !full.as_os_str().is_empty() && tree.ignore.excluded(&full) {
            bail!("{source}: not found in the {} (excluded by .dockerignore)", tree.name);
        }
        rels.push(full);
    }
    let mut out = Vec::new();
    for rel in rels {
        let host = scoped::resolve(tree.root, &rel, true)?;
        if fs::symlink_metadata(&host).is_err() {
            bail!("{source}: no such file or directory in the {}", tree.name);
        }
        let keep = rel.strip_prefix(&pivot).unwrap_or(&rel).to_path_buf();
        out.push(Matched { rel, keep, host });
    }
    if out.is_empty() {
        bail!("{source}: no source files were specified (nothing in the {} matches)", tree.name);
    }
    Ok(out)
}

/// Matches a wildcard path component by component.
fn glob(tree: &SourceTree, pattern: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let parts: Vec<String> = pattern.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let mut current = vec![PathBuf::new()];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for base in &current {
            if !has_wildcard(part) {
                let candidate = base.join(unescape(part));
                if fs::symlink_metadata(scoped::resolve(tree.root, &candidate, true)?).is_ok() {
                    next.push(candidate);
                }
                continue;
            }
            let dir = scoped::resolve(tree.root, base, true)?;
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if component_match(part, &name) {
                    next.push(base.join(&name));
                }
            }
        }
        next.retain(|p| !tree.ignore.excluded(p) || (!last && tree.ignore.may_include_under(p)));
        current = next;
    }
    out.extend(current);
    Ok(())
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a COPY lands: the destination as written, made absolute against WORKDIR.
fn destination(dest: &str, workdir: &Path) -> (PathBuf, bool) {
    let dir_like = dest.ends_with('/') || dest.ends_with("/.") || dest == "." || dest == "..";
    let abs = if dest.starts_with('/') { PathBuf::from(dest) } else { Path::new("/").join(workdir).join(dest) };
    (scoped::clean(&abs), dir_like)
}

/// COPY `sources` from `tree` to `dest` in `root`.
pub fn copy(tree: &SourceTree, sources: &[String], dest: &str, workdir: &Path, root: &Path, opts: &CopyOptions) -> Result<Written> {
    let (dest_rel, dir_like) = destination(dest, workdir);
    if sources.len() > 1 && !dir_like {
        bail!("when copying several sources the destination must be a directory ending in /: {dest}");
    }
    let mut matched = Vec::new();
    for s in sources {
        matched.extend(expand_source(tree, s)?);
    }
    let into_dir = dir_like || matched.len() > 1 || (opts.parents && !matched.is_empty());
    let mut copier = Copier::new(root, opts);
    for m in &matched {
        copier.copy_source(tree, m, &dest_rel, into_dir)?;
    }
    Ok(copier.written)
}

/// ADD: like COPY, but local archives are extracted, URLs downloaded, and git
/// repositories checked out. `scratch` is a directory for downloads.
#[allow(clippy::too_many_arguments)]
pub fn add(
    tree: &SourceTree,
    sources: &[String],
    dest: &str,
    workdir: &Path,
    root: &Path,
    opts: &CopyOptions,
    checksum: Option<&str>,
    scratch: &Path,
) -> Result<Written> {
    let (dest_rel, dir_like) = destination(dest, workdir);
    if sources.len() > 1 && !dir_like {
        bail!("when adding several sources the destination must be a directory ending in /: {dest}");
    }
    if checksum.is_some() && !(sources.len() == 1 && (is_url(&sources[0]) || super::context::is_git_url(&sources[0]))) {
        bail!("ADD --checksum needs a single http(s) or git source");
    }
    let mut copier = Copier::new(root, opts);
    for source in sources {
        if super::context::is_git_url(source) {
            let repo = GitSource::parse(source);
            let checkout = tempfile::Builder::new().prefix("add-git-").tempdir_in(scratch)?;
            let dir = checkout.path().join("repo");
            repo.fetch(&dir, &GitOptions::default()).with_context(|| format!("ADD {source}"))?;
            let git_tree = SourceTree { root: &dir, ignore: &NothingExcluded, name: format!("repository {source}") };
            let m = Matched { rel: PathBuf::new(), keep: PathBuf::new(), host: dir.clone() };
            copier.copy_source(&git_tree, &m, &dest_rel, true)?;
        } else if is_url(source) {
            copier.download(source, &dest_rel, dir_like, checksum, scratch)?;
        } else {
            let matched = expand_source(tree, source)?;
            let into_dir = dir_like || matched.len() > 1;
            for m in &matched {
                let meta = fs::metadata(&m.host)?;
                if meta.is_file() && archive::is_archive(&m.host) {
                    copier.extract(&m.host, &dest_rel)?;
                } else {
                    copier.copy_source(tree, m, &dest_rel, into_dir)?;
                }
            }
        }
    }
    Ok(copier.written)
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Does the copying for one COPY/ADD, collecting what it wrote.
struct Copier<'a> {
    root: &'a Path,
    opts: &'a CopyOptions<'a>,
    written: Written,
    /// (device, inode) of multiply-linked source files → where the first copy went.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<'a> Copier<'a> {
    fn new(root: &'a Path, opts: &'a CopyOptions<'a>) -> Self {
        Copier { root, opts, written: Written::default(), links: HashMap::new() }
    }

    fn owner(&self) -> (u32, u32) {
        self.opts.owner.unwrap_or((0, 0))
    }

    /// Resolves a path in the stage root (following symlinks inside it) and
    /// creates its missing directories, which it records.
    fn make_dirs(&mut self, rel: &Path) -> Result<PathBuf> {
        let host = scoped::resolve(self.root, rel, true)?;
        let (uid, gid) = self.owner();
        for dir in scoped::create_dir_all_tracked(&host)? {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::lchown(&dir, Some(uid), Some(gid)).with_context(|| format!("chown {}", dir.display()))?;
            self.written.add(self.root, &dir);
        }
        if !host.is_dir() {
            bail!("{}: not a directory in the image", rel.display());
        }
        Ok(host)
    }

    /// Copies one matched source to the destination.
    fn copy_source(&mut self, tree: &SourceTree, m: &Matched, dest: &Path, into_dir: bool) -> Result<()> {
        let meta = fs::metadata(&m.host).with_context(|| format!("{} in the {}", m.rel.display(), tree.name))?;
        if meta.is_dir() {
            let target_rel = if self.opts.parents { dest.join(&m.keep) } else { dest.to_path_buf() };
            let existed = scoped::resolve(self.root, &target_rel, true).map(|p| p.is_dir()).unwrap_or(false);
            let target = self.make_dirs(&target_rel)?;
            self.copy_dir_contents(tree, &m.host, &m.rel, &m.rel, &target)?;
            if !existed {
                self.apply_metadata(&target, &meta)?;
            }
            return Ok(());
        }
        let dest_is_dir = into_dir || scoped::resolve(self.root, dest, true).map(|p| p.is_dir()).unwrap_or(false);
        let target_rel = if dest_is_dir {
            let name = if self.opts.parents { m.keep.clone() } else { PathBuf::from(m.rel.file_name().unwrap_or_default()) };
            dest.join(name)
        } else {
            dest.to_path_buf()
        };
        let parent = self.make_dirs(target_rel.parent().unwrap_or(Path::new("")))?;
        let name = target_rel.file_name().context("the destination is the root directory")?;
        self.copy_entry(&m.host, &meta, &parent.join(name))
    }

    /// Copies what is inside `src` (tree path `rel`) into the directory `dst`.
    fn copy_dir_contents(&mut self, tree: &SourceTree, src: &Path, rel: &Path, source_rel: &Path, dst: &Path) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("reading {} in the {}", rel.display(), tree.name))?
            .collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_rel = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            let excluded = tree.ignore.excluded(&child_rel) || self.excluded(&child_rel, source_rel);
            if excluded && !(meta.is_dir() && (tree.ignore.may_include_under(&child_rel) || self.opts.exclude.is_some_and(|e| e.may_include_under(&child_rel)))) {
                continue;
            }
            let target = dst.join(entry.file_name());
            if meta.is_dir() {
                if excluded {
                    // Walk in for exceptions, but create the directory only if something comes back.
                    let before = self.written.paths.len();
                    self.copy_dir_contents(tree, &entry.path(), &child_rel, source_rel, &target)?;
                    if self.written.paths.len() == before {
                        continue;
                    }
                } else {
                    self.make_dir(&target)?;
                    self.copy_dir_contents(tree, &entry.path(), &child_rel, source_rel, &target)?;
                }
                self.apply_metadata(&target, &meta)?;
                self.written.add(self.root, &target);
            } else {
                if !dst.is_dir() {
                    self.make_dir(dst)?;
                }
                self.copy_entry(&entry.path(), &meta, &target)?;
            }
        }
        Ok(())
    }

    fn excluded(&self, rel: &Path, source_rel: &Path) -> bool {
        let Some(ex) = self.opts.exclude else { return false };
        ex.excluded(rel) || rel.strip_prefix(source_rel).is_ok_and(|r| !r.as_os_str().is_empty() && ex.excluded(r))
    }

    /// Makes `target` a directory, replacing a non-directory.
    fn make_dir(&mut self, target: &Path) -> Result<()> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => fs::remove_file(target)?,
            Err(_) => {}
        }
        if let Some(parent) = target.parent() {
            if !parent.is_dir() {
                self.make_dir(parent)?;
                let (uid, gid) = self.owner();
                std::os::unix::fs::lchown(parent, Some(uid), Some(gid))?;
                self.written.add(self.root, parent);
            }
        }
        fs::create_dir(target).with_context(|| format!("creating {}", target.display()))?;
        Ok(())
    }

    /// Copies one file or symlink (or, after following a source symlink, a
    /// directory) from `src` to `target`, replacing what was there.
    fn copy_entry(&mut self, src: &Path, meta: &Metadata, target: &Path) -> Result<()> {
        let ft = meta.file_type();
        if meta.is_dir() {
            self.make_dir(target)?;
            self.apply_metadata(target, meta)?;
            self.written.add(self.root, target);
            return Ok(());
        }
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(target)?,
            Ok(_) => fs::remove_file(target)?,
            Err(_) => {}
        }
        if ft.is_symlink() {
            let link = fs::read_link(src)?;
            std::os::unix::fs::symlink(&link, target).with_context(|| format!("creating symlink {}", target.display()))?;
            self.apply_metadata(target, meta)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    fs::hard_link(first, target).with_context(|| format!("linking {}", target.display()))?;
                    self.written.add(self.root, target);
                    return Ok(());
                }
                self.links.insert(key, target.to_path_buf());
            }
            fs::copy(src, target).with_context(|| format!("copying {} to {}", src.display(), target.display()))?;
            self.apply_metadata(target, meta)?;
        } else {
            tracing::warn!("skipping {}: sockets, fifos and device nodes are not copied", src.display());
            return Ok(());
        }
        self.written.add(self.root, target);
        Ok(())
    }

    /// Owner (0:0 or --chown), mode (source or --chmod) and mtime (source).
    fn apply_metadata(&self, target: &Path, meta: &Metadata) -> Result<()> {
        let (uid, gid) = self.owner();
        std::os::unix::fs::lchown(target, Some(uid), Some(gid)).with_context(|| format!("chown {}", target.display()))?;
        if !meta.file_type().is_symlink() {
            let mode = match &self.opts.chmod {
                Some(chmod) => chmod.apply(meta.mode(), meta.is_dir()),
                None => meta.mode() & 0o7777,
            };
            fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
        }
        let mtime = filetime::FileTime::from_last_modification_time(meta);
        filetime::set_symlink_file_times(target, mtime, mtime)?;
        Ok(())
    }

    /// ADD of a local archive: extracted into the destination directory.
    fn extract(&mut self, archive_path: &Path, dest: &Path) -> Result<()> {
        let target = self.make_dirs(dest)?;
        let opts = archive::ExtractOptions { preserve_owners: true, owner: self.opts.owner };
        let written = archive::extract(archive_path, &target, opts)?;
        for rel in written {
            self.written.add(self.root, &target.join(rel));
        }
        Ok(())
    }

    /// ADD of an http(s) URL.
    fn download(&mut self, url: &str, dest: &Path, dir_like: bool, checksum: Option<&str>, scratch: &Path) -> Result<()> {
        let parsed = url::Url::parse(url).with_context(|| format!("ADD {url}: not a valid URL"))?;
        let target_rel = if dir_like || scoped::resolve(self.root, dest, true).map(|p| p.is_dir()).unwrap_or(false) {
            let name = parsed.path_segments().and_then(|mut s| s.next_back()).filter(|s| !s.is_empty()).unwrap_or("download");
            dest.join(name)
        } else {
            dest.to_path_buf()
        };
        let expected = checksum.map(parse_checksum).transpose()?;
        let mut response = reqwest::blocking::Client::builder()
            .build()?
            .get(parsed)
            .send()
            .with_context(|| format!("ADD {url}"))?;
        if !response.status().is_success() {
            bail!("ADD {url}: server answered {}", response.status());
        }
        let modified = response
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.timestamp());
        let mut tmp = tempfile::NamedTempFile::new_in(scratch)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = response.read(&mut buf).with_context(|| format!("ADD {url}: reading the response"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])?;
        }
        let digest = hex::encode(hasher.finalize());
        if let Some(expected) = expected {
            if digest != expected {
                bail!("ADD {url}: checksum mismatch: expected sha256:{expected}, got sha256:{digest}");
            }
        }
        let parent = self.make_dirs(target_rel.parent().unwrap_or(Path::new("")))?;
        let target = parent.join(target_rel.file_name().context("ADD: the destination is the root directory")?);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&target)?,
            Ok(_) => fs::remove_file(&target)?,
            Err(_) => {}
        }
        fs::copy(tmp.path(), &target)?;
        let (uid, gid) = self.owner();
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(self.opts.chmod.as_ref().map_or(0o600, |c| c.apply(0o600, false))))?;
        if let Some(t) = modified {
            let t = filetime::FileTime::from_unix_time(t, 0);
            filetime::set_file_times(&target, t, t)?;
        }
        self.written.add(self.root, &target);
        Ok(())
    }
}

/// `--checksum=sha256:HEX` → HEX.
fn parse_checksum(value: &str) -> Result<String> {
    match value.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex.to_ascii_lowercase()),
        _ => bail!("--checksum={value}: expected sha256:<64 hex digits>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn opts() -> CopyOptions<'static> {
        CopyOptions { owner: None, chmod: None, parents: false, exclude: None }
    }

    fn tree(root: &Path) -> SourceTree<'_> {
        SourceTree { root, ignore: &NothingExcluded, name: "build context".into() }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        let root = dir.path().join("root");
        fs::create_dir_all(ctx.join("src/sub")).unwrap();
        fs::create_dir_all(&root).unwrap();
        fs::write(ctx.join("a.txt"), "a").unwrap();
        fs::write(ctx.join("b.txt"), "b").unwrap();
        fs::write(ctx.join("src/one"), "1").unwrap();
        fs::write(ctx.join("src/sub/two"), "2").unwrap();
        fs::set_permissions(ctx.join("src/one"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("one", ctx.join("src/link")).unwrap();
        fs::hard_link(ctx.join("src/one"), ctx.join("src/hard")).unwrap();
        symlink("/etc/passwd", ctx.join("escape")).unwrap();
        (dir, ctx, root)
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn matches_like_go() {
        assert!(component_match("*.txt", "a.txt"));
        assert!(!component_match("*.txt", "a.tx"));
        assert!(component_match("[a-c]?", "bz"));
        assert!(component_match("[^a]*", "ba"));
        assert!(!component_match("[^a]*", "ab"));
        assert!(component_match("a\\*", "a*"));
    }

    #[test]
    fn trailing_slash_rules() {
        let (_d, ctx, root) = setup();
        let t = tree(&ctx);
        copy(&t, &["a.txt".into()], "/x", Path::new("/"), &root, &opts()).unwrap();
        assert_eq!(fs::read_to_string(root.join("x")).unwrap(), "a");
        copy(&t, &["a.txt".into()], "/d/", Path::new("/"), &root, &opts()).unwrap();
        assert_eq!(fs::read_to_string(root.join("d/a.txt")).unwrap(), "a");
        // An existing directory receives the file.
        copy(&t, &["b.txt".into()], "/d", Path::new("/"), &root, &opts()).unwrap();
        assert_eq!(fs::read_to_string(root.join("d/b.txt")).unwrap(), "b");
        // Relative to WORKDIR.
        copy(&t, &["a.txt".into()], "rel", Path::new("/w"), &root, &opts()).unwrap();
        assert!(root.join("w/rel").is_file());
        let err = copy(&t, &["a.txt".into(), "b.txt".into()], "/multi", Path::new("/"), &root, &opts()).unwrap_err();
        assert!(err.to_string().contains("ending in /"));
    }

    #[test]
    fn directory_contents_links_and_written_paths() {
        let (_d, ctx, root) = setup();
        let w = copy(&tree(&ctx), &["src".into()], "/app/", Path::new("/"), &root, &opts()).unwrap();
        assert!(root.join("app/one").is_file());
        assert!(root.join("app/sub/two").is_file());
        assert_eq!(fs::read_link(root.join("app/link")).unwrap(), p("one"));
        let (a, b) = (fs::metadata(root.join("app/one")).unwrap(), fs::metadata(root.join("app/hard")).unwrap());
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o777, 0o750);
        let expected: BTreeSet<PathBuf> =
            ["app", "app/hard", "app/link", "app/one", "app/sub", "app/sub/two"].into_iter().map(p).collect();
        assert_eq!(w.paths, expected);
    }

    #[test]
    fn wildcards_chmod_chown_and_parents() {
        let (_d, ctx, root) = setup();
        let o = CopyOptions { owner: Some((1000, 1001)), chmod: Some(Chmod::Octal(0o640)), parents: false, exclude: None };
        copy(&tree(&ctx), &["*.txt".into()], "/t/", Path::new("/"), &root, &o).unwrap();
        let m = fs::metadata(root.join("t/b.txt")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1001, 0o640));
        assert_eq!(fs::metadata(root.join("t")).unwrap().uid(), 1000);
        let o = CopyOptions { parents: true, ..opts() };
        copy(&tree(&ctx), &["src/sub/two".into(), "./src/./one".into()], "/p/", Path::new("/"), &root, &o).unwrap();
        assert!(root.join("p/src/sub/two").is_file());
        assert!(root.join("p/one").is_file());
        let err = copy(&tree(&ctx), &["*.none".into()], "/t/", Path::new("/"), &root, &opts()).unwrap_err();
        assert!(err.to_string().contains("no source files"), "{err}");
    }

    #[test]
    fn symlinks_never_leave_the_trees() {
        let (_d, ctx, root) = setup();
        // A context symlink to /etc/passwd resolves inside the context: not found.
        let err = copy(&tree(&ctx), &["escape".into()], "/e", Path::new("/"), &root, &opts()).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        // An image symlink to / keeps the destination inside the root.
        symlink("/", root.join("up")).unwrap();
        copy(&tree(&ctx), &["a.txt".into()], "/up/tmp/", Path::new("/"), &root, &opts()).unwrap();
        assert!(root.join("tmp/a.txt").is_file());
    }

    #[test]
    fn add_extracts_local_archives() {
        let (_d, ctx, root) = setup();
        let mut b = tar::Builder::new(Vec::new());
        b.append_path_with_name(ctx.join("a.txt"), "in/a.txt").unwrap();
        let raw = b.into_inner().unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&raw).unwrap();
        fs::write(ctx.join("arch.tar.xz"), xz.finish().unwrap()).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let w = add(&tree(&ctx), &["arch.tar.xz".into()], "/opt/", Path::new("/"), &root, &opts(), None, scratch.path()).unwrap();
        assert_eq!(fs::read_to_string(root.join("opt/in/a.txt")).unwrap(), "a");
        assert!(w.paths.contains(&p("opt/in/a.txt")));
        assert!(w.paths.contains(&p("opt")));
    }

    /// Serves `body` once per connection on 127.0.0.1, with a Last-Modified header.
    fn serve(body: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            }
        });
        format!("http://{addr}/files/tool.sh")
    }

    #[test]
    fn add_downloads_urls_and_checks_the_checksum() {
        let (_d, ctx, root) = setup();
        let url = serve("#!/bin/sh\necho tool\n");
        let scratch = tempfile::tempdir().unwrap();
        let sum = hex::encode(sha2::Sha256::digest(b"#!/bin/sh\necho tool\n"));
        let checksum = format!("sha256:{sum}");
        let w = add(&tree(&ctx), std::slice::from_ref(&url), "/usr/bin/", Path::new("/"), &root, &opts(), Some(&checksum), scratch.path())
            .unwrap();
        let meta = fs::metadata(root.join("usr/bin/tool.sh")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.mtime(), 1445412480);
        assert!(w.paths.contains(&p("usr/bin/tool.sh")));
        let bad = format!("sha256:{}", "0".repeat(64));
        let err = add(&tree(&ctx), &[url], "/x", Path::new("/"), &root, &opts(), Some(&bad), scratch.path()).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(!root.join("x").exists(), "nothing written on a checksum mismatch");
    }

    #[test]
    fn checksum_and_chmod_parsing() {
        assert!(parse_checksum("sha256:abc").is_err());
        assert!(parse_checksum(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
