//! Registry faults, injected by a proxy in front of the real registry
//! (strata_tests::faultproxy): error statuses, 429 with Retry-After, resets
//! and truncation mid-blob, slow blobs, corrupted blobs. Pulls and pushes retry; a push
//! resends only what is missing and writes the tag last, so a failed push
//! leaves the tag as it was; every pulled blob is verified before it is kept.

mod images_support;

use std::time::Duration;

use images_support::*;
use strata_builder::image::options::RegistryOptions;
use strata_builder::image::store::BlobStore;
use strata_builder::image::{BaseImage, BuiltImage, deliver, resolve_base};
use strata_tests::faultproxy::{Fault, FaultProxy, Rule};
use strata_tests::tools;

const MANIFEST: &str = r"^/v2/base/busybox/manifests/1$";
const BLOBS: &str = r"^/v2/base/busybox/blobs/sha256:";
const UPLOADS: &str = r"/blobs/uploads/";

fn pull(proxy: &FaultProxy, store: &BlobStore, retries: u32) -> anyhow::Result<BaseImage> {
    let opts = RegistryOptions { image_download_retry: retries, ..Default::default() };
    resolve_base(&format!("{}/base/busybox:1", proxy.addr), &[], &opts, store, &amd64())
}

fn push_opts(retries: u32) -> RegistryOptions {
    RegistryOptions { push_retry: retries, ..Default::default() }
}

/// The manifest digest under `reference` (`host:port/repo:tag`), read by skopeo; None if absent.
fn remote_digest(reference: &str) -> Option<String> {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &format!("docker://{reference}")])
        .output()
        .unwrap();
    out.status.success().then(|| {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Digest"].as_str().unwrap().to_string()
    })
}

fn one_line(err: &anyhow::Error) -> String {
    let msg = format!("{err:#}");
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    msg
}

#[test]
fn server_errors_are_retried_on_pull_and_push() {
    let Some((scratch, reg)) = busybox_registry("server_errors_are_retried_on_pull_and_push", None) else { return };
    for code in [500, 502, 503] {
        let proxy = FaultProxy::start(&reg.addr);
        let store = BlobStore::new(scratch.path().join(format!("store-{code}"))).unwrap();
        proxy.add(Rule::new("GET", MANIFEST, Fault::Status(code)).first(1));
        proxy.add(Rule::new("GET", BLOBS, Fault::Status(code)).first(1));
        let err = pull(&proxy, &store, 0).unwrap_err();
        assert!(one_line(&err).contains(&format!("HTTP {code}")), "{err:#}");

        proxy.reset();
        proxy.add(Rule::new("GET", MANIFEST, Fault::Status(code)).first(1));
        proxy.add(Rule::new("GET", BLOBS, Fault::Status(code)).first(1));
        let base = pull(&proxy, &store, 2).unwrap();
        assert_eq!(proxy.seen_matching("GET", MANIFEST).len(), 2, "{:#?}", proxy.seen());
        for l in &base.layers {
            store.verify(&l.digest).unwrap();
        }

        proxy.reset();
        let dest = format!("{}/app/retried:{code}", proxy.addr);
        proxy.add(Rule::new("*", UPLOADS, Fault::Status(code)).first(1));
        proxy.add(Rule::new("PUT", "/manifests/", Fault::Status(code)).first(1));
        let image = built_on(&base, &store);
        let delivered = deliver(&image, &outputs(&[dest.clone()]), &push_opts(3), &store).unwrap();
        assert_eq!(proxy.seen_matching("PUT", "/manifests/").len(), 2);
        let pushed = format!("{}/app/retried:{code}", reg.addr);
        assert_eq!(remote_digest(&pushed).as_deref(), Some(delivered.manifest_digest.as_str()));
    }
}

#[test]
fn retry_after_is_honoured() {
    let Some((scratch, reg)) = busybox_registry("retry_after_is_honoured", None) else { return };
    let proxy = FaultProxy::start(&reg.addr);
    let store = BlobStore::new(scratch.path().join("store")).unwrap();

    // Without retries: one clear line naming the status.
    proxy.add(Rule::new("*", MANIFEST, Fault::TooManyRequests { retry_after: 2 }).first(1));
    let err = pull(&proxy, &store, 0).unwrap_err();
    assert!(one_line(&err).contains("HTTP 429"), "{err:#}");

    // The GET and strata's probe for the header both get 429; the retry waits 2 s.
    proxy.reset();
    proxy.add(Rule::new("*", MANIFEST, Fault::TooManyRequests { retry_after: 2 }).first(2));
    pull(&proxy, &store, 3).unwrap();
    let gets = proxy.seen_matching("GET", MANIFEST);
    assert_eq!(gets.len(), 2, "{:#?}", proxy.seen());
    assert_eq!(gets[0].status, 429);
    assert_eq!(gets[1].status, 200);
    let gap = gets[1].at - gets[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}, before Retry-After's 2 s");
    assert!(gap < Duration::from_secs(10), "waited {gap:?}");
    println!("429 with Retry-After: 2 → retried after {gap:?}");

    // Blobs on push too: the new layer's existence check is limited.
    let base = pull(&proxy, &store, 0).unwrap();
    let image = built_on(&base, &store);
    let blob = format!("/v2/app/limited/blobs/{}$", image.layers.last().unwrap().digest);
    proxy.reset();
    proxy.add(Rule::new("HEAD", &blob, Fault::TooManyRequests { retry_after: 1 }).first(2));
    deliver(&image, &outputs(&[format!("{}/app/limited:1", proxy.addr)]), &push_opts(3), &store).unwrap();
    let heads = proxy.seen_matching("HEAD", &blob);
    let first = heads.iter().find(|s| s.status == 429).expect("a 429");
    let retry = heads.iter().find(|s| s.path == first.path && s.status != 429 && s.at > first.at).expect("a retry");
    assert!(retry.at - first.at >= Duration::from_secs(1), "retried after {:?}", retry.at - first.at);
}

#[test]
fn resets_and_truncated_blobs_are_retried() {
    let Some((scratch, reg)) = busybox_registry("resets_and_truncated_blobs_are_retried", None) else { return };
    let proxy = FaultProxy::start(&reg.addr);
    // Slow is not an error: the pull just takes longer.
    let store = BlobStore::new(scratch.path().join("slow")).unwrap();
    proxy.add(Rule::new("GET", BLOBS, Fault::Slow { bytes_per_sec: 4 << 20 }));
    for l in &pull(&proxy, &store, 0).unwrap().layers {
        store.verify(&l.digest).unwrap();
    }
    for (name, fault) in [("reset", Fault::ResetMidBody), ("truncate", Fault::Truncate)] {
        proxy.reset();
        let store = BlobStore::new(scratch.path().join(name)).unwrap();
        proxy.add(Rule::new("GET", BLOBS, fault.clone()));
        let err = pull(&proxy, &store, 0).unwrap_err();
        let msg = one_line(&err);
        assert!(msg.contains("blob sha256:"), "{name}: {msg}");
        assert!(
            std::fs::read_dir(store.dir().join("sha256")).unwrap().count() <= 2,
            "{name}: only manifest/config kept"
        );

        proxy.reset();
        proxy.add(Rule::new("GET", BLOBS, fault).nth(&[1, 3]));
        let base = pull(&proxy, &store, 3).unwrap();
        for l in &base.layers {
            store.verify(&l.digest).unwrap();
        }
        let faulted = proxy.seen().iter().filter(|s| s.fault.is_some()).count();
        assert!(faulted >= 1, "{name}: the fault was injected: {:#?}", proxy.seen());
        // No partial download is left in the store.
        let incoming = std::fs::read_dir(store.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".incoming"))
            .count();
        assert_eq!(incoming, 0, "{name}: temporary blobs left");
    }
}

#[test]
fn corrupted_blob_is_rejected_and_never_kept() {
    let Some((scratch, reg)) = busybox_registry("corrupted_blob_is_rejected_and_never_kept", None) else { return };
    let proxy = FaultProxy::start(&reg.addr);
    let clean = BlobStore::new(scratch.path().join("clean")).unwrap();
    let layer = pull(&proxy, &clean, 0).unwrap().layers[0].digest.clone();

    let store = BlobStore::new(scratch.path().join("store")).unwrap();
    proxy.reset();
    proxy.add(Rule::new("GET", &format!("/blobs/{layer}$"), Fault::Corrupt));
    let err = pull(&proxy, &store, 2).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("digest") && msg.contains(layer.as_str()), "{msg}");
    assert!(!store.contains(&layer), "a corrupt blob was stored");
}

#[test]
fn push_resumes_and_does_not_resend_present_layers() {
    let Some((scratch, reg)) = busybox_registry("push_resumes_and_does_not_resend_present_layers", None) else { return };
    let proxy = FaultProxy::start(&reg.addr);
    let store = BlobStore::new(scratch.path().join("store")).unwrap();
    let base = pull(&proxy, &store, 0).unwrap();
    let dest = format!("{}/app/resume:1", proxy.addr);
    // The base's layers already in the destination repository.
    let v1 = BuiltImage::from_base(&base).unwrap();
    deliver(&v1, &outputs(&[dest.clone()]), &push_opts(0), &store).unwrap();

    proxy.reset();
    // The new layer's upload fails in the middle twice (the connection reset
    // after the registry took the request, then a 500), the manifest PUT once.
    proxy.add(Rule::new("*", r"/v2/app/resume/blobs/uploads/.+", Fault::ResetMidBody).nth(&[1]));
    proxy.add(Rule::new("*", r"/v2/app/resume/blobs/uploads/.+", Fault::Status(500)).nth(&[1]));
    proxy.add(Rule::new("PUT", "/manifests/", Fault::Status(503)).first(1));
    let v2 = built_on(&base, &store);
    let delivered = deliver(&v2, &outputs(&[dest.clone()]), &push_opts(4), &store).unwrap();

    let seen = proxy.seen();
    for l in &base.layers {
        let hex = l.digest.hex();
        let sent = seen.iter().filter(|s| s.method != "HEAD" && s.path.contains(hex)).count();
        assert_eq!(sent, 0, "base layer {} was sent again: {seen:#?}", l.digest);
    }
    let new_layer = v2.layers.last().unwrap().digest.hex().to_string();
    let committed: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.method == "PUT" && s.path.contains("/blobs/uploads/") && s.status == 201)
        .map(|(i, _)| i)
        .collect();
    assert!(seen.iter().any(|s| s.method == "PUT" && s.path.contains(&new_layer) && s.status == 201), "{seen:#?}");
    let manifest_ok =
        seen.iter().position(|s| s.method == "PUT" && s.path.contains("/manifests/") && s.status == 201).unwrap();
    assert!(committed.iter().all(|&i| i < manifest_ok), "the manifest was put before every blob was: {seen:#?}");
    assert_eq!(
        remote_digest(&format!("{}/app/resume:1", reg.addr)).as_deref(),
        Some(delivered.manifest_digest.as_str())
    );
    let bundle = scratch.path().join("bundle");
    let layout = scratch.path().join("pulled");
    tools::skopeo_copy(
        &format!("docker://{}/app/resume:1", reg.addr),
        &format!("oci:{}:x", layout.display()),
        &["--src-tls-verify=false"],
    );
    let rootfs = tools::umoci_unpack(&layout, "x", &bundle);
    assert_eq!(std::fs::read_to_string(rootfs.join("hello.txt")).unwrap(), "hello from strata\n");
}

#[test]
fn failed_push_leaves_the_tag_as_it_was() {
    let Some((scratch, reg)) = busybox_registry("failed_push_leaves_the_tag_as_it_was", None) else { return };
    let proxy = FaultProxy::start(&reg.addr);
    let store = BlobStore::new(scratch.path().join("store")).unwrap();
    let base = pull(&proxy, &store, 0).unwrap();
    let old = deliver(
        &BuiltImage::from_base(&base).unwrap(),
        &outputs(&[format!("{}/app/stable:1", proxy.addr)]),
        &push_opts(0),
        &store,
    )
    .unwrap();

    for fault in [Fault::Status(500), Fault::Status(503)] {
        proxy.reset();
        proxy.add(Rule::new("*", UPLOADS, fault.clone()));
        let image = built_on(&base, &store);
        let dests = [format!("{}/app/stable:1", proxy.addr), format!("{}/app/fresh:1", proxy.addr)];
        let err = deliver(&image, &outputs(&dests), &push_opts(1), &store).unwrap_err();
        let msg = one_line(&err);
        assert!(msg.contains("pushing to"), "{fault:?}: {msg}");
        assert!(proxy.seen_matching("PUT", "/manifests/").is_empty(), "{fault:?}: a manifest was put");
        assert_eq!(remote_digest(&format!("{}/app/stable:1", reg.addr)), Some(old.manifest_digest.to_string()));
        assert_eq!(remote_digest(&format!("{}/app/fresh:1", reg.addr)), None, "{fault:?}: a half image was tagged");
    }
}
