//! `--tar-path`: the image as a docker-archive tarball, the format of
//! `docker save`, which `docker load` and `skopeo copy docker-archive:…` read.
//! Layout (as go-containerregistry / kaniko write it): `manifest.json`, the
//! config as `<hex>.json`, each layer blob as `<hex>.tar.gz` (or `.tar`,
//! `.tar.zst`) in its stored, compressed form.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::config::{Descriptor, media};
use super::digest::Digest;
use super::reference::ImageRef;
use super::store::BlobStore;

#[derive(Serialize)]
struct ArchiveManifest<'a> {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: &'a [String],
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn layer_file_name(d: &Descriptor) -> String {
    let ext = match d.media_type.as_str() {
        media::OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => "tar",
        media::OCI_LAYER_ZSTD => "tar.zst",
        _ => "tar.gz",
    };
    format!("{}.{ext}", d.digest.hex())
}

/// Writes the docker-archive to `path` (through a temporary file and a
/// rename). `tags` become `RepoTags` (e.g. the destinations).
pub fn write_docker_archive(
    path: &Path,
    config: &Digest,
    layers: &[Descriptor],
    tags: &[ImageRef],
    store: &BlobStore,
) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".strata-archive-")
        .tempfile_in(parent)
        .with_context(|| format!("--tar-path {}: cannot create a file in {}", path.display(), parent.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
    tar.mode(tar::HeaderMode::Deterministic);

    let config_name = format!("{}.json", config.hex());
    append_file(&mut tar, &config_name, &store.path(config))?;
    let mut names = Vec::new();
    for l in layers {
        let name = layer_file_name(l);
        append_file(&mut tar, &name, &store.path(&l.digest))?;
        names.push(name);
    }
    // RepoTags use Docker's short form for Docker Hub, as `docker save` does.
    let repo_tags: Vec<String> = tags
        .iter()
        .map(|t| {
            let tag = t.tag().unwrap_or("latest");
            format!("{}:{tag}", t.name())
        })
        .collect();
    let manifest = serde_json::to_vec(&[ArchiveManifest { config: config_name, repo_tags: &repo_tags, layers: names }])?;
    let mut h = tar::Header::new_ustar();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "manifest.json", &manifest[..])?;
    let mut w = tar.into_inner().context("finishing docker archive")?;
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    drop(w);
    tmp.as_file().sync_data().ok();
    tmp.persist(path).with_context(|| format!("writing --tar-path {}", path.display()))?;
    Ok(())
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, src: &Path) -> Result<()> {
    let mut f = File::open(src).with_context(|| format!("blob {} missing from the store", src.display()))?;
    let len = f.metadata()?.len();
    let mut h = tar::Header::new_ustar();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, &mut f).with_context(|| format!("adding {name} to the docker archive"))?;
    Ok(())
}
