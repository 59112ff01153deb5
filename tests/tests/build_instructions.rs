//! Builds fixtures/build/full (every instruction, three stages of which one is
//! unused) and checks the image independently: umoci unpacks the tree (files,
//! modes, owners, symlinks, hard links, deletions), skopeo reads the config
//! and history, and the entrypoint runs in a chroot of the unpacked tree.

mod build_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use build_support::*;

#[test]
fn full_fixture_builds_the_image_docker_would() {
    if !requirements("full_fixture_builds_the_image_docker_would") {
        return;
    }
    let s = Scratch::new();
    let layout = s.path().join("oci");
    let context = fixture("build/full");
    let log = strata_ok(
        &args(&[
            "--context", context.to_str().unwrap(),
            "--build-context", &s.base_context(),
            "--no-push", "--destination", "example.com/full:1",
            "--oci-layout-path", layout.to_str().unwrap(), "--image-format=oci",
            "--build-arg", "VERSION=1.2.3", "--label", "extra=yes",
            "--kaniko-dir", s.work().to_str().unwrap(),
        ]),
        s.path(),
        &[],
    );
    assert!(!log.contains("exit 1"), "the unused stage must be skipped:\n{log}");
    // fuse is the default; where FUSE cannot be mounted the log says why and full runs.
    assert!(
        log.contains("snapshot: mode=fuse") || log.contains("snapshot mode fuse unavailable, using full"),
        "{log}"
    );

    let root = unpack(&layout, "1", &s.path().join("bundle"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    // Multi-stage COPY --from with a hard link and a symlink made by RUN.
    assert_eq!(read("opt/app/out.bin"), "compiled\n");
    assert_eq!(meta("opt/app/out.bin").ino(), meta("opt/app/out-hard").ino(), "hard link kept");
    assert_eq!(std::fs::read_link(root.join("opt/app/out-link")).unwrap(), Path::new("out.bin"));
    assert_eq!(read("opt/app/main.c"), "main\n");
    // RUN deletions applied through whiteouts.
    assert!(!root.join("bin/vi").exists(), "/bin/vi was deleted by RUN");
    assert!(root.join("bin/sh").exists());
    // --chown and --chmod, with the created parent owned by the user.
    let cfg = meta("etc/app/config.txt");
    assert_eq!((cfg.uid(), cfg.gid(), cfg.mode() & 0o7777), (1000, 1000, 0o640));
    assert_eq!(meta("etc/app").uid(), 1000);
    // Wildcards, --parents, .dockerignore with an exception.
    assert_eq!(read("opt/app/docs/plain.txt"), "plain\n");
    assert!(root.join("opt/app/docs/config.txt").is_file());
    assert_eq!(read("opt/parents/nested/deep.txt"), "deep\n");
    assert_eq!(read("ctx/ignored/keep.txt"), "keep\n");
    assert!(!root.join("ctx/ignored/secret.txt").exists(), ".dockerignore applied");
    // Default ownership is root, whatever the context's owner.
    assert_eq!(meta("ctx/plain.txt").uid(), 0);
    // ADD: a local archive is extracted, a plain file copied with --chown.
    assert_eq!(read("opt/unpacked/inside/file.txt"), "inside\n");
    assert_eq!(meta("opt/added.txt").uid(), 1000);
    assert_eq!(meta("opt/added.txt").mode() & 0o7777, 0o755, "symbolic --chmod=u=rwx,go=rx");
    // Heredocs: COPY <<EOF with ARG expansion, RUN <<EOT.
    assert_eq!(read("opt/heredoc.txt"), "heredoc-run\n");
    assert_eq!(meta("opt/app/bin/hello").mode() & 0o777, 0o755);
    // WORKDIR after USER: created, owned by the user.
    assert_eq!(meta("home/app/work").uid(), 1000);
    assert!(root.join("var/data").is_dir());

    let config = config(&layout, "1");
    let c = &config["config"];
    let env = json_strings(&c["Env"]);
    assert!(env.contains(&"APP_HOME=/opt/app".to_string()), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("PATH=/opt/app/bin:/usr/local/sbin")), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("VERSION=")), "ARG values stay out of the config");
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/home/app/work");
    assert_eq!(c["Labels"]["version"], "1.2.3");
    assert_eq!(c["Labels"]["extra"], "yes");
    assert!(c["ExposedPorts"]["80/tcp"].is_object() && c["ExposedPorts"]["443/udp"].is_object());
    assert!(c["Volumes"]["/var/data"].is_object());
    assert_eq!(json_strings(&c["Entrypoint"]), ["/opt/app/bin/hello"]);
    assert_eq!(json_strings(&c["Cmd"]), ["arg"]);
    assert_eq!(c["StopSignal"], "SIGTERM");
    let raw = raw_config(&layout);
    assert_eq!(raw["config"]["Healthcheck"]["Interval"], 30_000_000_000i64);
    assert_eq!(json_strings(&raw["config"]["Healthcheck"]["Test"]), ["CMD-SHELL", "true"]);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");

    // History: the base's entry, then one per instruction of the final stage;
    // one layer per non-empty entry.
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 1 + 22, "{history:#?}");
    let layers = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(layers, config["rootfs"]["diff_ids"].as_array().unwrap().len());
    let by = |i: usize| history[i]["created_by"].as_str().unwrap().to_string();
    assert_eq!(by(2), "LABEL version=$VERSION");
    assert_eq!(history[2]["empty_layer"], true);
    assert!(by(4).starts_with("RUN |1 VERSION=1.2.3 /bin/sh -c rm -rf /home/app"), "{}", by(4));
    assert!(by(4).ends_with("# buildkit"));
    assert!(history[4]["empty_layer"].is_null());

    // The entrypoint runs in a chroot of the unpacked tree.
    let mut argv = json_strings(&c["Entrypoint"]);
    argv.extend(json_strings(&c["Cmd"]));
    assert_eq!(chroot_run(&root, &env, &argv), "hello 1.2.3 from /opt/app: arg\n");
    assert!(leftover_builds(&s.work()).is_empty());
}

#[test]
fn target_builds_only_the_stages_it_needs() {
    if !requirements("target_builds_only_the_stages_it_needs") {
        return;
    }
    let s = Scratch::new();
    let layout = s.path().join("oci");
    let context = fixture("build/full");
    strata_ok(
        &args(&[
            "--context", context.to_str().unwrap(),
            "--build-context", &s.base_context(),
            "--target", "builder", "--no-push",
            "--oci-layout-path", layout.to_str().unwrap(), "--image-format=oci",
        ]),
        s.path(),
        &[],
    );
    let root = unpack(&layout, "latest", &s.path().join("bundle"));
    assert_eq!(std::fs::read_to_string(root.join("src/out.bin")).unwrap(), "compiled\n");
    assert!(!root.join("opt/app").exists());
    assert_eq!(config(&layout, "latest")["config"]["WorkingDir"], "/src");
}
