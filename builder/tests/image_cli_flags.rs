//! The registry and output flags are part of the real `strata` command line
//! without clashing with the executor's flags, and parse kaniko-style
//! invocations.

use clap::{CommandFactory, Parser};
use strata_builder::cli::Cli;

#[test]
fn flags_do_not_clash_and_parse_like_kaniko() {
    Cli::command().debug_assert();
    let c = Cli::try_parse_from([
        "strata",
        "--context=dir:///workspace",
        "--dockerfile=Dockerfile",
        "--destination=reg.example/app:1",
        "-d",
        "reg.example/app:latest",
        "--skip-tls-verify=true",
        "--registry-mirror=mirror.gcr.io",
        "--tar-path=/out/image.tar",
        "--digest-file=/dev/termination-log",
        "--push-retry=3",
    ])
    .unwrap();
    let build = c.build;
    assert_eq!(build.output.destinations, ["reg.example/app:1", "reg.example/app:latest"]);
    assert!(build.registry.skip_tls_verify);
    assert_eq!(build.registry.push_retry, 3);
    assert!(build.input.build_contexts.is_empty());
}
