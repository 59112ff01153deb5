//! A 429 behind a registry that wants bearer tokens (as Docker Hub, GHCR,
//! Harbor, GitLab): strata's probe for the `Retry-After` header carries the
//! session's token, so whole builds pulling from and pushing to such a
//! registry wait as asked, in both forms of the header (delta-seconds and
//! HTTP-date), with the anonymous token flow and with a token service that
//! wants credentials; a token that expires before the probe is renewed.
//! Tokens and passwords never appear in strata's output.

mod build_support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use build_support::*;
use strata_tests::faultproxy::{Fault, FaultProxy, Rule, Seen};
use strata_tests::registry::Registry;
use strata_tests::{fixtures, require, tools};

const BASE_MANIFEST: &str = r"^/v2/base/busybox/manifests/1$";

fn requirements(test: &str) -> bool {
    require::root(test) && require::tool(test, "docker-registry") && require::tool(test, "skopeo")
}

/// A context whose Dockerfile starts `FROM` the base behind `proxy` and adds a file.
fn context(dir: &Path, proxy: &FaultProxy) -> std::path::PathBuf {
    let context = dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "hello through tokens\n").unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {}/base/busybox:1\nCOPY hello.txt /hello.txt\n", proxy.addr),
    )
    .unwrap();
    context
}

/// Builds `context` and pushes to `dest`, with retries and debug logs.
fn build(context: &Path, work: &Path, dest: &str, env: &[(&str, &str)]) -> Output {
    let a = args(&[
        "--context",
        context.to_str().unwrap(),
        "--destination",
        dest,
        "--image-download-retry",
        "3",
        "--push-retry",
        "3",
        "--verbosity",
        "debug",
        "--kaniko-dir",
        work.to_str().unwrap(),
    ]);
    strata(&a, context, env)
}

/// The base layer's digest, read by skopeo from the registry itself.
/// A registry holding busybox as `base/busybox:1`, behind the proxy's token
/// front (`/token` wants `creds` when given); with the scratch directory.
fn token_registry(creds: Option<(&str, &str)>) -> (tempfile::TempDir, Registry, FaultProxy) {
    let s = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    fixtures::push_busybox(&reg.addr, "base/busybox", "1", s.path());
    let proxy = FaultProxy::start_with_tokens(&reg.addr, creds);
    (s, reg, proxy)
}

fn base_layer(reg: &Registry) -> String {
    let manifest =
        tools::skopeo_inspect(&format!("docker://{}/base/busybox:1", reg.addr), &["--tls-verify=false", "--raw"]);
    manifest["layers"][0]["digest"].as_str().unwrap().to_string()
}

/// Checks one limited request (method on path `re`): answered 429, strata's
/// probe for the header (a HEAD) carried a bearer token and got the 429 too,
/// nothing on that path was answered 401, and the request was repeated at
/// least `secs` after the first 429 (and answered as the registry does).
fn waited_as_asked(proxy: &FaultProxy, method: &str, re: &str, secs: u64) {
    let seen: Vec<Seen> = proxy.seen_matching("*", re);
    let all = format!("{seen:#?}");
    let first = seen.iter().find(|s| s.method == method && s.status == 429).unwrap_or_else(|| panic!("a 429: {all}"));
    assert!(seen.iter().all(|s| s.status != 401), "a request was refused its token: {all}");
    let probe = seen
        .iter()
        .find(|s| s.method == "HEAD" && s.at > first.at && s.fault.is_some())
        .unwrap_or_else(|| panic!("strata's probe: {all}"));
    assert_eq!(probe.auth_scheme.as_deref(), Some("Bearer"), "{all}");
    assert_eq!(probe.status, 429, "{all}");
    let retry = seen
        .iter()
        .find(|s| s.method == method && s.at > probe.at && s.fault.is_none())
        .unwrap_or_else(|| panic!("a retry: {all}"));
    let gap = retry.at - first.at;
    assert!(gap >= Duration::from_secs(secs), "{method} {re}: retried after {gap:?}, asked {secs} s: {all}");
    assert!(gap < Duration::from_secs(secs + 10), "{method} {re}: waited {gap:?}");
}

/// The waits strata logged (`… asks to wait Ns (Retry-After)`), in seconds.
fn logged_waits(log: &str) -> Vec<u64> {
    let re = regex::Regex::new(r"asks to wait (\d+)s \(Retry-After\)").unwrap();
    re.captures_iter(log).map(|c| c[1].parse().unwrap()).collect()
}

/// Nothing secret in strata's output, and the pushed image is complete.
fn check_output(out: &Output, secrets: &[String], reg: &Registry, repo: &str) -> String {
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}\n{stdout}");
    assert!(!secrets.is_empty());
    for secret in secrets {
        assert!(!log.contains(secret.as_str()) && !stdout.contains(secret.as_str()), "a secret was printed:\n{log}");
    }
    let pushed = tools::skopeo_inspect(&format!("docker://{}/{repo}", reg.addr), &["--tls-verify=false"]);
    assert_eq!(pushed["Layers"].as_array().unwrap().len(), 2, "{pushed}");
    log
}

#[test]
fn anonymous_token_registry_retry_after_is_honoured() {
    let t = "anonymous_token_registry_retry_after_is_honoured";
    if !requirements(t) {
        return;
    }
    let (s, reg, proxy) = token_registry(None);
    let context = context(s.path(), &proxy);
    let work = s.path().join("work");
    let layer = base_layer(&reg);

    // Pull: the manifest asks for 2 s, the base layer until a date ~2 s ahead.
    // Push: the base layer's existence check until a date, the tag's PUT 2 s.
    // Each rule's second match is strata's probe, which gets the 429 too.
    let pulled_blob = format!("^/v2/base/busybox/blobs/{layer}$");
    let pushed_blob = format!("^/v2/app/tokens/blobs/{layer}$");
    let tag = r"^/v2/app/tokens/manifests/1$";
    proxy.add(Rule::new("*", BASE_MANIFEST, Fault::TooManyRequests { retry_after: 2 }).first(2));
    proxy.add(Rule::new("*", &pulled_blob, Fault::TooManyRequestsUntil { secs: 2 }).first(2));
    proxy.add(Rule::new("HEAD", &pushed_blob, Fault::TooManyRequestsUntil { secs: 2 }).first(2));
    proxy.add(Rule::new("*", tag, Fault::TooManyRequests { retry_after: 2 }).first(2));
    let out = build(&context, &work, &format!("{}/app/tokens:1", proxy.addr), &[]);

    let log = check_output(&out, &proxy.issued_tokens(), &reg, "app/tokens:1");
    waited_as_asked(&proxy, "GET", BASE_MANIFEST, 2);
    waited_as_asked(&proxy, "GET", &pulled_blob, 2);
    waited_as_asked(&proxy, "HEAD", &pushed_blob, 2);
    waited_as_asked(&proxy, "PUT", tag, 2);
    let waits = logged_waits(&log);
    assert_eq!(waits.len(), 4, "{log}");
    assert!(waits.iter().all(|w| (2..=3).contains(w)), "{waits:?}\n{log}");
    assert_work_clean(&work, &log);
}

#[test]
fn private_token_registry_retry_after_is_honoured() {
    let t = "private_token_registry_retry_after_is_honoured";
    if !requirements(t) {
        return;
    }
    // The token service wants alice's password; the registry behind it is open.
    let (s, reg, proxy) = token_registry(Some(("alice", "s3cret-pw")));
    let docker_config = s.path().join("docker");
    let auth = fixtures::write_docker_config(&docker_config, &proxy.addr, "alice", "s3cret-pw");
    let context = context(s.path(), &proxy);
    let work = s.path().join("work");

    let tag = r"^/v2/app/private/manifests/1$";
    proxy.add(Rule::new("*", BASE_MANIFEST, Fault::TooManyRequestsUntil { secs: 2 }).first(2));
    proxy.add(Rule::new("*", tag, Fault::TooManyRequests { retry_after: 2 }).first(2));
    let out = build(
        &context,
        &work,
        &format!("{}/app/private:1", proxy.addr),
        &[("DOCKER_CONFIG", docker_config.to_str().unwrap())],
    );

    let mut secrets = proxy.issued_tokens();
    secrets.extend(["s3cret-pw".to_string(), auth]);
    let log = check_output(&out, &secrets, &reg, "app/private:1");
    waited_as_asked(&proxy, "GET", BASE_MANIFEST, 2);
    waited_as_asked(&proxy, "PUT", tag, 2);
    assert_eq!(logged_waits(&log).len(), 2, "{log}");
    // Every token was issued to alice.
    let token_requests = proxy.seen_matching("GET", "^/token");
    assert!(!token_requests.is_empty());
    for r in &token_requests {
        assert_eq!((r.status, r.auth_scheme.as_deref()), (200, Some("Basic")), "{token_requests:#?}");
    }
}

#[test]
fn expired_token_is_renewed_for_the_probe() {
    let t = "expired_token_is_renewed_for_the_probe";
    if !requirements(t) {
        return;
    }
    let (s, reg, proxy) = token_registry(None);
    let context = context(s.path(), &proxy);
    let work = s.path().join("work");

    // The manifest GET is limited twice. The first probe gets strata a token
    // of its own; the second 429 revokes every token (as if they expired), so
    // the second probe is refused, and strata authenticates again and probes
    // with the new token.
    proxy.add(Rule::new("GET", BASE_MANIFEST, Fault::TooManyRequests { retry_after: 1 }).nth(&[1]));
    proxy.add(Rule::new("GET", BASE_MANIFEST, Fault::TooManyRequests { retry_after: 2 }).first(1).revoking_tokens());
    proxy.add(Rule::new("HEAD", BASE_MANIFEST, Fault::TooManyRequests { retry_after: 1 }).first(1));
    proxy.add(Rule::new("HEAD", BASE_MANIFEST, Fault::TooManyRequests { retry_after: 2 }).first(1));
    let out = build(&context, &work, &format!("{}/app/renewed:1", proxy.addr), &[]);

    let log = check_output(&out, &proxy.issued_tokens(), &reg, "app/renewed:1");
    let seen = proxy.seen_matching("*", BASE_MANIFEST);
    let answers: Vec<(&str, u16)> = seen.iter().map(|s| (s.method.as_str(), s.status)).collect();
    let expected = [("GET", 429), ("HEAD", 429), ("GET", 429), ("HEAD", 401), ("HEAD", 429), ("GET", 200)];
    assert_eq!(answers, expected, "{seen:#?}");
    assert!(seen.iter().all(|s| s.auth_scheme.as_deref() == Some("Bearer")), "{seen:#?}");
    assert!(seen[2].at - seen[0].at >= Duration::from_secs(1), "{seen:#?}");
    assert!(seen[5].at - seen[2].at >= Duration::from_secs(2), "{seen:#?}");
    assert_eq!(logged_waits(&log), [1, 2], "{log}");
    assert!(!log.contains("refused our authorization"), "only the probe was refused:\n{log}");
}
