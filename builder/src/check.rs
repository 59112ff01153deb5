//! `strata check`: parse and plan a Dockerfile without building it, and print the stages and
//! their instructions (text, or JSON with `--format json`). Exit status 0 when the
//! Dockerfile, the plan and the context's `.dockerignore` are valid, 1 on any error (printed
//! once, with file, line, the quoted line and a caret), 2 on bad command-line values.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::dockerfile::{self, Command, Instruction};
use crate::dockerignore::Matcher;
use crate::plan::{self, Base, BuildPlan, PlanOptions, Platform};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Path to the Dockerfile; a relative path is looked up in the context first, as kaniko does.
    #[arg(short = 'f', long, default_value = "Dockerfile")]
    pub dockerfile: PathBuf,
    /// The build context (its .dockerignore is checked too).
    #[arg(short = 'c', long, default_value = ".")]
    pub context: PathBuf,
    /// Build up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// A build argument, NAME=value, or NAME to take the value from the environment. Repeatable.
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,
    /// The target platform (os/arch[/variant]); default: this machine's.
    #[arg(long = "custom-platform", value_name = "PLATFORM")]
    pub custom_platform: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Parses `--build-arg` values: `NAME=value` or bare `NAME`.
pub fn parse_build_args(args: &[String]) -> Result<Vec<(String, Option<String>)>, String> {
    args.iter()
        .map(|a| {
            let (k, v) = match a.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (a.as_str(), None),
            };
            if k.is_empty() {
                return Err(format!(
                    "invalid --build-arg {a:?}: the name is empty (expected NAME=value or NAME)"
                ));
            }
            Ok((k.to_string(), v))
        })
        .collect()
}

/// Where the Dockerfile is: as given if absolute or present in the context, else as given.
pub fn resolve_dockerfile(dockerfile: &Path, context: &Path) -> PathBuf {
    if dockerfile.is_relative() && context != Path::new(".") {
        let in_context = context.join(dockerfile);
        if in_context.exists() {
            return in_context;
        }
    }
    dockerfile.to_path_buf()
}

pub fn run(args: CheckArgs) -> i32 {
    let build_args = match parse_build_args(&args.build_args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let target_platform = match args
        .custom_platform
        .as_deref()
        .map(Platform::parse)
        .transpose()
    {
        Ok(p) => p.unwrap_or_else(Platform::host),
        Err(e) => {
            eprintln!("error: --custom-platform: {e}");
            return 2;
        }
    };
    let opts = PlanOptions {
        target: args.target.clone(),
        build_args,
        build_platform: Platform::host(),
        target_platform,
    };
    let path = resolve_dockerfile(&args.dockerfile, &args.context);
    let df = match dockerfile::parse_file(&path) {
        Ok(df) => df,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let plan = match plan::plan(&df, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let ignore = if args.context.is_dir() {
        Matcher::load(&args.context)
    } else {
        Ok(Matcher::default())
    };
    if let Err(e) = ignore {
        eprintln!("error: {}: {e}", args.context.display());
        return 1;
    }
    match args.format {
        Format::Text => print!("{}", render_text(&df, &plan)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&render_json(&df, &plan)).unwrap_or_default()
        ),
    }
    0
}

fn base_text(plan: &BuildPlan, base: &Base) -> String {
    match base {
        Base::Image(i) => i.clone(),
        Base::Scratch => "scratch".into(),
        Base::Stage(i) => match plan.stage(*i).and_then(|s| s.name.clone()) {
            Some(n) => format!("stage {i} ({n})"),
            None => format!("stage {i}"),
        },
    }
}

/// The human-readable listing.
pub fn render_text(df: &dockerfile::Dockerfile, plan: &BuildPlan) -> String {
    let mut out = String::new();
    for w in &df.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str(&format!(
        "{}: {} stage(s) to build\n",
        df.file.display(),
        plan.stages.len()
    ));
    if let Some(s) = &df.syntax {
        out.push_str(&format!(
            "  # syntax={s} (ignored: strata uses its own front end)\n"
        ));
    }
    for s in &plan.stages {
        let name = s
            .name
            .as_deref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        let target = if s.index == plan.target {
            " (target)"
        } else {
            ""
        };
        out.push_str(&format!(
            "stage {}{name}{target}: FROM {}",
            s.index,
            base_text(plan, &s.base)
        ));
        if let Some(p) = &s.platform {
            out.push_str(&format!(" --platform={p}"));
        }
        if !s.depends_on.is_empty() {
            let deps: Vec<String> = s.depends_on.iter().map(|d| d.to_string()).collect();
            out.push_str(&format!(" [needs stages {}]", deps.join(", ")));
        }
        out.push('\n');
        for i in &s.instructions {
            let src = i.source();
            let first = src.original.trim();
            out.push_str(&format!("  {:>4}  {}\n", src.start_line, first));
        }
    }
    if !plan.unused_build_args.is_empty() {
        out.push_str(&format!(
            "warning: build args not consumed by any ARG: {}\n",
            plan.unused_build_args.join(", ")
        ));
    }
    out
}

fn command_json(c: &Command) -> Value {
    match c {
        Command::Shell(s) => json!({"shell": s}),
        Command::Exec(v) => json!({"exec": v}),
    }
}

/// One instruction as JSON: keyword, lines, original text and its parsed fields.
pub fn instruction_json(i: &Instruction) -> Value {
    let src = i.source();
    let fields = match i {
        Instruction::From(f) => json!({"image": f.image, "name": f.name, "platform": f.platform}),
        Instruction::Run(r) => json!({
            "command": command_json(&r.command),
            "heredocs": r.heredocs.iter().map(|h| json!({"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp, "fd": h.fd})).collect::<Vec<_>>(),
            "mounts": r.mounts,
            "network": r.network.map(|n| format!("{n:?}").to_lowercase()),
            "security": r.security.map(|s| format!("{s:?}").to_lowercase()),
        }),
        Instruction::Cmd(c) => json!({"command": command_json(&c.command)}),
        Instruction::Entrypoint(c) => json!({"command": command_json(&c.command)}),
        Instruction::Label(l) => {
            json!({"pairs": l.pairs.iter().map(|p| json!([p.key, p.value])).collect::<Vec<_>>()})
        }
        Instruction::Env(l) => {
            json!({"pairs": l.pairs.iter().map(|p| json!([p.key, p.value])).collect::<Vec<_>>()})
        }
        Instruction::Maintainer(m) => json!({"name": m.name}),
        Instruction::Expose(e) => json!({"ports": e.ports}),
        Instruction::Copy(c) => json!({
            "sources": c.files.sources, "inline": c.files.inline.iter().map(|s| json!({"path": s.path, "data": s.data, "expand": s.expand})).collect::<Vec<_>>(),
            "dest": c.files.dest, "from": c.from, "chown": c.chown, "chmod": c.chmod, "link": c.link, "parents": c.parents, "exclude": c.exclude,
        }),
        Instruction::Add(c) => json!({
            "sources": c.files.sources, "inline": c.files.inline.iter().map(|s| json!({"path": s.path, "data": s.data, "expand": s.expand})).collect::<Vec<_>>(),
            "dest": c.files.dest, "chown": c.chown, "chmod": c.chmod, "link": c.link, "keep_git_dir": c.keep_git_dir, "checksum": c.checksum, "exclude": c.exclude,
        }),
        Instruction::Volume(v) => json!({"paths": v.paths}),
        Instruction::User(u) => json!({"user": u.user}),
        Instruction::Workdir(w) => json!({"path": w.path}),
        Instruction::Arg(a) => {
            json!({"args": a.args.iter().map(|d| json!({"name": d.name, "default": d.default})).collect::<Vec<_>>()})
        }
        Instruction::Onbuild(o) => {
            json!({"expression": o.expression, "trigger": instruction_json(&o.trigger)})
        }
        Instruction::Stopsignal(s) => json!({"signal": s.signal}),
        Instruction::Healthcheck(h) => json!({
            "test": h.health.test, "interval_ns": h.health.interval, "timeout_ns": h.health.timeout,
            "start_period_ns": h.health.start_period, "start_interval_ns": h.health.start_interval, "retries": h.health.retries,
        }),
        Instruction::Shell(s) => json!({"shell": s.shell}),
    };
    json!({
        "keyword": i.keyword(),
        "start_line": src.start_line,
        "end_line": src.end_line,
        "original": src.original,
        "fields": fields,
    })
}

/// The machine-readable listing.
pub fn render_json(df: &dockerfile::Dockerfile, plan: &BuildPlan) -> Value {
    let stages: Vec<Value> = plan
        .stages
        .iter()
        .map(|s| {
            let base = match &s.base {
                Base::Image(i) => json!({"image": i}),
                Base::Stage(i) => json!({"stage": i}),
                Base::Scratch => json!("scratch"),
            };
            json!({
                "index": s.index,
                "name": s.name,
                "base": base,
                "platform": s.platform,
                "depends_on": s.depends_on,
                "from": instruction_json(&Instruction::From(s.from.clone())),
                "instructions": s.instructions.iter().map(instruction_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "dockerfile": df.file.display().to_string(),
        "syntax": df.syntax,
        "escape": df.escape.to_string(),
        "warnings": df.warnings,
        "target": plan.target,
        "global_args": plan.global_args.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "unused_build_args": plan.unused_build_args,
        "stages": stages,
    })
}
