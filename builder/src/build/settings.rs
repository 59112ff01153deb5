//! The build's flags, checked and turned into the values the stages use:
//! snapshot mode, layer options, build args, labels, ignored paths.

use std::path::PathBuf;

use anyhow::{Result, bail};
use strata_snapshotter::SnapshotMode;
use strata_snapshotter::layer::{Compression, LayerOptions};

use crate::cli::BuildArgs;

#[derive(Debug, Clone)]
pub struct Settings {
    pub snapshot_mode: SnapshotMode,
    pub layer: LayerOptions,
    /// `--build-arg`s; None: a bare NAME not set in the environment.
    pub build_args: Vec<(String, Option<String>)>,
    pub labels: Vec<(String, String)>,
    /// Paths (relative to a stage root) no snapshot looks at.
    pub excluded: Vec<PathBuf>,
    /// With `--reproducible`, the time every `created` field gets
    /// (SOURCE_DATE_EPOCH or 0).
    pub fixed_time: Option<String>,
    pub single_snapshot: bool,
}

impl Settings {
    pub fn from_args(args: &BuildArgs) -> Result<Settings> {
        let snapshot_mode = match args.snapshot.snapshot_mode.as_str() {
            "time" => bail!("--snapshot-mode=time is not supported: use redo (metadata) or full (content)"),
            other => other.parse::<SnapshotMode>().map_err(|e| anyhow::anyhow!("--snapshot-mode: {e}"))?,
        };
        let compression: Compression =
            args.snapshot.compression.parse().map_err(|e| anyhow::anyhow!("--compression: {e}"))?;
        let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => Some(v.parse::<i64>().map_err(|_| {
                anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?}: expected a number of seconds since 1970")
            })?),
            _ => None,
        };
        let layer = LayerOptions {
            compression,
            level: args.snapshot.compression_level,
            source_date_epoch,
            reproducible: args.options.reproducible,
            threads: 0,
        };
        let build_args = args.options.build_arg.iter().map(|a| parse_build_arg(a)).collect::<Result<Vec<_>>>()?;
        let labels = args
            .options
            .label
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => bail!("--label {l:?}: expected NAME=VALUE"),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut excluded = Vec::new();
        for p in &args.snapshot.ignore_path {
            let rel = crate::exec::scoped::clean(std::path::Path::new(p));
            if rel.as_os_str().is_empty() {
                bail!("--ignore-path {p:?}: ignoring the whole root would leave nothing to snapshot");
            }
            excluded.push(rel);
        }
        if args.snapshot.ignore_var_run {
            excluded.push(PathBuf::from("var/run"));
        }
        let fixed_time = args.options.reproducible.then(|| rfc3339(source_date_epoch.unwrap_or(0)));
        Ok(Settings { snapshot_mode, layer, build_args, labels, excluded, fixed_time, single_snapshot: args.snapshot.single_snapshot })
    }
}

impl Settings {
    /// A `created` time: now, or the fixed time with `--reproducible`.
    pub fn now(&self) -> String {
        self.fixed_time.clone().unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
    }
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `NAME=VALUE`, or a bare `NAME` whose value comes from the environment (kaniko).
pub fn parse_build_arg(arg: &str) -> Result<(String, Option<String>)> {
    let (name, value) = match arg.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (arg, std::env::var(arg).ok()),
    };
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        bail!("--build-arg {arg:?}: {name:?} is not a valid argument name (letters, digits and _, not starting with a digit)");
    }
    Ok((name.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args() {
        assert_eq!(parse_build_arg("A=1=2").unwrap(), ("A".into(), Some("1=2".into())));
        // SAFETY: single-threaded test setting a variable only it reads.
        unsafe { std::env::set_var("STRATA_TEST_BARE", "v") };
        assert_eq!(parse_build_arg("STRATA_TEST_BARE").unwrap().1.as_deref(), Some("v"));
        assert_eq!(parse_build_arg("STRATA_TEST_UNSET_X").unwrap().1, None);
        assert!(parse_build_arg("=x").is_err());
        assert!(parse_build_arg("1A=x").is_err());
        assert!(parse_build_arg("A B=x").is_err());
    }
}
