//! `strata check`, run as the real binary: every Dockerfile under fixtures/ (outside
//! `malformed/` folders) passes; each malformed fixture fails with one clear error naming
//! the file and line, quoting the line with a caret.

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_builder::dockerfile::Instruction;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn strata(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .expect("run strata");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Files named `Dockerfile`, `Dockerfile.*` or `*.Dockerfile` under `dir`.
fn dockerfiles(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            dockerfiles(&p, out);
        } else if name == "Dockerfile"
            || name.starts_with("Dockerfile.")
            || name.ends_with(".Dockerfile")
        {
            out.push(p);
        }
    }
}

/// `--build-arg NAME=strata-check-name` for each ARG before the first FROM that has no
/// default: such fixtures are meant to be built with that argument (e.g. `FROM ${BASE}`).
fn placeholder_build_args(dockerfile: &Path) -> Vec<String> {
    let df = strata_builder::dockerfile::parse_file(dockerfile)
        .unwrap_or_else(|e| panic!("{}: {e}", dockerfile.display()));
    let mut args = Vec::new();
    for inst in &df.instructions {
        match inst {
            Instruction::Arg(a) => {
                for d in a.args.iter().filter(|d| d.default.is_none()) {
                    args.push("--build-arg".to_string());
                    args.push(format!("{}=strata-check-{}", d.name, d.name.to_lowercase()));
                }
            }
            _ => break,
        }
    }
    args
}

#[test]
fn every_fixture_dockerfile_checks() {
    let mut files = Vec::new();
    dockerfiles(&fixtures(), &mut files);
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "malformed"));
    assert!(files.len() >= 3, "fixtures found: {files:?}");
    for f in files {
        let path = f.to_string_lossy().into_owned();
        let context = f.parent().expect("parent").to_string_lossy().into_owned();
        let mut args: Vec<String> = ["check", "--dockerfile", &path, "--context", &context]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(placeholder_build_args(&f));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = strata(&argv);
        assert_eq!(code, 0, "{path}: {stderr}");
        assert!(stdout.contains("(target)"), "{path}: {stdout}");
        let mut json_argv = argv.clone();
        json_argv.extend(["--format", "json"]);
        let (code, stdout, stderr) = strata(&json_argv);
        assert_eq!(code, 0, "{path}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
        assert!(!v["stages"].as_array().expect("stages").is_empty());
    }
}

#[test]
fn malformed_fixtures_fail_with_one_located_error() {
    let cases = [
        ("unknown-instruction", 3, "unknown instruction: COPPY"),
        ("unknown-flag", 3, "unknown flag: --form"),
        ("unterminated-heredoc", 2, "unterminated heredoc"),
        ("nested-json", 2, "not a string"),
        ("duplicate-stage", 2, "duplicate stage name \"build\""),
        ("copy-one-arg", 2, "COPY requires at least two arguments"),
        ("bad-expansion", 2, "TAG: required"),
        (
            "run-before-from",
            2,
            "RUN cannot come before the first FROM",
        ),
        ("bad-healthcheck", 2, "cannot be less than 1ms"),
    ];
    let dir = fixtures().join("check/malformed");
    let mut listed: Vec<String> = std::fs::read_dir(&dir)
        .expect("malformed dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed.len(),
        cases.len(),
        "every malformed fixture has a case: {listed:?}"
    );
    for (name, line, message) in cases {
        let path = dir.join(format!("{name}.Dockerfile"));
        let path = path.to_string_lossy().into_owned();
        let (code, stdout, stderr) = strata(&["check", "-f", &path]);
        assert_eq!(code, 1, "{name}: {stdout}{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("error: {path}:{line}")),
            "{name}: {stderr}"
        );
        assert!(first.contains(message), "{name}: {stderr}");
        assert_eq!(
            stderr.matches("error:").count(),
            1,
            "{name}: exactly one error: {stderr}"
        );
        let quoted = stderr.lines().nth(1).unwrap_or_default();
        assert!(
            quoted.trim_start().starts_with(&format!("{line} | ")),
            "{name}: quotes the line: {stderr}"
        );
        assert!(stderr.contains('^'), "{name}: caret: {stderr}");
    }
}

#[test]
fn target_build_args_and_bad_values() {
    let f = fixtures().join("check/good/args-and-target.Dockerfile");
    let f = f.to_string_lossy().into_owned();
    let (code, stdout, _) = strata(&[
        "check",
        "-f",
        &f,
        "--target",
        "tools",
        "--build-arg",
        "BASE=alpine",
        "--build-arg",
        "UNUSED=1",
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("stage 0 tools (target): FROM alpine"),
        "{stdout}"
    );
    assert!(!stdout.contains("stage 1"), "pruned: {stdout}");
    assert!(
        stdout.contains("not consumed by any ARG: UNUSED"),
        "{stdout}"
    );
    let (code, _, stderr) = strata(&["check", "-f", &f, "--target", "nope"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("target stage \"nope\" could not be found"),
        "{stderr}"
    );
    let (code, _, stderr) = strata(&["check", "-f", &f, "--build-arg", "=x"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = strata(&["check", "-f", "/nonexistent/Dockerfile"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read the Dockerfile"), "{stderr}");
    let (code, stdout, _) = strata(&[
        "check",
        "-f",
        &f,
        "--custom-platform",
        "linux/arm64",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("linux/arm64"), "{stdout}");
}

#[test]
fn binary_input_does_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, content) in [
        &b"\xff\xfe\x00garbage"[..],
        b"FROM a\nRUN [\"\\ud800\"]\n",
        b"\n\n\\\n",
        b"FROM a\nONBUILD ONBUILD",
    ]
    .iter()
    .enumerate()
    {
        let p = dir.path().join(format!("D{i}"));
        std::fs::write(&p, content).expect("write");
        let (code, _, stderr) = strata(&["check", "-f", &p.to_string_lossy()]);
        assert!(code == 0 || code == 1, "{content:?}: {code} {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
