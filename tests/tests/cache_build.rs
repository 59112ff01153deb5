//! The layer cache end to end: the strata binary building against a real
//! registry (`--cache-repo`) and a shared `--cache-dir`, with the busybox base.

mod build_support;

use std::fs;
use std::path::{Path, PathBuf};

use build_support::*;
use strata_tests::faultproxy::FaultProxy;
use strata_tests::registry::Registry;

const DOCKERFILE: &str = "\
FROM base
RUN echo one > /one
ARG VERSION=1
COPY app.txt /app/app.txt
RUN echo \"v$VERSION\" > /version && cat /app/app.txt > /copied
RUN echo four > /four
COPY other.txt /other.txt
";

struct Project {
    scratch: Scratch,
    ctx: PathBuf,
}

impl Project {
    fn new() -> Project {
        Project::with(DOCKERFILE)
    }

    fn with(dockerfile: &str) -> Project {
        let scratch = Scratch::new();
        let ctx = scratch.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        fs::write(ctx.join("app.txt"), "app 1\n").unwrap();
        fs::write(ctx.join("other.txt"), "other\n").unwrap();
        Project { scratch, ctx }
    }

    /// Builds with the cache flags `extra`; returns (log and RUN output, image digest).
    fn build(&self, name: &str, extra: &[&str]) -> (String, String) {
        let digest_file = self.scratch.path().join(format!("{name}.digest"));
        let mut a = args(&[
            "build",
            "--context", self.ctx.to_str().unwrap(),
            "--build-context", &self.scratch.base_context(),
            "--no-push",
            "--tar-path", self.scratch.path().join(format!("{name}.tar")).to_str().unwrap(),
            "--digest-file", digest_file.to_str().unwrap(),
            "--reproducible", "--log-format", "text",
            "--cache=true", "--cache-copy-layers=true",
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        let out = strata(&a, self.scratch.path(), &[]);
        let log = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        assert!(out.status.success(), "strata {a:?} failed ({}):\n{log}", out.status);
        (log, fs::read_to_string(&digest_file).unwrap().trim().to_string())
    }
}

/// hit/miss per cached step, in order, from the log's `cache: … step N (…): hit|miss` lines.
fn outcomes(log: &str) -> Vec<&'static str> {
    log.lines()
        .filter(|l| l.contains("cache: stage"))
        .filter_map(|l| {
            if l.contains("): hit ") {
                Some("hit")
            } else if l.contains("): miss ") {
                Some("miss")
            } else {
                None
            }
        })
        .collect()
}

fn miss_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("): miss ")).collect()
}

#[test]
fn registry_cache_cold_warm_and_changes() {
    if !requirements("registry_cache_cold_warm_and_changes") || !strata_tests::require::tool("registry_cache_cold_warm_and_changes", "docker-registry") {
        return;
    }
    let registry = Registry::start();
    let p = Project::new();
    let repo = format!("{}/app/cache", registry.addr);
    let cache = ["--cache-repo", repo.as_str()];

    let (cold, cold_digest) = p.build("cold", &cache);
    assert_eq!(outcomes(&cold), vec!["miss"; 5], "{cold}");

    let (warm, warm_digest) = p.build("warm", &cache);
    assert_eq!(outcomes(&warm), vec!["hit"; 5], "{warm}");
    assert_eq!(warm_digest, cold_digest, "a fully cached rebuild gives the same image");

    // An undeclared build arg changes nothing.
    let (log, digest) = p.build("undeclared", &["--cache-repo", &repo, "--build-arg", "BUILD_DATE=2026-11-23"]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    assert_eq!(digest, cold_digest);

    // A declared one: the steps after its ARG miss.
    let (log, _) = p.build("arg", &["--cache-repo", &repo, "--build-arg", "VERSION=2"]);
    assert_eq!(outcomes(&log), vec!["hit", "miss", "miss", "miss", "miss"], "{log}");
    // The registry alone (no --cache-dir) says what changed.
    assert!(miss_lines(&log)[0].contains("build arg VERSION changed"), "{log}");

    // One context file changed: only the steps from its COPY on miss.
    fs::write(p.ctx.join("app.txt"), "app 2\n").unwrap();
    let (log, changed_digest) = p.build("changed", &cache);
    assert_eq!(outcomes(&log), vec!["hit", "miss", "miss", "miss", "miss"], "{log}");
    assert!(miss_lines(&log)[0].contains("source app.txt changed"), "{log}");
    assert_ne!(changed_digest, cold_digest);
    let (log, digest) = p.build("changed-again", &cache);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    assert_eq!(digest, changed_digest);

    // TTL: entries older than --cache-ttl are not used.
    // Cache entries record their creation to the second: wait past 1s for sure.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (log, digest) = p.build("expired", &["--cache-repo", &repo, "--cache-ttl", "1s"]);
    assert_eq!(outcomes(&log), vec!["miss"; 5], "{log}");
    assert!(miss_lines(&log).iter().all(|l| l.contains("expired")), "{log}");
    assert_eq!(digest, changed_digest, "rebuilt, reproducibly");
}

fn corrupt_one_blob(cache_dir: &Path) -> PathBuf {
    let blobs = cache_dir.join("blobs/sha256");
    let mut entries: Vec<_> = fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    let victim = entries.into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[20] ^= 0xff;
    fs::remove_file(&victim).unwrap();
    fs::write(&victim, &bytes).unwrap();
    victim
}

#[test]
fn cache_dir_corruption_and_concurrent_builds() {
    if !requirements("cache_dir_corruption_and_concurrent_builds") {
        return;
    }
    let p = Project::new();
    let cache_dir = p.scratch.path().join("cache");
    let dir = cache_dir.to_str().unwrap().to_string();
    let (cold, cold_digest) = p.build("cold", &["--cache-dir", &dir]);
    assert_eq!(outcomes(&cold), vec!["miss"; 5], "{cold}");

    corrupt_one_blob(&cache_dir);
    let (log, digest) = p.build("corrupt", &["--cache-dir", &dir]);
    assert_eq!(outcomes(&log).iter().filter(|o| **o == "miss").count(), 1, "exactly the corrupt step runs again:\n{log}");
    assert!(log.contains("corrupt"), "{log}");
    assert_eq!(digest, cold_digest, "the rebuilt layer is the same, reproducibly");
    let (log, _) = p.build("repaired", &["--cache-dir", &dir]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");

    // With --cache-dir, a miss says what changed.
    let (log, _) = p.build("arg", &["--cache-dir", &dir, "--build-arg", "VERSION=2"]);
    assert_eq!(outcomes(&log), vec!["hit", "miss", "miss", "miss", "miss"], "{log}");
    let misses = miss_lines(&log);
    assert!(misses[0].contains("build arg VERSION changed"), "{log}");
    let (log, _) = p.build("back", &["--cache-dir", &dir]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    fs::write(p.ctx.join("other.txt"), "other 2\n").unwrap();
    let (log, _) = p.build("other", &["--cache-dir", &dir]);
    assert_eq!(outcomes(&log), vec!["hit", "hit", "hit", "hit", "miss"], "{log}");
    assert!(miss_lines(&log)[0].contains("source other.txt changed"), "{log}");
    fs::write(p.ctx.join("other.txt"), "other\n").unwrap();

    // Two builds at once on one --cache-dir, one of them with a change.
    let other = Project::new();
    fs::write(other.ctx.join("app.txt"), "app 3\n").unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| p.build("concurrent-a", &["--cache-dir", &dir]));
        let b = s.spawn(|| other.build("concurrent-b", &["--cache-dir", &dir]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.1, cold_digest);
    assert_ne!(b.1, cold_digest);
    let (log, digest) = other.build("after", &["--cache-dir", &dir]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    assert_eq!(digest, b.1);
}

#[test]
fn warmed_base_image_builds_without_the_registry() {
    if !requirements("warmed_base_image_builds_without_the_registry") || !strata_tests::require::tool("warmed_base_image_builds_without_the_registry", "docker-registry") {
        return;
    }
    let s = Scratch::new();
    let registry = Registry::start();
    let base = strata_tests::fixtures::push_busybox(&registry.addr, "library/busybox", "1", s.path());
    let cache_dir = s.path().join("cache");
    let log = strata_ok(&args(&["warm", "--image", &base, "--cache-dir", cache_dir.to_str().unwrap()]), s.path(), &[]);
    assert!(log.contains("cached"), "{log}");
    drop(registry);

    let ctx = s.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), format!("FROM {base}\nRUN echo hi > /hi\n")).unwrap();
    let log = strata_ok(
        &args(&[
            "build", "--context", ctx.to_str().unwrap(), "--no-push",
            "--tar-path", s.path().join("out.tar").to_str().unwrap(),
            "--cache-dir", cache_dir.to_str().unwrap(),
        ]),
        s.path(),
        &[],
    );
    assert!(log.contains("found in"), "the base came from the cache dir:\n{log}");
}

/// The blob in an OCI layout whose (gzip) layer holds `name` at its root.
fn layer_blob_holding(layout: &Path, name: &str) -> PathBuf {
    let blobs = layout.join("blobs/sha256");
    for entry in fs::read_dir(&blobs).unwrap() {
        let path = entry.unwrap().path();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(&path).unwrap()));
        let Ok(entries) = archive.entries() else { continue };
        let found = entries
            .filter_map(Result::ok)
            .any(|e| e.path().map(|p| p.to_string_lossy().trim_start_matches("./") == name).unwrap_or(false));
        if found {
            return path;
        }
    }
    panic!("no layer in {} holds {name}", layout.display());
}

#[test]
fn cached_layers_are_fetched_only_when_needed() {
    let test = "cached_layers_are_fetched_only_when_needed";
    if !requirements(test) || !strata_tests::require::tool(test, "docker-registry") || !strata_tests::require::tool(test, "skopeo") || !strata_tests::require::tool(test, "umoci") {
        return;
    }
    let registry = Registry::start();
    let p = Project::new();
    let repo = format!("{}/app/cache", registry.addr);
    let (cold, _) = p.build("cold", &["--cache-repo", &repo]);
    assert_eq!(outcomes(&cold), vec!["miss"; 5], "{cold}");

    // A fully cached rebuild pushed to the cache's registry: the layers are
    // mounted from the cache repository, none is downloaded.
    let dest = format!("{}/app/image:warm", registry.addr);
    let a = args(&[
        "build",
        "--context", p.ctx.to_str().unwrap(),
        "--build-context", &p.scratch.base_context(),
        "--destination", &dest,
        "--reproducible", "--log-format", "text",
        "--cache=true", "--cache-copy-layers=true", "--cache-repo", &repo,
    ]);
    let log = strata_ok(&a, p.scratch.path(), &[]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    assert!(log.contains("5 cached layer(s) of stage 0 not downloaded"), "{log}");
    assert!(!log.contains("pulling sha256"), "no cached layer is downloaded:\n{log}");
    let layout = p.scratch.path().join("pulled");
    strata_tests::tools::skopeo_copy(&format!("docker://{dest}"), &format!("oci:{}:warm", layout.display()), &["--src-tls-verify=false"]);
    let rootfs = strata_tests::tools::umoci_unpack(&layout, "warm", &p.scratch.path().join("bundle"));
    assert_eq!(fs::read_to_string(rootfs.join("four")).unwrap(), "four\n");
    assert_eq!(fs::read_to_string(rootfs.join("copied")).unwrap(), "app 1\n");
    assert_eq!(fs::read_to_string(rootfs.join("other.txt")).unwrap(), "other\n");

    // A deferred hit that proves unusable when a later step needs the root:
    // the stage goes back to that step and runs it.
    let q = Project::new();
    let cache = q.scratch.path().join("oci-cache");
    let oci = format!("oci:{}", cache.display());
    let (cold, _) = q.build("cold", &["--cache-repo", &oci]);
    assert_eq!(outcomes(&cold), vec!["miss"; 5], "{cold}");
    let victim = layer_blob_holding(&cache, "four");
    let mut bytes = fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last / 2] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    fs::write(q.ctx.join("other.txt"), "other 2\n").unwrap();
    let (log, digest) = q.build("rewound", &["--cache-repo", &oci]);
    assert_eq!(outcomes(&log)[..5], ["hit", "hit", "hit", "hit", "miss"], "{log}");
    assert!(log.contains("the cached layer is unusable, running the step"), "{log}");
    let (clean, clean_digest) = q.build("clean", &["--cache-repo", &format!("oci:{}", q.scratch.path().join("fresh").display())]);
    assert_eq!(outcomes(&clean), vec!["miss"; 5], "{clean}");
    assert_eq!(digest, clean_digest, "the rewound build gives the image a clean build gives");
}

/// Unpacks the `--oci-layout-path` output `layout` and checks it holds the
/// base and every step's files (`other.txt` as given).
fn assert_complete(layout: &Path, bundle: &Path, other: &str) {
    let rootfs = unpack(layout, "latest", bundle);
    assert!(rootfs.join("bin/busybox").is_file(), "the base's files are in the image");
    assert_eq!(fs::read_to_string(rootfs.join("one")).unwrap(), "one\n");
    assert_eq!(fs::read_to_string(rootfs.join("version")).unwrap(), "v1\n");
    assert_eq!(fs::read_to_string(rootfs.join("four")).unwrap(), "four\n");
    assert_eq!(fs::read_to_string(rootfs.join("other.txt")).unwrap(), other);
}

#[test]
fn fully_cached_rebuild_does_not_extract_the_base() {
    if !requirements("fully_cached_rebuild_does_not_extract_the_base") {
        return;
    }
    let p = Project::new();
    let cache = format!("oci:{}", p.scratch.path().join("oci-cache").display());
    let (cold, cold_digest) = p.build("cold", &["--cache-repo", &cache]);
    assert_eq!(outcomes(&cold), vec!["miss"; 5], "{cold}");
    assert!(cold.contains("Extracted "), "{cold}");

    // Every step hits: the base is never extracted, yet the image is the same
    // and the local outputs hold all of it.
    let warm_layout = p.scratch.path().join("warm-layout");
    let (warm, warm_digest) = p.build("warm", &["--cache-repo", &cache, "--oci-layout-path", warm_layout.to_str().unwrap()]);
    assert_eq!(outcomes(&warm), vec!["hit"; 5], "{warm}");
    assert!(warm.contains("not extracted: no step of stage 0 needed the root"), "{warm}");
    assert!(!warm.contains("Extracted "), "{warm}");
    assert_eq!(warm_digest, cold_digest, "a fully cached rebuild gives the same image");
    assert_complete(&warm_layout, &p.scratch.path().join("warm-bundle"), "other\n");
    let archive = |name: &str| format!("docker-archive:{}", p.scratch.path().join(format!("{name}.tar")).display());
    let warm_tar = strata_tests::tools::skopeo_inspect(&archive("warm"), &[]);
    let cold_tar = strata_tests::tools::skopeo_inspect(&archive("cold"), &[]);
    assert_eq!(warm_tar["Layers"], cold_tar["Layers"], "the --tar-path archive holds every layer");

    // The last step misses: the base is extracted, then the deferred hits
    // applied, and the step runs on the whole root.
    fs::write(p.ctx.join("other.txt"), "other 2\n").unwrap();
    let miss_layout = p.scratch.path().join("miss-layout");
    let (log, digest) = p.build("miss", &["--cache-repo", &cache, "--oci-layout-path", miss_layout.to_str().unwrap()]);
    assert_eq!(outcomes(&log), ["hit", "hit", "hit", "hit", "miss"], "{log}");
    assert!(log.contains("Extracted "), "{log}");
    assert!(!log.contains("not extracted"), "{log}");
    assert_complete(&miss_layout, &p.scratch.path().join("miss-bundle"), "other 2\n");
    let fresh = format!("oci:{}", p.scratch.path().join("fresh").display());
    let (clean, clean_digest) = p.build("clean", &["--cache-repo", &fresh]);
    assert_eq!(outcomes(&clean), vec!["miss"; 5], "{clean}");
    assert_eq!(digest, clean_digest, "the partly cached build gives the image a cold build gives");
}

/// busybox pushed to a fresh registry as `lib/busybox:1`, behind a fault
/// proxy that records requests; with a counter of the downloads of its one
/// layer through the proxy.
fn proxied_busybox(p: &Project) -> (Registry, FaultProxy, impl Fn(&FaultProxy) -> usize) {
    let registry = Registry::start();
    strata_tests::fixtures::push_busybox(&registry.addr, "lib/busybox", "1", p.scratch.path());
    let proxy = FaultProxy::start(&registry.addr);
    let manifest = strata_tests::tools::skopeo_inspect(&format!("docker://{}/lib/busybox:1", registry.addr), &["--tls-verify=false", "--raw"]);
    let base_layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let downloads = move |proxy: &FaultProxy| proxy.seen_matching("GET", &format!("/blobs/{base_layer}$")).len();
    (registry, proxy, downloads)
}

#[test]
fn fully_cached_rebuild_does_not_download_the_base() {
    let test = "fully_cached_rebuild_does_not_download_the_base";
    if !requirements(test) || !strata_tests::require::tool(test, "docker-registry") {
        return;
    }
    let p = Project::new();
    let (registry, proxy, base_downloads) = proxied_busybox(&p);
    fs::write(p.ctx.join("Dockerfile"), DOCKERFILE.replace("FROM base", &format!("FROM {}/lib/busybox:1", proxy.addr))).unwrap();
    let base_downloads = || base_downloads(&proxy);
    let repo = format!("{}/app/cache", proxy.addr);
    let build = |name: &str, extra: &[&str]| {
        let digest_file = p.scratch.path().join(format!("{name}.digest"));
        let mut a = args(&[
            "build",
            "--context", p.ctx.to_str().unwrap(),
            "--insecure-registry", &proxy.addr,
            "--digest-file", digest_file.to_str().unwrap(),
            "--reproducible", "--log-format", "text",
            "--cache=true", "--cache-copy-layers=true", "--cache-repo", &repo,
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        let log = strata_ok(&a, p.scratch.path(), &[]);
        (log, fs::read_to_string(&digest_file).unwrap().trim().to_string())
    };

    let cold_dest = format!("{}/app/image:cold", proxy.addr);
    let (cold, cold_digest) = build("cold", &["--destination", &cold_dest]);
    assert_eq!(outcomes(&cold), vec!["miss"; 5], "{cold}");
    assert_eq!(base_downloads(), 1, "{cold}");

    // Pushed to the base's registry: the base layer is mounted, never downloaded.
    proxy.reset();
    let dest = format!("{}/app/image:warm", proxy.addr);
    let (warm, warm_digest) = build("warm", &["--destination", &dest]);
    assert_eq!(outcomes(&warm), vec!["hit"; 5], "{warm}");
    assert!(warm.contains("layer(s) not downloaded)"), "{warm}");
    assert!(warm.contains("layer(s) mounted into the destination(s)"), "{warm}");
    assert_eq!(base_downloads(), 0, "the base layer was downloaded:\n{warm}");
    assert_eq!(warm_digest, cold_digest, "a fully cached rebuild gives the same image");
    let pulled = p.scratch.path().join("pulled");
    strata_tests::tools::skopeo_copy(&format!("docker://{}/app/image:warm", registry.addr), &format!("oci:{}:latest", pulled.display()), &["--src-tls-verify=false"]);
    assert_complete(&pulled, &p.scratch.path().join("pulled-bundle"), "other\n");

    // No output: nothing to download.
    proxy.reset();
    let (log, _) = build("none", &["--no-push"]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    assert_eq!(base_downloads(), 0, "the base layer was downloaded:\n{log}");

    // A local output needs the bytes: the base layer is downloaded for it.
    proxy.reset();
    let layout = p.scratch.path().join("layout");
    let tar = p.scratch.path().join("image.tar");
    let (log, digest) = build("local", &["--no-push", "--oci-layout-path", layout.to_str().unwrap(), "--tar-path", tar.to_str().unwrap()]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    assert_eq!(base_downloads(), 1, "{log}");
    assert_eq!(digest, cold_digest);
    assert_complete(&layout, &p.scratch.path().join("local-bundle"), "other\n");
    let archive = strata_tests::tools::skopeo_inspect(&format!("docker-archive:{}", tar.display()), &[]);
    assert_eq!(archive["Layers"].as_array().map(|l| l.len()), Some(6), "{archive}");

    // One step misses: the base is downloaded and extracted, the image as a cold build's.
    proxy.reset();
    fs::write(p.ctx.join("other.txt"), "other 2\n").unwrap();
    let miss_layout = p.scratch.path().join("miss-layout");
    let (log, _) = build("miss", &["--no-push", "--oci-layout-path", miss_layout.to_str().unwrap()]);
    assert_eq!(outcomes(&log), ["hit", "hit", "hit", "hit", "miss"], "{log}");
    assert!(log.contains("Extracted "), "{log}");
    assert_eq!(base_downloads(), 1, "{log}");
    assert_complete(&miss_layout, &p.scratch.path().join("miss-bundle"), "other 2\n");
}

#[test]
fn docker_image_context_base_is_downloaded_only_when_needed() {
    let test = "docker_image_context_base_is_downloaded_only_when_needed";
    if !requirements(test) || !strata_tests::require::tool(test, "docker-registry") {
        return;
    }
    let p = Project::new();
    let (registry, proxy, base_downloads) = proxied_busybox(&p);
    let base_downloads = || base_downloads(&proxy);
    // `FROM base`, with base a registry image given as a build context.
    let context = format!("base=docker-image://{}/lib/busybox:1", proxy.addr);
    let repo = format!("{}/app/cache", proxy.addr);
    let build = |extra: &[&str]| {
        let mut a = args(&[
            "build",
            "--context", p.ctx.to_str().unwrap(),
            "--build-context", &context,
            "--insecure-registry", &proxy.addr,
            "--reproducible", "--log-format", "text",
            "--cache=true", "--cache-copy-layers=true", "--cache-repo", &repo,
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        strata_ok(&a, p.scratch.path(), &[])
    };

    let cold = build(&["--destination", &format!("{}/app/context:cold", proxy.addr)]);
    assert_eq!(outcomes(&cold), vec!["miss"; 5], "{cold}");
    assert_eq!(base_downloads(), 1, "{cold}");

    // A fully cached rebuild pushed to the base's registry: the base layer is
    // mounted, never downloaded, and the pushed image is complete.
    proxy.reset();
    let warm = build(&["--destination", &format!("{}/app/context:warm", proxy.addr)]);
    assert_eq!(outcomes(&warm), vec!["hit"; 5], "{warm}");
    assert!(warm.contains("layer(s) not downloaded)"), "{warm}");
    assert_eq!(base_downloads(), 0, "the base layer was downloaded:\n{warm}");
    let pulled = p.scratch.path().join("pulled");
    strata_tests::tools::skopeo_copy(&format!("docker://{}/app/context:warm", registry.addr), &format!("oci:{}:latest", pulled.display()), &["--src-tls-verify=false"]);
    assert_complete(&pulled, &p.scratch.path().join("pulled-bundle"), "other\n");

    // A local output needs the bytes: the base layer is downloaded for it.
    proxy.reset();
    let layout = p.scratch.path().join("layout");
    let log = build(&["--no-push", "--oci-layout-path", layout.to_str().unwrap()]);
    assert_eq!(outcomes(&log), vec!["hit"; 5], "{log}");
    assert_eq!(base_downloads(), 1, "{log}");
    assert_complete(&layout, &p.scratch.path().join("local-bundle"), "other\n");
}

/// A RUN that changes nothing (its output, `ran-2`, shows whether it ran)
/// between steps that do.
const EMPTY_RUN_DOCKERFILE: &str = "\
FROM base
RUN echo one > /one
RUN echo hi > /dev/null; echo ran-$((1+1))
COPY other.txt /other.txt
RUN echo four > /four
";

/// A cold build, then fully cached rebuilds with `cache` (flags), then a
/// rebuild whose COPY misses: the RUN that changed nothing is cached like
/// the others, never runs again, and needs no base.
fn empty_run_is_cached(p: &Project, cache: &[&str], fresh: &[&str]) {
    let (cold, cold_digest) = p.build("cold", cache);
    assert_eq!(outcomes(&cold), vec!["miss"; 4], "{cold}");
    assert!(cold.contains("ran-2"), "{cold}");
    assert!(cold.contains("no changes, no layer"), "{cold}");

    let (warm, warm_digest) = p.build("warm", cache);
    assert_eq!(outcomes(&warm), vec!["hit"; 4], "{warm}");
    assert!(!warm.contains("ran-2"), "the RUN that changed nothing ran again:\n{warm}");
    assert_eq!(warm.matches("done in").count(), warm.matches("(cached)").count(), "every step is cached:\n{warm}");
    assert!(warm.contains("not extracted: no step of stage 0 needed the root"), "{warm}");
    assert!(!warm.contains("Extracted "), "{warm}");
    assert_eq!(warm_digest, cold_digest, "a fully cached rebuild gives the same image");
    let tar = format!("docker-archive:{}", p.scratch.path().join("warm.tar").display());
    let config = strata_tests::tools::skopeo_config(&tar, &[]);
    let history = config["history"].as_array().unwrap();
    let empty_run = history.iter().find(|h| h["created_by"].as_str().is_some_and(|c| c.contains("ran-"))).unwrap();
    assert_eq!(empty_run["empty_layer"], true, "{config}");
    let image = strata_tests::tools::skopeo_inspect(&tar, &[]);
    assert_eq!(image["Layers"].as_array().map(|l| l.len()), Some(4), "the base and three steps' layers: {image}");

    // A later step misses: the root is built from the base and the hits,
    // the empty RUN still does not run, and the image is a cold build's.
    fs::write(p.ctx.join("other.txt"), "other 2\n").unwrap();
    let (log, digest) = p.build("miss", cache);
    assert_eq!(outcomes(&log), ["hit", "hit", "miss", "miss"], "{log}");
    assert!(!log.contains("ran-2"), "{log}");
    assert!(log.contains("Extracted "), "{log}");
    let (clean, clean_digest) = p.build("clean", fresh);
    assert_eq!(outcomes(&clean), vec!["miss"; 4], "{clean}");
    assert!(clean.contains("ran-2"), "{clean}");
    assert_eq!(digest, clean_digest, "the partly cached build gives the image a cold build gives");
}

#[test]
fn run_without_changes_is_cached_in_the_cache_dir() {
    if !requirements("run_without_changes_is_cached_in_the_cache_dir") {
        return;
    }
    let p = Project::with(EMPTY_RUN_DOCKERFILE);
    let dir = p.scratch.path().join("cache").display().to_string();
    let fresh = p.scratch.path().join("fresh").display().to_string();
    empty_run_is_cached(&p, &["--cache-dir", &dir], &["--cache-dir", &fresh]);
}

#[test]
fn run_without_changes_is_cached_in_the_registry() {
    let test = "run_without_changes_is_cached_in_the_registry";
    if !requirements(test) || !strata_tests::require::tool(test, "docker-registry") {
        return;
    }
    let registry = Registry::start();
    let p = Project::with(EMPTY_RUN_DOCKERFILE);
    let repo = format!("{}/app/cache", registry.addr);
    let fresh = format!("{}/fresh/cache", registry.addr);
    empty_run_is_cached(&p, &["--cache-repo", &repo], &["--cache-repo", &fresh]);
}
