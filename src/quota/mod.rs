//! Quotas and budgets per API key and per tenant: requests and tokens per minute, and spend
//! in USD per UTC day and month. A completion reserves its estimated tokens and cost before
//! the upstream call, settles with the real usage after, and releases the reservation when
//! nothing was served, so concurrent requests cannot overshoot a budget by more than one
//! request's estimate. The ledger is in memory for a single process, or in the shared store
//! for a fleet, where one Lua script makes the check-and-reserve atomic across replicas.
pub mod calendar;
mod local;
mod shared;

use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, ErrorKind};
use crate::fleet::Store;
use crate::metrics::Metrics;
use calendar::Period;

/// A party's limits; each is off when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
}

/// Largest accepted budget: far above any real one, far below i64 micro-dollars.
const MAX_USD: f64 = 1e9;

impl Limits {
    /// Range checks; errors name `path.field`.
    pub fn check(&self, path: &str) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((format!("{path}.{f}"), m));
        if let Some(0) = self.requests_per_minute {
            return bad("requests_per_minute", "must be at least 1".into());
        }
        if let Some(t) = self.tokens_per_minute {
            if !(1..=1 << 40).contains(&t) {
                return bad(
                    "tokens_per_minute",
                    format!("must be in [1, 2^40], found {t}"),
                );
            }
        }
        for (f, v) in [
            ("usd_per_day", self.usd_per_day),
            ("usd_per_month", self.usd_per_month),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0 && v <= MAX_USD) {
                    return bad(
                        f,
                        format!("must be a finite number in (0, {MAX_USD}], found {v}"),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a completion must count its tokens or cost against these limits.
    pub fn meters_usage(&self) -> bool {
        self.tokens_per_minute.is_some() || self.has_budget()
    }

    pub fn has_budget(&self) -> bool {
        self.usd_per_day.is_some() || self.usd_per_month.is_some()
    }
}

/// Who a limit or a usage row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Key,
    Tenant,
    Backend,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Tenant => "tenant",
            Self::Backend => "backend",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(Self::Key),
            "tenant" => Some(Self::Tenant),
            "backend" => Some(Self::Backend),
            _ => None,
        }
    }
}

/// One party a request counts against.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub scope: Scope,
    pub name: String,
    pub limits: Limits,
}

impl Subject {
    fn id(&self) -> String {
        format!("{}:{}", self.scope.as_str(), self.name)
    }
}

/// What a request asks to reserve: its id, estimated tokens and estimated cost.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub id: String,
    pub tokens: u64,
    pub usd: f64,
}

/// A granted reservation: settle it with the real usage, or release it.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The request's id: a settlement retried after a timeout is applied once.
    id: String,
    subjects: Vec<Subject>,
    tokens: u64,
    micro_usd: i64,
    /// The second the tokens were counted in, and the budget periods charged.
    sec: u64,
    period: Period,
}

/// What a served completion used.
#[derive(Debug, Clone)]
pub struct Used {
    pub backend: String,
    pub tokens: u64,
    pub usd: f64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuotaError {
    #[error("{scope} {name:?}: {limit} limit of {value} reached; retry in {retry_after_s} s")]
    Exceeded {
        scope: &'static str,
        name: String,
        limit: &'static str,
        value: String,
        retry_after_s: u64,
    },
    #[error("{scope} {name:?}: the request's estimate of {asked} tokens is over the {limit} limit of {value}")]
    TooLarge {
        scope: &'static str,
        name: String,
        limit: &'static str,
        value: String,
        asked: u64,
    },
    #[error("{0}")]
    Unavailable(String),
}

impl From<QuotaError> for Error {
    fn from(e: QuotaError) -> Self {
        match &e {
            QuotaError::Exceeded { retry_after_s, .. } => {
                let retry = *retry_after_s;
                Error::new(ErrorKind::ResourceExhausted, e.to_string())
                    .reason("quota_exceeded")
                    .retry_after(retry.max(1))
            }
            QuotaError::TooLarge { .. } => {
                Error::new(ErrorKind::ResourceExhausted, e.to_string()).reason("quota_exceeded")
            }
            QuotaError::Unavailable(m) => {
                Error::new(ErrorKind::Unavailable, m.clone()).reason("quota_store_unavailable")
            }
        }
    }
}

/// Micro-dollars: exact sums across replicas.
fn micros(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// Totals of one party over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    pub scope: &'static str,
    pub name: String,
    pub requests: u64,
    pub tokens: u64,
    pub usd: f64,
}

/// The ledger: in memory, or shared.
pub struct Quotas {
    ledger: Ledger,
    metrics: Arc<Metrics>,
}

enum Ledger {
    Local(local::Local),
    Shared(shared::Shared),
}

impl Quotas {
    /// In memory when `store` is `None`.
    pub fn new(
        store: Option<Store>,
        cfg: &crate::config::FleetConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ledger = match store {
            None => Ledger::Local(local::Local::default()),
            Some(s) => Ledger::Shared(shared::Shared::new(s, cfg, metrics.clone())),
        };
        Self { ledger, metrics }
    }

    /// Checks every subject's limits and reserves `ask` against all of them, or none. The
    /// reservation keeps every subject, limited or not, for the usage its settlement records.
    pub async fn reserve(
        &self,
        subjects: &[Subject],
        ask: &Ask,
    ) -> Result<Reservation, QuotaError> {
        let subjects = subjects.to_vec();
        let r = match &self.ledger {
            Ledger::Local(l) => l.reserve(subjects, ask),
            Ledger::Shared(s) => s.reserve(subjects, ask).await,
        };
        if let Err(
            QuotaError::Exceeded { scope, limit, .. } | QuotaError::TooLarge { scope, limit, .. },
        ) = &r
        {
            self.metrics
                .quota_rejections
                .with_label_values(&[scope, limit])
                .inc();
        }
        r
    }

    /// Charges what a served completion used (correcting its reservation) and records it in
    /// the usage of every subject and of the backend.
    pub fn settle(&self, r: Reservation, used: &Used) {
        for s in &r.subjects {
            if s.scope != Scope::Backend {
                let labels = [s.scope.as_str(), s.name.as_str()];
                for (period, limit) in [
                    ("day", s.limits.usd_per_day),
                    ("month", s.limits.usd_per_month),
                ] {
                    if let Some(l) = limit {
                        let at = [labels[0], labels[1], period];
                        self.metrics.budget_limit.with_label_values(&at).set(l);
                    }
                }
                self.metrics
                    .spend_usd
                    .with_label_values(&labels)
                    .inc_by(used.usd.max(0.0));
                self.metrics
                    .usage_tokens
                    .with_label_values(&labels)
                    .inc_by(used.tokens);
            }
        }
        match &self.ledger {
            Ledger::Local(l) => l.settle(r, Some(used)),
            Ledger::Shared(s) => s.settle(r, Some(used)),
        }
    }

    /// Gives a reservation back: nothing was served.
    pub fn release(&self, r: Reservation) {
        match &self.ledger {
            Ledger::Local(l) => l.settle(r, None),
            Ledger::Shared(s) => s.settle(r, None),
        }
    }

    /// Usage per key, tenant and backend over the last `days` UTC days (1 = today),
    /// fleet-wide when shared. Sorted by scope, then name.
    pub async fn usage(&self, days: u32) -> Result<Vec<UsageRow>, QuotaError> {
        let today = (crate::records::now_ms() / 86_400_000) as i64;
        let codes: Vec<u32> = (0..days.clamp(1, 366) as i64)
            .map(|back| Period::at(((today - back).max(0) * 86_400) as u64).day)
            .collect();
        let mut rows = match &self.ledger {
            Ledger::Local(l) => l.usage(&codes),
            Ledger::Shared(s) => s.usage(&codes).await?,
        };
        rows.sort_by(|a, b| (a.scope, &a.name).cmp(&(b.scope, &b.name)));
        Ok(rows)
    }
}

/// A reservation's subjects plus the serving backend: whose usage a settlement records.
fn usage_parties(r: &Reservation, used: &Used) -> Vec<(Scope, String)> {
    let mut v: Vec<_> = r
        .subjects
        .iter()
        .map(|s| (s.scope, s.name.clone()))
        .collect();
    v.push((Scope::Backend, used.backend.clone()));
    v
}

/// Adds one usage field (`<scope>:<name>:<requests|tokens|micro_usd>`) to `rows`.
fn add_field(rows: &mut Vec<UsageRow>, field: &str, value: i64) {
    let mut parts = field.rsplitn(2, ':');
    let (Some(what), Some(who)) = (parts.next(), parts.next()) else {
        return;
    };
    let Some((scope, name)) = who.split_once(':') else {
        return;
    };
    let Some(scope) = Scope::parse(scope) else {
        return;
    };
    let i = match rows
        .iter()
        .position(|r| r.scope == scope.as_str() && r.name == name)
    {
        Some(i) => i,
        None => {
            rows.push(UsageRow {
                scope: scope.as_str(),
                name: name.to_string(),
                ..Default::default()
            });
            rows.len() - 1
        }
    };
    let row = &mut rows[i];
    let v = value.max(0) as u64;
    match what {
        "requests" => row.requests += v,
        "tokens" => row.tokens += v,
        "micro_usd" => row.usd += v as f64 / 1e6,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_range_checked() {
        let l = Limits {
            usd_per_day: Some(f64::NAN),
            ..Default::default()
        };
        assert_eq!(l.check("keys[0]").unwrap_err().0, "keys[0].usd_per_day");
        let l = Limits {
            requests_per_minute: Some(0),
            ..Default::default()
        };
        assert_eq!(
            l.check("tenants.acme").unwrap_err().0,
            "tenants.acme.requests_per_minute"
        );
        assert!(Limits::default().check("x").is_ok());
    }

    #[test]
    fn usage_fields_fold_into_rows() {
        let mut rows = Vec::new();
        add_field(&mut rows, "tenant:acme:requests", 2);
        add_field(&mut rows, "tenant:acme:micro_usd", 1_500_000);
        add_field(&mut rows, "backend:gpt:x:tokens", 7);
        add_field(&mut rows, "garbage", 7);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].requests, 2);
        assert!((rows[0].usd - 1.5).abs() < 1e-12);
        assert_eq!((rows[1].name.as_str(), rows[1].tokens), ("gpt:x", 7));
    }
}
