//! The README demo (fixtures/demo): built from the local busybox base with
//! --build-context, written as an OCI layout and a docker-archive; the image
//! runs its entrypoint in a chroot and prints the greeting; JSON logs parse.

mod build_support;

use build_support::*;
use strata_tests::tools;

#[test]
fn demo_builds_and_runs() {
    if !requirements("demo_builds_and_runs") {
        return;
    }
    let s = Scratch::new();
    let layout = s.path().join("oci");
    let archive = s.path().join("demo.tar");
    let digest_file = s.path().join("digest");
    let log = strata_ok(
        &args(&[
            "build",
            "--context", fixture("demo").to_str().unwrap(),
            "--build-context", &s.base_context(),
            "--destination", "strata-demo:latest", "--no-push",
            "--oci-layout-path", layout.to_str().unwrap(), "--image-format=oci",
            "--tar-path", archive.to_str().unwrap(),
            "--digest-file", digest_file.to_str().unwrap(),
            "--log-format", "json",
        ]),
        s.path(),
        &[],
    );
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["level"].is_string() && v["msg"].is_string() && v["time"].is_string(), "{line}");
    }
    assert!(log.contains("\"level\":\"info\""), "{log}");
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    assert_eq!(digest.trim(), build_support::digest(&layout, "latest"));
    let from_archive = tools::skopeo_config(&format!("docker-archive:{}", archive.display()), &[]);
    assert_eq!(json_strings(&from_archive["config"]["Entrypoint"]), ["/app/hello.sh"]);

    let root = unpack(&layout, "latest", &s.path().join("bundle"));
    let config = config(&layout, "latest");
    let c = &config["config"];
    let mut argv = json_strings(&c["Entrypoint"]);
    argv.extend(json_strings(&c["Cmd"]));
    let out = chroot_run(&root, &json_strings(&c["Env"]), &argv);
    assert_eq!(out, "hello from strata, world!\nbuilt on x86_64\n".replace("x86_64", std::env::consts::ARCH));
    assert_eq!(c["User"], "app");
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], "strata demo");
}
