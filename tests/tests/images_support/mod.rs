//! Helpers shared by the images_* end-to-end tests.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;
use strata_builder::image::config::{Platform, media};
use strata_builder::image::digest::Digest;
use strata_builder::image::options::{OutputOptions, PlatformSpec, RegistryOptions};
use strata_builder::image::store::BlobStore;
use strata_builder::image::{BaseImage, BuiltImage, LayerDescriptor, resolve_base};
use strata_tests::{fixtures, require};
use strata_tests::registry::Registry;

pub fn amd64() -> Platform {
    "linux/amd64".parse::<PlatformSpec>().unwrap().0
}

/// A fresh registry holding busybox as `base/busybox:1`, and that base
/// pulled (default options) into a blob store under `dir`.
pub struct PulledBase {
    pub reg: Registry,
    pub base_ref: String,
    pub store: BlobStore,
    pub opts: RegistryOptions,
    pub base: BaseImage,
}

pub fn pulled_base(dir: &Path) -> PulledBase {
    let reg = Registry::start();
    let base_ref = fixtures::push_busybox(&reg.addr, "base/busybox", "1", dir);
    let store = BlobStore::new(dir.join("store")).unwrap();
    let opts = RegistryOptions::default();
    let base = resolve_base(&base_ref, &[], &opts, &store, &amd64()).unwrap();
    PulledBase { reg, base_ref, store, opts, base }
}

/// A gzip layer holding `files` (name, content), stored in `store`.
pub fn make_layer(store: &BlobStore, files: &[(&str, &[u8])]) -> LayerDescriptor {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let digest = store.put(&gz).unwrap();
    LayerDescriptor {
        media_type: media::OCI_LAYER_GZIP.to_string(),
        digest,
        size: gz.len() as u64,
        diff_id: Digest::of(&tar),
    }
}

/// `base` plus one layer with `/hello.txt`, and a label and command.
pub fn built_on(base: &BaseImage, store: &BlobStore) -> BuiltImage {
    let mut image = BuiltImage::from_base(base).unwrap();
    image.layers.push(make_layer(store, &[("hello.txt", b"hello from strata\n")]));
    image.config.config.cmd = Some(vec!["cat".into(), "/hello.txt".into()]);
    image.config.config.labels = Some([("org.strata.test".to_string(), "yes".to_string())].into());
    image
}

pub fn outputs(destinations: &[String]) -> OutputOptions {
    OutputOptions { destinations: destinations.to_vec(), ..Default::default() }
}

/// Files and directories under `dir`, relative, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// Adds a manifest for `arch` (the busybox layer, config saying `arch`) and
/// an index of all of them under tag `multi`.
pub fn add_multi_platform_index(layout: &Path) {
    let blobs = BlobStore::new(layout.join("blobs")).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let amd64_desc = index["manifests"][0].clone();
    let amd64_digest: Digest = amd64_desc["digest"].as_str().unwrap().parse().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blobs.read(&amd64_digest).unwrap()).unwrap();
    let config_digest: Digest = manifest["config"]["digest"].as_str().unwrap().parse().unwrap();
    let mut entries = vec![json!({"mediaType": amd64_desc["mediaType"], "digest": amd64_desc["digest"], "size": amd64_desc["size"],
        "platform": {"os": "linux", "architecture": "amd64"}})];
    for (arch, variant) in [("arm64", Some("v8")), ("arm", Some("v7"))] {
        let mut config: serde_json::Value = serde_json::from_slice(&blobs.read(&config_digest).unwrap()).unwrap();
        config["architecture"] = json!(arch);
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let cd = blobs.put(&config_bytes).unwrap();
        let mut m = manifest.clone();
        m["config"]["digest"] = json!(cd.as_str());
        m["config"]["size"] = json!(config_bytes.len());
        let mb = serde_json::to_vec(&m).unwrap();
        let md = blobs.put(&mb).unwrap();
        entries.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.as_str(), "size": mb.len(),
            "platform": {"os": "linux", "architecture": arch, "variant": variant}}));
    }
    let nested = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})).unwrap();
    let nd = blobs.put(&nested).unwrap();
    let mut top = index.clone();
    top["manifests"].as_array_mut().unwrap().push(json!({"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nd.as_str(), "size": nested.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}));
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

/// A registry holding busybox as `base/busybox:1` (behind basic auth when
/// given `(user, password)`), and the scratch directory of the push. None,
/// the test skipped, without docker-registry, skopeo (or htpasswd for auth).
pub fn busybox_registry(test: &str, creds: Option<(&str, &str)>) -> Option<(tempfile::TempDir, Registry)> {
    let mut tools = vec!["docker-registry", "skopeo"];
    if creds.is_some() {
        tools.push("htpasswd");
    }
    if !tools.iter().all(|tool| require::tool(test, tool)) {
        return None;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = match creds {
        Some((user, password)) => Registry::start_with_auth(user, password),
        None => Registry::start(),
    };
    let creds = creds.map(|(user, password)| format!("{user}:{password}"));
    fixtures::push_busybox_as(&reg.addr, "base/busybox", "1", scratch.path(), creds.as_deref());
    Some((scratch, reg))
}

/// Points DOCKER_CONFIG at `dir` (made if missing), for the whole process.
pub fn use_docker_config(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    // SAFETY: callers are the only test in their binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("DOCKER_CONFIG", dir) };
}
