//! The build plan: which stages to build, in what order, from which bases, with which
//! global ARG values.
//!
//! - [`plan`]`(&Dockerfile, &PlanOptions) -> Result<BuildPlan, Diagnostic>` splits the
//!   instructions into stages, resolves global ARGs (before the first FROM; `--build-arg`
//!   overrides; the predefined platform ARGs), expands FROM's image and `--platform` with
//!   them, resolves stage dependencies (FROM <stage>, COPY --from=<stage|index>, RUN
//!   --mount=from=<stage>), rejects duplicate stage names and cycles, prunes to `--target`,
//!   and orders the needed stages so that each comes after the stages it depends on.
//! - [`Scope`]: the per-stage variable scope the executor keeps while it runs a stage's
//!   instructions (ARG and ENV rules, the lookup for [`Instruction::expand`], RUN's
//!   environment).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::dockerfile::{self, ArgDecl, Diagnostic, Dockerfile, From, Instruction};

/// An OS/architecture/variant triple (`linux/arm64`, `linux/arm/v7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform strata runs on.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: arch.to_string(),
            variant: variant.map(String::from),
        }
    }

    /// Parses `os/arch[/variant]`, or a lone OS (`linux`: this machine's architecture) or
    /// architecture (`arm64`: Linux), normalising common aliases (`x86_64`, `aarch64`).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let bad =
            || format!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64");
        let lower = s.trim().to_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        }) {
            return Err(bad());
        }
        let arch = |a: &str| match a {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            "i386" | "i686" => "386".to_string(),
            other => other.to_string(),
        };
        const OSES: &[&str] = &[
            "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos",
        ];
        match parts.as_slice() {
            [one] if OSES.contains(one) => Ok(Platform {
                os: one.to_string(),
                ..Platform::host()
            }),
            [one] => Ok(Platform {
                os: "linux".into(),
                arch: arch(one),
                variant: None,
            }),
            [os, a] => Ok(Platform {
                os: os.to_string(),
                arch: arch(a),
                variant: None,
            }),
            [os, a, v] => Ok(Platform {
                os: os.to_string(),
                arch: arch(a),
                variant: Some(v.to_string()),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Build args usable in RUN without an ARG instruction, and never reported as unused.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What to plan for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// `--target`: build up to this stage (default: the last).
    pub target: Option<String>,
    /// `--build-arg NAME=value`, or `NAME` alone (the value comes from the environment; when
    /// it is not set there the argument is ignored, as kaniko and docker do).
    pub build_args: Vec<(String, Option<String>)>,
    pub build_platform: Platform,
    pub target_platform: Platform,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            target: None,
            build_args: Vec::new(),
            build_platform: Platform::host(),
            target_platform: Platform::host(),
        }
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// An image reference, global ARGs expanded.
    Image(String),
    /// Another stage, by index.
    Stage(usize),
    Scratch,
}

/// One stage of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Position among all the Dockerfile's stages (0-based), as `COPY --from=<index>` counts.
    pub index: usize,
    /// The lower-cased `AS` name.
    pub name: Option<String>,
    pub base: Base,
    /// The FROM `--platform`, expanded; `None` means the target platform.
    pub platform: Option<String>,
    /// The FROM instruction itself.
    pub from: From,
    /// The instructions after FROM, unexpanded (expand them with a [`Scope`]).
    pub instructions: Vec<Instruction>,
    /// Indexes of the stages this one needs built first.
    pub depends_on: Vec<usize>,
}

/// The stages to build, in build order (the target last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub stages: Vec<Stage>,
    /// Index of the target stage.
    pub target: usize,
    /// Global scope: predefined platform ARGs and the ARGs before the first FROM, resolved.
    pub global_args: Vec<(String, Option<String>)>,
    /// `--build-arg` values after taking bare names from the environment.
    pub build_args: BTreeMap<String, String>,
    /// Build args that no ARG in the global scope or a needed stage declares.
    pub unused_build_args: Vec<String>,
    /// Stage names (lower case) to indexes, over all stages, for [`BuildPlan::resolve_source`].
    stage_names: BTreeMap<String, usize>,
    stage_count: usize,
    /// Stage index to position in `stages` (None: pruned).
    positions: Vec<Option<usize>>,
}

impl BuildPlan {
    /// The stage with this index, if it is part of the plan.
    pub fn stage(&self, index: usize) -> Option<&Stage> {
        self.positions
            .get(index)
            .copied()
            .flatten()
            .and_then(|p| self.stages.get(p))
    }

    /// Resolves a `COPY --from` or `RUN --mount from=` value: a stage (by name or index) or
    /// an image reference (global ARGs expanded).
    pub fn resolve_source(&self, raw: &str) -> Base {
        let value = self.expand_global(raw).unwrap_or_else(|_| raw.to_string());
        if let Ok(i) = value.parse::<usize>()
            && i < self.stage_count
        {
            return Base::Stage(i);
        }
        match self.stage_names.get(&value.to_lowercase()) {
            Some(&i) => Base::Stage(i),
            None if value == "scratch" => Base::Scratch,
            None => Base::Image(value),
        }
    }

    fn expand_global(&self, word: &str) -> Result<String, dockerfile::ShellError> {
        dockerfile::expand_word(word, &|n| lookup_args(&self.global_args, n))
    }

    /// A fresh variable scope for running `stage`, starting from the base image's `Env`.
    pub fn scope(&self, base_env: Vec<(String, String)>) -> Scope<'_> {
        let mut scope = Scope {
            plan: self,
            env: Vec::new(),
            args: Vec::new(),
        };
        for (k, v) in base_env {
            scope.set_env(k, v);
        }
        scope
    }
}

fn lookup_args(args: &[(String, Option<String>)], name: &str) -> Option<String> {
    args.iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.clone())
}

/// The variables in scope while a stage runs.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    plan: &'a BuildPlan,
    env: Vec<(String, String)>,
    args: Vec<(String, Option<String>)>,
}

impl Scope<'_> {
    /// The lookup for [`Instruction::expand`]: ENV first (ENV overrides ARG), then ARGs
    /// declared in this stage.
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| lookup_args(&self.args, name))
    }

    /// Sets an environment variable (ENV, or the base image's Env).
    pub fn set_env(&mut self, key: String, value: String) {
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value));
    }

    /// Applies an ENV instruction: all pairs are expanded with the scope before it.
    pub fn apply_env(
        &mut self,
        env: &dockerfile::Env,
    ) -> Result<Vec<(String, String)>, Diagnostic> {
        let Instruction::Env(expanded) =
            Instruction::Env(env.clone()).expand(&|n| self.lookup(n))?
        else {
            unreachable!("expand keeps the variant")
        };
        let pairs: Vec<(String, String)> = expanded
            .pairs
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        for (k, v) in &pairs {
            self.set_env(k.clone(), v.clone());
        }
        Ok(pairs)
    }

    /// Applies an ARG instruction with BuildKit's rules: a `--build-arg` value wins; else the
    /// default, expanded with the current scope; else the global ARG of that name. Returns the
    /// declared names with their values (for image history).
    pub fn apply_arg(
        &mut self,
        arg: &dockerfile::Arg,
    ) -> Result<Vec<(String, Option<String>)>, Diagnostic> {
        let mut out = Vec::new();
        for ArgDecl { name, default } in &arg.args {
            let value = if let Some(v) = self.plan.build_args.get(name) {
                Some(v.clone())
            } else if let Some(d) = default {
                let lex = dockerfile::shell::Lexer::new(arg.src.escape);
                Some(
                    lex.expand_word(d, &|n| self.lookup(n))
                        .map_err(|e| arg.src.error(Some(d), e.message))?,
                )
            } else {
                lookup_args(&self.plan.global_args, name)
            };
            self.args.push((name.clone(), value.clone()));
            out.push((name.clone(), value));
        }
        Ok(out)
    }

    /// The environment variables in effect (image config `Env`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// RUN's environment: ENV, then ARGs with values that ENV does not override, then proxy
    /// build args (which need no ARG).
    pub fn run_env(&self) -> Vec<(String, String)> {
        let mut out = self.env.clone();
        let mut seen: BTreeSet<String> = out.iter().map(|(k, _)| k.clone()).collect();
        for (k, v) in self.args.iter().rev() {
            if let Some(v) = v
                && seen.insert(k.clone())
            {
                out.push((k.clone(), v.clone()));
            }
        }
        for p in PROXY_ARGS {
            if let Some(v) = self.plan.build_args.get(*p)
                && seen.insert(p.to_string())
            {
                out.push((p.to_string(), v.clone()));
            }
        }
        out
    }
}

fn file_error(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message,
        line_text: None,
        expected: None,
    }
}

fn predefined_args(o: &PlanOptions) -> Vec<(String, Option<String>)> {
    let mut v = Vec::new();
    for (prefix, p) in [("BUILD", &o.build_platform), ("TARGET", &o.target_platform)] {
        v.push((format!("{prefix}PLATFORM"), Some(p.to_string())));
        v.push((format!("{prefix}OS"), Some(p.os.clone())));
        v.push((format!("{prefix}ARCH"), Some(p.arch.clone())));
        v.push((
            format!("{prefix}VARIANT"),
            Some(p.variant.clone().unwrap_or_default()),
        ));
    }
    v
}

/// Plans the build.
pub fn plan(df: &Dockerfile, opts: &PlanOptions) -> Result<BuildPlan, Diagnostic> {
    let mut build_args = BTreeMap::new();
    for (k, v) in &opts.build_args {
        match v {
            Some(v) => {
                build_args.insert(k.clone(), v.clone());
            }
            None => {
                if let Ok(v) = std::env::var(k) {
                    build_args.insert(k.clone(), v);
                }
            }
        }
    }

    // Global scope: everything before the first FROM must be ARG.
    let mut global_args = predefined_args(opts);
    let first_from = df
        .instructions
        .iter()
        .position(|i| matches!(i, Instruction::From(_)));
    let Some(first_from) = first_from else {
        return Err(file_error(
            &df.file,
            "no build stage: the Dockerfile has no FROM instruction".into(),
        )
        .with_expected("FROM <image> [AS <name>]"));
    };
    let mut declared: BTreeSet<String> = BTreeSet::new();
    for inst in &df.instructions[..first_from] {
        let Instruction::Arg(arg) = inst else {
            return Err(inst
                .source()
                .error(
                    None,
                    format!("{} cannot come before the first FROM", inst.keyword()),
                )
                .with_expected("only ARG instructions before the first FROM"));
        };
        for ArgDecl { name, default } in &arg.args {
            declared.insert(name.clone());
            let value = match (build_args.get(name), default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => {
                    let lex = dockerfile::shell::Lexer::new(arg.src.escape);
                    Some(
                        lex.expand_word(d, &|n| lookup_args(&global_args, n))
                            .map_err(|e| arg.src.error(Some(d), e.message))?,
                    )
                }
                // `ARG TARGETARCH` before FROM keeps the predefined value.
                (None, None) => lookup_args(&global_args, name),
            };
            global_args.push((name.clone(), value));
        }
    }

    // Split into stages.
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage_names: BTreeMap<String, usize> = BTreeMap::new();
    for inst in &df.instructions[first_from..] {
        match inst {
            Instruction::From(from) => {
                let index = stages.len();
                let lookup = |n: &str| lookup_args(&global_args, n);
                let lex = dockerfile::shell::Lexer::new(from.src.escape);
                let image = lex
                    .expand_word(&from.image, &lookup)
                    .map_err(|e| from.src.error(Some(&from.image), e.message))?;
                if image.trim().is_empty() {
                    return Err(from
                        .src
                        .error(
                            Some(&from.image),
                            format!("base name ({}) should not be blank", from.image),
                        )
                        .with_expected("an image reference, a stage name or scratch"));
                }
                let platform = match &from.platform {
                    Some(p) => {
                        let v = lex
                            .expand_word(p, &lookup)
                            .map_err(|e| from.src.error(Some(p), e.message))?;
                        Platform::parse(&v).map_err(|m| from.src.error(Some("--platform"), m))?;
                        Some(v)
                    }
                    None => None,
                };
                let base = if let Some(&i) = stage_names.get(&image.to_lowercase()) {
                    Base::Stage(i)
                } else if image == "scratch" {
                    Base::Scratch
                } else {
                    Base::Image(image)
                };
                if let Some(name) = &from.name
                    && stage_names.insert(name.clone(), index).is_some()
                {
                    return Err(from
                        .src
                        .error(
                            Some(name.as_str()),
                            format!("duplicate stage name {name:?}"),
                        )
                        .with_expected("a stage name not used by an earlier stage"));
                }
                stages.push(Stage {
                    index,
                    name: from.name.clone(),
                    base,
                    platform,
                    from: from.clone(),
                    instructions: Vec::new(),
                    depends_on: Vec::new(),
                });
            }
            other => stages
                .last_mut()
                .expect("first_from is a FROM")
                .instructions
                .push(other.clone()),
        }
    }

    // Dependencies (COPY --from and mounts may name any stage, even a later one).
    let mut plan = BuildPlan {
        stages: Vec::new(),
        target: 0,
        global_args,
        build_args,
        unused_build_args: Vec::new(),
        stage_names,
        stage_count: stages.len(),
        positions: Vec::new(),
    };
    for (i, stage) in stages.iter_mut().enumerate() {
        let mut deps: Vec<usize> = Vec::new();
        if let Base::Stage(b) = stage.base {
            deps.push(b);
        }
        for inst in &stage.instructions {
            let mut sources: Vec<&str> = Vec::new();
            match inst {
                Instruction::Copy(c) => sources.extend(c.from.as_deref()),
                Instruction::Run(r) => {
                    sources.extend(r.mounts.iter().filter_map(|m| mount_from(m)))
                }
                _ => {}
            }
            for raw in sources {
                if let Ok(n) = raw.parse::<usize>()
                    && n >= plan.stage_count
                {
                    return Err(inst
                        .source()
                        .error(
                            Some(raw),
                            format!(
                                "invalid stage index {n}: the Dockerfile has {} stage(s)",
                                plan.stage_count
                            ),
                        )
                        .with_expected(format!(
                            "a stage index below {}, a stage name, or an image",
                            plan.stage_count
                        )));
                }
                match plan.resolve_source(raw) {
                    Base::Stage(s) if s == i => {
                        return Err(inst
                            .source()
                            .error(Some(raw), format!("{raw:?} refers to the current stage"))
                            .with_expected("an earlier or later stage, or an image"));
                    }
                    Base::Stage(s) => deps.push(s),
                    _ => {}
                }
            }
        }
        deps.sort_unstable();
        deps.dedup();
        stage.depends_on = deps;
    }

    // Target and pruning.
    let target = match &opts.target {
        None => stages.len() - 1,
        Some(t) => *plan.stage_names.get(&t.to_lowercase()).ok_or_else(|| {
            let names: Vec<&str> = plan.stage_names.keys().map(String::as_str).collect();
            file_error(&df.file, format!("target stage {t:?} could not be found")).with_expected(
                if names.is_empty() {
                    "no --target: this Dockerfile has no named stages".to_string()
                } else {
                    format!("one of {}", names.join(", "))
                },
            )
        })?,
    };
    let mut order = Vec::new();
    let mut state = vec![0u8; stages.len()]; // 0 new, 1 visiting, 2 done
    visit(target, &stages, &mut state, &mut order)?;

    // Build args nobody consumes.
    for s in &order {
        for inst in &stages[*s].instructions {
            if let Instruction::Arg(a) = inst {
                declared.extend(a.args.iter().map(|d| d.name.clone()));
            }
        }
    }
    let predefined: Vec<String> = predefined_args(opts).into_iter().map(|(k, _)| k).collect();
    plan.unused_build_args = plan
        .build_args
        .keys()
        .filter(|k| {
            !declared.contains(*k) && !PROXY_ARGS.contains(&k.as_str()) && !predefined.contains(k)
        })
        .cloned()
        .collect();
    plan.target = target;
    let mut by_index: Vec<Option<Stage>> = stages.into_iter().map(Some).collect();
    plan.positions = vec![None; by_index.len()];
    for (pos, &i) in order.iter().enumerate() {
        plan.positions[i] = Some(pos);
    }
    plan.stages = order
        .into_iter()
        .filter_map(|i| by_index[i].take())
        .collect();
    Ok(plan)
}

/// Depth-first post-order from `root`: dependencies before dependents; cycles are errors.
/// Iterative, so a long chain of stages cannot overflow the stack.
fn visit(
    root: usize,
    stages: &[Stage],
    state: &mut [u8],
    order: &mut Vec<usize>,
) -> Result<(), Diagnostic> {
    // state: 0 new, 1 on the current path, 2 done. Stack frames: (stage, next dependency).
    let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
    state[root] = 1;
    while let Some(&mut (i, ref mut next)) = stack.last_mut() {
        match stages[i].depends_on.get(*next).copied() {
            Some(d) => {
                *next += 1;
                match state[d] {
                    0 => {
                        state[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        let s = &stages[d];
                        let name = s.name.clone().unwrap_or_else(|| d.to_string());
                        return Err(s
                            .from
                            .src
                            .error(
                                None,
                                format!("circular dependency detected on stage: {name}"),
                            )
                            .with_expected("stages that do not depend on each other in a cycle"));
                    }
                    _ => {}
                }
            }
            None => {
                state[i] = 2;
                order.push(i);
                stack.pop();
            }
        }
    }
    Ok(())
}

/// The `from=` of a RUN `--mount` value, unless the mount is a secret or ssh mount.
fn mount_from(spec: &str) -> Option<&str> {
    let mut from = None;
    let mut kind = "bind";
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k.trim().to_lowercase().as_str() {
            "from" => from = Some(v.trim()),
            "type" => kind = v.trim(),
            _ => {}
        }
    }
    if kind == "secret" || kind == "ssh" {
        None
    } else {
        from.filter(|f| !f.is_empty())
    }
}
