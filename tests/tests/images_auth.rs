//! Credentials from a docker config.json (found through $DOCKER_CONFIG)
//! against a registry with basic auth (htpasswd): right credentials pull and
//! push, wrong or missing ones fail with one clear line that never shows the
//! password. One test per file: it sets DOCKER_CONFIG for the process.

mod images_support;

use images_support::*;
use strata_builder::image::options::RegistryOptions;
use strata_builder::image::store::BlobStore;
use strata_builder::image::{deliver, resolve_base};
use strata_tests::{fixtures, tools};

fn write_config(dir: &std::path::Path, registry: &str, user: &str, password: &str) {
    fixtures::write_docker_config(dir, &format!("http://{registry}/v2/"), user, password);
}

#[test]
fn basic_auth_from_docker_config() {
    let Some((scratch, reg)) = busybox_registry("basic_auth_from_docker_config", Some(("alice", "s3cret-pw"))) else { return };
    let s = scratch.path();
    let base_ref = format!("{}/base/busybox:1", reg.addr);
    let docker_config = s.join("docker");
    use_docker_config(&docker_config);
    let opts = RegistryOptions::default();

    // No credentials: refused.
    let store = BlobStore::new(s.join("store0")).unwrap();
    let err = resolve_base(&base_ref, &[], &opts, &store, &amd64()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("authentication failed"), "{msg}");

    // Wrong password: refused, and the password is not shown.
    write_config(&docker_config, &reg.addr, "alice", "wrong-pw");
    let err = resolve_base(&base_ref, &[], &opts, &store, &amd64()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("authentication failed") && msg.contains(&reg.addr), "{msg}");
    assert!(!msg.contains("wrong-pw"), "the password leaked: {msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");

    // Right password: pull, then push a derived image.
    write_config(&docker_config, &reg.addr, "alice", "s3cret-pw");
    let store = BlobStore::new(s.join("store")).unwrap();
    let base = resolve_base(&base_ref, &[], &opts, &store, &amd64()).unwrap();
    let image = built_on(&base, &store);
    let dest = format!("{}/app/private:1", reg.addr);
    let delivered = deliver(&image, &outputs(&[dest.clone()]), &opts, &store).unwrap();
    let inspect = tools::skopeo_inspect(&format!("docker://{dest}"), &["--tls-verify=false", "--creds=alice:s3cret-pw"]);
    assert_eq!(inspect["Digest"], delivered.manifest_digest.as_str());
    // Credentials never reach the image.
    let config = tools::skopeo_config(&format!("docker://{dest}"), &["--tls-verify=false", "--creds=alice:s3cret-pw"]);
    assert!(!config.to_string().contains("s3cret"));
}
