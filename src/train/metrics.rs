//! Metrics of one categorical head over (true label, prediction, confidence, abstained):
//! accuracy, macro-F1, per-class P/R/F1, confusion, ECE and the reliability bins. Shared by the
//! whole-set evaluation and its slices.
use serde::Serialize;

use crate::classify::Prediction;
use crate::dataset::Row;

/// (true label, predicted label, confidence, abstained), label positions in the head's list.
pub type Item = (usize, usize, f64, bool);

fn position(labels: &[String], v: &str) -> Option<usize> {
    labels.iter().position(|l| l == v)
}

/// The items of the pairs whose row has an intent label the head knows.
pub fn intent_items<'a>(
    labels: &[String],
    pairs: impl Iterator<Item = (&'a Row, &'a Prediction)>,
) -> Vec<Item> {
    pairs
        .filter_map(|(r, p)| {
            let t = position(labels, r.intent.as_deref()?)?;
            Some((
                t,
                position(labels, &p.intent)?,
                p.confidence as f64,
                p.abstained,
            ))
        })
        .collect()
}

/// The items of the pairs whose row has a domain label the head knows (the confidence is the
/// predicted domain's probability; the domain head never abstains).
pub fn domain_items<'a>(
    labels: &[String],
    pairs: impl Iterator<Item = (&'a Row, &'a Prediction)>,
) -> Vec<Item> {
    pairs
        .filter_map(|(r, p)| {
            let t = position(labels, r.domain.as_deref()?)?;
            let pi = position(labels, &p.domain)?;
            let conf = p.domain_probs.get(pi).copied().unwrap_or(0.0) as f64;
            Some((t, pi, conf, false))
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Metrics of one categorical head.
#[derive(Debug, Clone, Serialize)]
pub struct LabelReport {
    pub n: usize,
    pub accuracy: f64,
    /// Mean F1 over classes with at least `min_support` true rows.
    pub macro_f1: f64,
    pub min_support: usize,
    pub per_class: Vec<ClassMetrics>,
    pub labels: Vec<String>,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<usize>>,
    pub ece: f64,
    /// (mean confidence, accuracy, rows) per confidence bin of width 0.1.
    pub reliability: Vec<(f64, f64, usize)>,
    pub abstain_rate: f64,
    pub accuracy_non_abstained: f64,
}

/// Precision, recall and F1 of class `i` from the confusion matrix (rows true, columns predicted).
fn class_metrics(label: &str, confusion: &[Vec<usize>], i: usize) -> ClassMetrics {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let tp = confusion[i][i] as f64;
    let support: usize = confusion[i].iter().sum();
    let predicted: usize = confusion.iter().map(|row| row[i]).sum();
    let precision = ratio(tp, predicted as f64);
    let recall = ratio(tp, support as f64);
    ClassMetrics {
        label: label.to_string(),
        precision,
        recall,
        f1: ratio(2.0 * precision * recall, precision + recall),
        support,
    }
}

/// ECE over ten equal-width confidence bins, and each bin's (mean confidence, accuracy, rows).
fn calibration(items: &[(usize, usize, f64, bool)]) -> (f64, Vec<(f64, f64, usize)>) {
    let n = items.len();
    let mut bins = vec![(0.0, 0.0, 0usize); 10];
    for &(t, p, conf, _) in items {
        let b = ((conf * 10.0) as usize).min(9);
        bins[b].0 += conf;
        bins[b].1 += f64::from(u8::from(t == p));
        bins[b].2 += 1;
    }
    let reliability: Vec<(f64, f64, usize)> = bins
        .iter()
        .map(|&(c, a, m)| {
            if m > 0 {
                (c / m as f64, a / m as f64, m)
            } else {
                (0.0, 0.0, 0)
            }
        })
        .collect();
    let ece = reliability
        .iter()
        .map(|&(c, a, m)| (m as f64 / n.max(1) as f64) * (c - a).abs())
        .sum();
    (ece, reliability)
}

/// Metrics of a categorical head over (true label, prediction, confidence, abstained).
pub fn label_report(
    labels: &[String],
    items: &[(usize, usize, f64, bool)],
    min_support: usize,
) -> LabelReport {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for &(t, p, _, _) in items {
        confusion[t][p] += 1;
    }
    let n = items.len();
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|i| class_metrics(&labels[i], &confusion, i))
        .collect();
    let counted: Vec<f64> = per_class
        .iter()
        .filter(|c| c.support >= min_support.max(1))
        .map(|c| c.f1)
        .collect();
    let macro_f1 = counted.iter().sum::<f64>() / counted.len().max(1) as f64;
    let (ece, reliability) = calibration(items);
    let kept: Vec<_> = items.iter().filter(|i| !i.3).collect();
    LabelReport {
        n,
        accuracy: correct as f64 / n.max(1) as f64,
        macro_f1,
        min_support,
        per_class,
        labels: labels.to_vec(),
        confusion,
        ece,
        reliability,
        abstain_rate: (n - kept.len()) as f64 / n.max(1) as f64,
        accuracy_non_abstained: kept.iter().filter(|i| i.0 == i.1).count() as f64
            / kept.len().max(1) as f64,
    }
}
