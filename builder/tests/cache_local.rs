//! The local cache (`--cache-dir`) and the cache façade over it, on real
//! files: hits across builds, explanations of misses, TTL expiry, corrupt
//! blobs detected and rebuilt, concurrent builds sharing one directory, and
//! COPY source hashing with `.dockerignore`.

mod cache_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cache_support::{chain, leftovers, make_layer};
use strata_builder::cache::keys::hash_sources;
use strata_builder::cache::{Cache, CacheOptions, HitSource, LocalCache, LocalLookup, Lookup, StepKind};
use strata_builder::exec::copy::{Excluder, NothingExcluded};
use strata_builder::image::options::RegistryOptions;
use strata_builder::image::Session;
use strata_builder::image::store::BlobStore;

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn session() -> Arc<Session> {
    Arc::new(Session::new(&RegistryOptions::default()).unwrap())
}

fn local_opts(dir: &Path) -> CacheOptions {
    CacheOptions { cache: true, cache_dir: Some(dir.to_path_buf()), ..CacheOptions::default() }
}

/// Runs a "build" of `steps` against the cache: each step looks up, and on a
/// miss makes its layer and stores it. Returns the hit/miss outcome per step
/// and the layer digests.
fn build(cache: &Cache, steps: &[strata_builder::cache::KeyInputs], store: &BlobStore) -> (Vec<Lookup>, Vec<String>) {
    let keys: Vec<_> = steps.iter().map(|s| s.key()).collect();
    cache.prefetch(&keys);
    let mut outcomes = Vec::new();
    let mut digests = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let name = format!("stage 0 step {i}");
        let outcome = cache.lookup(&name, s, store);
        let digest = match &outcome {
            Lookup::Hit(hit) => {
                cache.fetch(hit, store).unwrap();
                assert!(store.contains(&hit.layer.as_ref().unwrap().digest));
                hit.layer.as_ref().unwrap().digest.to_string()
            }
            Lookup::Miss(_) => {
                let layer = make_layer(store, &format!("step{i}"), s.instruction.as_bytes());
                cache.store(&name, s, &layer, store).unwrap();
                layer.digest.to_string()
            }
        };
        outcomes.push(outcome);
        digests.push(digest);
    }
    (outcomes, digests)
}

fn hits(outcomes: &[Lookup]) -> Vec<bool> {
    outcomes.iter().map(|o| matches!(o, Lookup::Hit(_))).collect()
}

fn miss_reason(o: &Lookup) -> &str {
    match o {
        Lookup::Miss(why) => why,
        Lookup::Hit(_) => panic!("expected a miss"),
    }
}

#[test]
fn warm_rebuild_hits_every_step_with_the_same_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let steps = chain(5, "1");

    let store1 = BlobStore::new(tmp.path().join("build1")).unwrap();
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    let (cold, layers1) = build(&cache, &steps, &store1);
    assert_eq!(hits(&cold), vec![false; 5]);
    assert!(miss_reason(&cold[0]).contains("no earlier build"), "{:?}", cold[0]);
    assert_eq!(cache.finish(), 0);

    let store2 = BlobStore::new(tmp.path().join("build2")).unwrap();
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    let (warm, layers2) = build(&cache, &steps, &store2);
    assert_eq!(hits(&warm), vec![true; 5]);
    assert!(warm.iter().all(|o| matches!(o, Lookup::Hit(h) if h.source == HitSource::Local)));
    assert_eq!(layers1, layers2);
    cache.finish();
}

#[test]
fn a_changed_build_arg_misses_from_its_first_user_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let store = BlobStore::new(tmp.path().join("blobs")).unwrap();
    let mut steps = chain(4, "1");
    build(&Cache::open(&local_opts(&cache_dir), &[], session()).unwrap(), &steps, &store);

    // Step 2 is the first to see the changed arg; the later ones chain on it.
    steps[2].args.insert("VERSION".into(), "2".into());
    for i in 3..4 {
        steps[i].parent = Some(steps[i - 1].key());
    }
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    let (outcomes, _) = build(&cache, &steps, &store);
    assert_eq!(hits(&outcomes), vec![true, true, false, false]);
    assert_eq!(miss_reason(&outcomes[2]), "build arg VERSION changed");
    assert_eq!(miss_reason(&outcomes[3]), "an earlier step changed");
}

#[test]
fn copy_layers_follow_cache_copy_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::new(tmp.path().join("blobs")).unwrap();
    let mut step = chain(1, "1").remove(0);
    step.kind = StepKind::Copy;
    let off = Cache::open(&local_opts(&tmp.path().join("c")), &[], session()).unwrap();
    let layer = make_layer(&store, "f", b"x");
    off.store("copy", &step, &layer, &store).unwrap();
    assert!(miss_reason(&off.lookup("copy", &step, &store)).contains("--cache-copy-layers"));
    let on = Cache::open(
        &CacheOptions { cache_copy_layers: true, ..local_opts(&tmp.path().join("c")) },
        &[],
        session(),
    )
    .unwrap();
    on.store("copy", &step, &layer, &store).unwrap();
    assert!(matches!(on.lookup("copy", &step, &store), Lookup::Hit(_)));
}

#[test]
fn expired_entries_miss_and_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let store = BlobStore::new(tmp.path().join("blobs")).unwrap();
    let steps = chain(2, "1");
    build(&Cache::open(&local_opts(&cache_dir), &[], session()).unwrap(), &steps, &store);

    // Age step 0's record by three weeks, beyond the default two-week TTL.
    let record_path = cache_dir.join("layers").join(format!("{}.json", steps[0].key()));
    let mut record: serde_json::Value = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    let created = record["created"].as_u64().unwrap();
    record["created"] = (created - 3 * WEEK.as_secs()).into();
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();

    // Opening the directory alone prunes the expired entry and its blob.
    let blob_count = || fs::read_dir(cache_dir.join("blobs/sha256")).unwrap().count();
    assert_eq!(blob_count(), 2);
    let local = LocalCache::open(&cache_dir, 2 * WEEK).unwrap();
    assert!(!record_path.exists());
    assert_eq!(blob_count(), 1);
    drop(local);

    // A still-open cache sees an entry expire without a prune: ttl 0.
    let local = LocalCache::open(&cache_dir, Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let out = local.lookup(&steps[1].key(), &store).unwrap();
    assert!(matches!(out, LocalLookup::Expired { .. }), "{out:?}");
}

#[test]
fn corrupt_blob_is_detected_removed_and_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let steps = chain(2, "1");
    let store1 = BlobStore::new(tmp.path().join("b1")).unwrap();
    let (_, layers) = build(&Cache::open(&local_opts(&cache_dir), &[], session()).unwrap(), &steps, &store1);

    // Flip bytes in the cached blob of step 1 (a copy, not the build's store).
    let hex = layers[1].strip_prefix("sha256:").unwrap();
    let blob = cache_dir.join("blobs/sha256").join(hex);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[10] ^= 0xff;
    fs::remove_file(&blob).unwrap(); // the build store may share its inode
    fs::write(&blob, &bytes).unwrap();

    let store2 = BlobStore::new(tmp.path().join("b2")).unwrap();
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    let (outcomes, rebuilt) = build(&cache, &steps, &store2);
    assert_eq!(hits(&outcomes), vec![true, false]);
    assert!(miss_reason(&outcomes[1]).contains("corrupt"), "{:?}", outcomes[1]);
    // The corrupt blob never reached the build, and the step's new layer replaced it.
    assert_eq!(rebuilt[1], layers[1]);
    store2.verify(&rebuilt[1].parse().unwrap()).unwrap();
    assert_eq!(fs::read(&blob).unwrap().len(), bytes.len());
    LocalCache::open(&cache_dir, WEEK).unwrap().blobs().verify(&rebuilt[1].parse().unwrap()).unwrap();

    let store3 = BlobStore::new(tmp.path().join("b3")).unwrap();
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    assert_eq!(hits(&build(&cache, &steps, &store3).0), vec![true, true]);
}

#[test]
fn concurrent_builds_share_one_cache_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let steps = chain(6, "1");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (cache_dir, steps, dir) = (cache_dir.clone(), steps.clone(), tmp.path().join(format!("build{t}")));
            std::thread::spawn(move || {
                let store = BlobStore::new(dir).unwrap();
                let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
                let (_, layers) = build(&cache, &steps, &store);
                cache.finish();
                layers
            })
        })
        .collect();
    let results: Vec<Vec<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]), "every build made the same layers");

    let store = BlobStore::new(tmp.path().join("after")).unwrap();
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    assert_eq!(hits(&build(&cache, &steps, &store).0), vec![true; 6]);
    assert!(leftovers(&cache_dir, ".incoming-").is_empty());
    assert!(leftovers(&cache_dir, ".strata-").is_empty());
}

#[test]
fn a_second_open_does_not_prune_under_a_running_build() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let store = BlobStore::new(tmp.path().join("b")).unwrap();
    let running = LocalCache::open(&cache_dir, WEEK).unwrap();
    let steps = chain(1, "1");
    let layer = make_layer(&store, "f", b"x");
    running
        .put_layer(&steps[0].key(), &steps[0].digests(), &(&layer).into(), &store)
        .unwrap();
    // A zero TTL would prune everything, but the running build holds the lock.
    let second = LocalCache::open(&cache_dir, Duration::ZERO).unwrap();
    drop(second);
    assert!(cache_dir.join("blobs/sha256").join(layer.digest.hex()).exists());
    drop(running);
    let third = LocalCache::open(&cache_dir, Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    drop(third);
}

struct IgnoreLogs;
impl Excluder for IgnoreLogs {
    fn excluded(&self, rel: &Path) -> bool {
        rel.extension().is_some_and(|e| e == "log")
    }
}

fn write(root: &Path, rel: &str, content: &str) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    p
}

#[test]
fn copy_sources_hash_content_mode_names_and_links_after_dockerignore() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path();
    write(ctx, "app/app.py", "print(1)\n");
    write(ctx, "app/lib/util.py", "x = 1\n");
    write(ctx, "app/debug.log", "noise\n");
    std::os::unix::fs::symlink("app.py", ctx.join("app/link")).unwrap();
    let sources = [PathBuf::from("app")];
    let hash = || hash_sources(ctx, &sources, &IgnoreLogs).unwrap();
    let before = hash();
    assert_eq!(
        before.keys().cloned().collect::<Vec<_>>(),
        vec!["app", "app/app.py", "app/lib", "app/lib/util.py", "app/link"]
    );
    assert_eq!(hash(), before, "deterministic");

    // An ignored file changes nothing; neither does an mtime.
    write(ctx, "app/debug.log", "more noise\n");
    let f = ctx.join("app/app.py");
    fs::File::options().write(true).open(&f).unwrap().set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(hash(), before);

    let changed = |after: &BTreeMap<String, String>| -> Vec<String> {
        let mut out: Vec<String> = after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect();
        out.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
        out
    };
    write(ctx, "app/app.py", "print(2)\n");
    assert_eq!(changed(&hash()), vec!["app/app.py"]);
    write(ctx, "app/app.py", "print(1)\n");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(changed(&hash()), vec!["app/app.py"]);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(ctx.join("app/lib/util.py"), ctx.join("app/lib/utils.py")).unwrap();
    assert_eq!(changed(&hash()), vec!["app/lib/utils.py", "app/lib/util.py"]);
    fs::rename(ctx.join("app/lib/utils.py"), ctx.join("app/lib/util.py")).unwrap();
    fs::remove_file(ctx.join("app/link")).unwrap();
    std::os::unix::fs::symlink("lib", ctx.join("app/link")).unwrap();
    assert_eq!(changed(&hash()), vec!["app/link"]);

    // Sources may not leave the context.
    assert!(hash_sources(ctx, &[PathBuf::from("../etc")], &NothingExcluded).is_err());
    assert!(hash_sources(ctx, &[PathBuf::from("missing")], &NothingExcluded).is_err());
}

#[test]
fn a_changed_context_file_misses_from_its_copy_on() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx, "app.py", "print(1)\n");
    write(&ctx, "README", "hi\n");
    let opts = CacheOptions { cache_copy_layers: true, ..local_opts(&tmp.path().join("cache")) };
    // RUN, COPY . /app, RUN, RUN: the chain the executor builds.
    let steps = |ctx: &Path| {
        let mut out = chain(4, "1");
        out[1].kind = StepKind::Copy;
        out[1].instruction = "COPY . /app".into();
        out[1].sources = hash_sources(ctx, &[PathBuf::from(".")], &NothingExcluded).unwrap();
        for i in 1..4 {
            out[i].parent = Some(out[i - 1].key());
        }
        out
    };
    let store = BlobStore::new(tmp.path().join("b")).unwrap();
    let (cold, _) = build(&Cache::open(&opts, &[], session()).unwrap(), &steps(&ctx), &store);
    assert_eq!(hits(&cold), vec![false; 4]);

    let (warm, _) = build(&Cache::open(&opts, &[], session()).unwrap(), &steps(&ctx), &store);
    assert_eq!(hits(&warm), vec![true; 4]);

    write(&ctx, "app.py", "print(2)\n");
    let (changed, _) = build(&Cache::open(&opts, &[], session()).unwrap(), &steps(&ctx), &store);
    assert_eq!(hits(&changed), vec![true, false, false, false]);
    assert_eq!(miss_reason(&changed[1]), "source app.py changed");
    assert_eq!(miss_reason(&changed[2]), "an earlier step changed");
}

#[test]
fn leftovers_of_a_killed_build_are_cleaned_and_damaged_records_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let store = BlobStore::new(tmp.path().join("b")).unwrap();
    let steps = chain(1, "1");
    drop(LocalCache::open(&cache_dir, WEEK).unwrap());

    // A build killed while writing a blob leaves a temporary file; once it is
    // old enough that no live build can own it, the next open removes it.
    let partial = cache_dir.join("blobs/.incoming-killed");
    fs::write(&partial, b"half a layer").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    fs::File::options().write(true).open(&partial).unwrap().set_modified(two_hours_ago).unwrap();
    let fresh = cache_dir.join("blobs/.incoming-running");
    fs::write(&fresh, b"being written").unwrap();
    drop(LocalCache::open(&cache_dir, WEEK).unwrap());
    assert!(!partial.exists());
    assert!(fresh.exists(), "a recent temporary file may belong to a running build");

    // A damaged record is reported as corrupt, removed, and the step misses.
    let record = cache_dir.join("layers").join(format!("{}.json", steps[0].key()));
    let local = LocalCache::open(&cache_dir, WEEK).unwrap();
    fs::write(&record, b"{\"key\": ").unwrap();
    assert!(matches!(local.lookup(&steps[0].key(), &store).unwrap(), LocalLookup::Corrupt(_)));
    assert!(!record.exists());
    assert_eq!(local.lookup(&steps[0].key(), &store).unwrap(), LocalLookup::Absent);
}

#[test]
fn layer_paths_name_entries_parents_whiteouts_and_opaque_contents() {
    use strata_builder::cache::entries::layer_paths;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write(&root, "etc/old/a", "1");
    write(&root, "etc/old/sub/b", "2");
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [("usr/bin/tool", &b"x"[..]), ("etc/.wh.gone", b""), ("etc/old/.wh..wh..opq", b""), ("../../escape", b"")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap_or_else(|_| {
            // tar refuses to write `..` names; write the raw header instead.
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(0);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append(&h, &[][..]).unwrap();
        });
    }
    let blob = tmp.path().join("layer.tar.zst");
    fs::write(&blob, zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap()).unwrap();
    let paths: Vec<String> = layer_paths(&blob, &root).unwrap().iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        paths,
        vec!["escape", "etc", "etc/gone", "etc/old", "etc/old/a", "etc/old/sub", "etc/old/sub/b", "usr", "usr/bin", "usr/bin/tool"]
    );
}

#[test]
fn a_step_without_a_layer_is_cached_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let store = BlobStore::new(tmp.path().join("blobs")).unwrap();
    let mut steps = chain(1, "1");
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    assert!(matches!(cache.lookup("stage 0 step 0", &steps[0], &store), Lookup::Miss(_)));
    cache.store_empty("stage 0 step 0", &steps[0], &store).unwrap();
    drop(cache);

    // The record says "no layer" by leaving the layer out (an older strata
    // finds it malformed: a miss); it survives the prune of the next open.
    let record = cache_dir.join("layers").join(format!("{}.json", steps[0].key()));
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    assert!(json.get("layer").is_none() && json["inputs"].is_object(), "{json}");
    let cache = Cache::open(&local_opts(&cache_dir), &[], session()).unwrap();
    let Lookup::Hit(hit) = cache.lookup("stage 0 step 0", &steps[0], &store) else { panic!("expected a hit") };
    assert!(hit.source == HitSource::Local && hit.layer.is_none() && hit.descriptor().is_none(), "{hit:?}");
    cache.fetch(&hit, &store).unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    assert!(cache.apply(&hit, &store, &root).unwrap().is_empty());
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "an empty hit writes nothing");
    let local = LocalCache::open(&cache_dir, WEEK).unwrap();
    assert_eq!(local.lookup(&steps[0].key(), &store).unwrap(), LocalLookup::Hit(None));
    drop(local);

    // A changed input still says what changed.
    steps[0].args.insert("VERSION".into(), "2".into());
    assert_eq!(miss_reason(&cache.lookup("stage 0 step 0", &steps[0], &store)), "build arg VERSION changed");
}
