//! Transfer progress: with a terminal on stderr, one indicatif bar per blob
//! (bytes, rate, ETA); otherwise one plain log line when a transfer starts
//! and one when it ends, so CI logs stay readable.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        let multi = std::io::stderr().is_terminal().then(MultiProgress::new);
        Progress { multi }
    }

    /// Plain lines only, whatever stderr is.
    pub fn plain() -> Progress {
        Progress { multi: None }
    }

    /// Starts tracking one transfer; `verb` is e.g. "pulling", `what` names the blob.
    pub fn start(&self, verb: &'static str, what: String, total: u64) -> Transfer {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("{verb} {what}"));
            bar
        });
        if bar.is_none() {
            tracing::info!("{verb} {what} ({})", HumanBytes(total));
        }
        Transfer { bar, verb, what, total, started: Instant::now() }
    }
}

pub struct Transfer {
    bar: Option<ProgressBar>,
    verb: &'static str,
    what: String,
    total: u64,
    started: Instant,
}

impl Transfer {
    pub fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A handle that advances this transfer from another task (e.g. an upload stream).
    pub fn advancer(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |n| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
    }

    /// Marks the transfer finished; `note` replaces the usual "done" (e.g. "already present").
    pub fn finish(self, note: Option<&str>) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => {
                let secs = self.started.elapsed().as_secs_f64();
                match note {
                    Some(n) => tracing::info!("{} {}: {n}", self.verb, self.what),
                    None => tracing::info!(
                        "{} {}: done ({} in {secs:.1}s)",
                        self.verb,
                        self.what,
                        HumanBytes(self.total)
                    ),
                }
            }
        }
    }
}
