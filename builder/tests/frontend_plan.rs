//! The build plan: stages, global ARG scoping, --build-arg, predefined ARGs, dependencies,
//! --target pruning and build order.

use std::path::Path;

use strata_builder::dockerfile::{self, Instruction};
use strata_builder::plan::{Base, BuildPlan, PlanOptions, Platform, plan};

fn opts() -> PlanOptions {
    PlanOptions {
        target: None,
        build_args: Vec::new(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        target_platform: Platform::parse("linux/arm/v7").unwrap(),
    }
}

fn plan_of(text: &str, o: &PlanOptions) -> Result<BuildPlan, dockerfile::Diagnostic> {
    plan(
        &dockerfile::parse(text, Path::new("Dockerfile")).expect("parses"),
        o,
    )
}

fn order(p: &BuildPlan) -> Vec<usize> {
    p.stages.iter().map(|s| s.index).collect()
}

/// Runs a stage's ARG/ENV instructions through a scope and returns the scope's lookup of `name`.
fn value_in_stage(p: &BuildPlan, stage: usize, name: &str) -> Option<String> {
    let s = p.stage(stage).expect("stage in plan");
    let mut scope = p.scope(vec![]);
    for i in &s.instructions {
        match i {
            Instruction::Arg(a) => {
                scope.apply_arg(a).expect("arg");
            }
            Instruction::Env(e) => {
                scope.apply_env(e).expect("env");
            }
            _ => {}
        }
    }
    scope.lookup(name)
}

#[test]
fn global_args_expand_from_but_need_redeclaring_in_a_stage() {
    let df = "ARG TAG=3.20\nARG IMG=alpine:${TAG}\nFROM $IMG\nRUN true\nARG TAG\nFROM busybox\nARG IMG\nARG OTHER=x-$TAG\n";
    let p = plan_of(df, &opts()).unwrap();
    assert_eq!(p.stages.len(), 1, "only the target (last stage) is needed");
    let mut o = opts();
    o.target = None;
    let p = plan_of(&df.replace("FROM busybox", "FROM busybox AS last"), &o).unwrap();
    assert_eq!(p.stages[0].base, Base::Image("busybox".into()));
    assert_eq!(
        value_in_stage(&p, 1, "IMG").as_deref(),
        Some("alpine:3.20"),
        "a bare ARG takes the global value"
    );
    assert_eq!(
        value_in_stage(&p, 1, "TAG"),
        None,
        "global ARGs are not visible without ARG"
    );
    assert_eq!(value_in_stage(&p, 1, "OTHER").as_deref(), Some("x-"));

    let p = plan_of(
        &df.replace("FROM busybox", "FROM busybox AS last"),
        &PlanOptions {
            target: Some("0".into()),
            ..opts()
        },
    );
    assert!(p.is_err(), "--target names a stage, not an index");

    let df2 = "ARG TAG=3.20\nFROM alpine:${TAG} AS a\nARG TAG\nRUN echo $TAG\n";
    let p = plan_of(df2, &opts()).unwrap();
    assert_eq!(p.stages[0].base, Base::Image("alpine:3.20".into()));
    assert_eq!(value_in_stage(&p, 0, "TAG").as_deref(), Some("3.20"));
}

#[test]
fn build_args_override_with_and_without_value() {
    let df =
        "ARG TAG=1\nFROM alpine:$TAG\nARG PATH\nARG TAG\nARG LOCAL=default\nARG UNSET_IN_ENV\n";
    let o = PlanOptions {
        build_args: vec![
            ("TAG".into(), Some("2".into())),
            ("LOCAL".into(), Some("given".into())),
            ("PATH".into(), None),
            ("STRATA_TEST_SURELY_UNSET_VAR".into(), None),
            ("NOBODY".into(), Some("x".into())),
            ("HTTP_PROXY".into(), Some("http://proxy:3128".into())),
        ],
        ..opts()
    };
    let p = plan_of(df, &o).unwrap();
    assert_eq!(p.stages[0].base, Base::Image("alpine:2".into()));
    assert_eq!(value_in_stage(&p, 0, "TAG").as_deref(), Some("2"));
    assert_eq!(value_in_stage(&p, 0, "LOCAL").as_deref(), Some("given"));
    assert_eq!(
        value_in_stage(&p, 0, "PATH"),
        std::env::var("PATH").ok(),
        "a bare --build-arg takes the environment's value"
    );
    assert!(!p.build_args.contains_key("STRATA_TEST_SURELY_UNSET_VAR"));
    assert_eq!(
        p.unused_build_args,
        vec!["NOBODY".to_string()],
        "proxy args are never unused"
    );
    let scope = p.scope(vec![]);
    assert!(
        scope
            .run_env()
            .contains(&("HTTP_PROXY".into(), "http://proxy:3128".into()))
    );
}

#[test]
fn env_overrides_arg_and_run_env_has_both() {
    let df = "FROM scratch\nARG A=arg\nENV A=env B=$A\nARG C=c\n";
    let p = plan_of(df, &opts()).unwrap();
    assert_eq!(p.stages[0].base, Base::Scratch);
    assert_eq!(value_in_stage(&p, 0, "A").as_deref(), Some("env"));
    assert_eq!(
        value_in_stage(&p, 0, "B").as_deref(),
        Some("arg"),
        "ENV pairs expand with the scope before the ENV"
    );
    let s = p.stage(0).unwrap();
    let mut scope = p.scope(vec![("PATH".into(), "/bin".into())]);
    for i in &s.instructions {
        match i {
            Instruction::Arg(a) => drop(scope.apply_arg(a).unwrap()),
            Instruction::Env(e) => drop(scope.apply_env(e).unwrap()),
            _ => {}
        }
    }
    let env = scope.run_env();
    assert!(env.contains(&("PATH".into(), "/bin".into())));
    assert!(env.contains(&("A".into(), "env".into())));
    assert!(env.contains(&("C".into(), "c".into())));
    assert!(
        !scope.env().iter().any(|(k, _)| k == "C"),
        "ARGs do not go into the image Env"
    );
}

#[test]
fn predefined_platform_args() {
    let df = "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\nARG TARGETVARIANT\nARG BUILDOS\nFROM img-$TARGETARCH\n";
    let p = plan_of(
        df,
        &PlanOptions {
            target: Some("build".into()),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(p.stages[0].platform.as_deref(), Some("linux/amd64"));
    assert_eq!(value_in_stage(&p, 0, "TARGETARCH").as_deref(), Some("arm"));
    assert_eq!(
        value_in_stage(&p, 0, "TARGETVARIANT").as_deref(),
        Some("v7")
    );
    assert_eq!(value_in_stage(&p, 0, "BUILDOS").as_deref(), Some("linux"));
    let p = plan_of(df, &opts()).unwrap();
    assert_eq!(p.stages[0].base, Base::Image("img-arm".into()));
    let p = plan_of(
        "ARG TARGETOS\nARG TARGETARCH\nFROM img-$TARGETOS-$TARGETARCH\n",
        &opts(),
    )
    .unwrap();
    assert_eq!(
        p.stages[0].base,
        Base::Image("img-linux-arm".into()),
        "redeclaring before FROM keeps the value"
    );
}

#[test]
fn target_prunes_unneeded_stages_and_orders_dependencies() {
    let df = "\
FROM busybox AS base
FROM base AS build
RUN --mount=type=cache,target=/c --mount=type=bind,from=tools,target=/t true
COPY --from=assets /a /a
FROM busybox AS tools
FROM busybox AS assets
FROM busybox AS unrelated
FROM scratch AS final
COPY --from=build /out /out
COPY --from=0 /etc/passwd /p
COPY --from=docker.io/library/alpine:3 /bin/sh /sh
";
    let p = plan_of(df, &opts()).unwrap();
    assert_eq!(
        order(&p),
        vec![0, 2, 3, 1, 5],
        "unrelated (4) is pruned; dependencies come first"
    );
    assert_eq!(p.target, 5);
    assert_eq!(p.stage(1).unwrap().depends_on, vec![0, 2, 3]);
    assert_eq!(p.stage(5).unwrap().depends_on, vec![0, 1]);
    assert_eq!(
        p.resolve_source("docker.io/library/alpine:3"),
        Base::Image("docker.io/library/alpine:3".into())
    );
    assert_eq!(
        p.resolve_source("BUILD"),
        Base::Stage(1),
        "stage names are case-insensitive"
    );

    let p = plan_of(
        df,
        &PlanOptions {
            target: Some("tools".into()),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(order(&p), vec![2]);
    let p = plan_of(
        df,
        &PlanOptions {
            target: Some("Build".into()),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(order(&p), vec![0, 2, 3, 1]);
    let e = plan_of(
        df,
        &PlanOptions {
            target: Some("nope".into()),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("target stage \"nope\" could not be found"),
        "{e}"
    );
    assert!(e.to_string().contains("assets"), "lists the stages: {e}");
}

#[test]
fn platforms_parse_like_docker() {
    assert_eq!(
        Platform::parse("linux/arm64/v8").unwrap().to_string(),
        "linux/arm64/v8"
    );
    assert_eq!(
        Platform::parse("Linux/x86_64").unwrap().to_string(),
        "linux/amd64"
    );
    assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
    assert_eq!(Platform::parse("linux").unwrap().os, "linux");
    for bad in ["", "linux/", "a/b/c/d", "linux amd64"] {
        assert!(Platform::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn secret_and_ssh_mounts_are_not_dependencies() {
    let df = "FROM busybox AS s\nFROM busybox\nRUN --mount=type=secret,id=s,from=s --mount=type=ssh true\n";
    let p = plan_of(df, &opts()).unwrap();
    assert_eq!(order(&p), vec![1]);
}

#[test]
fn invalid_plans_are_rejected_with_locations() {
    let e = plan_of("FROM a AS x\nFROM b AS X\n", &opts()).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.message.contains("duplicate stage name"), "{e}");

    let e = plan_of(
        "FROM a AS x\nCOPY --from=y / /\nFROM b AS y\nCOPY --from=x / /\n",
        &opts(),
    )
    .unwrap_err();
    assert!(e.message.contains("circular dependency"), "{e}");

    let e = plan_of("FROM a AS x\nCOPY --from=x / /\n", &opts()).unwrap_err();
    assert!(e.message.contains("current stage"), "{e}");

    let e = plan_of("FROM a\nCOPY --from=3 / /\n", &opts()).unwrap_err();
    assert!(e.message.contains("invalid stage index 3"), "{e}");
    assert_eq!((e.line, e.column), (2, 13));

    let e = plan_of("ARG A\nRUN true\nFROM a\n", &opts()).unwrap_err();
    assert_eq!(e.line, 2);

    let e = plan_of("ARG A\n", &opts()).unwrap_err();
    assert!(e.message.contains("no FROM"), "{e}");

    let e = plan_of("ARG IMG\nFROM $IMG\n", &opts()).unwrap_err();
    assert!(e.message.contains("should not be blank"), "{e}");

    let e = plan_of("FROM --platform=linux/ a\n", &opts()).unwrap_err();
    assert!(e.message.contains("invalid platform"), "{e}");
}

#[test]
fn long_stage_chains_do_not_overflow_the_stack() {
    let mut df = String::from("FROM busybox AS s0\n");
    for i in 1..20_000 {
        df.push_str(&format!("FROM s{} AS s{i}\n", i - 1));
    }
    let p = plan_of(&df, &opts()).unwrap();
    assert_eq!(p.stages.len(), 20_000);
    assert_eq!(p.stages.last().unwrap().depends_on, vec![19_998]);
}
