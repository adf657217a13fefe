//! Accuracy and calibration per slice of the evaluation rows: the detector's language groups
//! (and each language with enough rows), and source groups — real prompts, exam questions,
//! template phrasings — since a head can look good overall and fail on one of them.
use serde::Serialize;

use super::metrics::{domain_items, intent_items, label_report};
use crate::classify::language;
use crate::classify::{Classifier, Prediction};
use crate::dataset::Row;

/// Rows a single language needs before it gets a line of its own.
const MIN_LANGUAGE_ROWS: usize = 10;

/// One slice's numbers. Intent figures count rows with an intent label, domain figures rows
/// with a domain label.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// "language" (group), "language_code" (one language) or "source".
    pub kind: &'static str,
    pub name: String,
    pub n: usize,
    pub intent_accuracy: f64,
    pub intent_macro_f1: f64,
    pub intent_ece: f64,
    pub abstain_rate: f64,
    pub domain_n: usize,
    pub domain_accuracy: f64,
    pub domain_macro_f1: f64,
}

/// real (ShareGPT first turns), exam (benchmark questions: MMLU, GSM8K, MATH, HumanEval,
/// MBPP), or template (P3 phrasings and other instruction sets).
pub fn source_group(source: &str) -> &'static str {
    match source {
        "sharegpt" => "real",
        "routellm-mmlu" | "gsm8k" | "math" | "humaneval" | "mbpp" => "exam",
        _ => "template",
    }
}

/// Every slice with at least one row; each prediction carries its row's language
/// (`eval::apply_languages`).
pub fn groups(c: &Classifier, rows: &[&Row], preds: &[Prediction]) -> Vec<GroupReport> {
    let mut keys: Vec<Vec<(&'static str, String)>> = Vec::with_capacity(rows.len());
    for (r, p) in rows.iter().zip(preds) {
        let l = &p.language;
        let mut k = vec![
            ("language", language::group(&r.text, l).to_string()),
            ("source", source_group(&r.source).to_string()),
        ];
        if let Some(code) = l.determined().filter(|c| *c != "eng") {
            k.push(("language_code", code.to_string()));
        }
        keys.push(k);
    }
    let mut names: Vec<(&'static str, String)> = keys.iter().flatten().cloned().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|(kind, name)| {
            let members: Vec<usize> = (0..rows.len())
                .filter(|&i| keys[i].iter().any(|(k, v)| *k == kind && *v == name))
                .collect();
            let g = slice(c, rows, preds, &members, kind, name)?;
            (kind != "language_code" || g.n >= MIN_LANGUAGE_ROWS).then_some(g)
        })
        .collect()
}

fn slice(
    c: &Classifier,
    rows: &[&Row],
    preds: &[Prediction],
    members: &[usize],
    kind: &'static str,
    name: String,
) -> Option<GroupReport> {
    let pairs = || members.iter().map(|&i| (rows[i], &preds[i]));
    let intent = intent_items(&c.meta.intent_labels, pairs());
    let domain = domain_items(&c.meta.domain_labels, pairs());
    if intent.is_empty() && domain.is_empty() {
        return None;
    }
    let ir = label_report(&c.meta.intent_labels, &intent, 1);
    let dr = label_report(&c.meta.domain_labels, &domain, 1);
    Some(GroupReport {
        kind,
        name,
        n: ir.n,
        intent_accuracy: ir.accuracy,
        intent_macro_f1: ir.macro_f1,
        intent_ece: ir.ece,
        abstain_rate: ir.abstain_rate,
        domain_n: dr.n,
        domain_accuracy: dr.accuracy,
        domain_macro_f1: dr.macro_f1,
    })
}
