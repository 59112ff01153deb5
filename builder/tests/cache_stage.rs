//! Keys of a whole stage computed up front from a real Dockerfile and build
//! context: which inputs change which steps' keys, and which do not.

use std::fs;
use std::path::Path;

use strata_builder::cache::CacheKey;
use strata_builder::cache::stage::{ContextTree, plan_stage};
use strata_builder::exec::copy::{Excluder, NothingExcluded};
use strata_builder::exec::metadata::StageVars;
use strata_builder::image::config::ImageConfig;

const DOCKERFILE: &str = "\
FROM scratch
ARG VERSION=1
ENV LANG=C.UTF-8
RUN echo $VERSION > /version
COPY *.py /app/
LABEL team=web
USER USERPLACEHOLDER
RUN make
";

fn keys_with(dockerfile: &str, ctx: &Path, build_args: &[(&str, &str)], ignore: &dyn Excluder) -> Vec<Option<CacheKey>> {
    let df = strata_builder::dockerfile::parse(dockerfile, Path::new("Dockerfile")).unwrap();
    let instructions = &df.instructions[1..];
    let vars = StageVars {
        build_args: build_args.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect(),
        ..Default::default()
    };
    let context = ContextTree { dir: ctx, ignore };
    plan_stage("stage 0", "scratch", &ImageConfig::default(), &vars, instructions, &context)
        .unwrap()
        .into_iter()
        .map(|s| s.map(|s| s.key()))
        .collect()
}

fn keys(ctx: &Path, build_args: &[(&str, &str)]) -> Vec<Option<CacheKey>> {
    keys_with(&DOCKERFILE.replace("USERPLACEHOLDER", "root"), ctx, build_args, &NothingExcluded)
}

/// Which of the three cached steps (RUN, COPY, RUN) have a different key.
fn changed(a: &[Option<CacheKey>], b: &[Option<CacheKey>]) -> Vec<bool> {
    let (a, b): (Vec<_>, Vec<_>) = (a.iter().flatten().collect(), b.iter().flatten().collect());
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    a.iter().zip(&b).map(|(x, y)| x != y).collect()
}

fn context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("app.py"), "print(1)\n").unwrap();
    fs::write(ctx.path().join("util.py"), "x = 1\n").unwrap();
    fs::write(ctx.path().join("notes.txt"), "not copied\n").unwrap();
    ctx
}

#[test]
fn only_layer_steps_get_keys() {
    let ctx = context();
    let k = keys(ctx.path(), &[]);
    let which: Vec<bool> = k.iter().map(Option::is_some).collect();
    // ARG ENV RUN COPY LABEL USER RUN
    assert_eq!(which, vec![false, false, true, true, false, false, true]);
    assert_eq!(keys(ctx.path(), &[]), k, "deterministic");
}

#[test]
fn build_args_change_keys_only_when_declared() {
    let ctx = context();
    let base = keys(ctx.path(), &[]);
    assert_eq!(changed(&base, &keys(ctx.path(), &[("BUILD_DATE", "2026-11-23"), ("GIT_SHA", "abc")])), vec![false; 3]);
    assert_eq!(changed(&base, &keys(ctx.path(), &[("VERSION", "1")])), vec![false; 3], "same as the default");
    assert_eq!(changed(&base, &keys(ctx.path(), &[("VERSION", "2")])), vec![true; 3]);
}

#[test]
fn context_files_change_keys_from_their_copy_on() {
    let ctx = context();
    let base = keys(ctx.path(), &[]);
    fs::write(ctx.path().join("notes.txt"), "edited\n").unwrap();
    assert_eq!(changed(&base, &keys(ctx.path(), &[])), vec![false; 3], "a file no COPY matches");
    fs::write(ctx.path().join("app.py"), "print(2)\n").unwrap();
    assert_eq!(changed(&base, &keys(ctx.path(), &[])), vec![false, true, true]);
    fs::write(ctx.path().join("app.py"), "print(1)\n").unwrap();
    fs::write(ctx.path().join("new.py"), "").unwrap();
    assert_eq!(changed(&base, &keys(ctx.path(), &[])), vec![false, true, true], "a new file the wildcard matches");
    fs::remove_file(ctx.path().join("new.py")).unwrap();
    assert_eq!(changed(&base, &keys(ctx.path(), &[])), vec![false; 3]);
}

struct IgnoreUtil;
impl Excluder for IgnoreUtil {
    fn excluded(&self, rel: &Path) -> bool {
        rel == Path::new("util.py")
    }
}

#[test]
fn dockerignored_files_change_nothing() {
    let ctx = context();
    let df = DOCKERFILE.replace("USERPLACEHOLDER", "root");
    let base = keys_with(&df, ctx.path(), &[], &IgnoreUtil);
    fs::write(ctx.path().join("util.py"), "x = 2\n").unwrap();
    assert_eq!(changed(&base, &keys_with(&df, ctx.path(), &[], &IgnoreUtil)), vec![false; 3]);
}

#[test]
fn what_a_run_sees_of_the_config_matters_and_labels_do_not() {
    let ctx = context();
    let base = keys(ctx.path(), &[]);
    let user = keys_with(&DOCKERFILE.replace("USERPLACEHOLDER", "nobody"), ctx.path(), &[], &NothingExcluded);
    assert_eq!(changed(&base, &user), vec![false, false, true]);
    let label = DOCKERFILE.replace("USERPLACEHOLDER", "root").replace("team=web", "team=api");
    assert_eq!(changed(&base, &keys_with(&label, ctx.path(), &[], &NothingExcluded)), vec![false; 3]);
    let env = DOCKERFILE.replace("USERPLACEHOLDER", "root").replace("C.UTF-8", "C");
    assert_eq!(changed(&base, &keys_with(&env, ctx.path(), &[], &NothingExcluded)), vec![true; 3]);
}

#[test]
fn steps_after_an_unknowable_input_are_not_cached() {
    let ctx = context();
    let df = "FROM scratch\nRUN a\nCOPY --from=builder /out /out\nRUN b\nADD https://example.com/x /x\n";
    let k = keys_with(df, ctx.path(), &[], &NothingExcluded);
    assert_eq!(k.iter().map(Option::is_some).collect::<Vec<_>>(), vec![true, false, false, false]);
    let missing = "FROM scratch\nCOPY nothere.txt /\n";
    let df = strata_builder::dockerfile::parse(missing, Path::new("Dockerfile")).unwrap();
    let context = ContextTree { dir: ctx.path(), ignore: &NothingExcluded };
    let err = plan_stage("stage 0", "scratch", &ImageConfig::default(), &StageVars::default(), &df.instructions[1..], &context)
        .unwrap_err();
    assert!(format!("{err:#}").contains("nothere.txt"), "{err:#}");
}
