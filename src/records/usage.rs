//! Usage records and the savings report. Each served completion leaves one usage record:
//! who asked (tenant, key), what it was (intent, domain, policy), who served it and what it
//! cost, and what the same tokens would have cost on the catalog's strongest backend for that
//! prompt and on the policy's default backend, with the catalog's quality estimate for each.
//! The report sums them over a time window; the counterfactuals are priced when the
//! completion is served, with the catalog of that moment.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The `kind` of a usage line in the decision log.
pub const KIND: &str = "usage";

/// Another backend the same completion is priced on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub backend: String,
    pub cost_usd: f64,
    /// The catalog's quality estimate of that backend for this prompt.
    pub quality: f64,
}

/// One served completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub kind: String,
    pub id: String,
    pub ts_ms: u64,
    pub tenant: String,
    pub key: String,
    pub backend: String,
    /// Empty for a pinned completion (no routing happened).
    pub policy: String,
    pub intent: String,
    pub domain: String,
    pub catalog_version: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_usd: f64,
    pub quality: f64,
    pub strongest: Alternative,
    pub default: Alternative,
}

/// Sums over a group of usage records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub name: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub strongest_cost_usd: f64,
    pub default_cost_usd: f64,
    quality_sum: f64,
    strongest_quality_sum: f64,
    default_quality_sum: f64,
}

impl Totals {
    fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default()
        }
    }

    fn add(&mut self, r: &UsageRecord) {
        self.requests += 1;
        self.prompt_tokens += u64::from(r.prompt_tokens);
        self.completion_tokens += u64::from(r.completion_tokens);
        self.cost_usd += r.cost_usd;
        self.strongest_cost_usd += r.strongest.cost_usd;
        self.default_cost_usd += r.default.cost_usd;
        self.quality_sum += r.quality;
        self.strongest_quality_sum += r.strongest.quality;
        self.default_quality_sum += r.default.quality;
    }

    fn mean(&self, sum: f64) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            sum / self.requests as f64
        }
    }

    /// Mean quality estimate of what served, of the strongest, of the default backend.
    pub fn qualities(&self) -> (f64, f64, f64) {
        (
            self.mean(self.quality_sum),
            self.mean(self.strongest_quality_sum),
            self.mean(self.default_quality_sum),
        )
    }

    /// USD saved against `baseline`, and that as a percentage of it (0 when it is 0).
    pub fn savings(&self, baseline: f64) -> (f64, f64) {
        let saved = baseline - self.cost_usd;
        let pct = if baseline > 0.0 {
            saved / baseline * 100.0
        } else {
            0.0
        };
        (saved, pct)
    }
}

/// The report over one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavingsReport {
    pub from_ms: u64,
    pub to_ms: u64,
    pub total: Totals,
    pub by_tenant: Vec<Totals>,
    pub by_key: Vec<Totals>,
    pub by_backend: Vec<Totals>,
    pub by_intent: Vec<Totals>,
    pub by_domain: Vec<Totals>,
}

/// Sums the records with `from_ms <= ts_ms < to_ms`; each record counts once (by id).
pub fn report(
    records: impl IntoIterator<Item = UsageRecord>,
    from_ms: u64,
    to_ms: u64,
) -> SavingsReport {
    let mut seen = std::collections::HashSet::new();
    let mut total = Totals::named("total");
    let mut groups: [BTreeMap<String, Totals>; 5] = Default::default();
    for r in records {
        if r.ts_ms < from_ms || r.ts_ms >= to_ms || !seen.insert(r.id.clone()) {
            continue;
        }
        total.add(&r);
        let keys = [&r.tenant, &r.key, &r.backend, &r.intent, &r.domain];
        for (g, k) in groups.iter_mut().zip(keys) {
            g.entry(k.clone())
                .or_insert_with(|| Totals::named(k))
                .add(&r);
        }
    }
    let [by_tenant, by_key, by_backend, by_intent, by_domain] =
        groups.map(|g| g.into_values().collect());
    SavingsReport {
        from_ms,
        to_ms,
        total,
        by_tenant,
        by_key,
        by_backend,
        by_intent,
        by_domain,
    }
}

/// The usage records in a decision-log folder with `from_ms <= ts_ms < to_ms`.
pub fn read_local(dir: &Path, from_ms: u64, to_ms: u64) -> std::io::Result<Vec<UsageRecord>> {
    let mut out = Vec::new();
    for f in super::log_files(dir)? {
        for line in BufReader::new(std::fs::File::open(&f)?).lines() {
            let line = line?;
            if !line.contains("\"kind\":\"usage\"") {
                continue;
            }
            if let Ok(r) = serde_json::from_str::<UsageRecord>(&line) {
                if r.ts_ms >= from_ms && r.ts_ms < to_ms {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, ts: u64, tenant: &str, cost: f64, strongest: f64) -> UsageRecord {
        UsageRecord {
            kind: KIND.into(),
            id: id.into(),
            ts_ms: ts,
            tenant: tenant.into(),
            cost_usd: cost,
            quality: 0.8,
            strongest: Alternative {
                backend: "big".into(),
                cost_usd: strongest,
                quality: 0.9,
            },
            ..UsageRecord::default()
        }
    }

    #[test]
    fn sums_within_the_window_once_per_id() {
        let rs = vec![
            rec("a", 10, "acme", 0.01, 0.10),
            rec("a", 10, "acme", 0.01, 0.10),
            rec("b", 20, "beta", 0.02, 0.04),
            rec("c", 30, "acme", 5.0, 5.0),
        ];
        let r = report(rs, 0, 30);
        assert_eq!(r.total.requests, 2);
        assert!((r.total.cost_usd - 0.03).abs() < 1e-12);
        let (saved, pct) = r.total.savings(r.total.strongest_cost_usd);
        assert!((saved - 0.11).abs() < 1e-12 && (pct - 11.0 / 14.0 * 100.0).abs() < 1e-9);
        assert_eq!(r.by_tenant.len(), 2);
        assert_eq!(r.total.qualities(), (0.8, 0.9, 0.0));
    }
}
