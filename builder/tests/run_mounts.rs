//! `RUN --mount` of every type at the namespace level, on a real busybox
//! root: bind (context and stage, read-only and rw), cache (persistent,
//! shared/locked/private), tmpfs, secret (file and env; never in the root,
//! the output or the cache), ssh rejected.

mod run_support;

use std::collections::HashMap;

use run_support::*;
use strata_builder::exec::run::{self, Isolation, SecretSpec};

fn level(test: &str) -> Option<Isolation> {
    if !have_root(test) {
        return None;
    }
    Some(Isolation::detect(false).unwrap())
}

/// Every file under `dir`, with its content, for "is the secret anywhere" checks.
fn contains_bytes(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for path in tree(dir) {
        let rel = path.rsplit_once(' ').unwrap().0;
        let p = dir.join(rel);
        if std::fs::symlink_metadata(&p)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            let data = std::fs::read(&p).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                hits.push(rel.to_string());
            }
        }
    }
    hits
}

#[test]
fn bind_from_context_and_stage() {
    let Some(level) = level("bind_from_context_and_stage") else {
        return;
    };
    let t = busybox_root();
    let context = t.work.join("context");
    std::fs::create_dir_all(context.join("src")).unwrap();
    std::fs::write(context.join("src/app.txt"), "from-context\n").unwrap();
    let stage = busybox_root();
    std::fs::write(stage.root.join("built.bin"), "from-stage\n").unwrap();
    let before = tree(&t.root);
    let before_meta = metadata(&t.root);

    let (mut req, out) = request(
        &t,
        "cat /ctx/app.txt /stage/built.bin; touch /ctx/new 2>/dev/null || echo ro-ok; \
         echo changed > /rw/src/app.txt && echo rw-ok",
        level,
    );
    req.context_dir = Some(context.clone());
    req.stage_roots = HashMap::from([
        ("builder".to_string(), stage.root.clone()),
        ("0".to_string(), stage.root.clone()),
    ]);
    req.mounts = vec![
        "type=bind,source=src,target=/ctx".into(),
        "type=bind,from=builder,source=/built.bin,target=/stage/built.bin".into(),
        "type=bind,target=/rw,rw".into(),
    ];
    let outcome = run::execute(&req).unwrap();
    assert_eq!(
        lines(&out),
        ["from-context", "from-stage", "ro-ok", "rw-ok"]
    );
    assert_eq!(tree(&t.root), before, "no mountpoint left in the root");
    assert_eq!(
        metadata(&t.root),
        before_meta,
        "directory times put back after the mountpoints went"
    );
    for p in ["/ctx", "/stage/built.bin", "/rw"] {
        assert!(
            outcome.excluded_paths.contains(&p.into()),
            "{p}: {:?}",
            outcome.excluded_paths
        );
    }
    assert_eq!(
        std::fs::read_to_string(context.join("src/app.txt")).unwrap(),
        "from-context\n",
        "rw writes discarded"
    );

    // A source symlink pointing out of the context resolves inside it.
    std::os::unix::fs::symlink("/etc", context.join("escape")).unwrap();
    let (mut req, _) = request(&t, "ls /x", level);
    req.context_dir = Some(context.clone());
    req.mounts = vec!["type=bind,source=escape/passwd,target=/x".into()];
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(err.contains("escape/passwd"), "{err}");
}

#[test]
fn cache_persists_between_steps_and_stays_out_of_the_root() {
    let Some(level) = level("cache_persists_between_steps_and_stays_out_of_the_root") else {
        return;
    };
    let t = busybox_root();
    let before = tree(&t.root);
    for (i, sharing) in ["shared", "locked", "private"].iter().enumerate() {
        let (mut req, out) = request(
            &t,
            "cat /root/.cache/count 2>/dev/null; echo run >> /root/.cache/count",
            level,
        );
        req.mounts = vec![format!("type=cache,target=/root/.cache,sharing={sharing}")];
        run::execute(&req).unwrap();
        assert_eq!(
            lines(&out).len(),
            i,
            "run {i} sees the previous runs' writes: {}",
            text(&out)
        );
    }
    assert_eq!(
        tree(&t.root),
        before,
        "cache content and mountpoint not in the root"
    );
    // Another id is another directory.
    let (mut req, out) = request(&t, "ls -A /c | wc -l", level);
    req.mounts = vec!["type=cache,id=other,target=/c,uid=1000,mode=0700".into()];
    run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["0"]);
    let (mut req, out) = request(&t, "stat -c '%u %a' /c", level);
    req.mounts = vec!["type=cache,id=other,target=/c".into()];
    run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["1000 700"]);
}

#[test]
fn tmpfs_is_empty_and_discarded() {
    let Some(level) = level("tmpfs_is_empty_and_discarded") else {
        return;
    };
    let t = busybox_root();
    std::fs::write(t.root.join("tmp/kept"), "x").unwrap();
    let before = metadata(&t.root);
    let (mut req, out) = request(
        &t,
        "ls -A /tmp; echo scratch > /tmp/scratch; grep ' /tmp ' /proc/mounts | cut -d' ' -f3",
        level,
    );
    req.mounts = vec!["type=tmpfs,target=/tmp,size=1m".into()];
    run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["tmpfs"]);
    assert_eq!(metadata(&t.root), before);
}

#[test]
fn secrets_never_reach_the_root_the_output_or_the_cache() {
    let Some(level) = level("secrets_never_reach_the_root_the_output_or_the_cache") else {
        return;
    };
    let t = busybox_root();
    let secret_file = t.work.join("npmrc");
    std::fs::write(&secret_file, "s3cr3t-f1le-value").unwrap();
    // SAFETY: tests in this binary do not read this variable concurrently.
    unsafe { std::env::set_var("STRATA_TEST_TOKEN", "s3cr3t-env-value") };
    let before = tree(&t.root);
    let (mut req, out) = request(
        &t,
        "tr a-z A-Z < /run/secrets/npm; echo; tr a-z A-Z < /etc/tok; echo; \
         echo \"$TOKEN\" | tr a-z A-Z; stat -c %a /run/secrets/npm; \
         echo leak 2>/dev/null >/run/secrets/npm || echo ro-ok; cp /run/secrets/npm /root-copy-attempt 2>/dev/null; \
         mkdir -p /root/.cache/x",
        level,
    );
    req.secrets = vec![
        format!("id=npm,src={}", secret_file.display())
            .parse::<SecretSpec>()
            .unwrap(),
        "id=tok,env=STRATA_TEST_TOKEN".parse().unwrap(),
    ];
    req.mounts = vec![
        "type=secret,id=npm".into(),
        "type=secret,id=tok,target=/etc/tok".into(),
        "type=secret,id=tok,env=TOKEN".into(),
        "type=cache,target=/root/.cache".into(),
    ];
    let outcome = run::execute(&req).unwrap();
    assert_eq!(
        lines(&out),
        [
            "S3CR3T-F1LE-VALUE",
            "S3CR3T-ENV-VALUE",
            "S3CR3T-ENV-VALUE",
            "400",
            "ro-ok"
        ]
    );
    assert!(
        outcome.excluded_paths.contains(&"/run/secrets/npm".into())
            && outcome.excluded_paths.contains(&"/etc/tok".into())
    );
    // The RUN copied the secret into the root on purpose: that copy is the
    // user's doing; everything else must be free of it.
    std::fs::remove_file(t.root.join("root-copy-attempt")).unwrap();
    assert_eq!(tree(&t.root), before, "no secret mountpoint left");
    for value in [&b"s3cr3t-f1le-value"[..], b"s3cr3t-env-value"] {
        assert!(
            contains_bytes(&t.root, value).is_empty(),
            "secret in the root"
        );
        assert!(
            contains_bytes(&t.work.join("cache"), value).is_empty(),
            "secret in the cache"
        );
        assert!(
            !text(&out)
                .as_bytes()
                .windows(value.len())
                .any(|w| w == value),
            "secret in the output"
        );
        assert!(
            !format!("{req:?}")
                .as_bytes()
                .windows(value.len())
                .any(|w| w == value),
            "secret in the request's Debug"
        );
    }

    // A required secret that was not given is an error; an optional one is skipped.
    let (mut req, out) = request(&t, "test -e /run/secrets/missing || echo absent", level);
    req.mounts = vec!["type=secret,id=missing".into()];
    run::execute(&req).unwrap();
    assert_eq!(lines(&out), ["absent"]);
    req.mounts = vec!["type=secret,id=missing,required=true".into()];
    let err = format!("{:#}", run::execute(&req).unwrap_err());
    assert!(err.contains("secret \"missing\" is required"), "{err}");
}

#[test]
fn bad_mounts_are_clear_errors() {
    let t = busybox_root();
    for (spec, want) in [
        ("type=ssh", "type=ssh is not supported"),
        ("type=cache", "needs target="),
        (
            "type=tmpfs,target=/t,from=x",
            "does not apply to type=tmpfs",
        ),
        ("type=volume,target=/v", "unknown mount type"),
        ("type=cache,target=/c,sharing=maybe", "invalid sharing"),
    ] {
        let (mut req, _) = request(&t, "true", Isolation::Namespaces);
        req.mounts = vec![spec.into()];
        let err = format!("{:#}", run::execute(&req).unwrap_err());
        assert!(err.contains(want) && err.contains(spec), "{spec}: {err}");
    }
}
