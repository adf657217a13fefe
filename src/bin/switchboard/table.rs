//! Human-readable rendering of a decision (for `switchboard route`).
use std::fmt::Write;

use switchboard::proto::v1::RouteDecisionResponse;

/// The decision as a small text table.
pub fn decision_table(r: &RouteDecisionResponse) -> String {
    let mut s = String::new();
    if let Some(c) = &r.classification {
        let abstained = match c.abstain_reason.as_str() {
            _ if !c.abstained => String::new(),
            "" => ", abstained".into(),
            why => format!(", abstained: {why}"),
        };
        let _ = writeln!(
            s,
            "intent {} ({:.2}{})  domain {}  language {} ({:.2})  complexity {:.2} (difficulty {:.2}, strong-model gain {:+.2})",
            c.intent,
            c.confidence,
            abstained,
            c.domain,
            if c.language.is_empty() { "?" } else { &c.language },
            c.language_confidence,
            c.complexity,
            c.difficulty,
            c.strong_gain
        );
    }
    let _ = writeln!(
        s,
        "policy {} / variant {}  classifier {}  decision {}",
        r.policy, r.variant, r.classifier_version, r.decision_id
    );
    let _ = writeln!(
        s,
        "{:<3} {:<20} {:>7} {:>7} {:>11} {:>8}  reasons",
        "#", "backend", "score", "quality", "cost USD", "TTFT ms"
    );
    for (i, b) in r.backends.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:<3} {:<20} {:>7.3} {:>7.2} {:>11.6} {:>8.0}  {}",
            i + 1,
            b.name,
            b.score,
            b.estimated_quality,
            b.estimated_cost_usd,
            b.estimated_latency_ms,
            b.reasons.join("; ")
        );
    }
    if let Some(t) = &r.timings {
        let _ = writeln!(
            s,
            "timings µs: queue {} embed {} classify {} rank {} total {}",
            t.queue_us, t.embed_us, t.classify_us, t.rank_us, t.total_us
        );
    }
    s
}
