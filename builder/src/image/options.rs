//! Command-line flags for registries and outputs, with kaniko's names and
//! meanings (booleans take `--flag` or `--flag=true|false`, as kaniko's do), as `clap::Args` structs the `strata` CLI flattens in; plus the
//! values they parse into (`--build-context`, `--custom-platform`, `--registry-map`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, bail};

use super::config::Platform;
use super::digest::Digest;
use super::reference::{DOCKER_HUB, ImageRef};

/// How strata talks to registries (kaniko's registry flags).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Registries")]
pub struct RegistryOptions {
    /// Push to insecure registries over plain HTTP.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub insecure: bool,
    /// Pull from insecure registries over plain HTTP.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub insecure_pull: bool,
    /// A registry to use over plain HTTP for both pull and push (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Push without verifying the registry's TLS certificate.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub skip_tls_verify: bool,
    /// Pull without verifying the registry's TLS certificate.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub skip_tls_verify_pull: bool,
    /// A registry whose TLS certificate is not verified, for pull and push (repeatable).
    #[arg(long = "skip-tls-verify-registry", value_name = "HOST[:PORT]")]
    pub skip_tls_verify_registries: Vec<String>,
    /// Pull-through mirror for Docker Hub images, tried in order before docker.io (repeatable).
    #[arg(long = "registry-mirror", value_name = "HOST[:PORT][/PREFIX]")]
    pub registry_mirrors: Vec<String>,
    /// Mirrors for other registries: `orig.registry=mirror.registry;other=mirror2` (repeatable).
    /// The original registry is tried after its mirrors.
    #[arg(long = "registry-map", value_name = "ORIG=MIRROR[;ORIG=MIRROR]")]
    pub registry_maps: Vec<RegistryMap>,
    /// Trust this CA / server certificate (PEM) for a registry: `my.registry=/path/cert.pem` (repeatable).
    #[arg(long = "registry-certificate", value_name = "HOST=PATH")]
    pub registry_certificates: Vec<RegistryCertificate>,
    /// Retries for each push request that fails with 5xx, 429 or a connection error.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub push_retry: u32,
    /// Retries for extracting the base image's filesystem.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub image_fs_extract_retry: u32,
    /// Retries for each pull request that fails with 5xx, 429 or a connection error.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub image_download_retry: u32,
    /// Platform of the base images to pull and of the built image: `os/arch[/variant]`.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub custom_platform: Option<PlatformSpec>,
}

/// Transport settings for one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    pub plain_http: bool,
    pub skip_tls_verify: bool,
    pub ca_certificate: Option<PathBuf>,
}

/// Which way traffic flows; kaniko has separate flags for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Pull,
    Push,
}

impl RegistryOptions {
    /// The transport for `registry` (host[:port]) in `dir`.
    ///
    /// Like go-containerregistry (kaniko's registry library), loopback
    /// registries (`localhost`, `127.*`, `[::1]`) are spoken to over plain HTTP,
    /// unless a `--registry-certificate` is given for them.
    pub fn transport(&self, registry: &str, dir: Direction) -> Transport {
        let listed = |list: &[String]| list.iter().any(|r| same_registry(r, registry));
        let ca_certificate = self
            .registry_certificates
            .iter()
            .find(|c| same_registry(&c.registry, registry))
            .map(|c| c.path.clone());
        let insecure = listed(&self.insecure_registries)
            || match dir {
                Direction::Pull => self.insecure_pull,
                Direction::Push => self.insecure,
            };
        let plain_http = insecure || (ca_certificate.is_none() && is_loopback(registry));
        let skip_tls_verify = listed(&self.skip_tls_verify_registries)
            || match dir {
                Direction::Pull => self.skip_tls_verify_pull,
                Direction::Push => self.skip_tls_verify,
            };
        Transport { plain_http, skip_tls_verify, ca_certificate }
    }

    /// The references to try, in order, when pulling `r`: its mirrors, then `r`.
    pub fn pull_candidates(&self, r: &ImageRef) -> Result<Vec<ImageRef>> {
        let mut out = Vec::new();
        if r.registry() == DOCKER_HUB {
            for m in &self.registry_mirrors {
                out.push(r.with_registry(m.trim_start_matches("https://").trim_start_matches("http://"))?);
            }
        }
        for map in &self.registry_maps {
            for (from, to) in &map.0 {
                if same_registry(from, r.registry()) {
                    out.push(r.with_registry(to)?);
                }
            }
        }
        out.push(r.clone());
        Ok(out)
    }

    /// The platform to pull and build for: `--custom-platform`, else linux on the host's architecture.
    pub fn platform(&self) -> Platform {
        match &self.custom_platform {
            Some(p) => p.0.clone(),
            None => host_platform(),
        }
    }

    /// Checks values clap cannot (certificate files exist, registries parse).
    pub fn validate(&self) -> Result<()> {
        for c in &self.registry_certificates {
            if !c.path.is_file() {
                bail!("--registry-certificate {}={}: no such file", c.registry, c.path.display());
            }
        }
        for m in &self.registry_mirrors {
            ImageRef::parse("x")?
                .with_registry(m.trim_start_matches("https://").trim_start_matches("http://"))
                .map_err(|e| anyhow::anyhow!("--registry-mirror {m}: {e}"))?;
        }
        Ok(())
    }
}

fn normalise_registry(r: &str) -> &str {
    let r = r.trim_start_matches("https://").trim_start_matches("http://");
    let r = r.split('/').next().unwrap_or(r);
    match r {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        _ => r,
    }
}

fn same_registry(a: &str, b: &str) -> bool {
    normalise_registry(a) == normalise_registry(b)
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// The platform strata runs on: linux and the host's architecture.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "x86" => ("386", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: variant.map(str::to_string),
        os_version: None,
        os_features: None,
    }
}

/// `--custom-platform` value: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec(pub Platform);

impl FromStr for PlatformSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(format!("{s:?} is not a platform; expected os/arch[/variant], e.g. linux/arm64/v8"));
        }
        Ok(PlatformSpec(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
            os_version: None,
            os_features: None,
        }))
    }
}

/// One `--registry-map` value: `orig=mirror[;orig=mirror…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMap(pub Vec<(String, String)>);

impl FromStr for RegistryMap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let Some((from, to)) = part.split_once('=') else {
                return Err(format!("{part:?}: expected ORIGINAL=MIRROR"));
            };
            if from.is_empty() || to.is_empty() {
                return Err(format!("{part:?}: expected ORIGINAL=MIRROR"));
            }
            for m in to.split(',') {
                pairs.push((from.to_string(), m.to_string()));
            }
        }
        if pairs.is_empty() {
            return Err("empty registry map".to_string());
        }
        Ok(RegistryMap(pairs))
    }
}

/// One `--registry-certificate` value: `host=path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCertificate {
    pub registry: String,
    pub path: PathBuf,
}

impl FromStr for RegistryCertificate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((r, p)) if !r.is_empty() && !p.is_empty() => {
                Ok(RegistryCertificate { registry: r.to_string(), path: PathBuf::from(p) })
            }
            _ => Err(format!("{s:?}: expected REGISTRY=PATH/TO/CERT.pem")),
        }
    }
}

/// Manifest format of the built image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormat {
    /// Docker image manifest v2 schema 2 (what kaniko writes).
    #[default]
    Docker,
    /// OCI image manifest v1.
    Oci,
}

/// Where the built image goes (kaniko's output flags).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Outputs")]
pub struct OutputOptions {
    /// Registry reference to push the image to (repeatable).
    #[arg(short = 'd', long = "destination", value_name = "IMAGE")]
    pub destinations: Vec<String>,
    /// Build the image but do not push it.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub no_push: bool,
    /// Also write the image as a docker-archive tarball (`docker load`, `skopeo copy docker-archive:`).
    #[arg(long, value_name = "PATH")]
    pub tar_path: Option<PathBuf>,
    /// Also write the image into an OCI image layout directory.
    #[arg(long, value_name = "DIR")]
    pub oci_layout_path: Option<PathBuf>,
    /// Write the image's manifest digest to this file.
    #[arg(long, value_name = "PATH")]
    pub digest_file: Option<PathBuf>,
    /// Write `IMAGE@DIGEST` for each destination to this file.
    #[arg(long, value_name = "PATH")]
    pub image_name_with_digest_file: Option<PathBuf>,
    /// Write `IMAGE:TAG@DIGEST` for each destination to this file.
    #[arg(long, value_name = "PATH")]
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    /// Manifest format: `docker` (schema 2, the default, as kaniko) or `oci`.
    #[arg(long, value_enum, default_value_t = ImageFormat::Docker, value_name = "FORMAT")]
    pub image_format: ImageFormat,
}

impl OutputOptions {
    /// The destinations as parsed references; errors name the bad one.
    pub fn destination_refs(&self) -> Result<Vec<ImageRef>> {
        self.destinations
            .iter()
            .map(|d| ImageRef::parse(d).map_err(|e| anyhow::anyhow!("--destination {d}: {e}")))
            .collect()
    }

    /// What the outputs need of layers the build never downloaded: None when
    /// no output reads them, else whether a local output (`--tar-path`,
    /// `--oci-layout-path`) needs their bytes, and the destinations pushed to.
    pub fn layer_needs(&self) -> Result<Option<(bool, Vec<ImageRef>)>> {
        let local_output = self.tar_path.is_some() || self.oci_layout_path.is_some();
        let destinations = if self.no_push { Vec::new() } else { self.destination_refs()? };
        Ok((local_output || !destinations.is_empty()).then_some((local_output, destinations)))
    }

    /// Checks the combination of flags before any work starts.
    pub fn validate(&self) -> Result<()> {
        let dests = self.destination_refs()?;
        if dests.is_empty() && !self.no_push {
            bail!("no --destination given: add --destination IMAGE, or --no-push to build without pushing");
        }
        for d in &dests {
            if d.digest().is_some() {
                bail!("--destination {d}: cannot push to a digest; give a tag");
            }
        }
        for (flag, p) in [
            ("--tar-path", &self.tar_path),
            ("--digest-file", &self.digest_file),
            ("--image-name-with-digest-file", &self.image_name_with_digest_file),
            ("--image-name-tag-with-digest-file", &self.image_name_tag_with_digest_file),
        ] {
            if let Some(p) = p {
                check_parent_dir(flag, p)?;
            }
        }
        Ok(())
    }
}

fn check_parent_dir(flag: &str, p: &Path) -> Result<()> {
    if p.is_dir() {
        bail!("{flag} {}: is a directory", p.display());
    }
    Ok(())
}

/// One `--build-context NAME=SOURCE` value, as in `docker buildx build`; a
/// `FROM NAME` then resolves to SOURCE instead of a registry image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildContextSpec {
    pub name: String,
    pub source: ContextSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// `oci-layout://DIR[:TAG|@DIGEST]`; no tag and no digest means the layout's only image (or `latest`).
    OciLayout { dir: PathBuf, tag: Option<String>, digest: Option<Digest> },
    /// `docker-image://REF`: another registry image.
    DockerImage(ImageRef),
}

impl FromStr for BuildContextSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, source)) = s.split_once('=') else {
            return Err(format!("{s:?}: expected NAME=oci-layout://DIR[:TAG|@DIGEST] or NAME=docker-image://REF"));
        };
        if name.is_empty() {
            return Err(format!("{s:?}: empty context name"));
        }
        let source = if let Some(rest) = source.strip_prefix("oci-layout://") {
            let (rest, digest) = match rest.rsplit_once('@') {
                Some((d, dg)) => (d, Some(Digest::parse(dg).map_err(|e| format!("{s:?}: {e}"))?)),
                None => (rest, None),
            };
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            let (dir, tag) = match rest[last_slash..].rfind(':') {
                Some(i) if digest.is_none() => {
                    (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string()))
                }
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(format!("{s:?}: empty oci-layout directory"));
            }
            ContextSource::OciLayout { dir: PathBuf::from(dir), tag, digest }
        } else if let Some(r) = source.strip_prefix("docker-image://") {
            ContextSource::DockerImage(ImageRef::parse(r).map_err(|e| format!("{s:?}: {e}"))?)
        } else {
            return Err(format!(
                "{s:?}: unsupported build context source; strata supports oci-layout://DIR[:TAG|@DIGEST] and docker-image://REF"
            ));
        };
        Ok(BuildContextSpec { name: name.to_string(), source })
    }
}

impl fmt::Display for BuildContextSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ContextSource::OciLayout { dir, tag, digest } => {
                write!(f, "{}=oci-layout://{}", self.name, dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ContextSource::DockerImage(r) => write!(f, "{}=docker-image://{r}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        reg: RegistryOptions,
        #[command(flatten)]
        out: OutputOptions,
        #[arg(long = "build-context")]
        contexts: Vec<BuildContextSpec>,
    }

    #[test]
    fn parses_kaniko_flags() {
        let cli = Cli::try_parse_from([
            "strata",
            "-d", "localhost:5000/a:1",
            "--destination", "reg.example/b",
            "--insecure-registry", "reg.example",
            "--registry-mirror", "mirror.example",
            "--registry-map", "quay.io=q.mirror;gcr.io=g.mirror",
            "--custom-platform", "linux/arm64/v8",
            "--push-retry", "3",
            "--image-format", "oci",
            "--build-context", "base=oci-layout:///tmp/lay:v1",
            "--build-context", "other=docker-image://busybox",
            "--insecure=false",
            "--skip-tls-verify",
            "--no-push=true",
        ])
        .unwrap();
        assert_eq!(cli.out.destinations.len(), 2);
        assert!(cli.out.no_push && cli.reg.skip_tls_verify && !cli.reg.insecure);
        assert_eq!(cli.out.image_format, ImageFormat::Oci);
        assert_eq!(cli.reg.push_retry, 3);
        assert_eq!(cli.reg.platform().architecture, "arm64");
        let t = cli.reg.transport("reg.example", Direction::Push);
        assert!(t.plain_http);
        assert!(!cli.reg.transport("other.example", Direction::Pull).plain_http);
        assert!(cli.reg.transport("localhost:5000", Direction::Pull).plain_http);
        let hub = ImageRef::parse("busybox").unwrap();
        let c: Vec<String> = cli.reg.pull_candidates(&hub).unwrap().iter().map(|r| r.to_string()).collect();
        assert_eq!(c, ["mirror.example/library/busybox:latest", "docker.io/library/busybox:latest"]);
        let q = ImageRef::parse("quay.io/x/y").unwrap();
        assert_eq!(cli.reg.pull_candidates(&q).unwrap()[0].to_string(), "q.mirror/x/y:latest");
        assert_eq!(
            cli.contexts[0].source,
            ContextSource::OciLayout { dir: "/tmp/lay".into(), tag: Some("v1".into()), digest: None }
        );
        cli.out.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Cli::try_parse_from(["strata", "--custom-platform", "linux"]).is_err());
        assert!(Cli::try_parse_from(["strata", "--build-context", "x=git://a"]).is_err());
        assert!(Cli::try_parse_from(["strata", "--registry-map", "nomirror"]).is_err());
        let cli = Cli::try_parse_from(["strata"]).unwrap();
        assert!(cli.out.validate().unwrap_err().to_string().contains("--no-push"));
    }
}
