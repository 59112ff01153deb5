//! An authorization that expires in the middle of a push or of a layer
//! download (the registry answers 401 to a request that carried it): strata
//! authenticates again and
//! goes on, without counting it as a retry; a second 401 in a row fails with
//! one clear line. One test per file: it sets DOCKER_CONFIG for the process.

mod images_support;

use images_support::*;
use strata_builder::image::options::RegistryOptions;
use strata_builder::image::store::BlobStore;
use strata_builder::image::{BuiltImage, deliver, resolve_base};
use strata_tests::faultproxy::{Fault, FaultProxy, Rule};
use strata_tests::{fixtures, tools};

#[test]
fn authorization_expiring_mid_push_is_renewed() {
    let Some((scratch, reg)) = busybox_registry("authorization_expiring_mid_push_is_renewed", Some(("alice", "s3cret-pw"))) else { return };
    let s = scratch.path();
    let proxy = FaultProxy::start(&reg.addr);
    let docker_config = s.join("docker");
    fixtures::write_docker_config(&docker_config, &proxy.addr, "alice", "s3cret-pw");
    use_docker_config(&docker_config);

    let store = BlobStore::new(s.join("store")).unwrap();
    let opts = RegistryOptions::default();
    let base = resolve_base(&format!("{}/base/busybox:1", proxy.addr), &[], &opts, &store, &amd64()).unwrap();

    // One 401 on an upload and one on the manifest PUT, with no retries allowed.
    proxy.reset();
    proxy.add(Rule::new("*", r"/v2/app/renewed/blobs/uploads/", Fault::Unauthorized).first(1));
    proxy.add(Rule::new("PUT", r"/v2/app/renewed/manifests/", Fault::Unauthorized).first(1));
    let image = built_on(&base, &store);
    let delivered = deliver(&image, &outputs(&[format!("{}/app/renewed:1", proxy.addr)]), &opts, &store).unwrap();
    let puts = proxy.seen_matching("PUT", "/manifests/");
    assert_eq!(puts.iter().map(|s| s.status).collect::<Vec<_>>(), [401, 201], "{:#?}", proxy.seen());
    let out = tools::skopeo_inspect(
        &format!("docker://{}/app/renewed:1", reg.addr),
        &["--tls-verify=false", "--creds=alice:s3cret-pw"],
    );
    assert_eq!(out["Digest"].as_str(), Some(delivered.manifest_digest.as_str()));

    // Refused twice in a row: one clear line, no password, no tag.
    proxy.reset();
    proxy.add(Rule::new("PUT", r"/manifests/", Fault::Unauthorized));
    let err = deliver(
        &BuiltImage::from_base(&base).unwrap(),
        &outputs(&[format!("{}/app/refused:1", proxy.addr)]),
        &opts,
        &store,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("authentication failed") && !msg.contains("s3cret-pw"), "{msg}");
    assert_eq!(proxy.seen_matching("PUT", "/manifests/").len(), 2);

    // Expiring during a pull, on a layer download, with no retries allowed: renewed too.
    proxy.reset();
    proxy.add(Rule::new("GET", r"/v2/base/busybox/blobs/", Fault::Unauthorized).first(1));
    let fresh = BlobStore::new(s.join("fresh-store")).unwrap();
    let no_retries = RegistryOptions { image_download_retry: 0, ..RegistryOptions::default() };
    let pulled = resolve_base(&format!("{}/base/busybox:1", proxy.addr), &[], &no_retries, &fresh, &amd64()).unwrap();
    assert_eq!(pulled.layers.len(), base.layers.len());
    let gets = proxy.seen_matching("GET", "/blobs/");
    assert_eq!(gets.first().map(|s| s.status), Some(401), "{:#?}", proxy.seen());
    assert!(gets.iter().skip(1).all(|s| s.status == 200), "{:#?}", proxy.seen());
}
