//! Image references (`busybox`, `registry:5000/team/app:1.2@sha256:…`), parsed and
//! normalised the way Docker does: a missing registry becomes `docker.io`, a
//! single-component Docker Hub name gains `library/`, a missing tag and digest
//! becomes `:latest`, and `index.docker.io` is spelled `docker.io`.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use super::digest::Digest;

/// The registry that unqualified names live on.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference. `Display` gives the full form, e.g.
/// `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises `s`; errors name the reference and what is wrong with it.
    pub fn parse(s: &str) -> Result<ImageRef> {
        if s.is_empty() {
            bail!("invalid image reference \"\": empty");
        }
        if s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("invalid image reference {s:?}: contains whitespace or is too long");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((name, d)) => {
                let digest = Digest::parse(d)
                    .map_err(|e| anyhow::anyhow!("invalid image reference {s:?}: {e}"))?;
                (name, Some(digest))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            bail!("invalid image reference {s:?}: bad tag {tag:?}");
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if !valid_registry(&registry) {
            bail!("invalid image reference {s:?}: bad registry {registry:?}");
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            bail!("invalid image reference {s:?}: repository name must be lowercase");
        }
        if repository.len() > 255 || !repository.split('/').all(valid_path_component) {
            bail!("invalid image reference {s:?}: bad repository name {repository:?}");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// Host (and port) of the registry, e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef { tag: None, digest: Some(digest), ..self.clone() }
    }

    /// The same repository and tag on another registry (used for mirrors).
    pub fn with_registry(&self, registry: &str) -> Result<ImageRef> {
        let (host, prefix) = match registry.split_once('/') {
            Some((h, p)) => (h, Some(p.trim_end_matches('/'))),
            None => (registry, None),
        };
        let host = host.trim_end_matches('/');
        if !valid_registry(host) {
            bail!("invalid registry {registry:?}");
        }
        let repository = match prefix {
            Some(p) if !p.is_empty() => format!("{p}/{}", self.repository),
            _ => self.repository.clone(),
        };
        Ok(ImageRef { registry: host.to_string(), repository, ..self.clone() })
    }

    /// The reference in `oci-client`'s type, for registry traffic.
    pub fn to_oci(&self) -> oci_client::Reference {
        let registry = self.registry.clone();
        let repository = self.repository.clone();
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                t.clone(),
                d.to_string(),
            ),
            (None, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.to_string()),
            (Some(t), None) => oci_client::Reference::with_tag(registry, repository, t.clone()),
            (None, None) => {
                oci_client::Reference::with_tag(registry, repository, "latest".to_string())
            }
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        ImageRef::parse(s)
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return false,
    }
    tag.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_registry(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => (n, Some(p)),
        _ => (host, None),
    };
    let name_ok = if name.starts_with('[') && name.ends_with(']') {
        name[1..name.len() - 1].chars().all(|c| c.is_ascii_hexdigit() || c == ':')
    } else {
        !name.is_empty()
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    name_ok && port_ok
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("team/app"), "docker.io/team/app:latest");
        assert_eq!(full("index.docker.io/library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b:v1"), "localhost:5000/a/b:v1");
        assert_eq!(full("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(full("gcr.io/proj/img:tag"), "gcr.io/proj/img:tag");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(full(&format!("busybox@{d}")), format!("docker.io/library/busybox@{d}"));
        assert_eq!(
            full(&format!("reg:5000/x:t@{d}")),
            format!("reg:5000/x:t@{d}")
        );
        let r = ImageRef::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("v1"));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a b",
            "busybox@sha256:abc",
            "reg:99999/x",
            "x//y",
            "-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn mirrors_keep_repository() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            r.with_registry("mirror.local:5000").unwrap().to_string(),
            "mirror.local:5000/library/busybox:latest"
        );
        assert_eq!(
            r.with_registry("mirror.local/hub").unwrap().to_string(),
            "mirror.local/hub/library/busybox:latest"
        );
    }
}
