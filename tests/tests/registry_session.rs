//! One registry session per build: a build from a base behind a bearer-token
//! registry (as Docker Hub, GitLab, GHCR) that pushes to the same registry
//! with `--cache=true` pings `/v2/` once and asks the token service once per
//! (repository, scope) it needs, however many parts of the build (base
//! resolution, layer downloads, cache look-ups and pushes, delivery) talk to
//! the registry. (`oci-client` pings `/v2/` before each token request, to
//! read the registry's challenge: one ping per token.)

mod build_support;

use std::collections::BTreeMap;
use std::path::Path;

use build_support::*;
use strata_tests::faultproxy::FaultProxy;
use strata_tests::registry::Registry;
use strata_tests::{fixtures, require, tools};

/// How many times each token scope was asked for, and how many `/v2/` pings.
fn traffic(proxy: &FaultProxy) -> (BTreeMap<String, usize>, usize) {
    let mut scopes = BTreeMap::new();
    for t in proxy.seen_matching("GET", "^/token") {
        let query = t.path.split_once('?').map_or("", |(_, q)| q);
        let scope = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(|s| s.replace("%3A", ":").replace("%2C", ",").replace("%2F", "/"))
            .collect::<Vec<_>>()
            .join(" ");
        *scopes.entry(scope).or_insert(0) += 1;
    }
    (scopes, proxy.seen_matching("GET", "^/v2/?$").len())
}

fn once_each(scopes: &[&str]) -> BTreeMap<String, usize> {
    scopes.iter().map(|s| (s.to_string(), 1)).collect()
}

fn build(context: &Path, work: &Path, dest: &str) -> String {
    let a = args(&[
        "--context",
        context.to_str().unwrap(),
        "--destination",
        dest,
        "--cache=true",
        "--kaniko-dir",
        work.to_str().unwrap(),
    ]);
    let log = strata_ok(&a, context, &[]);
    assert_work_clean(work, &log);
    log
}

#[test]
fn a_build_uses_one_registry_session() {
    let t = "a_build_uses_one_registry_session";
    if !(require::root(t) && require::tool(t, "docker-registry") && require::tool(t, "skopeo")) {
        return;
    }
    let s = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    fixtures::push_busybox(&reg.addr, "base/busybox", "1", s.path());
    let proxy = FaultProxy::start_with_tokens(&reg.addr, None);
    let context = s.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {}/base/busybox:1\nRUN echo ran > /ran.txt\n", proxy.addr),
    )
    .unwrap();
    let dest = format!("{}/app/session:1", proxy.addr);
    let work = s.path().join("work");

    // A cold build: the RUN misses, so the base's layers are downloaded.
    build(&context, &work, &dest);
    let (scopes, pings) = traffic(&proxy);
    let cold = [
        // The base's manifest and config, then its layers when the RUN needs the root.
        "repository:base/busybox:pull",
        // The RUN step's cache look-up, and the explanation of its miss.
        "repository:app/session/cache:pull",
        // The background push of the RUN's layer to the cache: its uploads and tag.
        "repository:app/session/cache:pull,push",
        // Delivery: the HEAD before each blob upload (oci-client's pull scope) …
        "repository:app/session:pull",
        // … the uploads, the mounts from the base's repository and the tag.
        "repository:app/session:pull,push",
    ];
    assert_eq!(scopes, once_each(&cold), "cold build");
    // oci-client reads the registry's challenge from `/v2/` before each token request.
    assert_eq!(pings, cold.len(), "cold build: {scopes:#?}");

    // A fully cached rebuild: the RUN hits, so the base's layers and the
    // cached layer are mounted into the destination, never downloaded, and
    // nothing is pushed to the cache.
    proxy.reset();
    build(&context, &work, &dest);
    let (scopes, pings) = traffic(&proxy);
    let cached = [
        // The base's manifest and config (its layers are mounted).
        "repository:base/busybox:pull",
        // The RUN step's cache look-up: a hit.
        "repository:app/session/cache:pull",
        // Delivery: the HEAD before each blob, then the mounts and the tag.
        "repository:app/session:pull",
        "repository:app/session:pull,push",
    ];
    assert_eq!(scopes, once_each(&cached), "cached build");
    assert_eq!(pings, cached.len(), "cached build: {scopes:#?}");

    let pushed = tools::skopeo_inspect(&format!("docker://{}/app/session:1", reg.addr), &["--tls-verify=false"]);
    assert_eq!(pushed["Layers"].as_array().unwrap().len(), 2, "{pushed}");
}
