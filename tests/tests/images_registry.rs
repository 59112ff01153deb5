//! Pull, extract and deliver against a real registry (Debian's
//! docker-registry on 127.0.0.1), every output checked with skopeo and umoci;
//! and the failures a user meets: unknown image, registry down, a blob that
//! does not match its digest, a push that fails half way.

mod images_support;

use std::fs;
use std::path::Path;

use images_support::*;
use strata_builder::image::digest::Digest;
use strata_builder::image::extract::extract_image;
use strata_builder::image::options::{ImageFormat, RegistryMap, RegistryOptions};
use strata_builder::image::store::BlobStore;
use strata_builder::image::{deliver, resolve_base};
use strata_tests::registry::{Registry, free_port};
use strata_tests::{fixtures, require, tools};

const TLS_OFF: &[&str] = &["--tls-verify=false"];

fn needs_tools(test: &str) -> bool {
    require::tool(test, "docker-registry") && require::tool(test, "skopeo") && require::tool(test, "umoci")
}

#[test]
fn pull_extract_and_deliver_everywhere() {
    if !needs_tools("pull_extract_and_deliver_everywhere") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let PulledBase { reg, base_ref, store, opts, base } = pulled_base(s);
    let base_digest = tools::skopeo_inspect(&format!("docker://{base_ref}"), TLS_OFF)["Digest"].as_str().unwrap().to_string();
    assert_eq!(base.manifest_digest.as_ref().map(Digest::to_string), Some(base_digest));
    assert_eq!(base.config.config.cmd.as_deref(), Some(&["sh".to_string()][..]));
    assert_eq!(base.layers.len(), 1);
    for l in &base.layers {
        store.verify(&l.digest).unwrap();
    }

    let root = s.join("rootfs");
    extract_image(&base, &store, &root, 0).unwrap();
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);

    let image = built_on(&base, &store);
    let one = format!("{}/app/one:1", reg.addr);
    let two = format!("{}/app/two", reg.addr);
    let mut out = outputs(&[one.clone(), two.clone()]);
    out.tar_path = Some(s.join("image.tar"));
    out.oci_layout_path = Some(s.join("layout"));
    out.digest_file = Some(s.join("digest"));
    out.image_name_with_digest_file = Some(s.join("name-digest"));
    out.image_name_tag_with_digest_file = Some(s.join("name-tag-digest"));
    let delivered = deliver(&image, &out, &opts, &store).unwrap();
    let digest = delivered.manifest_digest.to_string();

    // The registry has both tags, Docker schema 2 by default, with our config.
    for dest in [&one, &format!("{two}:latest")] {
        let inspect = tools::skopeo_inspect(&format!("docker://{dest}"), TLS_OFF);
        assert_eq!(inspect["Digest"], digest.as_str(), "{dest}");
        assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
        assert_eq!(inspect["Labels"]["org.strata.test"], "yes");
    }
    let raw = tools::run_ok(std::process::Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{one}")));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    let config = tools::skopeo_config(&format!("docker://{one}"), TLS_OFF);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["cat", "/hello.txt"]));
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    // docker-archive: skopeo reads it and can copy it elsewhere.
    let archive = format!("docker-archive:{}", s.join("image.tar").display());
    let inspect = tools::skopeo_inspect(&archive, &[]);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
    let listed = tools::run_ok(std::process::Command::new("tar").arg("-xOf").arg(s.join("image.tar")).arg("manifest.json"));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["RepoTags"], serde_json::json!([one, format!("{two}:latest")]));
    // Each named reference in the archive is readable on its own.
    tools::skopeo_inspect(&format!("{archive}:{one}"), &[]);
    tools::skopeo_copy(&archive, &format!("oci:{}:copied", s.join("from-archive").display()), &[]);

    // OCI layout, tagged by the destinations' tags.
    // It holds the OCI form of the image: same config and layers.
    let inspect = tools::skopeo_inspect(&format!("oci:{}:1", s.join("layout").display()), &[]);
    assert_eq!(inspect["Layers"], tools::skopeo_inspect(&format!("docker://{one}"), TLS_OFF)["Layers"]);
    let layout_config = tools::skopeo_config(&format!("oci:{}:latest", s.join("layout").display()), &[]);
    assert_eq!(layout_config, config);

    // Digest files, kaniko's format.
    assert_eq!(fs::read_to_string(s.join("digest")).unwrap(), digest);
    let names = fs::read_to_string(s.join("name-digest")).unwrap();
    assert_eq!(names, format!("{0}/app/one@{digest}\n{0}/app/two@{digest}\n", reg.addr));
    let tagged = fs::read_to_string(s.join("name-tag-digest")).unwrap();
    assert_eq!(tagged, format!("{0}/app/one:1@{digest}\n{0}/app/two:latest@{digest}\n", reg.addr));

    // Pushing again finds every blob present and gives the same digest.
    let again = deliver(&image, &outputs(&[one.clone()]), &opts, &store).unwrap();
    assert_eq!(again.manifest_digest, delivered.manifest_digest);
}

#[test]
fn oci_format_output_unpacks_with_umoci() {
    if !needs_tools("oci_format_output_unpacks_with_umoci") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let PulledBase { reg, store, opts, base, .. } = pulled_base(s);
    let image = built_on(&base, &store);
    let dest = format!("{}/app/oci:v2", reg.addr);
    let mut out = outputs(&[dest.clone()]);
    out.image_format = ImageFormat::Oci;
    out.oci_layout_path = Some(s.join("layout"));
    let delivered = deliver(&image, &out, &opts, &store).unwrap();
    assert_eq!(delivered.manifest_media_type, "application/vnd.oci.image.manifest.v1+json");
    let raw = tools::run_ok(std::process::Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{dest}")));
    assert!(raw.contains("application/vnd.oci.image.manifest.v1+json"), "{raw}");
    let rootfs = tools::umoci_unpack(&s.join("layout"), "v2", &s.join("bundle"));
    assert_eq!(fs::read_to_string(rootfs.join("hello.txt")).unwrap(), "hello from strata\n");
    assert!(rootfs.join("bin/busybox").is_file());
}

fn one_line(e: &anyhow::Error) -> String {
    let msg = format!("{e:#}");
    assert_eq!(msg.lines().count(), 1, "error should be one line: {msg}");
    msg
}

#[test]
fn unknown_image_and_registry_down_fail_clearly() {
    if !needs_tools("unknown_image_and_registry_down_fail_clearly") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let store = BlobStore::new(scratch.path().join("store")).unwrap();
    let reg = Registry::start();
    let opts = RegistryOptions::default();
    let err = resolve_base(&format!("{}/no/such:1", reg.addr), &[], &opts, &store, &amd64()).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("no/such:1") && msg.contains("not found"), "{msg}");

    let down = format!("127.0.0.1:{}", free_port());
    let err = resolve_base(&format!("{down}/x:1"), &[], &opts, &store, &amd64()).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("cannot connect") && msg.contains(&down), "{msg}");
}

#[test]
fn blob_with_wrong_digest_is_rejected_and_not_stored() {
    if !needs_tools("blob_with_wrong_digest_is_rejected_and_not_stored") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let reg = Registry::start();
    let base_ref = fixtures::push_busybox(&reg.addr, "base/busybox", "1", s);
    let inspect = tools::skopeo_inspect(&format!("docker://{base_ref}"), TLS_OFF);
    let layer: Digest = inspect["Layers"][0].as_str().unwrap().parse().unwrap();
    let data = reg.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{}/data", &layer.hex()[..2], layer.hex()));
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let store = BlobStore::new(s.join("store")).unwrap();
    let err = resolve_base(&base_ref, &[], &RegistryOptions::default(), &store, &amd64()).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("digest") && msg.contains(layer.as_str()), "{msg}");
    assert!(!store.contains(&layer));
    assert_eq!(listing(store.dir()), vec!["sha256"], "no temporary files left in the store");
}

#[test]
fn failed_push_leaves_no_tag_and_no_outputs() {
    if !needs_tools("failed_push_leaves_no_tag_and_no_outputs") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let PulledBase { reg, store, opts, base, .. } = pulled_base(s);
    let image = built_on(&base, &store);
    let good = format!("{}/app/half:1", reg.addr);
    let down = format!("127.0.0.1:{}/app/x:1", free_port());
    let mut out = outputs(&[good.clone(), down.clone()]);
    out.tar_path = Some(s.join("out/image.tar"));
    out.digest_file = Some(s.join("out/digest"));
    fs::create_dir(s.join("out")).unwrap();
    let err = deliver(&image, &out, &opts, &store).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("cannot connect"), "{msg}");
    let status = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{good}"))
        .output()
        .unwrap();
    assert!(!status.status.success(), "the reachable destination must not be tagged");
    assert!(listing(&s.join("out")).is_empty(), "no tarball or digest file: {:?}", listing(&s.join("out")));
}

#[test]
fn mirrors_are_tried_first_and_fall_back_to_the_origin() {
    if !needs_tools("mirrors_are_tried_first_and_fall_back_to_the_origin") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let origin = Registry::start();
    let mirror = Registry::start();
    let base_ref = fixtures::push_busybox(&origin.addr, "base/busybox", "1", s);
    fixtures::push_busybox(&mirror.addr, "base/busybox", "1", s);
    let down = format!("127.0.0.1:{}", free_port());

    // A dead mirror falls back to the origin.
    let opts = RegistryOptions {
        registry_maps: vec![format!("{}={down}", origin.addr).parse::<RegistryMap>().unwrap()],
        ..Default::default()
    };
    let store = BlobStore::new(s.join("store1")).unwrap();
    resolve_base(&base_ref, &[], &opts, &store, &amd64()).unwrap();

    // A live mirror serves the image even when the origin is gone.
    let gone = format!("127.0.0.1:{}", free_port());
    let opts = RegistryOptions {
        registry_maps: vec![format!("{gone}={}", mirror.addr).parse::<RegistryMap>().unwrap()],
        ..Default::default()
    };
    let store = BlobStore::new(s.join("store2")).unwrap();
    let base = resolve_base(&format!("{gone}/base/busybox:1"), &[], &opts, &store, &amd64()).unwrap();
    assert_eq!(base.layers.len(), 1);
}

#[test]
fn large_layers_upload_in_chunks_and_pull_back() {
    if !needs_tools("large_layers_upload_in_chunks_and_pull_back") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let PulledBase { reg, store, opts, base, .. } = pulled_base(s);
    let mut image = built_on(&base, &store);
    // ~20 MiB that gzip cannot shrink: several upload chunks.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..20 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let big = make_layer(&store, &[("noise.bin", &noise)]);
    assert!(big.size > 16 << 20);
    image.layers.push(big.clone());
    let dest = format!("{}/app/big:1", reg.addr);
    deliver(&image, &outputs(&[dest.clone()]), &opts, &store).unwrap();
    let inspect = tools::skopeo_inspect(&format!("docker://{dest}"), TLS_OFF);
    assert_eq!(inspect["Layers"][2], big.digest.as_str());

    let fresh = BlobStore::new(s.join("fresh")).unwrap();
    let pulled = resolve_base(&dest, &[], &opts, &fresh, &amd64()).unwrap();
    let root = s.join("root");
    extract_image(&pulled, &fresh, &root, 0).unwrap();
    assert_eq!(fs::read(root.join("noise.bin")).unwrap(), noise);
}

#[test]
fn multi_platform_image_and_docker_image_context() {
    if !needs_tools("multi_platform_image_and_docker_image_context") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let reg = Registry::start();
    let layout = s.join("multi");
    fixtures::busybox_layout(&layout);
    add_multi_platform_index(&layout);
    let multi = format!("{}/base/multi:1", reg.addr);
    tools::skopeo_copy(&format!("oci:{}:multi", layout.display()), &format!("docker://{multi}"), &["--all", "--dest-tls-verify=false"]);
    let store = BlobStore::new(s.join("store")).unwrap();
    let opts = RegistryOptions::default();
    let arm64 = "linux/arm64".parse::<strata_builder::image::options::PlatformSpec>().unwrap().0;
    let base = resolve_base(&multi, &[], &opts, &store, &arm64).unwrap();
    assert_eq!(base.config.architecture, "arm64");

    // `--build-context base=docker-image://REF` makes `FROM base` pull REF.
    let ctx = vec![format!("base=docker-image://{multi}").parse().unwrap()];
    let base = resolve_base("base", &ctx, &opts, &store, &amd64()).unwrap();
    assert_eq!(base.config.architecture, "amd64");
    assert_eq!(base.registry_ref.unwrap().to_string(), multi);
}
