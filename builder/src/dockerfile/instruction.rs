//! Typed instructions: each raw [`Node`] converted into an [`Instruction`] with its flags parsed
//! and validated (BuildKit's `instructions` package), and [`Instruction::expand`], which applies
//! the shell lexer to exactly the fields Docker expands.
//!
//! Values stay as written (quotes included) until `expand` is called: the executor calls it
//! for every instruction with the variables in scope at that point (even with none, since
//! expansion is also what removes quotes from ENV values, COPY paths, ...).

use std::path::Path;
use std::sync::Arc;

use super::diagnostic::Diagnostic;
use super::flags::{self, FlagKind, Flags};
use super::heredoc::{Heredoc, parse_heredoc};
use super::raw::{Args, Node};
use super::shell::{Lexer, Lookup, ShellError};

/// Where an instruction came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: Arc<Path>,
    /// 1-based, inclusive (continuation and heredoc lines included).
    pub start_line: usize,
    pub end_line: usize,
    /// The instruction with continuation lines joined, as image history's `created_by` uses.
    pub original: String,
    /// The physical lines, for quoting in errors.
    pub text: String,
    /// The file's escape character.
    pub escape: char,
}

impl Source {
    /// An error pointing at `needle` within this instruction (or at its keyword).
    pub fn error(&self, needle: Option<&str>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::in_instruction(&self.file, &self.text, self.start_line, needle, message)
    }
}

/// Shell form (run through the shell) or exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// A `KEY=value` pair of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// One name of an ARG instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

/// A heredoc used as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSource {
    /// The file name (the heredoc's name).
    pub path: String,
    /// The content (leading tabs removed for `<<-`).
    pub data: String,
    /// Whether variables in `data` are expanded.
    pub expand: bool,
}

/// COPY/ADD sources and destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub sources: Vec<String>,
    pub inline: Vec<InlineSource>,
    pub dest: String,
}

/// RUN `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Default,
    None,
    Host,
}

/// RUN `--security`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Sandbox,
    Insecure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    pub src: Source,
    pub image: String,
    /// The stage name, lower-cased.
    pub name: Option<String>,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub src: Source,
    pub command: Command,
    /// Heredocs of the command line (content as written, see [`Heredoc::file_content`]).
    pub heredocs: Vec<Heredoc>,
    /// `--mount` values, unparsed.
    pub mounts: Vec<String>,
    pub network: Option<Network>,
    pub security: Option<Security>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub src: Source,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub src: Source,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub src: Source,
    pub pairs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub src: Source,
    pub pairs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintainer {
    pub src: Source,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    pub src: Source,
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub src: Source,
    pub files: Files,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub keep_git_dir: Option<bool>,
    pub checksum: Option<String>,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub src: Source,
    pub files: Files,
    /// `--from`: a stage name, a stage index or an image reference (not expanded).
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub src: Source,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub src: Source,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workdir {
    pub src: Source,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub src: Source,
    pub args: Vec<ArgDecl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onbuild {
    pub src: Source,
    /// The trigger, validated.
    pub trigger: Box<Instruction>,
    /// The trigger's text as written (what goes into the image config's `OnBuild`).
    pub expression: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopsignal {
    pub src: Source,
    pub signal: String,
}

/// HEALTHCHECK's check; durations in nanoseconds (0: inherit/default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub src: Source,
    pub health: HealthConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shell {
    pub src: Source,
    pub shell: Vec<String>,
}

/// Every Dockerfile instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd(Cmd),
    Label(Label),
    Maintainer(Maintainer),
    Expose(Expose),
    Env(Env),
    Add(Add),
    Copy(Copy),
    Entrypoint(Entrypoint),
    Volume(Volume),
    User(User),
    Workdir(Workdir),
    Arg(Arg),
    Onbuild(Onbuild),
    Stopsignal(Stopsignal),
    Healthcheck(Healthcheck),
    Shell(Shell),
}

const COPY_FLAGS: &[(&str, FlagKind)] = &[
    ("from", FlagKind::String),
    ("chown", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("parents", FlagKind::Bool),
    ("exclude", FlagKind::Strings),
];
const ADD_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("keep-git-dir", FlagKind::Bool),
    ("checksum", FlagKind::String),
    ("exclude", FlagKind::Strings),
];
const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("mount", FlagKind::Strings),
    ("network", FlagKind::String),
    ("security", FlagKind::String),
];
const HEALTH_FLAGS: &[(&str, FlagKind)] = &[
    ("interval", FlagKind::String),
    ("timeout", FlagKind::String),
    ("start-period", FlagKind::String),
    ("start-interval", FlagKind::String),
    ("retries", FlagKind::String),
];
const FROM_FLAGS: &[(&str, FlagKind)] = &[("platform", FlagKind::String)];

/// Every instruction keyword, upper case.
pub const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

fn command_of(node: &Node) -> Command {
    let words = node.words();
    if node.json {
        Command::Exec(words.to_vec())
    } else {
        Command::Shell(words.first().cloned().unwrap_or_default())
    }
}

impl Instruction {
    /// Converts a raw node. `file`, `text` (the node's physical lines) and `escape` go into its
    /// [`Source`].
    pub fn from_node(
        node: &Node,
        file: &Path,
        text: &str,
        escape: char,
    ) -> Result<Instruction, Diagnostic> {
        let src = Source {
            file: Arc::from(file),
            start_line: node.start_line,
            end_line: node.end_line,
            original: node.original.clone(),
            text: text.to_string(),
            escape,
        };
        convert(node, src)
    }

    pub fn source(&self) -> &Source {
        match self {
            Instruction::From(i) => &i.src,
            Instruction::Run(i) => &i.src,
            Instruction::Cmd(i) => &i.src,
            Instruction::Label(i) => &i.src,
            Instruction::Maintainer(i) => &i.src,
            Instruction::Expose(i) => &i.src,
            Instruction::Env(i) => &i.src,
            Instruction::Add(i) => &i.src,
            Instruction::Copy(i) => &i.src,
            Instruction::Entrypoint(i) => &i.src,
            Instruction::Volume(i) => &i.src,
            Instruction::User(i) => &i.src,
            Instruction::Workdir(i) => &i.src,
            Instruction::Arg(i) => &i.src,
            Instruction::Onbuild(i) => &i.src,
            Instruction::Stopsignal(i) => &i.src,
            Instruction::Healthcheck(i) => &i.src,
            Instruction::Shell(i) => &i.src,
        }
    }

    /// The keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::Stopsignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
        }
    }

    /// Expands the fields Docker expands for this instruction, with `vars` (ENV overriding
    /// ARG, as the caller arranges): ENV and LABEL keys and values, WORKDIR, USER, EXPOSE,
    /// VOLUME, STOPSIGNAL, ARG names and defaults, FROM image and `--platform`, COPY/ADD
    /// sources, destination, `--chown`, `--chmod`, `--exclude`, ADD `--checksum`, and COPY/ADD
    /// heredoc contents whose delimiter was not quoted (quotes kept there). RUN, CMD,
    /// ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER, ONBUILD and COPY `--from` are not expanded.
    pub fn expand(&self, vars: Lookup<'_>) -> Result<Instruction, Diagnostic> {
        let src = self.source();
        let lex = Lexer::new(src.escape);
        let fail = |word: &str, e: ShellError| {
            src.error(Some(word), e.message)
                .with_expected("a valid shell word")
        };
        let word = |w: &String| lex.expand_word(w, vars).map_err(|e| fail(w, e));
        let opt = |w: &Option<String>| w.as_ref().map(word).transpose();
        let list = |ws: &Vec<String>| ws.iter().map(word).collect::<Result<Vec<_>, _>>();
        let pairs = |ps: &Vec<KeyValue>| {
            ps.iter()
                .map(|p| {
                    Ok(KeyValue {
                        key: word(&p.key)?,
                        value: word(&p.value)?,
                    })
                })
                .collect::<Result<Vec<_>, Diagnostic>>()
        };
        let files = |f: &Files| -> Result<Files, Diagnostic> {
            let mut raw = Lexer::new('\\');
            raw.skip_process_quotes = true;
            let inline = f
                .inline
                .iter()
                .map(|s| {
                    let data = if s.expand {
                        raw.expand_word(&s.data, vars)
                            .map_err(|e| fail(&s.path, e))?
                    } else {
                        s.data.clone()
                    };
                    Ok(InlineSource { data, ..s.clone() })
                })
                .collect::<Result<Vec<_>, Diagnostic>>()?;
            Ok(Files {
                sources: list(&f.sources)?,
                inline,
                dest: word(&f.dest)?,
            })
        };
        Ok(match self {
            Instruction::From(i) => Instruction::From(From {
                image: word(&i.image)?,
                platform: opt(&i.platform)?,
                ..i.clone()
            }),
            Instruction::Label(i) => Instruction::Label(Label {
                pairs: pairs(&i.pairs)?,
                ..i.clone()
            }),
            Instruction::Env(i) => Instruction::Env(Env {
                pairs: pairs(&i.pairs)?,
                ..i.clone()
            }),
            Instruction::Expose(i) => Instruction::Expose(Expose {
                ports: list(&i.ports)?,
                ..i.clone()
            }),
            Instruction::Volume(i) => Instruction::Volume(Volume {
                paths: list(&i.paths)?,
                ..i.clone()
            }),
            Instruction::User(i) => Instruction::User(User {
                user: word(&i.user)?,
                ..i.clone()
            }),
            Instruction::Workdir(i) => Instruction::Workdir(Workdir {
                path: word(&i.path)?,
                ..i.clone()
            }),
            Instruction::Stopsignal(i) => Instruction::Stopsignal(Stopsignal {
                signal: word(&i.signal)?,
                ..i.clone()
            }),
            Instruction::Arg(i) => Instruction::Arg(Arg {
                args: i
                    .args
                    .iter()
                    .map(|a| {
                        Ok(ArgDecl {
                            name: word(&a.name)?,
                            default: opt(&a.default)?,
                        })
                    })
                    .collect::<Result<Vec<_>, Diagnostic>>()?,
                ..i.clone()
            }),
            Instruction::Copy(i) => Instruction::Copy(Copy {
                files: files(&i.files)?,
                chown: opt(&i.chown)?,
                chmod: opt(&i.chmod)?,
                exclude: list(&i.exclude)?,
                ..i.clone()
            }),
            Instruction::Add(i) => Instruction::Add(Add {
                files: files(&i.files)?,
                chown: opt(&i.chown)?,
                chmod: opt(&i.chmod)?,
                checksum: opt(&i.checksum)?,
                exclude: list(&i.exclude)?,
                ..i.clone()
            }),
            other => other.clone(),
        })
    }
}

fn parse_flags(node: &Node, src: &Source, spec: &[(&str, FlagKind)]) -> Result<Flags, Diagnostic> {
    flags::parse(&node.flags, spec).map_err(|e| {
        src.error(
            Some(&e.word),
            format!("{}: {}", node.keyword.to_uppercase(), e.message),
        )
        .with_expected(e.expected)
    })
}

fn convert(node: &Node, src: Source) -> Result<Instruction, Diagnostic> {
    let kw = node.keyword.to_ascii_uppercase();
    let words = node.words();
    let fail =
        |message: String, expected: &str| Err(src.error(None, message).with_expected(expected));
    let at_least_one = |usage: &str| -> Result<(), Diagnostic> {
        if words.is_empty() {
            return Err(src
                .error(None, format!("{kw} requires at least one argument"))
                .with_expected(usage));
        }
        Ok(())
    };
    let exactly_one = |usage: &str| -> Result<String, Diagnostic> {
        match words {
            [one] => Ok(one.clone()),
            _ => Err(src
                .error(None, format!("{kw} requires exactly one argument"))
                .with_expected(usage)),
        }
    };
    if !matches!(kw.as_str(), "FROM" | "RUN" | "COPY" | "ADD" | "HEALTHCHECK")
        && KEYWORDS.contains(&kw.as_str())
    {
        parse_flags(node, &src, &[])?;
    }
    let instruction = match kw.as_str() {
        "FROM" => {
            let flags = parse_flags(node, &src, FROM_FLAGS)?;
            let name = match words {
                [_] => None,
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    let lower = name.to_lowercase();
                    if !valid_stage_name(&lower) {
                        return Err(src
                            .error(Some(name), format!("invalid name for build stage: {name:?}, name can't start with a number or contain symbols"))
                            .with_expected("a name matching [a-z][a-z0-9-_.]*"));
                    }
                    Some(lower)
                }
                _ => {
                    return fail(
                        "FROM requires either one or three arguments".into(),
                        "FROM [--platform=<platform>] <image> [AS <name>]",
                    );
                }
            };
            Instruction::From(From {
                image: words[0].clone(),
                name,
                platform: flags.string("platform"),
                src,
            })
        }
        "RUN" => {
            let flags = parse_flags(node, &src, RUN_FLAGS)?;
            let network = match flags.string("network").as_deref() {
                None => None,
                Some("default") => Some(Network::Default),
                Some("none") => Some(Network::None),
                Some("host") => Some(Network::Host),
                Some(other) => {
                    return Err(src
                        .error(
                            Some("--network"),
                            format!("unsupported network mode {other:?}"),
                        )
                        .with_expected("--network=default, none or host"));
                }
            };
            let security = match flags.string("security").as_deref() {
                None => None,
                Some("sandbox") => Some(Security::Sandbox),
                Some("insecure") => Some(Security::Insecure),
                Some(other) => {
                    return Err(src
                        .error(
                            Some("--security"),
                            format!("unsupported security mode {other:?}"),
                        )
                        .with_expected("--security=sandbox or insecure"));
                }
            };
            if !node.json && words.is_empty() {
                return fail(
                    "RUN requires at least one argument".into(),
                    "RUN <command> or RUN [\"executable\", \"arg\"...]",
                );
            }
            Instruction::Run(Run {
                command: command_of(node),
                heredocs: node.heredocs.clone(),
                mounts: flags.strings("mount"),
                network,
                security,
                src,
            })
        }
        "CMD" => Instruction::Cmd(Cmd {
            command: command_of(node),
            src,
        }),
        "ENTRYPOINT" => Instruction::Entrypoint(Entrypoint {
            command: command_of(node),
            src,
        }),
        "SHELL" => {
            if !node.json {
                return fail(
                    "SHELL requires the arguments to be in JSON form".into(),
                    "SHELL [\"executable\", \"parameters\"]",
                );
            }
            if words.is_empty() {
                return fail(
                    "SHELL requires at least one argument".into(),
                    "SHELL [\"executable\", \"parameters\"]",
                );
            }
            Instruction::Shell(Shell {
                shell: words.to_vec(),
                src,
            })
        }
        "ENV" | "LABEL" => {
            at_least_one(&format!("{kw} <key>=<value> ..."))?;
            if !words.len().is_multiple_of(3) {
                return fail(
                    format!("Bad input to {kw}, too many arguments"),
                    &format!("{kw} <key>=<value> ..."),
                );
            }
            let mut pairs = Vec::new();
            for chunk in words.chunks(3) {
                if chunk[0].is_empty() {
                    return fail(
                        format!("{kw} names can not be blank"),
                        &format!("{kw} <key>=<value> ..."),
                    );
                }
                pairs.push(KeyValue {
                    key: chunk[0].clone(),
                    value: chunk[1].clone(),
                });
            }
            if kw == "ENV" {
                Instruction::Env(Env { pairs, src })
            } else {
                Instruction::Label(Label { pairs, src })
            }
        }
        "MAINTAINER" => Instruction::Maintainer(Maintainer {
            name: exactly_one("MAINTAINER <name>")?,
            src,
        }),
        "USER" => Instruction::User(User {
            user: exactly_one("USER <user>[:<group>]")?,
            src,
        }),
        "WORKDIR" => Instruction::Workdir(Workdir {
            path: exactly_one("WORKDIR <path>")?,
            src,
        }),
        "STOPSIGNAL" => Instruction::Stopsignal(Stopsignal {
            signal: exactly_one("STOPSIGNAL <signal>")?,
            src,
        }),
        "EXPOSE" => {
            at_least_one("EXPOSE <port>[/<protocol>] ...")?;
            Instruction::Expose(Expose {
                ports: words.to_vec(),
                src,
            })
        }
        "VOLUME" => {
            at_least_one("VOLUME <path> ... or VOLUME [\"<path>\", ...]")?;
            if words.iter().any(|w| w.trim().is_empty()) {
                return fail(
                    "VOLUME specified can not be an empty string".into(),
                    "VOLUME <path> ...",
                );
            }
            Instruction::Volume(Volume {
                paths: words.to_vec(),
                src,
            })
        }
        "ARG" => {
            at_least_one("ARG <name>[=<default value>] ...")?;
            let mut args = Vec::new();
            for w in words {
                let decl = match w.split_once('=') {
                    Some(("", _)) => {
                        return Err(src
                            .error(Some(w), "ARG names can not be blank")
                            .with_expected("ARG <name>[=<default value>]"));
                    }
                    Some((k, v)) => ArgDecl {
                        name: k.to_string(),
                        default: Some(v.to_string()),
                    },
                    None => ArgDecl {
                        name: w.clone(),
                        default: None,
                    },
                };
                args.push(decl);
            }
            Instruction::Arg(Arg { args, src })
        }
        "COPY" | "ADD" => {
            let spec = if kw == "COPY" { COPY_FLAGS } else { ADD_FLAGS };
            let flags = parse_flags(node, &src, spec)?;
            let usage = format!("{kw} [--flags] <src>... <dest>");
            match words.len() {
                0 => return fail(format!("{kw} requires at least two arguments"), &usage),
                1 => {
                    return fail(
                        format!(
                            "{kw} requires at least two arguments, but only one was provided. Destination could not be determined"
                        ),
                        &usage,
                    );
                }
                _ => {}
            }
            let files = sources_and_dest(node, &src, &kw)?;
            if kw == "COPY" {
                Instruction::Copy(Copy {
                    files,
                    from: flags.string("from"),
                    chown: flags.string("chown"),
                    chmod: flags.string("chmod"),
                    link: flags.bool("link").unwrap_or(false),
                    parents: flags.bool("parents").unwrap_or(false),
                    exclude: flags.strings("exclude"),
                    src,
                })
            } else {
                Instruction::Add(Add {
                    files,
                    chown: flags.string("chown"),
                    chmod: flags.string("chmod"),
                    link: flags.bool("link").unwrap_or(false),
                    keep_git_dir: flags.bool("keep-git-dir"),
                    checksum: flags.string("checksum"),
                    exclude: flags.strings("exclude"),
                    src,
                })
            }
        }
        "HEALTHCHECK" => {
            let flags = parse_flags(node, &src, HEALTH_FLAGS)?;
            at_least_one("HEALTHCHECK [--flags] CMD <command> or HEALTHCHECK NONE")?;
            let typ = words[0].to_uppercase();
            let mut health = HealthConfig {
                test: Vec::new(),
                interval: 0,
                timeout: 0,
                start_period: 0,
                start_interval: 0,
                retries: 0,
            };
            match typ.as_str() {
                "NONE" => {
                    if words.len() != 1 {
                        return fail(
                            "HEALTHCHECK NONE takes no arguments".into(),
                            "HEALTHCHECK NONE",
                        );
                    }
                    health.test = vec!["NONE".into()];
                }
                "CMD" => {
                    let args = &words[1..];
                    if args.is_empty() {
                        return fail(
                            "Missing command after HEALTHCHECK CMD".into(),
                            "HEALTHCHECK CMD <command>",
                        );
                    }
                    health.test = if node.json {
                        std::iter::once("CMD".to_string())
                            .chain(args.iter().cloned())
                            .collect()
                    } else {
                        vec!["CMD-SHELL".into(), args[0].clone()]
                    };
                    for (flag, slot) in [
                        ("interval", &mut health.interval),
                        ("timeout", &mut health.timeout),
                        ("start-period", &mut health.start_period),
                        ("start-interval", &mut health.start_interval),
                    ] {
                        if let Some(v) = flags.string(flag) {
                            *slot = parse_interval(flag, &v).map_err(|m| {
                                src.error(Some(&format!("--{flag}")), m)
                                    .with_expected("a duration of at least 1ms, e.g. 30s")
                            })?;
                        }
                    }
                    if let Some(r) = flags.string("retries") {
                        health.retries = match r.parse::<i64>() {
                            Ok(n) if n >= 0 => n,
                            Ok(n) => {
                                return Err(src
                                    .error(
                                        Some("--retries"),
                                        format!("--retries cannot be negative ({n})"),
                                    )
                                    .with_expected("a count of 0 or more"));
                            }
                            Err(_) => {
                                return Err(src
                                    .error(
                                        Some("--retries"),
                                        format!("invalid --retries value {r:?}"),
                                    )
                                    .with_expected("an integer"));
                            }
                        };
                    }
                }
                _ => {
                    return Err(src
                        .error(
                            Some(&words[0]),
                            format!("Unknown type {:?} in HEALTHCHECK (try CMD)", words[0]),
                        )
                        .with_expected("HEALTHCHECK CMD <command> or HEALTHCHECK NONE"));
                }
            }
            Instruction::Healthcheck(Healthcheck { health, src })
        }
        "ONBUILD" => {
            let Args::Nested(child) = &node.args else {
                return Err(src
                    .error(None, "ONBUILD requires at least one argument")
                    .with_expected("ONBUILD <instruction>"));
            };
            let inner = child.keyword.to_ascii_uppercase();
            match inner.as_str() {
                "ONBUILD" => {
                    return fail(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
                        "ONBUILD <instruction other than ONBUILD, FROM, MAINTAINER>",
                    );
                }
                "FROM" | "MAINTAINER" => {
                    return fail(
                        format!("{inner} isn't allowed as an ONBUILD trigger"),
                        "ONBUILD <instruction other than ONBUILD, FROM, MAINTAINER>",
                    );
                }
                _ => {}
            }
            let mut child = (**child).clone();
            child.start_line = node.start_line;
            child.end_line = node.end_line;
            child.heredocs = node.heredocs.clone();
            let trigger = convert(&child, src.clone())?;
            let expression = strip_keyword(node.original.trim_start()).to_string();
            Instruction::Onbuild(Onbuild {
                trigger: Box::new(trigger),
                expression,
                src,
            })
        }
        _ => {
            return Err(src
                .error(
                    Some(&node.keyword),
                    format!("unknown instruction: {}", node.keyword),
                )
                .with_expected(format!("one of {}", KEYWORDS.join(", "))));
        }
    };
    Ok(instruction)
}

fn strip_keyword(s: &str) -> &str {
    s.split_once(char::is_whitespace)
        .map(|(_, r)| r.trim_start())
        .unwrap_or("")
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
}

/// HEALTHCHECK durations: a Go duration, 0 (default), or at least 1ms.
fn parse_interval(flag: &str, value: &str) -> Result<i64, String> {
    if value.is_empty() {
        return Ok(0);
    }
    let ns = flags::parse_go_duration(value).map_err(|e| format!("--{flag}: {e}"))?;
    if ns == 0 {
        return Ok(0);
    }
    if ns < 1_000_000 {
        return Err(format!("--{flag} cannot be less than 1ms (got {value})"));
    }
    Ok(ns as i64)
}

fn sources_and_dest(node: &Node, src: &Source, kw: &str) -> Result<Files, Diagnostic> {
    let words = node.words();
    let (dest, srcs) = words
        .split_last()
        .expect("at least two words, checked by the caller");
    if !node.json && matches!(parse_heredoc(dest), Ok(Some(_))) {
        return Err(src
            .error(
                Some(dest),
                format!("{kw} cannot accept a heredoc as a destination"),
            )
            .with_expected(format!("{kw} <<EOF <dest>")));
    }
    let mut files = Files {
        sources: Vec::new(),
        inline: Vec::new(),
        dest: dest.clone(),
    };
    for s in srcs {
        let doc = if node.json {
            None
        } else {
            parse_heredoc(s).map_err(|m| src.error(Some(s), m))?
        };
        match doc {
            Some(doc) => {
                let content = node
                    .heredocs
                    .iter()
                    .find(|h| h.name == doc.name)
                    .map(|h| h.content.clone())
                    .unwrap_or_default();
                let data = if doc.chomp {
                    super::heredoc::chomp(&content)
                } else {
                    content
                };
                files.inline.push(InlineSource {
                    path: doc.name,
                    data,
                    expand: doc.expand,
                });
            }
            None => files.sources.push(s.clone()),
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        crate::dockerfile::parse(text, Path::new("Dockerfile"))
            .expect("parses")
            .instructions
            .remove(0)
    }

    fn vars(name: &str) -> Option<String> {
        match name {
            "V" => Some("val".into()),
            "S" => Some("a b".into()),
            _ => None,
        }
    }

    #[test]
    fn expand_touches_only_docker_expanded_fields() {
        let run = one("RUN echo $V");
        assert_eq!(run.expand(&vars).unwrap(), run, "RUN is left to the shell");
        let cmd = one("CMD [\"$V\"]");
        assert_eq!(cmd.expand(&vars).unwrap(), cmd);
        let Instruction::Env(env) = one("ENV A=\"$V x\" B='$V' C=${S}").expand(&vars).unwrap()
        else {
            panic!()
        };
        let got: Vec<(&str, &str)> = env
            .pairs
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(got, [("A", "val x"), ("B", "$V"), ("C", "a b")]);
        let Instruction::Env(env) = one("ENV A \"quoted value\"").expand(&vars).unwrap() else {
            panic!()
        };
        assert_eq!(env.pairs[0].value, "quoted value");
        let Instruction::Copy(c) = one("COPY --from=$V --chown=$V:$V 'a'b $V/ /dst/$V")
            .expand(&vars)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.from.as_deref(),
            Some("$V"),
            "--from is resolved by the plan, not expanded here"
        );
        assert_eq!(c.chown.as_deref(), Some("val:val"));
        assert_eq!(c.files.sources, ["ab", "val/"]);
        assert_eq!(c.files.dest, "/dst/val");
        let Instruction::Workdir(w) = one("WORKDIR /w/${V:-x}").expand(&vars).unwrap() else {
            panic!()
        };
        assert_eq!(w.path, "/w/val");
        let Instruction::Arg(a) = one("ARG A=$V B").expand(&vars).unwrap() else {
            panic!()
        };
        assert_eq!(a.args[0].default.as_deref(), Some("val"));
        assert_eq!(a.args[1].default, None);
        let onbuild = one("ONBUILD RUN echo $V");
        assert_eq!(onbuild.expand(&vars).unwrap(), onbuild);
    }

    #[test]
    fn copy_heredoc_content_expands_but_keeps_quotes() {
        let i = one("COPY <<EOF /a\n\"$V\" '$V'\nEOF\n");
        let Instruction::Copy(c) = i.expand(&vars).unwrap() else {
            panic!()
        };
        assert_eq!(c.files.inline[0].data, "\"val\" 'val'\n");
        let i = one("COPY <<'EOF' /a\n$V\nEOF\n");
        let Instruction::Copy(c) = i.expand(&vars).unwrap() else {
            panic!()
        };
        assert_eq!(c.files.inline[0].data, "$V\n");
    }

    #[test]
    fn typed_details() {
        let Instruction::Healthcheck(h) =
            one("HEALTHCHECK --interval=1m30s --retries=2 CMD curl -f x")
        else {
            panic!()
        };
        assert_eq!(h.health.test, ["CMD-SHELL", "curl -f x"]);
        assert_eq!(h.health.interval, 90_000_000_000);
        assert_eq!(h.health.retries, 2);
        let Instruction::Healthcheck(h) = one("HEALTHCHECK NONE") else {
            panic!()
        };
        assert_eq!(h.health.test, ["NONE"]);
        let Instruction::Run(r) =
            one("RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=host x")
        else {
            panic!()
        };
        assert_eq!(r.mounts.len(), 2);
        assert_eq!(r.network, Some(Network::Host));
        let Instruction::From(f) = one("FROM --platform=linux/arm64 img AS Builder") else {
            panic!()
        };
        assert_eq!(
            (f.platform.as_deref(), f.name.as_deref()),
            (Some("linux/arm64"), Some("builder"))
        );
        let Instruction::Onbuild(o) = one("ONBUILD COPY --chown=1 . /app") else {
            panic!()
        };
        assert_eq!(o.expression, "COPY --chown=1 . /app");
        assert!(matches!(*o.trigger, Instruction::Copy(_)));
        let Instruction::Shell(s) = one("SHELL [\"/bin/bash\", \"-c\"]") else {
            panic!()
        };
        assert_eq!(s.shell, ["/bin/bash", "-c"]);
    }

    #[test]
    fn rejects_bad_values() {
        for (text, msg) in [
            ("RUN --network=bridge x", "unsupported network mode"),
            ("RUN --security=root x", "unsupported security mode"),
            ("RUN --mount x", "missing a value"),
            ("COPY --link=maybe a b", "expecting boolean"),
            ("COPY --from=a --from=b a b", "duplicate flag"),
            ("FROM a AS 1abc", "invalid name for build stage"),
            ("FROM a b", "one or three arguments"),
            ("SHELL /bin/sh", "JSON form"),
            ("HEALTHCHECK --retries=-1 CMD x", "cannot be negative"),
            ("HEALTHCHECK FOO x", "Unknown type"),
            ("HEALTHCHECK CMD", "Missing command"),
            (
                "ONBUILD MAINTAINER x",
                "isn't allowed as an ONBUILD trigger",
            ),
            ("ARG =x", "can not be blank"),
            ("WORKDIR --x=1 /a", "unknown flag"),
        ] {
            let e = crate::dockerfile::parse(text, Path::new("Dockerfile")).unwrap_err();
            assert!(e.message.contains(msg), "{text}: {e}");
            assert_eq!(e.line, 1);
        }
    }
}
