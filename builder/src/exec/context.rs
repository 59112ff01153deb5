//! Build contexts: where COPY and ADD take their files from.
//!
//! A context is a local directory (a path or `dir://PATH`), a tar archive
//! (`tar://FILE`, plain or compressed), a tar on standard input
//! (`tar://stdin`), or a git repository (`git://HOST/REPO.git`,
//! `https://…/REPO.git`, `git@host:repo.git`) with an optional `#REF` and
//! `#REF:SUBDIR` as Docker writes them. Archives and repositories are
//! unpacked into a temporary directory removed with the context.
//!
//! The context is read-only for strata. `.dockerignore` decides which files
//! COPY and ADD may see ([`BuildContext::is_ignored`]), and every path opened
//! inside it is resolved with [`super::scoped`], so a symlink in the context
//! never leads outside it.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use super::{archive, scoped};
use super::copy::{Excluder, NothingExcluded};
use crate::dockerignore::Matcher;

/// Where a context comes from, as given to `--context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    Dir(PathBuf),
    Tar(PathBuf),
    TarStdin,
    Git(GitSource),
}

/// A git repository, a ref in it and a subdirectory of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub reference: Option<String>,
    /// Kaniko's `#REF#COMMIT` form: check out this commit after fetching REF.
    pub commit: Option<String>,
    pub subdir: Option<String>,
}

/// `--git` options (kaniko's): `branch=NAME,single-branch=BOOL,recurse-submodules=BOOL`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitOptions {
    pub branch: Option<String>,
    pub recurse_submodules: bool,
}

impl GitOptions {
    pub fn parse(values: &[String]) -> Result<GitOptions> {
        let mut opts = GitOptions::default();
        for item in values.iter().flat_map(|v| v.split(',')).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, "true"));
            let flag = || -> Result<bool> {
                value.parse().map_err(|_| anyhow::anyhow!("--git {key}={value}: expected true or false"))
            };
            match key {
                "branch" => opts.branch = Some(value.to_string()),
                // A shallow fetch of one ref is what strata always does.
                "single-branch" => {
                    flag()?;
                }
                "recurse-submodules" => opts.recurse_submodules = flag()?,
                "insecure-skip-tls" => {
                    if flag()? {
                        bail!("--git insecure-skip-tls=true is not supported: add the server's certificate to the system store instead");
                    }
                }
                _ => bail!("--git {key}: unknown option (expected branch, single-branch or recurse-submodules)"),
            }
        }
        Ok(opts)
    }
}

impl ContextSource {
    /// Reads a `--context` value.
    pub fn parse(spec: &str) -> Result<ContextSource> {
        if spec.is_empty() {
            bail!("--context is empty");
        }
        if let Some(rest) = spec.strip_prefix("dir://") {
            return Ok(ContextSource::Dir(PathBuf::from(rest)));
        }
        if let Some(rest) = spec.strip_prefix("tar://") {
            return Ok(if rest == "stdin" { ContextSource::TarStdin } else { ContextSource::Tar(PathBuf::from(rest)) });
        }
        if is_git_url(spec) {
            return Ok(ContextSource::Git(GitSource::parse(spec)));
        }
        for scheme in ["s3://", "gs://", "az://", "https://", "http://"] {
            if spec.starts_with(scheme) {
                bail!("--context {spec}: {scheme} contexts are not supported (use a directory, tar://, or a git URL ending in .git)");
            }
        }
        Ok(ContextSource::Dir(PathBuf::from(spec)))
    }
}

/// Whether a string names a git repository the way Docker recognises one.
pub fn is_git_url(s: &str) -> bool {
    let base = s.split('#').next().unwrap_or(s);
    s.starts_with("git://")
        || s.starts_with("git@")
        || s.starts_with("ssh://")
        || ((s.starts_with("https://") || s.starts_with("http://")) && base.ends_with(".git"))
}

impl GitSource {
    pub fn parse(spec: &str) -> GitSource {
        let mut parts = spec.splitn(3, '#');
        let url = parts.next().unwrap_or_default().to_string();
        let fragment = parts.next().filter(|f| !f.is_empty());
        let commit = parts.next().filter(|c| !c.is_empty()).map(str::to_string);
        let (reference, subdir) = match fragment {
            Some(f) => match f.split_once(':') {
                Some((r, d)) => (Some(r.to_string()).filter(|r| !r.is_empty()), Some(d.to_string()).filter(|d| !d.is_empty())),
                None => (Some(f.to_string()), None),
            },
            None => (None, None),
        };
        GitSource { url, reference, commit, subdir }
    }

    /// Fetches the repository at the ref into `dest` (which must not exist),
    /// without its `.git` directory, as BuildKit does.
    pub fn fetch(&self, dest: &Path, opts: &GitOptions) -> Result<()> {
        std::fs::create_dir_all(dest)?;
        let reference = self.reference.clone().or_else(|| opts.branch.clone()).unwrap_or_else(|| "HEAD".into());
        git(dest, &["init", "-q"])?;
        // A shallow fetch of the one ref. A commit id (which servers refuse
        // as a ref) or kaniko's #REF#COMMIT needs the full history instead.
        let shallow = match self.commit {
            None => git(dest, &["fetch", "-q", "--depth=1", &self.url, &reference]),
            Some(_) => Err(anyhow::anyhow!("a commit needs the full history")),
        };
        let target = match (&shallow, &self.commit) {
            (Ok(()), _) => "FETCH_HEAD",
            (Err(_), commit) => {
                git(dest, &["fetch", "-q", "--tags", &self.url, "+refs/heads/*:refs/remotes/origin/*"])
                    .with_context(|| format!("fetching {}", self.url))?;
                commit.as_deref().unwrap_or(&reference)
            }
        };
        git(dest, &["checkout", "-q", target]).with_context(|| format!("checking out {target} of {}", self.url))?;
        if opts.recurse_submodules {
            git(dest, &["submodule", "update", "-q", "--init", "--recursive", "--depth=1"])
                .with_context(|| format!("fetching the submodules of {}", self.url))?;
        }
        std::fs::remove_dir_all(dest.join(".git")).context("removing .git from the checkout")?;
        Ok(())
    }
}

/// Runs `git` in `dir`, never prompting; its error output becomes the error.
fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .args(["-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("git {}: {}", args.join(" "), err.trim().lines().last().unwrap_or("failed"));
    }
    Ok(())
}

/// A context ready for COPY and ADD.
pub struct BuildContext {
    dir: PathBuf,
    ignore: Box<dyn Excluder>,
    /// Holds an unpacked archive or checkout; removed on drop.
    _scratch: Option<tempfile::TempDir>,
}

impl BuildContext {
    /// Prepares the context `spec` (a `--context` value), entering
    /// `sub_path` (`--context-sub-path`) if given. Archives and checkouts are
    /// unpacked under `work_dir`.
    pub fn prepare(spec: &str, sub_path: Option<&str>, git_opts: &GitOptions, work_dir: &Path) -> Result<BuildContext> {
        let source = ContextSource::parse(spec)?;
        let scratch = || tempfile::Builder::new().prefix("context-").tempdir_in(work_dir).context("creating a directory for the context");
        let (base, keep) = match &source {
            ContextSource::Dir(path) => {
                let meta = std::fs::metadata(path).with_context(|| format!("context {}", path.display()))?;
                if !meta.is_dir() {
                    bail!("context {}: not a directory (use tar://{} for an archive)", path.display(), path.display());
                }
                (std::fs::canonicalize(path)?, None)
            }
            ContextSource::Tar(file) => {
                let dir = scratch()?;
                let opts = archive::ExtractOptions { preserve_owners: false, owner: None };
                archive::extract(file, dir.path(), opts).with_context(|| format!("context tar://{}", file.display()))?;
                (dir.path().to_path_buf(), Some(dir))
            }
            ContextSource::TarStdin => {
                let dir = scratch()?;
                let opts = archive::ExtractOptions { preserve_owners: false, owner: None };
                archive::extract_from(io::stdin().lock(), dir.path(), opts).context("context tar://stdin")?;
                (dir.path().to_path_buf(), Some(dir))
            }
            ContextSource::Git(repo) => {
                let dir = scratch()?;
                let checkout = dir.path().join("checkout");
                repo.fetch(&checkout, git_opts).with_context(|| format!("context {spec}"))?;
                let base = match &repo.subdir {
                    Some(sub) => scoped::resolve(&checkout, Path::new(sub), true)?,
                    None => checkout,
                };
                (base, Some(dir))
            }
        };
        let dir = match sub_path {
            Some(sub) => scoped::resolve(&base, Path::new(sub), true)?,
            None => base,
        };
        if !dir.is_dir() {
            bail!("context {spec}: {} is not a directory", dir.display());
        }
        let ignore = load_dockerignore(&dir)?;
        Ok(BuildContext { dir, ignore, _scratch: keep })
    }

    /// The context's directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `.dockerignore` hides `rel` (relative to the context).
    pub fn is_ignored(&self, rel: &Path) -> bool {
        !rel.as_os_str().is_empty() && self.ignore.excluded(rel)
    }

    /// The `.dockerignore` rules, for COPY and ADD walking the context.
    pub fn ignore(&self) -> &dyn Excluder {
        self.ignore.as_ref()
    }

    /// Reads the Dockerfile: an absolute path or one relative to the working
    /// directory if it exists there (kaniko's rule), else relative to the context.
    pub fn read_dockerfile(&self, path: &str, local_context: bool) -> Result<(PathBuf, String)> {
        let p = Path::new(path);
        let host = if p.is_absolute() || (local_context && p.exists()) {
            p.to_path_buf()
        } else {
            scoped::resolve(&self.dir, p, true)?
        };
        let mut text = String::new();
        std::fs::File::open(&host)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("reading Dockerfile {}", host.display()))?;
        Ok((host, text))
    }
}

/// The context's `.dockerignore` rules.
fn load_dockerignore(dir: &Path) -> Result<Box<dyn Excluder>> {
    let matcher = Matcher::load(dir).with_context(|| format!("reading {}", dir.join(".dockerignore").display()))?;
    Ok(if matcher.is_empty() { Box::new(NothingExcluded) } else { Box::new(matcher) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_context_specs() {
        assert_eq!(ContextSource::parse(".").unwrap(), ContextSource::Dir(".".into()));
        assert_eq!(ContextSource::parse("dir:///w").unwrap(), ContextSource::Dir("/w".into()));
        assert_eq!(ContextSource::parse("tar://stdin").unwrap(), ContextSource::TarStdin);
        assert_eq!(ContextSource::parse("tar:///c.tgz").unwrap(), ContextSource::Tar("/c.tgz".into()));
        let ContextSource::Git(g) = ContextSource::parse("git://h/r.git#refs/heads/main").unwrap() else { panic!() };
        assert_eq!((g.url.as_str(), g.reference.as_deref(), g.subdir), ("git://h/r.git", Some("refs/heads/main"), None));
        let ContextSource::Git(g) = ContextSource::parse("https://h/r.git#v1:app/sub").unwrap() else { panic!() };
        assert_eq!((g.reference.as_deref(), g.subdir.as_deref()), (Some("v1"), Some("app/sub")));
        let ContextSource::Git(g) = ContextSource::parse("git://h/r.git#refs/heads/x#abc123").unwrap() else { panic!() };
        assert_eq!(g.commit.as_deref(), Some("abc123"));
        assert!(ContextSource::parse("s3://bucket/ctx.tgz").is_err());
    }

    #[test]
    fn parses_git_options() {
        let o = GitOptions::parse(&["branch=dev,single-branch=true".into(), "recurse-submodules=true".into()]).unwrap();
        assert_eq!(o.branch.as_deref(), Some("dev"));
        assert!(o.recurse_submodules);
        assert!(GitOptions::parse(&["depth=1".into()]).is_err());
    }
}
