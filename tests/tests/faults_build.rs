//! Registry faults seen by whole `strata` builds (through the fault proxy):
//! a base layer that arrives corrupted fails the build with one line naming
//! the blob, before anything is extracted or written; a flaky registry is
//! ridden out with `--image-download-retry` and `--push-retry`, the push
//! waiting out a 429's Retry-After.

mod build_support;

use std::time::Duration;

use build_support::*;
use strata_tests::faultproxy::{Fault, FaultProxy, Rule};
use strata_tests::registry::Registry;
use strata_tests::{fixtures, require, tools};

#[test]
fn builds_through_a_faulty_registry() {
    let t = "builds_through_a_faulty_registry";
    if !requirements(t) || !require::fuse(t) || !require::tool(t, "docker-registry") {
        return;
    }
    let s = Scratch::new();
    let reg = Registry::start();
    fixtures::push_busybox(&reg.addr, "base/busybox", "1", s.path());
    let proxy = FaultProxy::start(&reg.addr);
    let context = s.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {}/base/busybox:1\nRUN echo built > /built\n", proxy.addr),
    )
    .unwrap();
    let manifest =
        tools::skopeo_inspect(&format!("docker://{}/base/busybox:1", reg.addr), &["--tls-verify=false", "--raw"]);
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let work = s.work();
    let layout = s.path().join("layout");
    let build = |extra: &[&str]| {
        let mut a = args(&[
            "--context",
            context.to_str().unwrap(),
            "--insecure-registry",
            &proxy.addr,
            "--oci-layout-path",
            layout.to_str().unwrap(),
            "--kaniko-dir",
            work.to_str().unwrap(),
        ]);
        a.extend(args(extra));
        strata(&a, &context, &[])
    };

    // Corrupted base layer: one error naming it; nothing extracted, stored or written.
    proxy.add(Rule::new("GET", &format!("/blobs/{layer}$"), Fault::Corrupt));
    let out = build(&["--no-push", "--image-download-retry", "2"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("ERRO")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains(&layer) && errors[0].contains("digest"), "{}", errors[0]);
    assert!(!work.join("blobs/sha256").join(layer.trim_start_matches("sha256:")).exists(), "a corrupt blob was kept");
    assert_work_clean(&work, "");
    assert!(!layout.exists());

    // 503s on the pull, 429 (Retry-After: 1) and 500 on the push: retried, and the image is complete.
    proxy.reset();
    proxy.add(Rule::new("GET", r"/v2/base/busybox/(manifests|blobs)/", Fault::Status(503)).nth(&[1, 3]));
    // The base layer's existence check is limited: strata's probe for the header gets the second 429.
    let limited_blob = format!("/v2/app/flaky/blobs/{layer}$");
    proxy.add(Rule::new("HEAD", &limited_blob, Fault::TooManyRequests { retry_after: 1 }).first(2));
    proxy.add(Rule::new("*", r"/v2/app/flaky/blobs/uploads/", Fault::Status(500)).first(1));
    let dest = format!("{}/app/flaky:1", proxy.addr);
    let out = build(&["--destination", &dest, "--image-download-retry", "3", "--push-retry", "3"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Retry-After"), "the wait is logged:\n{log}");
    let heads = proxy.seen_matching("HEAD", &limited_blob);
    let limited = heads.iter().find(|h| h.status == 429).unwrap();
    let next = heads.iter().find(|h| h.path == limited.path && h.status != 429).unwrap();
    assert!(next.at - limited.at >= Duration::from_secs(1), "retried after {:?}", next.at - limited.at);
    let pulled = s.path().join("pulled");
    tools::skopeo_copy(
        &format!("docker://{}/app/flaky:1", reg.addr),
        &format!("oci:{}:x", pulled.display()),
        &["--src-tls-verify=false"],
    );
    let rootfs = unpack(&pulled, "x", &s.path().join("bundle"));
    assert_eq!(std::fs::read_to_string(rootfs.join("built")).unwrap(), "built\n");
    assert!(rootfs.join("bin/busybox").exists());
}
