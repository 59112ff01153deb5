//! The shared layer cache against a real registry (Debian's docker-registry on
//! loopback) and in an OCI layout, checked with skopeo; and the warmer.

mod cache_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cache_support::{chain, make_layer};
use strata_builder::cache::warm::{WarmArgs, warm};
use strata_builder::cache::{Cache, CacheOptions, HitSource, KeyInputs, Lookup};
use strata_builder::image::options::RegistryOptions;
use strata_builder::image::reference::ImageRef;
use strata_builder::image::Session;
use strata_builder::image::store::BlobStore;
use strata_tests::registry::Registry;
use strata_tests::{require, tools};

fn session() -> Arc<Session> {
    Arc::new(Session::new(&RegistryOptions::default()).unwrap())
}

/// A fresh registry, its cache repository `HOST/app/cache`, and a scratch
/// directory. None, the test skipped, without docker-registry or skopeo.
fn cache_registry(test: &str) -> Option<(Registry, String, tempfile::TempDir)> {
    if !require::tool(test, "docker-registry") || !require::tool(test, "skopeo") {
        return None;
    }
    let registry = Registry::start();
    let repo = format!("{}/app/cache", registry.addr);
    Some((registry, repo, tempfile::tempdir().unwrap()))
}

/// One build of `steps`, into `store`, that fills the cache `opts`.
fn fill(opts: &CacheOptions, steps: &[KeyInputs], store: &BlobStore) {
    let cache = Cache::open(opts, &[], session()).unwrap();
    build(&cache, steps, store);
    assert_eq!(cache.finish(), 0, "every background push succeeded");
}

/// A build against the cache: a miss makes and stores the step's layer; a hit
/// is left lazy (only its descriptor is known). Returns the outcomes.
fn build(cache: &Cache, steps: &[KeyInputs], store: &BlobStore) -> Vec<Lookup> {
    cache.prefetch(&steps.iter().map(|s| s.key()).collect::<Vec<_>>());
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = format!("stage 0 step {i}");
            let outcome = cache.lookup(&name, s, store);
            if let Lookup::Miss(_) = outcome {
                let layer = make_layer(store, &format!("step{i}"), s.instruction.as_bytes());
                cache.store(&name, s, &layer, store).unwrap();
            }
            outcome
        })
        .collect()
}

fn remote_hits(outcomes: &[Lookup]) -> Vec<bool> {
    outcomes.iter().map(|o| matches!(o, Lookup::Hit(h) if h.source == HitSource::Remote)).collect()
}

fn shared(repo: &str) -> CacheOptions {
    CacheOptions { cache: true, cache_repo: Some(repo.to_string()), ..CacheOptions::default() }
}

/// Cold build pushes every layer; a warm build (fresh machine, no local cache)
/// hits every step, downloads nothing until asked, and gets the same bytes.
fn cold_then_warm(opts: &CacheOptions, destinations: &[ImageRef], tmp: &Path) -> Vec<KeyInputs> {
    let steps = chain(5, "1");
    let store1 = BlobStore::new(tmp.join("build1")).unwrap();
    let cache = Cache::open(opts, destinations, session()).unwrap();
    let cold = build(&cache, &steps, &store1);
    assert!(cold.iter().all(|o| matches!(o, Lookup::Miss(_))));
    assert_eq!(cache.finish(), 0, "every background push succeeded");

    let store2 = BlobStore::new(tmp.join("build2")).unwrap();
    let cache = Cache::open(opts, destinations, session()).unwrap();
    let warm = build(&cache, &steps, &store2);
    assert_eq!(remote_hits(&warm), vec![true; 5]);
    for o in &warm {
        let Lookup::Hit(hit) = o else { unreachable!() };
        assert!(!store2.contains(&hit.layer.as_ref().unwrap().digest), "a hit is not downloaded until fetched");
        cache.fetch(hit, &store2).unwrap();
        store2.verify(&hit.layer.as_ref().unwrap().digest).unwrap();
        assert_eq!(store2.read(&hit.layer.as_ref().unwrap().digest).unwrap(), store1.read(&hit.layer.as_ref().unwrap().digest).unwrap());
    }
    assert_eq!(cache.finish(), 0);
    steps
}

#[test]
fn registry_cache_cold_then_warm() {
    let Some((_registry, repo, tmp)) = cache_registry("registry_cache_cold_then_warm") else { return };
    let steps = cold_then_warm(&shared(&repo), &[], tmp.path());

    // Each layer is a one-layer image tagged with its key, as in kaniko.
    let key = steps[2].key();
    let inspected = tools::skopeo_inspect(&format!("docker://{repo}:{key}"), &["--tls-verify=false"]);
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 1, "{inspected}");
}

#[test]
fn default_cache_repo_is_the_destination_repository_slash_cache() {
    let Some((registry, _, tmp)) = cache_registry("default_cache_repo_is_the_destination_repository_slash_cache") else { return };
    let dest = ImageRef::parse(&format!("{}/team/app:1.0", registry.addr)).unwrap();
    let opts = CacheOptions { cache: true, ..CacheOptions::default() };
    let steps = cold_then_warm(&opts, &[dest], tmp.path());
    let reference = format!("docker://{}/team/app/cache:{}", registry.addr, steps[0].key());
    tools::skopeo_inspect(&reference, &["--tls-verify=false"]);
}

#[test]
fn registry_entries_expire_after_the_ttl() {
    let Some((_registry, repo, tmp)) = cache_registry("registry_entries_expire_after_the_ttl") else { return };
    let steps = chain(2, "1");
    let store = BlobStore::new(tmp.path().join("b")).unwrap();
    fill(&shared(&repo), &steps, &store);

    std::thread::sleep(Duration::from_millis(1100));
    let opts = CacheOptions { cache_ttl: Duration::ZERO, ..shared(&repo) };
    let cache = Cache::open(&opts, &[], session()).unwrap();
    for o in build(&cache, &steps, &store) {
        let Lookup::Miss(why) = o else { panic!("an expired entry hit") };
        assert!(why.contains("expired"), "{why}");
    }
    // The misses pushed fresh entries, which a normal TTL finds again.
    assert_eq!(cache.finish(), 0);
    let cache = Cache::open(&shared(&repo), &[], session()).unwrap();
    assert_eq!(remote_hits(&build(&cache, &steps, &store)), vec![true, true]);
}

#[test]
fn corrupt_registry_blob_is_never_used() {
    let Some((registry, repo, tmp)) = cache_registry("corrupt_registry_blob_is_never_used") else { return };
    let steps = chain(1, "1");
    let store1 = BlobStore::new(tmp.path().join("b1")).unwrap();
    fill(&shared(&repo), &steps, &store1);

    let store2 = BlobStore::new(tmp.path().join("b2")).unwrap();
    let cache = Cache::open(&shared(&repo), &[], session()).unwrap();
    let Lookup::Hit(hit) = cache.lookup("step", &steps[0], &store2) else { panic!("expected a hit") };
    let hex = hit.layer.as_ref().unwrap().digest.hex();
    let data = registry.storage().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[12] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let err = cache.fetch(&hit, &store2).unwrap_err();
    assert!(format!("{err:#}").contains("digest mismatch"), "{err:#}");
    assert!(!store2.contains(&hit.layer.as_ref().unwrap().digest), "the corrupt blob was not stored");
}

#[test]
fn oci_layout_cache_on_a_shared_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("shared-cache");
    let opts = shared(&format!("oci:{}", layout.display()));
    let steps = cold_then_warm(&opts, &[], tmp.path());
    if require::tool("oci_layout_cache_on_a_shared_volume", "skopeo") {
        let inspected = tools::skopeo_inspect(&format!("oci:{}:{}", layout.display(), steps[4].key()), &[]);
        assert_eq!(inspected["Layers"].as_array().unwrap().len(), 1, "{inspected}");
    }

    // A damaged blob in the layout is detected on fetch and never stored.
    let store = BlobStore::new(tmp.path().join("b3")).unwrap();
    let cache = Cache::open(&opts, &[], session()).unwrap();
    let Lookup::Hit(hit) = cache.lookup("step", &steps[0], &store) else { panic!("expected a hit") };
    let blob = layout.join("blobs/sha256").join(hit.layer.as_ref().unwrap().digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[12] ^= 0xff;
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let err = cache.fetch(&hit, &store).unwrap_err();
    assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
    assert!(!store.contains(&hit.layer.as_ref().unwrap().digest));
}

#[test]
fn concurrent_builds_push_to_one_oci_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("shared-cache");
    let opts = shared(&format!("oci:{}", layout.display()));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (opts, dir) = (opts.clone(), tmp.path().join(format!("b{t}")));
            std::thread::spawn(move || {
                let store = BlobStore::new(dir).unwrap();
                let cache = Cache::open(&opts, &[], session()).unwrap();
                build(&cache, &chain(4, &t.to_string()), &store);
                cache.finish()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 0);
    }
    // No build's index.json update was lost.
    let store = BlobStore::new(tmp.path().join("after")).unwrap();
    let cache = Cache::open(&opts, &[], session()).unwrap();
    for t in 0..3 {
        assert_eq!(remote_hits(&build(&cache, &chain(4, &t.to_string()), &store)), vec![true; 4]);
    }
}

#[test]
fn warmer_fills_the_cache_dir_for_offline_builds() {
    let t = "warmer_fills_the_cache_dir_for_offline_builds";
    if !require::tool(t, "docker-registry") || !require::tool(t, "skopeo") || !require::tool(t, "busybox") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let registry = Registry::start();
    let reference = strata_tests::fixtures::push_busybox(&registry.addr, "library/busybox", "1", tmp.path());
    let args = WarmArgs {
        images: vec![reference.clone()],
        cache_dir: cache_dir.clone(),
        force: false,
        cache_ttl: Duration::from_secs(3600),
        registry: RegistryOptions::default(),
    };
    assert_eq!(warm(&args).unwrap(), 0);
    assert_eq!(warm(&args).unwrap(), 0, "a second run finds it cached");
    assert!(cache_support::leftovers(&cache_dir, ".warm-").is_empty(), "staging removed");
    drop(registry); // builds now have no registry

    let store = BlobStore::new(tmp.path().join("build")).unwrap();
    let opts = CacheOptions { cache_dir: Some(cache_dir.clone()), ..CacheOptions::default() };
    let cache = Cache::open(&opts, &[], session()).unwrap();
    let r = ImageRef::parse(&reference).unwrap();
    let image = cache.base_image(&r, &store).expect("the warmed image is in the cache");
    assert!(!image.layers.is_empty());
    for l in &image.layers {
        store.verify(&l.digest).unwrap();
    }
    // By digest too.
    let by_digest = r.with_digest(image.manifest_digest.clone().unwrap());
    assert!(cache.base_image(&by_digest, &store).is_some());
    assert!(cache.base_image(&ImageRef::parse("127.0.0.1:1/other:1").unwrap(), &store).is_none());
}

#[test]
fn a_hit_applied_to_the_root_gives_the_step_files() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("shared-cache");
    let opts = shared(&format!("oci:{}", layout.display()));
    let steps = chain(1, "1");
    let store = BlobStore::new(tmp.path().join("b1")).unwrap();
    fill(&opts, &steps, &store);

    let store = BlobStore::new(tmp.path().join("b2")).unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let cache = Cache::open(&opts, &[], session()).unwrap();
    let Lookup::Hit(hit) = cache.lookup("step", &steps[0], &store) else { panic!("expected a hit") };
    let paths = cache.apply(&hit, &store, &root).unwrap();
    assert_eq!(paths.into_iter().collect::<Vec<_>>(), vec![std::path::PathBuf::from("step0")]);
    assert_eq!(std::fs::read_to_string(root.join("step0")).unwrap(), steps[0].instruction);
}

/// A step that made no layer, stored as a zero-layer cache image in `spec`
/// (checked with skopeo at `skopeo_ref`): a fresh machine hits it with no
/// layer, and a changed input still says what changed.
fn empty_entry_round_trip(spec: &str, skopeo_ref: &dyn Fn(&str) -> String, skopeo_args: &[&str], tmp: &Path) {
    let mut steps = chain(2, "1");
    let store = BlobStore::new(tmp.join("cold")).unwrap();
    let cache = Cache::open(&shared(spec), &[], session()).unwrap();
    assert!(matches!(cache.lookup("stage 0 step 0", &steps[0], &store), Lookup::Miss(_)));
    cache.store_empty("stage 0 step 0", &steps[0], &store).unwrap();
    assert!(matches!(cache.lookup("stage 0 step 1", &steps[1], &store), Lookup::Miss(_)));
    let layer = make_layer(&store, "step1", b"one");
    cache.store("stage 0 step 1", &steps[1], &layer, &store).unwrap();
    assert_eq!(cache.finish(), 0, "every background push succeeded");

    // A valid image of zero layers, with the annotations of the other entries.
    if require::tool("empty_entry_round_trip", "skopeo") {
        let raw = tools::skopeo_inspect(&skopeo_ref(steps[0].key().as_str()), &[&["--raw"], skopeo_args].concat());
        assert_eq!(raw["layers"].as_array().map(|l| l.len()), Some(0), "{raw}");
        assert_eq!(raw["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{raw}");
        assert!(raw["annotations"]["dev.strata.cache.inputs"].is_string(), "{raw}");
        assert!(raw["annotations"]["dev.strata.cache.created"].is_string(), "{raw}");
        let image = tools::skopeo_inspect(&skopeo_ref(steps[0].key().as_str()), skopeo_args);
        assert_eq!(image["Layers"].as_array().map(|l| l.len()), Some(0), "{image}");
    }

    // A fresh machine: the empty entry hits with no layer, nothing to fetch;
    // the next step's layer is still found.
    let store2 = BlobStore::new(tmp.join("warm")).unwrap();
    let local_dir = tmp.join("local-cache");
    let opts = CacheOptions { cache_dir: Some(local_dir.clone()), ..shared(spec) };
    let cache = Cache::open(&opts, &[], session()).unwrap();
    let warm = build(&cache, &steps, &store2);
    assert_eq!(remote_hits(&warm), vec![true, true]);
    let Lookup::Hit(empty) = &warm[0] else { unreachable!() };
    assert!(empty.layer.is_none(), "{empty:?}");
    assert!(empty.descriptor().is_none());
    cache.fetch(empty, &store2).unwrap();
    let root = tmp.join("root");
    std::fs::create_dir(&root).unwrap();
    assert!(cache.apply(empty, &store2, &root).unwrap().is_empty(), "an empty hit writes nothing");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    let Lookup::Hit(full) = &warm[1] else { unreachable!() };
    assert_eq!(full.layer.as_ref().map(|l| &l.digest), Some(&layer.digest));
    drop(cache);

    // Fetching the shared empty hit kept it in --cache-dir too.
    let local_only = CacheOptions { cache: true, cache_dir: Some(local_dir), ..CacheOptions::default() };
    let cache = Cache::open(&local_only, &[], session()).unwrap();
    let Lookup::Hit(hit) = cache.lookup("stage 0 step 0", &steps[0], &store2) else { panic!("expected a local hit") };
    assert!(hit.source == HitSource::Local && hit.layer.is_none(), "{hit:?}");
    drop(cache);

    // A changed input: the shared cache alone explains the miss of the empty entry.
    steps[0].args.insert("VERSION".into(), "2".into());
    let cache = Cache::open(&shared(spec), &[], session()).unwrap();
    let outcome = cache.lookup("stage 0 step 0", &steps[0], &store2);
    let Lookup::Miss(why) = outcome else { panic!("expected a miss") };
    assert_eq!(why, "build arg VERSION changed");
}

#[test]
fn a_step_without_a_layer_is_a_zero_layer_registry_entry() {
    let Some((_registry, repo, tmp)) = cache_registry("a_step_without_a_layer_is_a_zero_layer_registry_entry") else { return };
    empty_entry_round_trip(&repo, &|tag| format!("docker://{repo}:{tag}"), &["--tls-verify=false"], tmp.path());
}

#[test]
fn a_step_without_a_layer_is_a_zero_layer_layout_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("shared-cache");
    let spec = format!("oci:{}", layout.display());
    empty_entry_round_trip(&spec, &|tag| format!("oci:{}:{tag}", layout.display()), &[], tmp.path());
}
