//! `switchboard eval`: a head against labelled rows (by default the dev split the trainer held
//! out), with typo robustness, a JSON report and SVG charts.
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::eval::{self, EvalReport};
use super::report;
use super::run::embed_rows;
use super::TrainError;
use crate::classify::Classifier;
use crate::dataset::{self, Row};
use crate::embed::Embedder;

/// Settings of an evaluation.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub data: Vec<PathBuf>,
    pub head: PathBuf,
    pub cache_dir: PathBuf,
    /// Evaluate only the dev split of this seed / share (as the trainer made it); None = all rows.
    pub dev_split: Option<(u64, u32)>,
    /// Rows used for the typo-robustness figure (0 = skip).
    pub typo_rows: usize,
    pub typo_rate: f64,
    pub out_dir: Option<PathBuf>,
    /// Apply the classifier's typo repair (`Classifier::prepare`) before embedding, as the
    /// server does; false measures the heads on the text as written.
    pub spell_fix: bool,
    /// Abstain on languages under this share of the classifier's training rows, as the server
    /// does by default (`language::DEFAULT_MIN_SHARE`); None measures without it.
    pub untrained_language_share: Option<f64>,
}

/// Rows whose intent was predicted wrong, one JSON object a line, in `--out-dir`.
pub const MISTAKES_FILE: &str = "mistakes_intent.jsonl";
/// Rows whose intent changed under the typo noise, one JSON object a line, in `--out-dir`.
pub const TYPO_FLIPS_FILE: &str = "typo_flips_intent.jsonl";
/// Every row's calibrated probabilities, one JSON object a line, in `--out-dir`.
pub const PREDICTIONS_FILE: &str = "predictions.jsonl";

/// Deterministic character noise: each character is, with probability `rate`, deleted,
/// doubled, swapped with the next, or replaced by a random lowercase letter.
pub fn typo_noise(text: &str, rate: f64, seed: u64) -> String {
    let h = Sha256::digest(format!("{seed}:{text}").as_bytes());
    let mut rng = StdRng::seed_from_u64(u64::from_le_bytes([
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
    ]));
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if rng.random::<f64>() >= rate {
            out.push(c);
            i += 1;
            continue;
        }
        match rng.random_range(0..4) {
            0 => {}
            1 => {
                out.push(c);
                out.push(c);
            }
            2 if i + 1 < chars.len() => {
                out.push(chars[i + 1]);
                out.push(c);
                i += 1;
            }
            _ => out.push(rng.random_range(b'a'..=b'z') as char),
        }
        i += 1;
    }
    if out.trim().is_empty() {
        text.to_string()
    } else {
        out
    }
}

/// Row `r` with `text` as the classifier's encoder sees it: typos repaired when `c` is given.
fn prepared(r: &Row, text: &str, c: Option<&Classifier>) -> Row {
    let text = match c {
        Some(c) => c.prepare(text).into_owned(),
        None => text.to_string(),
    };
    Row { text, ..r.clone() }
}

/// What the typo check found.
pub struct TypoCheck {
    /// Share of rows whose predicted intent survives the noise.
    pub robustness: f64,
    /// The same over the real prompts (`sharegpt`) among them.
    pub real: Option<eval::SubsetShare>,
    /// Rows whose intent changed, as JSON lines (id, source, both predictions and
    /// confidences, the noisy text).
    pub flips: String,
}

/// Predicts each row clean and with `rate` character noise, and compares the intents.
pub async fn typo_robustness(
    embedder: &Embedder,
    c: &Classifier,
    rows: &[&Row],
    rate: f64,
    cache_dir: &Path,
    spell_fix: bool,
) -> Result<TypoCheck, TrainError> {
    let fixer = spell_fix.then_some(c);
    let noisy: Vec<Row> = rows
        .iter()
        .map(|r| prepared(r, &typo_noise(&r.text, rate, 1), fixer))
        .collect();
    let clean: Vec<Row> = rows.iter().map(|r| prepared(r, &r.text, fixer)).collect();
    let (a, _) = embed_rows(embedder, &clean, cache_dir).await?;
    let (b, _) = embed_rows(embedder, &noisy, cache_dir).await?;
    let pa = eval::predict_all(c, &a.iter().collect::<Vec<_>>())?;
    let pb = eval::predict_all(c, &b.iter().collect::<Vec<_>>())?;
    let mut flips = String::new();
    let (mut same, mut real, mut real_same) = (0usize, 0usize, 0usize);
    for ((x, y), r) in pa.iter().zip(&pb).zip(&noisy) {
        let kept = x.intent == y.intent;
        same += usize::from(kept);
        if r.is_real() {
            real += 1;
            real_same += usize::from(kept);
        }
        if !kept {
            report::push_flip(&mut flips, r, x, y);
        }
    }
    let share = |k: usize, n: usize| k as f64 / n.max(1) as f64;
    Ok(TypoCheck {
        robustness: share(same, rows.len()),
        real: (real > 0).then(|| eval::SubsetShare {
            share: share(real_same, real),
            n: real,
        }),
        flips,
    })
}

/// Runs the evaluation; writes `report.json` and SVG charts when `out_dir` is set.
pub async fn run(embedder: &Embedder, cfg: &EvalConfig) -> Result<EvalReport, TrainError> {
    let classifier = Classifier::load(&cfg.head, &embedder.info())?;
    let (rows, bad) = dataset::read_all(&cfg.data)?;
    for b in &bad {
        tracing::warn!("skipped: {b}");
    }
    let rows: Vec<Row> = match cfg.dev_split {
        Some((seed, pct)) => rows
            .into_iter()
            .filter(|r| dataset::is_dev(r, seed, pct))
            .collect(),
        None => rows,
    };
    let fixer = cfg.spell_fix.then_some(&classifier);
    let fixed: Vec<Row> = rows.iter().map(|r| prepared(r, &r.text, fixer)).collect();
    let (vectors, _) = embed_rows(embedder, &fixed, &cfg.cache_dir).await?;
    let refs: Vec<&Row> = rows.iter().collect();
    let vrefs: Vec<_> = vectors.iter().collect();
    let mut predictions = eval::predict_all(&classifier, &vrefs)?;
    eval::apply_languages(
        &classifier,
        &refs,
        &mut predictions,
        cfg.untrained_language_share,
    );
    let mut report = eval::evaluate_predictions(&classifier, &refs, &predictions);
    let mut flips = None;
    if let Some(step) = refs.len().checked_div(cfg.typo_rows) {
        // Spread the sample over the whole set (every k-th row), deterministic.
        let step = step.max(1);
        let sample: Vec<&Row> = refs
            .iter()
            .step_by(step)
            .take(cfg.typo_rows)
            .copied()
            .collect();
        let check = typo_robustness(
            embedder,
            &classifier,
            &sample,
            cfg.typo_rate,
            &cfg.cache_dir,
            cfg.spell_fix,
        )
        .await?;
        report.typo_robustness = Some(check.robustness);
        report.typo_robustness_real = check.real;
        flips = Some(check.flips);
    }
    if let Some(dir) = &cfg.out_dir {
        let rows_out = RowLists {
            mistakes: report::mistakes_jsonl(&refs, &predictions, &classifier.meta.intent_labels),
            predictions: report::predictions_jsonl(&refs, &predictions),
            flips,
        };
        write_outputs(dir, &report, &rows_out)?;
    }
    Ok(report)
}

/// The JSON-lines row lists `--out-dir` receives.
struct RowLists {
    mistakes: String,
    predictions: String,
    flips: Option<String>,
}

/// Writes `report.json`, the SVG charts and the JSON-lines row lists into `dir`.
fn write_outputs(dir: &Path, report: &EvalReport, rows: &RowLists) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir)?;
    let json =
        serde_json::to_string_pretty(report).map_err(|e| TrainError::Invalid(e.to_string()))?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(
        dir.join("confusion_intent.svg"),
        report::confusion_svg(&report.intent, "intent: all dev rows"),
    )?;
    std::fs::write(
        dir.join("reliability_intent.svg"),
        report::reliability_svg(&report.intent, "intent reliability"),
    )?;
    if let Some(real) = &report.intent_real {
        std::fs::write(
            dir.join("confusion_intent_real.svg"),
            report::confusion_svg(real, "intent: real user prompts (sharegpt)"),
        )?;
        std::fs::write(
            dir.join("reliability_intent_real.svg"),
            report::reliability_svg(real, "intent reliability, real prompts"),
        )?;
    }
    if let Some(d) = &report.domain {
        std::fs::write(
            dir.join("confusion_domain.svg"),
            report::confusion_svg(d, "domain"),
        )?;
    }
    std::fs::write(dir.join(MISTAKES_FILE), &rows.mistakes)?;
    std::fs::write(dir.join(PREDICTIONS_FILE), &rows.predictions)?;
    if let Some(flips) = &rows.flips {
        std::fs::write(dir.join(TYPO_FLIPS_FILE), flips)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_touches_about_the_rate() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(40);
        let a = typo_noise(&text, 0.05, 1);
        assert_eq!(a, typo_noise(&text, 0.05, 1));
        assert_ne!(a, text);
        let differing = a
            .chars()
            .zip(text.chars())
            .take_while(|(x, y)| x == y)
            .count();
        assert!(
            differing < 200,
            "noise should start early in a 1,800-char text"
        );
        assert_eq!(typo_noise(&text, 0.0, 1), text);
    }
}
