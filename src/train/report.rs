//! Human-readable output of an evaluation: a text table, and SVG drawings of the confusion
//! matrix and the reliability diagram. SVG is written directly (a few rects and lines) rather
//! than through a plotting crate, which would add minutes of build for two simple charts.
use std::fmt::Write;

use super::eval::{EvalReport, LabelReport};
use crate::classify::Prediction;
use crate::dataset::Row;

fn head(out: &mut String, name: &str, r: &LabelReport) {
    let _ = writeln!(
        out,
        "{name:<14} n {:>6}  acc {:.3}  macro-F1 {:.3} (classes with ≥{} rows)  ECE {:.3}  abstain {:.3}  acc(non-abstained) {:.3}",
        r.n, r.accuracy, r.macro_f1, r.min_support, r.ece, r.abstain_rate, r.accuracy_non_abstained
    );
}

/// The readable table `switchboard train` and `switchboard eval` print.
pub fn table(r: &EvalReport) -> String {
    let mut out = String::new();
    head(&mut out, "intent", &r.intent);
    if let Some(real) = &r.intent_real {
        head(&mut out, "intent (real)", real);
    }
    if let Some(d) = &r.domain {
        head(&mut out, "domain", d);
    }
    let _ = writeln!(
        out,
        "complexity     n {:>6}  P(small fails): MAE {:.3}  Spearman {:.3}   routing score on {} graded rows: APGR {:.3}  CPT(50%) {:.3}",
        r.complexity_n, r.complexity_mae, r.complexity_spearman, r.graded_n, r.apgr, r.cpt50
    );
    if let Some(t) = r.typo_robustness {
        let _ = write!(out, "typo robustness (5% character noise): {t:.3}");
        if let Some(real) = r.typo_robustness_real {
            let _ = write!(out, "  (real prompts: {:.3}, n {})", real.share, real.n);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nintent per class{}",
        if r.intent_real.is_some() {
            " (all rows | real prompts)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:<18} {:>6} {:>6} {:>6} {:>6}",
        "label", "P", "R", "F1", "n"
    );
    for (i, c) in r.intent.per_class.iter().enumerate() {
        let real = r.intent_real.as_ref().map(|x| &x.per_class[i]);
        let extra = real
            .map(|x| {
                format!(
                    "  | {:>6.3} {:>6.3} {:>6.3} {:>6}",
                    x.precision, x.recall, x.f1, x.support
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<18} {:>6.3} {:>6.3} {:>6.3} {:>6}{extra}",
            c.label, c.precision, c.recall, c.f1, c.support
        );
    }
    groups(&mut out, r);
    out
}

/// Per language group, language and source group: intent accuracy, macro-F1, ECE, abstain
/// rate, and domain figures where the rows have domain labels.
fn groups(out: &mut String, r: &EvalReport) {
    if r.groups.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:>6} {:>6} {:>8} {:>6} {:>8} {:>6} {:>6} {:>8}",
        "slice", "n", "acc", "macro-F1", "ECE", "abstain", "dom n", "dom acc", "dom F1"
    );
    for g in &r.groups {
        let domain = if g.domain_n > 0 {
            format!(
                "{:>6} {:>7.3} {:>8.3}",
                g.domain_n, g.domain_accuracy, g.domain_macro_f1
            )
        } else {
            format!("{:>6} {:>7} {:>8}", 0, "-", "-")
        };
        let _ = writeln!(
            out,
            "{:<26} {:>6} {:>6.3} {:>8.3} {:>6.3} {:>8.3} {domain}",
            format!("{} {}", g.kind, g.name),
            g.n,
            g.intent_accuracy,
            g.intent_macro_f1,
            g.intent_ece,
            g.abstain_rate
        );
    }
}

/// The language mix of a classifier's training rows, largest first (the ten largest, then
/// the rest together), as `train` prints it.
pub fn language_mix(mix: &std::collections::BTreeMap<String, u64>) -> String {
    let total: u64 = mix.values().sum();
    if total == 0 {
        return "training languages: not recorded".into();
    }
    let mut v: Vec<(&String, &u64)> = mix.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let share = |n: u64| 100.0 * n as f64 / total as f64;
    let mut parts: Vec<String> = v
        .iter()
        .take(10)
        .map(|(k, n)| format!("{k} {n} ({:.2}%)", share(**n)))
        .collect();
    let rest: u64 = v.iter().skip(10).map(|(_, n)| **n).sum();
    if rest > 0 {
        parts.push(format!(
            "{} others {rest} ({:.2}%)",
            v.len() - 10,
            share(rest)
        ));
    }
    format!("training languages ({total} rows): {}", parts.join(", "))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Confusion matrix as SVG: rows are true labels, columns predictions, shade = row share.
pub fn confusion_svg(r: &LabelReport, title: &str) -> String {
    let k = r.labels.len();
    let (cell, left, top) = (44usize, 140usize, 150usize);
    let (w, h) = (left + k * cell + 20, top + k * cell + 40);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"18\" font-size=\"14\">{}</text>",
        esc(title)
    );
    for (i, row) in r.confusion.iter().enumerate() {
        let total: usize = row.iter().sum::<usize>().max(1);
        let y = top + i * cell;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6,
            y + cell / 2 + 4,
            esc(&r.labels[i])
        );
        for (j, &v) in row.iter().enumerate() {
            let share = v as f64 / total as f64;
            let x = left + j * cell;
            let shade = 255 - (share * 200.0) as u8;
            let _ = writeln!(s, "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({shade},{shade},255)\" stroke=\"#ccc\"/>");
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{v}</text>",
                x + cell / 2,
                y + cell / 2 + 4
            );
        }
    }
    for (j, l) in r.labels.iter().enumerate() {
        let x = left + j * cell + cell / 2;
        let _ = writeln!(
            s,
            "<text x=\"{x}\" y=\"{}\" transform=\"rotate(-60 {x} {})\">{}</text>",
            top - 6,
            top - 6,
            esc(l)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{}\">rows: true label, columns: predicted</text>",
        h - 12
    );
    s.push_str("</svg>\n");
    s
}

/// Reliability diagram as SVG: accuracy per confidence bin against the diagonal.
pub fn reliability_svg(r: &LabelReport, title: &str) -> String {
    let (size, pad) = (320.0, 50.0);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n", size + 2.0 * pad, size + 2.0 * pad);
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"18\" font-size=\"14\">{} (ECE {:.3})</text>",
        esc(title),
        r.ece
    );
    let px = |v: f64| pad + v * size;
    let py = |v: f64| pad + size - v * size;
    let _ = writeln!(s, "<rect x=\"{pad}\" y=\"{pad}\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#999\"/>");
    let _ = writeln!(
        s,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"4\"/>",
        px(0.0),
        py(0.0),
        px(1.0),
        py(1.0)
    );
    for (b, (_, acc, n)) in r.reliability.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let x = px(b as f64 / 10.0) + 2.0;
        let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"steelblue\" opacity=\"0.8\"><title>{n} rows</title></rect>", py(*acc), size / 10.0 - 4.0, acc * size);
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">confidence</text>",
        pad + size / 2.0,
        size + pad + 30.0
    );
    let _ = writeln!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">accuracy</text>", pad + size / 2.0, pad + size / 2.0);
    s.push_str("</svg>\n");
    s
}

/// The rows whose intent was predicted wrong, as JSON lines (id, source, label, prediction,
/// confidence, the text's first 300 characters): what people read to tell model errors from
/// label noise. Rows whose label the head does not have are left out, as in the report.
pub fn mistakes_jsonl(rows: &[&Row], predictions: &[Prediction], labels: &[String]) -> String {
    let mut out = String::new();
    for (r, p) in rows.iter().zip(predictions) {
        let Some(label) = r.intent.as_ref().filter(|l| labels.contains(l)) else {
            continue;
        };
        if *label == p.intent {
            continue;
        }
        let line = serde_json::json!({
            "id": r.id,
            "source": r.source,
            "origin": r.origin,
            "intent": label,
            "predicted": p.intent,
            "confidence": p.confidence,
            "abstained": p.abstained,
            "text": excerpt(&r.text),
        });
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Every row's calibrated outputs as JSON lines (id, source, labels, both probability vectors in
/// the head's label order, the complexity score): for offline study (thresholds, ensembles)
/// without re-running the encoder. No text, so nothing of the data is quoted.
pub fn predictions_jsonl(rows: &[&Row], predictions: &[Prediction]) -> String {
    let mut out = String::new();
    for (r, p) in rows.iter().zip(predictions) {
        let line = serde_json::json!({
            "id": r.id,
            "source": r.source,
            "intent": r.intent,
            "domain": r.domain,
            "intent_probs": p.intent_probs,
            "domain_probs": p.domain_probs,
            "complexity": p.complexity,
            "small_fails": p.small_fails,
        });
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Appends the JSON line of a row whose intent changed under typo noise (`r` is the noisy row).
pub fn push_flip(out: &mut String, r: &Row, clean: &Prediction, noisy: &Prediction) {
    let line = serde_json::json!({
        "id": r.id,
        "source": r.source,
        "intent": r.intent,
        "clean": clean.intent,
        "clean_confidence": clean.confidence,
        "noisy": noisy.intent,
        "noisy_confidence": noisy.confidence,
        "noisy_text": excerpt(&r.text),
    });
    let _ = writeln!(out, "{line}");
}

/// The start of a row's text, enough to recognise it.
fn excerpt(text: &str) -> String {
    text.chars().take(300).collect()
}
