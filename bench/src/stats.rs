//! Timings of one contender over several rounds: median and range.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, seconds: f64) {
        self.0.push(seconds);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min–max)` in seconds.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}–{})",
            secs(self.median()),
            secs(self.min()),
            secs(self.max())
        )
    }
}

pub fn secs(s: f64) -> String {
    if s < 0.1 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// Runs `f` and returns its result with the time it took.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, Duration::as_secs_f64(&start.elapsed()))
}

/// The order contenders run in during round `round`: rotated each round so
/// that no contender always goes first (or always after the same one).
pub fn rotation(contenders: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..contenders).map(move |i| (i + round) % contenders)
}
