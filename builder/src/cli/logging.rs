//! Log output shaped like kaniko's (logrus): `INFO[0003] message key=value`
//! in text (level padded, seconds since start, or a timestamp with
//! `--log-timestamp`), the same coloured with `color`, and one JSON object
//! per line (`{"level":"info","msg":"…","time":"…"}`) with `json`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::str::FromStr;
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::LogArgs;

/// kaniko's `--verbosity` levels. `fatal` and `panic` both show errors only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl FromStr for Verbosity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "trace" => Verbosity::Trace,
            "debug" => Verbosity::Debug,
            "info" => Verbosity::Info,
            "warn" | "warning" => Verbosity::Warn,
            "error" | "fatal" | "panic" => Verbosity::Error,
            other => return Err(format!("unknown verbosity {other:?}: expected trace, debug, info, warn, error, fatal or panic")),
        })
    }
}

impl Verbosity {
    fn level(self) -> Level {
        match self {
            Verbosity::Trace => Level::TRACE,
            Verbosity::Debug => Level::DEBUG,
            Verbosity::Info => Level::INFO,
            Verbosity::Warn => Level::WARN,
            Verbosity::Error => Level::ERROR,
        }
    }
}

/// kaniko's `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Color,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "color" | "colour" => LogFormat::Color,
            "json" => LogFormat::Json,
            other => return Err(format!("unknown log format {other:?}: expected text, color or json")),
        })
    }
}

/// Installs the global subscriber; logs go to stderr.
pub fn init(args: &LogArgs, started: Instant) -> anyhow::Result<()> {
    let color = args.log_format == LogFormat::Color && std::io::stderr().is_terminal();
    let format = KanikoFormat { json: args.log_format == LogFormat::Json, color, timestamp: args.log_timestamp, started };
    let level = tracing_subscriber::filter::LevelFilter::from_level(args.verbosity.level());
    // The FUSE library logs a reply to a request the kernel already dropped
    // (a RUN process killed mid-call) as an error: that is routine here, and
    // real server failures reach the user through the build's own error.
    let fuser = if level >= tracing_subscriber::filter::LevelFilter::DEBUG { level } else { tracing_subscriber::filter::LevelFilter::OFF };
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(format!("{level},fuser={fuser}"))
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .event_format(format)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

struct KanikoFormat {
    json: bool,
    color: bool,
    timestamp: bool,
    started: Instant,
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.extra.push((field.name().to_string(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.extra.push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

impl<S, N> FormatEvent<S, N> for KanikoFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = level_name(event.metadata().level());
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("level".into(), level.into());
            obj.insert("msg".into(), fields.message.into());
            obj.insert("time".into(), now.into());
            for (k, v) in fields.extra {
                obj.insert(k, v.into());
            }
            return writeln!(w, "{}", serde_json::Value::Object(obj));
        }
        let mut tag = level[..4].to_ascii_uppercase();
        if self.color {
            let code = match *event.metadata().level() {
                Level::ERROR => 31,
                Level::WARN => 33,
                Level::INFO => 36,
                _ => 37,
            };
            tag = format!("\x1b[{code}m{tag}\x1b[0m");
        }
        let when = if self.timestamp { now } else { format!("{:04}", self.started.elapsed().as_secs()) };
        let mut line = format!("{tag}[{when}] {}", fields.message);
        for (k, v) in fields.extra {
            let _ = write!(line, " {k}={v}");
        }
        writeln!(w, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kaniko_levels_and_formats() {
        assert_eq!("fatal".parse::<Verbosity>().unwrap(), Verbosity::Error);
        assert_eq!("DEBUG".parse::<Verbosity>().unwrap(), Verbosity::Debug);
        assert!("loud".parse::<Verbosity>().is_err());
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
