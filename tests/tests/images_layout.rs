//! Base images from OCI layouts (`--build-context NAME=oci-layout://DIR…`),
//! offline: tags, digests, platform selection in an index, and hostile or
//! broken layouts (a blob that does not match its digest, a truncated layer,
//! a layer that links out of the root), which fail with one clear line and
//! leave nothing behind.

mod images_support;

use std::fs;
use std::path::Path;

use images_support::*;
use serde_json::json;
use strata_builder::image::digest::Digest;
use strata_builder::image::extract::extract_image;
use strata_builder::image::options::{BuildContextSpec, PlatformSpec, RegistryOptions};
use strata_builder::image::store::BlobStore;
use strata_builder::image::resolve_base;
use strata_tests::{fixtures, require};

fn ctx(spec: &str) -> Vec<BuildContextSpec> {
    vec![spec.parse().unwrap()]
}

fn busybox(dir: &Path) -> Option<String> {
    if !require::tool("images_layout", "busybox") {
        return None;
    }
    Some(fixtures::busybox_layout(dir))
}

#[test]
fn build_context_by_tag_digest_and_default() {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let layout = s.join("base");
    let Some(digest) = busybox(&layout) else { return };
    let store = BlobStore::new(s.join("store")).unwrap();
    let opts = RegistryOptions::default();
    for spec in [
        format!("base=oci-layout://{}:latest", layout.display()),
        format!("base=oci-layout://{}@{digest}", layout.display()),
        format!("base=oci-layout://{}", layout.display()),
    ] {
        let base = resolve_base("base", &ctx(&spec), &opts, &store, &amd64()).unwrap();
        assert_eq!(base.manifest_digest.as_ref().unwrap().as_str(), digest, "{spec}");
        assert!(base.registry_ref.is_none());
    }
    let base = resolve_base("base", &ctx(&format!("base=oci-layout://{}", layout.display())), &opts, &store, &amd64()).unwrap();
    let root = s.join("root");
    extract_image(&base, &store, &root, 0).unwrap();
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(fs::read_to_string(root.join("etc/passwd")).unwrap().lines().count(), 3);

    let err = resolve_base("base", &ctx(&format!("base=oci-layout://{}:nope", layout.display())), &opts, &store, &amd64()).unwrap_err();
    assert!(format!("{err:#}").contains("no image tagged \"nope\""), "{err:#}");
    let err = resolve_base("base", &ctx(&format!("base=oci-layout://{}", s.join("missing").display())), &opts, &store, &amd64()).unwrap_err();
    assert!(format!("{err:#}").contains("not an OCI image layout"), "{err:#}");
    // `scratch` needs no source.
    assert!(resolve_base("scratch", &[], &opts, &store, &amd64()).unwrap().layers.is_empty());
}

#[test]
fn index_resolves_to_the_build_platform() {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let layout = s.join("base");
    if busybox(&layout).is_none() {
        return;
    }
    add_multi_platform_index(&layout);
    let store = BlobStore::new(s.join("store")).unwrap();
    let opts = RegistryOptions::default();
    let spec = ctx(&format!("base=oci-layout://{}:multi", layout.display()));
    for (platform, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64"), ("linux/arm/v7", "arm")] {
        let p = platform.parse::<PlatformSpec>().unwrap().0;
        let base = resolve_base("base", &spec, &opts, &store, &p).unwrap();
        assert_eq!(base.config.architecture, arch, "{platform}");
    }
    let p = "linux/s390x".parse::<PlatformSpec>().unwrap().0;
    let err = resolve_base("base", &spec, &opts, &store, &p).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("no manifest for platform linux/s390x") && msg.contains("linux/arm64/v8"), "{msg}");
}

#[test]
fn layout_blob_with_wrong_digest_is_rejected() {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let layout = s.join("base");
    let Some(digest) = busybox(&layout) else { return };
    let blobs = BlobStore::new(layout.join("blobs")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blobs.read(&digest.parse().unwrap()).unwrap()).unwrap();
    let layer: Digest = manifest["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
    let mut bytes = fs::read(blobs.path(&layer)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(blobs.path(&layer), bytes).unwrap();
    let store = BlobStore::new(s.join("store")).unwrap();
    let err = resolve_base("base", &ctx(&format!("base=oci-layout://{}", layout.display())), &RegistryOptions::default(), &store, &amd64()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("digest mismatch") && msg.contains(layer.as_str()), "{msg}");
    assert_eq!(msg.lines().count(), 1);
    assert!(!store.contains(&layer));
}

/// A layout whose single image has `layer` (already compressed) on top of busybox.
fn layout_with_layer(layout: &Path, layer: &[u8], diff_id: &Digest) {
    let blobs = BlobStore::new(layout.join("blobs")).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md: Digest = index["manifests"][0]["digest"].as_str().unwrap().parse().unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&blobs.read(&md).unwrap()).unwrap();
    let cd: Digest = manifest["config"]["digest"].as_str().unwrap().parse().unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&blobs.read(&cd).unwrap()).unwrap();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(json!(diff_id.as_str()));
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let ld = blobs.put(layer).unwrap();
    manifest["config"]["digest"] = json!(blobs.put(&config_bytes).unwrap().as_str());
    manifest["config"]["size"] = json!(config_bytes.len());
    manifest["layers"].as_array_mut().unwrap().push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.as_str(), "size": layer.len()}));
    let mb = serde_json::to_vec(&manifest).unwrap();
    let nd = blobs.put(&mb).unwrap();
    let top = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": nd.as_str(), "size": mb.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

#[test]
fn truncated_and_hostile_layers_fail_and_leave_the_root_empty() {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let opts = RegistryOptions::default();

    // A truncated layer whose digest matches its (truncated) bytes.
    let truncated = s.join("truncated");
    if busybox(&truncated).is_none() {
        return;
    }
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(big.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "big", &big[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let whole = gz(&tar);
    layout_with_layer(&truncated, &whole[..whole.len() / 2], &Digest::of(&tar));
    let store = BlobStore::new(s.join("store")).unwrap();
    let base = resolve_base("b", &ctx(&format!("b=oci-layout://{}", truncated.display())), &opts, &store, &amd64()).unwrap();
    let root = s.join("root");
    let err = extract_image(&base, &store, &root, 1).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("truncated or corrupt"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(listing(&root).is_empty(), "root left with {:?}", listing(&root));

    // A layer hard-linking a host file through a symlink that points out of the root.
    let hostile = s.join("hostile");
    fixtures::busybox_layout(&hostile);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "hostdir", "/../../../../etc").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_link(&mut h, "stolen-shadow", "hostdir/shadow").unwrap();
    let tar = b.into_inner().unwrap();
    layout_with_layer(&hostile, &gz(&tar), &Digest::of(&tar));
    let base = resolve_base("h", &ctx(&format!("h=oci-layout://{}", hostile.display())), &opts, &store, &amd64()).unwrap();
    let err = extract_image(&base, &store, &root, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("\"stolen-shadow\"") && msg.contains("does not exist in the image"), "{msg}");
    assert!(listing(&root).is_empty(), "root left with {:?}", listing(&root));
}
