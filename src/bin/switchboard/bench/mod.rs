//! Benchmarks behind `switchboard bench`: each returns a report that `local::run` prints.
//! Numbers in BENCHMARKS.md come from these, run on the release build.
pub mod embed;
mod fleet;
mod local;
#[cfg(feature = "mock")]
pub mod proxy;
pub mod route;
mod shape;
#[cfg(feature = "mock")]
mod soak;
#[cfg(feature = "mock")]
mod soak_report;
#[cfg(feature = "mock")]
mod svg;
pub mod swap;

use std::fmt;
use std::time::Duration;

use switchboard::embed::Embedder;

pub use embed::embed;
pub use local::run;

/// Words the synthetic prompts are made of (varied so no two prompts are equal).
const WORDS: &[&str] = &[
    "please",
    "explain",
    "how",
    "the",
    "router",
    "chooses",
    "a",
    "model",
    "for",
    "each",
    "request",
    "given",
    "its",
    "budget",
    "latency",
    "and",
    "quality",
    "while",
    "keeping",
    "costs",
    "low",
    "across",
    "several",
    "providers",
    "during",
    "an",
    "outage",
    "of",
    "one",
    "region",
    "write",
    "code",
    "that",
];

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
}

impl Stats {
    pub fn from(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(i).copied().map(ms).unwrap_or(f64::NAN)
        };
        Self {
            min: at(0.0),
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "min {:7.2}  p50 {:7.2}  p99 {:7.2} ms",
            self.min, self.p50, self.p99
        )
    }
}

/// A varied prompt of `words` words, different for each `seed`.
pub fn synthetic_prompt(seed: usize, words: usize) -> String {
    let mut i = seed;
    let mut out = Vec::with_capacity(words);
    for _ in 0..words {
        out.push(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    out.join(" ")
}

/// Builds a prompt of exactly `tokens` tokens (special tokens included) for `embedder`.
pub fn prompt_of(embedder: &Embedder, tokens: usize, seed: usize) -> String {
    let tok = embedder.tokenizer();
    let mut words: Vec<&str> = Vec::new();
    let mut i = seed;
    while tok.count_tokens(&words.join(" ")) < tokens {
        words.push(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    words.join(" ")
}

/// utime + stime of this process, from /proc (Linux); zero elsewhere.
pub fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
