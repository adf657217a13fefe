//! The soak run's samples, its verdict against the endurance targets, and its chart.
use std::fmt;

use super::svg::{chart, Series};

/// One sample of the server process.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    pub rss_mb: f64,
    pub fds: usize,
    pub threads: usize,
    /// p99 of good calls (not aimed at a fault) since the previous sample.
    pub p99_ms: f64,
    /// Calls answered since the previous sample.
    pub calls: u64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7.0} s  rss {:>7.1} MB  fds {:>4}  threads {:>3}  p99 {:>8.2} ms  calls {:>6}",
            self.t, self.rss_mb, self.fds, self.threads, self.p99_ms, self.calls
        )
    }
}

#[derive(Debug, Clone)]
pub struct SoakReport {
    pub secs: f64,
    pub concurrency: usize,
    pub swap_secs: f64,
    pub samples: Vec<Sample>,
    pub exact: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub violations: u64,
    pub swaps: usize,
    pub panics: usize,
    /// The server's exit code after SIGTERM (`None`: killed after the wait).
    pub exit: Option<i32>,
}

/// Samples in the first fifth of the run are warm-up (caches, pools, allocator arenas).
const WARM_UP_SHARE: f64 = 0.2;

impl SoakReport {
    fn steady(&self) -> &[Sample] {
        let from = self
            .samples
            .iter()
            .position(|s| s.t >= self.secs * WARM_UP_SHARE);
        &self.samples[from.unwrap_or(self.samples.len())..]
    }

    /// RSS growth after warm-up, in percent: the mean of the last three samples over the mean
    /// of the first three (single samples move by a few MB with requests in flight).
    pub fn rss_growth_pct(&self) -> f64 {
        let s = self.steady();
        if s.len() < 6 {
            return f64::NAN;
        }
        let mean = |v: &[Sample]| v.iter().map(|x| x.rss_mb).sum::<f64>() / v.len() as f64;
        (mean(&s[s.len() - 3..]) / mean(&s[..3]) - 1.0) * 100.0
    }

    fn range(&self, f: impl Fn(&Sample) -> usize) -> (usize, usize) {
        let v: Vec<usize> = self.steady().iter().map(f).collect();
        (
            v.iter().copied().min().unwrap_or(0),
            v.iter().copied().max().unwrap_or(0),
        )
    }

    /// No upward trend: the second half of the steady samples peaks no more than `band` above
    /// the first half (descriptors and threads move with the requests in flight).
    fn flat(&self, f: impl Fn(&Sample) -> usize, band: usize) -> bool {
        let v: Vec<usize> = self.steady().iter().map(f).collect();
        let (a, b) = v.split_at(v.len() / 2);
        let peak = |x: &[usize]| x.iter().copied().max().unwrap_or(0);
        !a.is_empty() && peak(b) <= peak(a) + band
    }

    /// The endurance targets: RSS growth ≤ 10% after warm-up, descriptors and threads without
    /// an upward trend, no panic, no violation, a clean exit.
    pub fn passed(&self) -> bool {
        self.rss_growth_pct() <= 10.0
            && self.flat(|s| s.fds, 8)
            && self.flat(|s| s.threads, 2)
            && self.panics == 0
            && self.violations == 0
            && self.exit == Some(0)
    }

    /// RSS and p99 over time.
    pub fn svg(&self) -> String {
        let rss = self
            .samples
            .iter()
            .map(|s| (s.t / 60.0, s.rss_mb))
            .collect();
        let p99 = self
            .samples
            .iter()
            .map(|s| (s.t / 60.0, s.p99_ms))
            .collect();
        let title = format!(
            "bench soak: {:.0} min, {} clients, ~10% upstream faults, a classifier swap every {:.0} s",
            self.secs / 60.0,
            self.concurrency,
            self.swap_secs
        );
        chart(
            &title,
            "minutes",
            &[
                Series {
                    title: "server resident memory",
                    unit: "MB",
                    points: rss,
                },
                Series {
                    title: "p99 of good calls per sample",
                    unit: "ms",
                    points: p99,
                },
            ],
        )
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.samples {
            writeln!(f, "{s}")?;
        }
        let (fd_lo, fd_hi) = self.range(|s| s.fds);
        let (th_lo, th_hi) = self.range(|s| s.threads);
        writeln!(
            f,
            "calls: {} byte-exact, {} ended with an error, {} cancelled by the client, {} violations",
            self.exact, self.errors, self.cancelled, self.violations
        )?;
        writeln!(
            f,
            "after warm-up: rss {:+.1}%, fds {fd_lo}..{fd_hi}, threads {th_lo}..{th_hi}; swaps {}; panics {}; exit {:?}",
            self.rss_growth_pct(),
            self.swaps,
            self.panics,
            self.exit
        )?;
        write!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}
