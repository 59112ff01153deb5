//! Instructions that change only the image config: ENV, ARG, LABEL, EXPOSE,
//! VOLUME, ENTRYPOINT, CMD, HEALTHCHECK, STOPSIGNAL, USER, WORKDIR, SHELL,
//! ONBUILD and MAINTAINER, applied as BuildKit applies them; and the variable
//! scope (ENV over ARG) every instruction is expanded with.
//!
//! WORKDIR also creates its directory in the root; that is the orchestrator's
//! job (it tells the snapshotter), this module only records the config.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::dockerfile::{Command, Instruction};
use crate::image::config::{Healthcheck, ImageConfig};

/// The PATH BuildKit gives Linux images whose config has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell of the shell form when no SHELL was given.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into()]
}

/// What a stage's instructions see: its config's ENV, the ARGs declared so
/// far with their values, and the build's `--build-arg`s.
#[derive(Debug, Clone, Default)]
pub struct StageVars {
    /// ARGs declared in the stage, in order, with their value (None: declared, unset).
    pub args: Vec<(String, Option<String>)>,
    /// `--build-arg` values (None: a bare NAME whose variable is not set).
    pub build_args: BTreeMap<String, Option<String>>,
    /// Values of the ARGs declared before the first FROM.
    pub global_args: BTreeMap<String, Option<String>>,
    /// Whether CMD was set in this stage (ENTRYPOINT resets an inherited CMD only).
    pub cmd_set: bool,
}

impl StageVars {
    /// A variable's value: ENV wins over ARG, as in Docker.
    pub fn lookup(&self, config: &ImageConfig, name: &str) -> Option<String> {
        if let Some(v) = env_get(config, name) {
            return Some(v);
        }
        self.args.iter().rev().find(|(n, _)| n == name).and_then(|(_, v)| v.clone())
    }

    /// Declares an ARG: a `--build-arg` wins over the default, which wins
    /// over the global ARG of the same name.
    pub fn declare(&mut self, name: &str, default: Option<String>) {
        let value = match self.build_args.get(name) {
            Some(Some(v)) => Some(v.clone()),
            _ => default.or_else(|| self.global_args.get(name).cloned().flatten()),
        };
        self.args.retain(|(n, _)| n != name);
        self.args.push((name.to_string(), value));
    }

    /// The ARGs with a value, for a RUN's environment (ENV of the same name wins).
    pub fn arg_env(&self, config: &ImageConfig) -> Vec<(String, String)> {
        self.args
            .iter()
            .filter(|(n, _)| env_get(config, n).is_none())
            .filter_map(|(n, v)| v.clone().map(|v| (n.clone(), v)))
            .collect()
    }
}

/// A value of the config's ENV.
pub fn env_get(config: &ImageConfig, name: &str) -> Option<String> {
    config.config.env.as_ref()?.iter().rev().find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Sets an ENV value in place (or appends it).
pub fn env_set(config: &mut ImageConfig, name: &str, value: &str) {
    let env = config.config.env.get_or_insert_with(Vec::new);
    let entry = format!("{name}={value}");
    match env.iter_mut().find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == name) {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

/// The config's ENV as (name, value) pairs.
pub fn env_pairs(config: &ImageConfig) -> Vec<(String, String)> {
    config
        .config
        .env
        .iter()
        .flatten()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The SHELL in effect.
pub fn shell(config: &ImageConfig) -> Vec<String> {
    config.config.shell.clone().filter(|s| !s.is_empty()).unwrap_or_else(default_shell)
}

/// The WORKDIR in effect (`/` when unset).
pub fn workdir(config: &ImageConfig) -> String {
    config.config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into())
}

/// A command in shell form becomes SHELL + the command; exec form stays.
pub fn command_argv(config: &ImageConfig, command: &Command) -> Vec<String> {
    match command {
        Command::Exec(argv) => argv.clone(),
        Command::Shell(text) => {
            let mut argv = shell(config);
            argv.push(text.clone());
            argv
        }
    }
}

/// Applies an (expanded) metadata instruction to the config. Returns false
/// for instructions that are not metadata (FROM, RUN, COPY, ADD).
pub fn apply(config: &mut ImageConfig, vars: &mut StageVars, instr: &Instruction) -> Result<bool> {
    let c = &mut config.config;
    match instr {
        Instruction::Env(i) => {
            for kv in &i.pairs {
                env_set(config, &kv.key, &kv.value);
            }
        }
        Instruction::Arg(i) => {
            for a in &i.args {
                vars.declare(&a.name, a.default.clone());
            }
        }
        Instruction::Label(i) => {
            let labels = c.labels.get_or_insert_with(BTreeMap::new);
            for kv in &i.pairs {
                labels.insert(kv.key.clone(), kv.value.clone());
            }
        }
        Instruction::Expose(i) => {
            let ports = c.exposed_ports.get_or_insert_with(BTreeMap::new);
            for p in &i.ports {
                for port in expand_port(p)? {
                    ports.insert(port, Value::Object(Default::default()));
                }
            }
        }
        Instruction::Volume(i) => {
            let volumes = c.volumes.get_or_insert_with(BTreeMap::new);
            for p in &i.paths {
                if p.trim().is_empty() {
                    bail!("VOLUME: empty path");
                }
                volumes.insert(p.clone(), Value::Object(Default::default()));
            }
        }
        Instruction::Entrypoint(i) => {
            let argv = command_argv(config, &i.command);
            config.config.entrypoint = Some(argv);
            if !vars.cmd_set {
                config.config.cmd = None;
            }
        }
        Instruction::Cmd(i) => {
            config.config.cmd = Some(command_argv(config, &i.command));
            vars.cmd_set = true;
        }
        Instruction::Healthcheck(i) => {
            let h = &i.health;
            let nonzero = |v: i64| (v != 0).then_some(v);
            c.healthcheck = Some(if h.test.first().map(String::as_str) == Some("NONE") {
                Healthcheck { test: Some(vec!["NONE".into()]), ..Default::default() }
            } else {
                Healthcheck {
                    test: Some(h.test.clone()),
                    interval: nonzero(h.interval),
                    timeout: nonzero(h.timeout),
                    start_period: nonzero(h.start_period),
                    start_interval: nonzero(h.start_interval),
                    retries: nonzero(h.retries),
                    ..Default::default()
                }
            });
        }
        Instruction::Stopsignal(i) => c.stop_signal = Some(i.signal.clone()),
        Instruction::User(i) => c.user = Some(i.user.clone()),
        Instruction::Workdir(i) => {
            let current = workdir(config);
            config.config.working_dir = Some(join_workdir(&current, &i.path));
        }
        Instruction::Shell(i) => c.shell = Some(i.shell.clone()),
        Instruction::Onbuild(i) => c.on_build.get_or_insert_with(Vec::new).push(i.expression.clone()),
        Instruction::Maintainer(i) => config.author = Some(i.name.clone()),
        Instruction::From(_) | Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) => return Ok(false),
    }
    Ok(true)
}

/// WORKDIR `path` relative to the current one, cleaned: `/a` + `b/../c` → `/a/c`.
pub fn join_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_string() } else { format!("{current}/{path}") };
    let clean = super::scoped::clean(Path::new(&joined));
    format!("/{}", clean.display())
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, … (Docker's nat.ParsePortSpecs).
fn expand_port(spec: &str) -> Result<Vec<String>> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        bail!("EXPOSE {spec}: unknown protocol {proto:?} (expected tcp, udp or sctp)");
    }
    let bad = || anyhow::anyhow!("EXPOSE {spec}: invalid port (expected PORT[-PORT][/PROTOCOL])");
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().map_err(|_| bad())?, b.parse::<u16>().map_err(|_| bad())?),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile;

    fn run(text: &str, config: &mut ImageConfig, vars: &mut StageVars) {
        let df = dockerfile::parse(text, Path::new("Dockerfile")).unwrap();
        for instr in &df.instructions[1..] {
            let lookup = |n: &str| vars.lookup(config, n);
            let expanded = instr.expand(&lookup).unwrap();
            apply(config, vars, &expanded).unwrap();
        }
    }

    #[test]
    fn metadata_as_docker_records_it() {
        let mut config = ImageConfig::default();
        config.config.cmd = Some(vec!["sh".into()]);
        let mut vars = StageVars::default();
        vars.build_args.insert("V".into(), Some("2".into()));
        run(
            "FROM x\nARG V=1\nENV A=$V B=\"x y\"\nLABEL l=$A\nEXPOSE 80 53/udp 8000-8001\nVOLUME /data\n\
             WORKDIR /app\nWORKDIR sub\nUSER 1000:1000\nENTRYPOINT [\"/bin/app\"]\nSTOPSIGNAL SIGINT\n\
             HEALTHCHECK --interval=5s CMD true\nMAINTAINER me\nONBUILD RUN echo hi\nSHELL [\"/bin/ash\", \"-c\"]\n",
            &mut config,
            &mut vars,
        );
        let c = &config.config;
        assert_eq!(c.env.as_ref().unwrap(), &vec!["A=2".to_string(), "B=x y".to_string()]);
        assert_eq!(c.labels.as_ref().unwrap()["l"], "2");
        let ports: Vec<_> = c.exposed_ports.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(c.working_dir.as_deref(), Some("/app/sub"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.entrypoint.as_ref().unwrap(), &vec!["/bin/app".to_string()]);
        assert_eq!(c.cmd, None, "an inherited CMD is reset by ENTRYPOINT");
        assert_eq!(c.healthcheck.as_ref().unwrap().interval, Some(5_000_000_000));
        assert_eq!(config.author.as_deref(), Some("me"));
        assert_eq!(c.on_build.as_ref().unwrap(), &vec!["RUN echo hi".to_string()]);
        assert_eq!(shell(&config), vec!["/bin/ash", "-c"]);
    }

    #[test]
    fn cmd_set_in_stage_survives_entrypoint() {
        let mut config = ImageConfig::default();
        let mut vars = StageVars::default();
        run("FROM x\nCMD [\"a\"]\nENTRYPOINT echo\n", &mut config, &mut vars);
        assert_eq!(config.config.cmd.as_ref().unwrap(), &vec!["a".to_string()]);
        assert_eq!(config.config.entrypoint.as_ref().unwrap(), &vec!["/bin/sh", "-c", "echo"]);
    }

    #[test]
    fn bad_ports_are_errors() {
        assert!(expand_port("http").is_err());
        assert!(expand_port("80/foo").is_err());
    }
}
