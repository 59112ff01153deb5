//! Cache keys: one per layer-producing instruction, a blake3 hash over every
//! input that can change the layer, and nothing else.
//!
//! The inputs are the base image's digest, the previous step's key, the
//! instruction after expansion, the build args the stage declares and the
//! environment the step sees, and for COPY/ADD the sources (names after
//! `.dockerignore`, content, mode, owner, link targets). Each input is hashed
//! on its own into [`InputDigests`] and the key is the hash of those digests,
//! so that a miss can say which input changed against the inputs recorded for
//! the same step by an earlier build ([`InputDigests::changes_from`]).
//!
//! Build args are filtered by the caller to the ARGs the stage declares
//! ([`declared_args`]): a `--build-arg` no ARG names (a timestamp, a commit
//! SHA) changes no key, unlike in kaniko.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::exec::copy::Excluder;

/// Bumped when the way keys are computed changes, so old entries stop matching.
const KEY_VERSION: &str = "strata-cache-key-v1";

/// A step's cache key: 64 lowercase hex digits of a blake3 hash. It is also the
/// tag of the step's cache image in the cache repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CacheKey(String);

impl CacheKey {
    pub fn parse(s: &str) -> Result<CacheKey> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("malformed cache key {s:?}: expected 64 lowercase hex digits");
        }
        Ok(CacheKey(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for log lines.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CacheKey {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<CacheKey> {
        CacheKey::parse(&s)
    }
}

impl From<CacheKey> for String {
    fn from(k: CacheKey) -> String {
        k.0
    }
}

/// Which kind of instruction a key is for (`--cache-run-layers`,
/// `--cache-copy-layers` choose which are cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    Run,
    /// COPY or ADD.
    Copy,
}

/// Everything a step's layer depends on, as the executor knows it before
/// running the step.
#[derive(Debug, Clone)]
pub struct KeyInputs {
    pub kind: StepKind,
    /// Digest of the stage's base image manifest (`scratch` for none, or the
    /// key of the last step of the stage it builds on).
    pub base: String,
    /// The previous layer-producing step's key in this stage; `None` for the first.
    pub parent: Option<CacheKey>,
    /// The instruction after variable expansion, flags included
    /// (`COPY --chown=app:app src/ /app/`).
    pub instruction: String,
    /// Build args the stage declares, with their values (see [`declared_args`]).
    pub args: BTreeMap<String, String>,
    /// The environment the step sees (the image config's `Env` at that step).
    pub env: BTreeMap<String, String>,
    /// For COPY/ADD: the sources ([`hash_sources`]); empty for RUN.
    pub sources: BTreeMap<String, String>,
}

/// The digest of each input of a key, kept next to the key in the local cache
/// so that a later miss can say what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDigests {
    pub base: String,
    pub parent: Option<CacheKey>,
    pub instruction: String,
    pub args: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub sources: BTreeMap<String, String>,
}

fn hash_str(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex().to_string()
}

impl KeyInputs {
    /// The digests of the inputs; values are hashed so that secrets passed as
    /// build args are not written to the cache directory in clear.
    pub fn digests(&self) -> InputDigests {
        InputDigests {
            base: self.base.clone(),
            parent: self.parent.clone(),
            instruction: hash_str(&self.instruction),
            args: self.args.iter().map(|(k, v)| (k.clone(), hash_str(v))).collect(),
            env: self.env.iter().map(|(k, v)| (k.clone(), hash_str(v))).collect(),
            sources: self.sources.clone(),
        }
    }

    /// The step's key.
    pub fn key(&self) -> CacheKey {
        self.digests().key()
    }
}

impl InputDigests {
    /// The key these inputs make. Every field is length-prefixed, so no two
    /// different input sets encode to the same bytes.
    pub fn key(&self) -> CacheKey {
        let mut h = blake3::Hasher::new();
        let mut field = |tag: &str, value: &str| {
            for part in [tag, value] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        };
        field("version", KEY_VERSION);
        field("base", &self.base);
        field("parent", self.parent.as_ref().map_or("", |k| k.as_str()));
        field("instruction", &self.instruction);
        for (name, map) in [("arg", &self.args), ("env", &self.env), ("source", &self.sources)] {
            field(name, &map.len().to_string());
            for (k, v) in map.iter() {
                field(k, v);
            }
        }
        CacheKey(h.finalize().to_hex().to_string())
    }

    /// What differs between `previous` (an earlier build of the same step) and
    /// these inputs, in words, most telling first:
    /// `["COPY source app.py changed", "build arg VERSION changed"]`.
    pub fn changes_from(&self, previous: &InputDigests) -> Vec<String> {
        let mut out = Vec::new();
        if self.base != previous.base {
            out.push(format!("base image changed ({} → {})", short(&previous.base), short(&self.base)));
        }
        if self.instruction != previous.instruction {
            out.push("instruction changed".to_string());
        }
        diff_maps("build arg", &previous.args, &self.args, &mut out);
        diff_maps("env", &previous.env, &self.env, &mut out);
        diff_maps("source", &previous.sources, &self.sources, &mut out);
        if self.parent != previous.parent && out.is_empty() {
            out.push("an earlier step changed".to_string());
        }
        out
    }
}

fn short(s: &str) -> &str {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    &s[..s.len().min(12)]
}

fn diff_maps(what: &str, old: &BTreeMap<String, String>, new: &BTreeMap<String, String>, out: &mut Vec<String>) {
    const MAX_NAMED: usize = 5;
    let mut changes = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => changes.push(format!("{what} {k} added")),
            Some(o) if o != v => changes.push(format!("{what} {k} changed")),
            Some(_) => {}
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        changes.push(format!("{what} {k} removed"));
    }
    let n = changes.len();
    out.extend(changes.into_iter().take(MAX_NAMED));
    if n > MAX_NAMED {
        out.push(format!("and {} more {what} changes", n - MAX_NAMED));
    }
}

/// The build args a stage's key may see: those its ARG instructions declare
/// (`declared`), valued from `--build-arg` or else the ARG's default. A build
/// arg no ARG declares is left out, so it changes no key.
pub fn declared_args(
    declared: &[(String, Option<String>)],
    build_args: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    declared
        .iter()
        .filter_map(|(name, default)| {
            build_args.get(name).or(default.as_ref()).map(|v| (name.clone(), v.clone()))
        })
        .collect()
}

/// Hashes COPY/ADD sources: each of `matched` (paths relative to `root`, as
/// the instruction's sources expanded to) and, for directories, everything
/// under them that `ignore` does not exclude. Symlinks are hashed as links,
/// never followed. Returns, for each path, a hash of its kind, mode, owner,
/// size and content (or link target), keyed by the path relative to `root`.
///
/// The mtime is left out: a fresh checkout of the same files must hit.
pub fn hash_sources(root: &Path, matched: &[PathBuf], ignore: &dyn Excluder) -> Result<BTreeMap<String, String>> {
    let mut entries = BTreeSet::new();
    for rel in matched {
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("COPY source {} is outside the build context", rel.display());
        }
        let rel: PathBuf = rel.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
        collect(root, &rel, ignore, &mut entries)?;
    }
    entries
        .into_par_iter()
        .map(|rel| {
            let digest = hash_entry(&root.join(&rel))
                .with_context(|| format!("hashing COPY source {}", rel.display()))?;
            let name = if rel.as_os_str().is_empty() { ".".to_string() } else { rel.to_string_lossy().into_owned() };
            Ok((name, digest))
        })
        .collect()
}

fn collect(root: &Path, rel: &Path, ignore: &dyn Excluder, out: &mut BTreeSet<PathBuf>) -> Result<()> {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).with_context(|| format!("COPY source {} not found", rel.display()))?;
    let excluded = !rel.as_os_str().is_empty() && ignore.excluded(rel);
    if !excluded {
        out.insert(rel.to_path_buf());
    }
    if meta.is_dir() && (!excluded || ignore.may_include_under(rel)) {
        let mut children: Vec<_> = fs::read_dir(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .map(|e| e.map(|e| rel.join(e.file_name())))
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", path.display()))?;
        children.sort();
        for child in children {
            collect(root, &child, ignore, out)?;
        }
    }
    Ok(())
}

fn hash_entry(path: &Path) -> Result<String> {
    let meta = fs::symlink_metadata(path)?;
    let mut h = blake3::Hasher::new();
    let header = format!(
        "mode={:o} uid={} gid={} ",
        meta.permissions().mode(),
        meta.uid(),
        meta.gid()
    );
    h.update(header.as_bytes());
    let ft = meta.file_type();
    if ft.is_symlink() {
        h.update(b"symlink ");
        h.update(fs::read_link(path)?.as_os_str().as_encoded_bytes());
    } else if ft.is_file() {
        h.update(format!("file size={} ", meta.len()).as_bytes());
        h.update_reader(fs::File::open(path)?)?;
    } else if ft.is_dir() {
        h.update(b"dir");
    } else {
        h.update(format!("special rdev={}", meta.rdev()).as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            kind: StepKind::Run,
            base: "sha256:aaaa".into(),
            parent: None,
            instruction: "RUN make".into(),
            args: BTreeMap::from([("V".into(), "1".into())]),
            env: BTreeMap::from([("PATH".into(), "/bin".into())]),
            sources: BTreeMap::new(),
        }
    }

    #[test]
    fn every_input_changes_the_key_and_is_named() {
        let a = inputs();
        let base_key = a.key();
        assert_eq!(base_key, inputs().key(), "keys are deterministic");
        let variants: Vec<(KeyInputs, &str)> = vec![
            (KeyInputs { base: "sha256:bbbb".into(), ..inputs() }, "base image changed (aaaa → bbbb)"),
            (KeyInputs { parent: Some(base_key.clone()), ..inputs() }, "an earlier step changed"),
            (KeyInputs { instruction: "RUN make all".into(), ..inputs() }, "instruction changed"),
            (KeyInputs { args: BTreeMap::from([("V".into(), "2".into())]), ..inputs() }, "build arg V changed"),
            (KeyInputs { args: BTreeMap::new(), ..inputs() }, "build arg V removed"),
            (KeyInputs { env: BTreeMap::from([("PATH".into(), "/usr/bin".into())]), ..inputs() }, "env PATH changed"),
            (KeyInputs { sources: BTreeMap::from([("app.py".into(), "x".into())]), ..inputs() }, "source app.py added"),
        ];
        for (v, why) in variants {
            assert_ne!(v.key(), base_key, "{why}");
            assert_eq!(v.digests().changes_from(&a.digests()), vec![why.to_string()]);
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = KeyInputs { args: BTreeMap::from([("AB".into(), "C".into())]), ..inputs() };
        let b = KeyInputs { args: BTreeMap::from([("A".into(), "BC".into())]), ..inputs() };
        assert_ne!(a.key(), b.key());
        let c = KeyInputs { args: BTreeMap::new(), env: BTreeMap::from([("V".into(), "1".into()), ("PATH".into(), "/bin".into())]), ..inputs() };
        assert_ne!(c.key(), inputs().key());
    }

    #[test]
    fn undeclared_build_args_are_left_out() {
        let declared = vec![("VERSION".to_string(), Some("1".to_string())), ("EMPTY".to_string(), None)];
        let given = BTreeMap::from([("BUILD_DATE".to_string(), "now".to_string())]);
        assert_eq!(declared_args(&declared, &given), BTreeMap::from([("VERSION".into(), "1".into())]));
        let given = BTreeMap::from([("VERSION".to_string(), "2".to_string()), ("SHA".to_string(), "x".to_string())]);
        assert_eq!(declared_args(&declared, &given), BTreeMap::from([("VERSION".into(), "2".into())]));
    }

    #[test]
    fn cache_key_parses_only_hex() {
        assert!(CacheKey::parse(&"a".repeat(64)).is_ok());
        assert!(CacheKey::parse("../../etc").is_err());
        assert!(CacheKey::parse(&"A".repeat(64)).is_err());
    }
}
