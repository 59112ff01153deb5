//! The CI integrations in docs/ci/ are well formed and ask strata for
//! nothing it rejects.
//!
//! - The Kubernetes Jobs pass `kubernetes-validate --strict` against the
//!   schemas bundled for the newest Kubernetes it knows (installed from PyPI by
//!   scripts/test.sh).
//! - The Tekton Task and the Argo Workflow are checked structurally
//!   (apiVersion, kind, required fields, every `$(params.…)` and
//!   `{{inputs.parameters.…}}` declared), and the pod each would run is
//!   assembled from them and put through the same strict Kubernetes schema check.
//! - The GitLab CI job and the GitHub Actions workflow parse as YAML and have
//!   the shape their systems require.
//! - Every strata invocation in every file is parsed by strata's own command
//!   line parser and passes the checks a build makes before it starts.
//!
//! Running them needs a cluster, a GitLab or GitHub: docs/ci/README.md says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde::Deserialize;
use serde_json::{Value, json};
use strata_builder::cli::Cli;
use strata_builder::exec::context::ContextSource;
use strata_tests::{require, workspace_root};

const K8S_JOBS: [&str; 3] = ["kubernetes-job-fuse.yaml", "kubernetes-job-privileged.yaml", "kubernetes-job-unprivileged.yaml"];
const TEKTON: &str = "tekton-task.yaml";
const ARGO: &str = "argo-workflow.yaml";
const GITLAB: &str = "gitlab-ci.yml";
const GITHUB: &str = "github-actions.yml";
/// The image the examples run, as docs/ci/README.md tells users to push it.
const EXECUTOR: &str = "registry.example.com/strata/executor:";

fn ci_dir() -> PathBuf {
    workspace_root().join("docs/ci")
}

/// Every YAML document of `docs/ci/<name>`, as JSON values.
fn load(name: &str) -> Vec<Value> {
    let path = ci_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn load_one(name: &str) -> Value {
    let mut docs = load(name);
    assert_eq!(docs.len(), 1, "{name} holds one document");
    docs.remove(0)
}

fn str_at<'a>(v: &'a Value, pointer: &str, file: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{file}: {pointer} is missing or not a string"))
}

fn array_at<'a>(v: &'a Value, pointer: &str, file: &str) -> &'a Vec<Value> {
    v.pointer(pointer).and_then(Value::as_array).unwrap_or_else(|| panic!("{file}: {pointer} is missing or not a list"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().expect("a list of strings").to_string()).collect()).unwrap_or_default()
}

/// Whether kubernetes-validate is importable by python3; otherwise a skip
/// (a failure under CI=true) naming what to install.
fn have_kubernetes_validate(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || require::missing(test, "needs the Python package kubernetes-validate (python3 -m pip install kubernetes-validate; scripts/test.sh does)")
}

/// Runs `kubernetes-validate --strict` on `files`; panics with its output
/// unless every resource passed with no warning.
fn kubernetes_validate(files: &[PathBuf]) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output()
        .expect("running kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stdout.contains("WARN") && !stderr.contains("WARN"),
        "python3 -m kubernetes_validate --strict {files:?} ({}):\n{stdout}{stderr}",
        out.status
    );
    let passed = stdout.lines().filter(|l| l.contains(" passed for resource ")).count();
    assert_eq!(passed, files.len(), "one resource per file passes:\n{stdout}");
}

/// A Pod holding `containers` and `volumes`, written as JSON (which is YAML)
/// into `dir` for kubernetes-validate.
fn pod_file(dir: &Path, name: &str, containers: Vec<Value>, volumes: Vec<Value>) -> PathBuf {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": containers, "volumes": volumes},
    });
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_json::to_string_pretty(&pod).unwrap()).unwrap();
    path
}

/// Names `$(params.NAME…)` / `{{PREFIX.NAME}}` references in `text` use.
fn references(text: &str, open: &str, close: char) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        rest = &rest[i + open.len()..];
        let end = rest.find(|c: char| c == close || c == '.' || c == '[').unwrap_or(rest.len());
        out.insert(rest[..end].to_string());
    }
    out
}

fn names(list: &[Value], file: &str, what: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for item in list {
        let name = item["name"].as_str().unwrap_or_else(|| panic!("{file}: a {what} has no name")).to_string();
        assert!(seen.insert(name.clone()), "{file}: {what} {name} is declared twice");
    }
    seen
}

/// Splits one shell command line into words: blanks separate, '…' and "…"
/// group (a backslash escapes the next character inside "…" and outside).
/// Enough for the strata command lines of the CI files, which use no other
/// shell syntax.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// Parses one invocation with strata's own command line and runs the checks
/// a build makes before starting; panics naming `origin` when one fails.
fn check_invocation(origin: &str, args: &[String]) {
    let cli = Cli::try_parse_from(std::iter::once("strata".to_string()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("{origin}: strata rejects {args:?}:\n{e}"));
    assert!(cli.command.is_none(), "{origin}: the examples use kaniko's top-level flags");
    let b = &cli.build;
    b.unsupported.check().unwrap_or_else(|e| panic!("{origin}: {e}"));
    b.registry.validate().unwrap_or_else(|e| panic!("{origin}: {e:#}"));
    b.output.validate().unwrap_or_else(|e| panic!("{origin}: {e:#}"));
    ContextSource::parse(&b.input.context).unwrap_or_else(|e| panic!("{origin}: {e:#}"));
    assert!(
        ["fuse", "full", "redo"].contains(&b.snapshot.snapshot_mode.as_str()),
        "{origin}: snapshot mode {}",
        b.snapshot.snapshot_mode
    );
    assert!(!b.output.destinations.is_empty(), "{origin}: every example pushes its image");
}

/// Containers (and Tekton steps) in `containers` that run the strata executor image.
fn executor_args(containers: &[Value]) -> Vec<Vec<String>> {
    containers
        .iter()
        .filter(|c| {
            let image = c["image"].as_str().unwrap_or_default();
            image.starts_with(EXECUTOR) || image == "$(params.BUILDER_IMAGE)"
        })
        .map(|c| strings(&c["args"]))
        .collect()
}

/// The pod spec fields the Kubernetes Jobs share, checked beyond the schema:
/// the executor gets registry auth at kaniko's path and a context.
fn check_job(file: &str, job: &Value) {
    assert_eq!(job["apiVersion"], "batch/v1", "{file}");
    assert_eq!(job["kind"], "Job", "{file}");
    let spec = &job["spec"]["template"]["spec"];
    let containers = array_at(spec, "/containers", file);
    let strata = containers
        .iter()
        .find(|c| c["image"].as_str().unwrap_or_default().starts_with(EXECUTOR))
        .unwrap_or_else(|| panic!("{file}: no container runs {EXECUTOR}…"));
    let mounts = array_at(strata, "/volumeMounts", file);
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/kaniko/.docker"),
        "{file}: registry credentials are mounted at /kaniko/.docker"
    );
    let volumes = names(array_at(spec, "/volumes", file), file, "volume");
    for c in containers.iter().chain(spec["initContainers"].as_array().into_iter().flatten()) {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = str_at(m, "/name", file);
            assert!(volumes.contains(name), "{file}: volume {name} is mounted but not declared");
        }
    }
}

#[test]
fn every_file_in_docs_ci_is_checked() {
    let mut known: BTreeSet<&str> = K8S_JOBS.into_iter().collect();
    known.extend([TEKTON, ARGO, GITLAB, GITHUB]);
    for entry in std::fs::read_dir(ci_dir()).expect("docs/ci exists") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            assert!(known.contains(name.as_str()), "docs/ci/{name} is not checked by tests/tests/ci_manifests.rs");
        }
    }
    let readme = std::fs::read_to_string(ci_dir().join("README.md")).expect("docs/ci/README.md");
    for name in known {
        assert!(ci_dir().join(name).is_file(), "docs/ci/{name} is missing");
        assert!(readme.contains(&format!("[`{name}`]({name})")), "docs/ci/README.md lists {name}");
    }
}

#[test]
fn kubernetes_jobs_pass_the_strict_schema_check() {
    if !have_kubernetes_validate("kubernetes_jobs_pass_the_strict_schema_check") {
        return;
    }
    for file in K8S_JOBS {
        for job in load(file) {
            check_job(file, &job);
        }
    }
    kubernetes_validate(&K8S_JOBS.map(|f| ci_dir().join(f)));
}

#[test]
fn kubernetes_jobs_ask_for_what_their_level_needs() {
    let container = |file: &str| load_one(file)["spec"]["template"]["spec"]["containers"][0].clone();
    let fuse = container("kubernetes-job-fuse.yaml");
    assert_eq!(fuse["resources"]["limits"]["squat.ai/fuse"], "1", "the device plugin's /dev/fuse");
    assert_eq!(strings(&fuse["securityContext"]["capabilities"]["add"]), ["SYS_ADMIN"]);
    assert_eq!(fuse["securityContext"]["appArmorProfile"]["type"], "Unconfined");
    assert_eq!(fuse["securityContext"]["seccompProfile"]["type"], "Unconfined");
    assert!(fuse["securityContext"].get("privileged").is_none(), "the device-plugin Job is not privileged");

    let privileged = load_one("kubernetes-job-privileged.yaml");
    let spec = &privileged["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["securityContext"]["privileged"], true);
    let fuse_volume = array_at(spec, "/volumes", "privileged").iter().find(|v| v["name"] == "fuse").expect("a fuse volume");
    assert_eq!(fuse_volume["hostPath"], json!({"path": "/dev/fuse", "type": "CharDevice"}));

    let locked = container("kubernetes-job-unprivileged.yaml");
    assert!(locked["securityContext"].get("capabilities").is_none(), "default capabilities only");
    assert!(locked["resources"]["limits"].get("squat.ai/fuse").is_none(), "no /dev/fuse");
    assert_eq!(locked["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    // The same strata flags on every level: the fallback is strata's job.
    assert_eq!(fuse["args"], locked["args"]);
    assert_eq!(fuse["args"], spec["containers"][0]["args"]);
}

#[test]
fn tekton_task_is_well_formed_and_its_pod_passes_the_schema_check() {
    let task = load_one(TEKTON);
    assert_eq!(task["apiVersion"], "tekton.dev/v1");
    assert_eq!(task["kind"], "Task");
    str_at(&task, "/metadata/name", TEKTON);
    let spec = &task["spec"];
    let params = names(array_at(spec, "/params", TEKTON), TEKTON, "param");
    let workspaces = names(array_at(spec, "/workspaces", TEKTON), TEKTON, "workspace");
    let results = names(array_at(spec, "/results", TEKTON), TEKTON, "result");
    for p in array_at(spec, "/params", TEKTON) {
        if p["type"] == "array" {
            assert!(p["default"].is_array(), "{TEKTON}: array param {} has an array default", p["name"]);
        }
    }
    // The kaniko Task's interface, so that pipelines can swap the Task.
    for p in ["IMAGE", "DOCKERFILE", "CONTEXT", "EXTRA_ARGS", "BUILDER_IMAGE"] {
        assert!(params.contains(p), "{TEKTON}: param {p}");
    }
    assert!(results.contains("IMAGE_DIGEST") && results.contains("IMAGE_URL"));
    assert!(workspaces.contains("source") && workspaces.contains("dockerconfig"));

    let text = serde_json::to_string(spec).unwrap();
    for used in references(&text, "$(params.", ')') {
        assert!(params.contains(&used), "{TEKTON}: $(params.{used}) is not declared");
    }
    for used in references(&text, "$(workspaces.", ')') {
        assert!(workspaces.contains(&used), "{TEKTON}: $(workspaces.{used}) is not declared");
    }
    for used in references(&text, "$(results.", ')') {
        assert!(results.contains(&used), "{TEKTON}: $(results.{used}) is not declared");
    }

    let steps = array_at(spec, "/steps", TEKTON);
    names(steps, TEKTON, "step");
    let allowed: BTreeSet<&str> = [
        "name", "image", "command", "args", "workingDir", "env", "envFrom", "computeResources", "volumeMounts",
        "volumeDevices", "imagePullPolicy", "securityContext", "script", "timeout", "onError", "stdoutConfig",
        "stderrConfig", "results", "when",
    ]
    .into_iter()
    .collect();
    // A Tekton step is a Kubernetes container with Tekton's extra fields:
    // turn each into the container Tekton would make and check those.
    let containers = steps
        .iter()
        .map(|step| {
            let mut c = step.as_object().unwrap().clone();
            for key in c.keys() {
                assert!(allowed.contains(key.as_str()), "{TEKTON}: step field {key} is not a Tekton v1 step field");
            }
            str_at(step, "/image", TEKTON);
            if let Some(r) = c.remove("computeResources") {
                c.insert("resources".into(), r);
            }
            if c.remove("script").is_some() {
                assert!(!c.contains_key("command") && !c.contains_key("args"), "{TEKTON}: script with command/args");
                c.insert("command".into(), json!(["/tekton/scripts/script"]));
            }
            Value::Object(c)
        })
        .collect();
    if !have_kubernetes_validate("tekton_task_is_well_formed_and_its_pod_passes_the_schema_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    kubernetes_validate(&[pod_file(dir.path(), "tekton-task-pod", containers, vec![])]);
}

#[test]
fn argo_workflow_is_well_formed_and_its_pod_passes_the_schema_check() {
    let wf = load_one(ARGO);
    assert_eq!(wf["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(wf["kind"], "Workflow");
    assert!(wf["metadata"]["name"].is_string() || wf["metadata"]["generateName"].is_string(), "{ARGO}: a name");
    let spec = &wf["spec"];
    let templates = array_at(spec, "/templates", ARGO);
    let template_names = names(templates, ARGO, "template");
    let entrypoint = str_at(spec, "/entrypoint", ARGO);
    assert!(template_names.contains(entrypoint), "{ARGO}: entrypoint {entrypoint} is not a template");
    let workflow_params = names(array_at(spec, "/arguments/parameters", ARGO), ARGO, "workflow parameter");
    let text = serde_json::to_string(spec).unwrap();
    for used in references(&text, "{{workflow.parameters.", '}') {
        assert!(workflow_params.contains(&used), "{ARGO}: workflow parameter {used} is not declared");
    }
    let workflow_volumes = spec["volumes"].as_array().cloned().unwrap_or_default();

    let mut pods = Vec::new();
    for t in templates {
        let name = str_at(t, "/name", ARGO);
        let kinds = ["container", "steps", "dag", "script", "resource", "suspend"].iter().filter(|k| t.get(**k).is_some()).count();
        assert_eq!(kinds, 1, "{ARGO}: template {name} has exactly one kind");
        for group in t["steps"].as_array().into_iter().flatten() {
            for step in group.as_array().unwrap_or_else(|| panic!("{ARGO}: {name}: steps are lists of parallel steps")) {
                let target = str_at(step, "/template", ARGO);
                assert!(template_names.contains(target), "{ARGO}: step calls unknown template {target}");
                let target = templates.iter().find(|t| t["name"] == target).unwrap();
                let wanted = names(target["inputs"]["parameters"].as_array().map_or(&[][..], |v| v), ARGO, "input");
                let given = names(step["arguments"]["parameters"].as_array().map_or(&[][..], |v| v), ARGO, "argument");
                assert_eq!(wanted, given, "{ARGO}: arguments of step {}", step["name"]);
            }
        }
        let inputs = names(t["inputs"]["parameters"].as_array().map_or(&[][..], |v| v), ARGO, "input");
        for used in references(&serde_json::to_string(t).unwrap(), "{{inputs.parameters.", '}') {
            assert!(inputs.contains(&used), "{ARGO}: template {name} uses undeclared input {used}");
        }
        if let Some(container) = t.get("container") {
            let mut volumes = workflow_volumes.clone();
            volumes.extend(t["volumes"].as_array().cloned().unwrap_or_default());
            let mut container = container.clone();
            container["name"] = json!("main");
            for artifact in t["inputs"]["artifacts"].as_array().into_iter().flatten() {
                str_at(artifact, "/path", ARGO);
                assert!(artifact["git"]["repo"].is_string(), "{ARGO}: artifact {} has a git repo", artifact["name"]);
            }
            pods.push((format!("argo-{name}"), container, volumes));
        }
    }
    assert!(!pods.is_empty(), "{ARGO}: a container template");
    if !have_kubernetes_validate("argo_workflow_is_well_formed_and_its_pod_passes_the_schema_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = pods.into_iter().map(|(n, c, v)| pod_file(dir.path(), &n, vec![c], v)).collect();
    kubernetes_validate(&files);
}

#[test]
fn gitlab_job_is_well_formed() {
    let ci = load_one(GITLAB);
    let job = &ci["build-image"];
    assert!(str_at(job, "/image/name", GITLAB).starts_with(EXECUTOR), "{GITLAB}: the executor image");
    assert!(str_at(job, "/image/name", GITLAB).ends_with("-debug"), "{GITLAB}: GitLab needs the shell of the debug image");
    assert_eq!(job["image"]["entrypoint"], json!([""]), "{GITLAB}: the entrypoint is cleared, as for kaniko");
    let script = strings(&job["script"]);
    assert!(script.iter().any(|l| l.contains("> /kaniko/.docker/config.json")), "{GITLAB}: writes registry auth");
    assert!(script.iter().any(|l| l.starts_with("/kaniko/executor ")), "{GITLAB}: runs /kaniko/executor");
    for rule in array_at(job, "/rules", GITLAB) {
        assert!(rule["if"].is_string(), "{GITLAB}: rules have an if");
    }
}

#[test]
fn github_workflow_is_well_formed() {
    let wf = load_one(GITHUB);
    str_at(&wf, "/name", GITHUB);
    assert!(wf["on"].is_object(), "{GITHUB}: `on` is a trigger map (YAML 1.2 keeps it a string key)");
    let jobs = wf["jobs"].as_object().expect("jobs");
    assert!(!jobs.is_empty());
    for (id, job) in jobs {
        str_at(job, "/runs-on", GITHUB);
        for step in array_at(job, "/steps", GITHUB) {
            assert!(step["uses"].is_string() ^ step["run"].is_string(), "{GITHUB}: job {id}: a step either uses or runs");
        }
    }
    let runs: Vec<&str> = jobs.values().flat_map(|j| j["steps"].as_array().unwrap()).filter_map(|s| s["run"].as_str()).collect();
    let docker = runs.iter().find(|r| r.starts_with("docker run")).expect("a docker run of the executor image");
    for flag in ["--device /dev/fuse", "--cap-add SYS_ADMIN", ":/workspace\"", ":/kaniko/.docker:ro\""] {
        assert!(docker.contains(flag), "{GITHUB}: docker run has {flag}");
    }
    assert!(str_at(&wf, "/env/STRATA_IMAGE", GITHUB).starts_with(EXECUTOR));
}

/// `args` with each variable replaced by the value its CI system would give.
fn expand(args: Vec<String>, vars: &[(String, String)]) -> Vec<String> {
    args.into_iter()
        .map(|mut a| {
            for (name, value) in vars {
                a = a.replace(name.as_str(), value);
            }
            assert!(!a.contains("$(") && !a.contains("{{") && !a.contains('$'), "unexpanded variable in {a:?}");
            a
        })
        .collect()
}

fn var(name: &str, value: &str) -> (String, String) {
    (name.to_string(), value.to_string())
}

/// Every strata command line in docs/ci/, with where it comes from and its
/// variables expanded as the CI system would.
fn invocations() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for file in K8S_JOBS {
        for job in load(file) {
            for args in executor_args(array_at(&job, "/spec/template/spec/containers", file)) {
                out.push((file.to_string(), expand(args, &[])));
            }
        }
    }

    let tekton = load_one(TEKTON);
    let mut vars = vec![
        var("$(workspaces.source.path)", "/workspace/source"),
        var("$(results.IMAGE_DIGEST.path)", "/tekton/results/IMAGE_DIGEST"),
        // IMAGE has no default: a TaskRun gives it.
        var("$(params.IMAGE)", "registry.example.com/acme/app:1.0.0"),
    ];
    for p in array_at(&tekton, "/spec/params", TEKTON) {
        if let Some(default) = p["default"].as_str() {
            vars.push((format!("$(params.{})", p["name"].as_str().unwrap()), default.to_string()));
        }
    }
    for args in executor_args(array_at(&tekton, "/spec/steps", TEKTON)) {
        // $(params.EXTRA_ARGS[*]) expands to the array's items: none by default.
        let args = args.into_iter().filter(|a| a != "$(params.EXTRA_ARGS[*])").collect();
        out.push((TEKTON.to_string(), expand(args, &vars)));
    }

    let argo = load_one(ARGO);
    let image = array_at(&argo, "/spec/arguments/parameters", ARGO).iter().find(|p| p["name"] == "image").expect("an image parameter");
    let vars = [var("{{inputs.parameters.image}}", str_at(image, "/value", ARGO))];
    let containers: Vec<Value> = array_at(&argo, "/spec/templates", ARGO).iter().filter_map(|t| t.get("container").cloned()).collect();
    for args in executor_args(&containers) {
        out.push((ARGO.to_string(), expand(args, &vars)));
    }

    let vars = [
        var("${CI_PROJECT_DIR}", "/builds/acme/app"),
        var("${CI_REGISTRY_IMAGE}", "registry.gitlab.example.com/acme/app"),
        var("${CI_COMMIT_SHORT_SHA}", "0123abcd"),
    ];
    for line in strings(&load_one(GITLAB)["build-image"]["script"]) {
        let words = shell_words(&line);
        if words.first().is_some_and(|w| w == "/kaniko/executor") {
            out.push((GITLAB.to_string(), expand(words[1..].to_vec(), &vars)));
        }
    }

    let github = load_one(GITHUB);
    let vars = [var("$IMAGE", str_at(&github, "/env/IMAGE", GITHUB)), var("$GITHUB_SHA", &"0123abcd".repeat(5))];
    for job in github["jobs"].as_object().unwrap().values() {
        for run in job["steps"].as_array().unwrap().iter().filter_map(|s| s["run"].as_str()) {
            let words = shell_words(run);
            if let Some(i) = words.iter().position(|w| w == "$STRATA_IMAGE") {
                out.push((GITHUB.to_string(), expand(words[i + 1..].to_vec(), &vars)));
            }
        }
    }
    out
}

#[test]
fn strata_accepts_every_invocation_in_docs_ci() {
    let all = invocations();
    let files: BTreeSet<&str> = all.iter().map(|(f, _)| f.as_str()).collect();
    let mut expected: BTreeSet<&str> = K8S_JOBS.into_iter().collect();
    expected.extend([TEKTON, ARGO, GITLAB, GITHUB]);
    assert_eq!(files, expected, "every CI file runs strata");
    for (file, args) in &all {
        check_invocation(file, args);
    }
}

#[test]
fn shell_words_splits_like_a_shell() {
    assert_eq!(
        shell_words("a  \"b c\" 'd \"e' f\\ g \"h\\\"i\"\n--x=\"${Y}\"/z"),
        ["a", "b c", "d \"e", "f g", "h\"i", "--x=${Y}/z"]
    );
}
