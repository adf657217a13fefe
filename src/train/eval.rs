//! Evaluation of a classifier on labelled rows: the per-head metrics (`metrics`), abstain,
//! complexity MAE/Spearman, RouteLLM-style APGR and CPT(50%), and the per-slice figures.
use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::groups::GroupReport;
use super::metrics::{domain_items, intent_items};
pub use super::metrics::{label_report, ClassMetrics, LabelReport};
use crate::classify::{Classifier, ClassifyError, Prediction};
use crate::dataset::Row;

/// Everything `switchboard eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub intent: LabelReport,
    pub intent_real: Option<LabelReport>,
    pub domain: Option<LabelReport>,
    pub complexity_n: usize,
    /// MAE and Spearman of P(small fails) against the rows' complexity values.
    pub complexity_mae: f64,
    pub complexity_spearman: f64,
    pub graded_n: usize,
    pub apgr: f64,
    pub cpt50: f64,
    pub typo_robustness: Option<f64>,
    /// The typo figure over the real prompts (`sharegpt`) of the same sample.
    pub typo_robustness_real: Option<SubsetShare>,
    /// The same figures per language group, language and source group.
    pub groups: Vec<GroupReport>,
}

/// A share measured on a subset of rows, with the subset's size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SubsetShare {
    pub share: f64,
    pub n: usize,
}

impl EvalReport {
    /// The numbers stored in the model card metadata.
    pub fn headline(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        m.insert("intent_accuracy".into(), self.intent.accuracy);
        m.insert("intent_macro_f1".into(), self.intent.macro_f1);
        m.insert("intent_ece".into(), self.intent.ece);
        m.insert("abstain_rate".into(), self.intent.abstain_rate);
        if let Some(r) = &self.intent_real {
            m.insert("real_intent_accuracy".into(), r.accuracy);
            m.insert("real_intent_macro_f1".into(), r.macro_f1);
            m.insert("real_intent_ece".into(), r.ece);
        }
        if let Some(d) = &self.domain {
            m.insert("domain_accuracy".into(), d.accuracy);
            m.insert("domain_macro_f1".into(), d.macro_f1);
        }
        m.insert("complexity_mae".into(), self.complexity_mae);
        m.insert("complexity_spearman".into(), self.complexity_spearman);
        m.insert("routing_apgr".into(), self.apgr);
        m.insert("routing_cpt50".into(), self.cpt50);
        if let Some(t) = self.typo_robustness {
            m.insert("typo_robustness".into(), t);
        }
        if let Some(t) = self.typo_robustness_real {
            m.insert("real_typo_robustness".into(), t.share);
        }
        if let Some(g) = self.group("source", "exam").filter(|g| g.domain_n > 0) {
            m.insert("exam_domain_macro_f1".into(), g.domain_macro_f1);
        }
        // Undefined metrics (no graded rows, say) are left out: JSON has no NaN.
        m.retain(|_, v| v.is_finite());
        m
    }
}

impl EvalReport {
    /// The slice `kind`/`name` (see `groups::groups`), if it had rows.
    pub fn group(&self, kind: &str, name: &str) -> Option<&GroupReport> {
        self.groups
            .iter()
            .find(|g| g.kind == kind && g.name == name)
    }
}

/// Gives each prediction its row's language and applies the untrained-language abstention
/// (`min_share`; None = off), as the server does.
pub fn apply_languages(
    c: &Classifier,
    rows: &[&Row],
    preds: &mut [Prediction],
    min_share: Option<f64>,
) {
    for (r, p) in rows.iter().zip(preds.iter_mut()) {
        c.apply_language(p, crate::classify::language::detect(&r.text), min_share);
    }
}

/// Predicts every row (batched through the heads).
pub fn predict_all(
    c: &Classifier,
    vecs: &[&(Vec<f32>, u32)],
) -> Result<Vec<Prediction>, ClassifyError> {
    let mut out = Vec::with_capacity(vecs.len());
    for chunk in vecs.chunks(2048) {
        let x: Vec<f32> = chunk
            .iter()
            .flat_map(|(v, t)| Classifier::features(v, *t as usize))
            .collect();
        let x = Tensor::from_vec(x, (chunk.len(), c.meta.inputs), &Device::Cpu)?;
        out.extend(c.predict_features(&x, None)?);
    }
    Ok(out)
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-12)
}

/// RouteLLM's APGR and CPT(50%) for a router that sends the highest-scoring rows to the strong
/// model. Strong-call share swept over deciles; PGR = (perf − weak) / (strong − weak);
/// APGR = trapezoid area under PGR over the share; CPT(50%) = smallest share reaching PGR 0.5.
pub fn apgr(scores: &[f64], graded: &[(bool, bool)]) -> (f64, f64) {
    let n = scores.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let perf = |k: usize| -> f64 {
        let strong: usize = order[..k].iter().filter(|&&i| graded[i].1).count();
        let weak: usize = order[k..].iter().filter(|&&i| graded[i].0).count();
        (strong + weak) as f64 / n as f64
    };
    let (weak, strong) = (perf(0), perf(n));
    let gap = (strong - weak).max(1e-12);
    let pgr: Vec<f64> = (0..=10).map(|d| (perf(n * d / 10) - weak) / gap).collect();
    let area = (0..10).map(|d| (pgr[d] + pgr[d + 1]) / 2.0 * 0.1).sum();
    let cpt = (1..=10)
        .find(|&d| pgr[d] >= 0.5)
        .map(|d| {
            let (x0, x1, y0, y1) = ((d - 1) as f64 / 10.0, d as f64 / 10.0, pgr[d - 1], pgr[d]);
            x0 + (0.5 - y0) / (y1 - y0).max(1e-12) * (x1 - x0)
        })
        .unwrap_or(1.0);
    (area, cpt)
}

/// Evaluates `c` on rows with precomputed embeddings, abstaining on untrained languages at
/// the default share.
pub fn evaluate(
    c: &Classifier,
    rows: &[&Row],
    vecs: &[&(Vec<f32>, u32)],
) -> Result<EvalReport, ClassifyError> {
    let mut preds = predict_all(c, vecs)?;
    let share = Some(crate::classify::language::DEFAULT_MIN_SHARE);
    apply_languages(c, rows, &mut preds, share);
    Ok(evaluate_predictions(c, rows, &preds))
}

/// Evaluates `c`'s predictions `preds` of `rows`, which carry their language
/// (`apply_languages`).
pub fn evaluate_predictions(c: &Classifier, rows: &[&Row], preds: &[Prediction]) -> EvalReport {
    let (il, dl) = (&c.meta.intent_labels, &c.meta.domain_labels);
    let pairs = || rows.iter().copied().zip(preds);
    let intent = label_report(il, &intent_items(il, pairs()), 1);
    let real = intent_items(il, pairs().filter(|(r, _)| r.is_real()));
    let intent_real = (!real.is_empty()).then(|| label_report(il, &real, 10));
    let dom = domain_items(dl, pairs());
    let domain = (!dom.is_empty()).then(|| label_report(dl, &dom, 1));
    let cx: Vec<(f64, f64)> = rows
        .iter()
        .zip(preds)
        .filter_map(|(r, p)| Some((r.complexity? as f64, p.small_fails as f64)))
        .collect();
    let (truth, pred): (Vec<f64>, Vec<f64>) = cx.iter().cloned().unzip();
    let graded: Vec<(f64, (bool, bool))> = rows
        .iter()
        .zip(preds)
        .filter_map(|(r, p)| Some((p.complexity as f64, r.graded?)))
        .collect();
    let (gs, gg): (Vec<f64>, Vec<(bool, bool)>) = graded.iter().cloned().unzip();
    let (apgr, cpt50) = apgr(&gs, &gg);
    EvalReport {
        intent,
        intent_real,
        domain,
        complexity_n: cx.len(),
        complexity_mae: cx.iter().map(|(t, p)| (t - p).abs()).sum::<f64>() / cx.len().max(1) as f64,
        complexity_spearman: spearman(&truth, &pred),
        graded_n: gg.len(),
        apgr,
        cpt50,
        typo_robustness: None,
        typo_robustness_real: None,
        groups: super::groups::groups(c, rows, preds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apgr_of_perfect_and_inverse_routers() {
        // Weak fails exactly where strong succeeds on the first half.
        let graded: Vec<(bool, bool)> = (0..100).map(|i| (i >= 50, true)).collect();
        let perfect: Vec<f64> = (0..100).map(|i| if i < 50 { 1.0 } else { 0.0 }).collect();
        let inverse: Vec<f64> = perfect.iter().map(|v| 1.0 - v).collect();
        let (a, cpt) = apgr(&perfect, &graded);
        assert!(a > 0.7, "perfect router apgr {a}");
        assert!(cpt <= 0.26, "cpt {cpt}");
        let (b, _) = apgr(&inverse, &graded);
        assert!(b < 0.3, "inverse router apgr {b}");
    }

    #[test]
    fn spearman_of_monotone_and_reversed() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-9);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-9);
    }

    #[test]
    fn label_report_counts() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let items = [
            (0, 0, 0.9, false),
            (0, 1, 0.6, false),
            (1, 1, 0.8, false),
            (1, 1, 0.3, true),
        ];
        let r = label_report(&labels, &items, 1);
        assert!((r.accuracy - 0.75).abs() < 1e-9);
        assert_eq!(r.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert!((r.abstain_rate - 0.25).abs() < 1e-9);
        assert!((r.per_class[1].precision - 2.0 / 3.0).abs() < 1e-9);
    }
}
