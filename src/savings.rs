//! What routing saved. For each served completion the gateway records its usage with two
//! counterfactuals priced on the same tokens: the strongest backend for the prompt (the
//! highest quality estimate for its intent and domain among the backends the caller may use,
//! the cheaper on a tie: what "always send it to the best model" costs), and the policy's
//! default backend (what a fixed single-model setup costs). The report sums the records of a
//! window, from this replica's decision log or, in a fleet, from the shared store.
use std::sync::Arc;

use crate::auth::Caller;
use crate::config::{Backend, Config};
use crate::policy::{cost_usd, quality_for};
use crate::proxy::Served;
use crate::records::shared::SharedRecords;
use crate::records::usage::{self, Alternative, SavingsReport, UsageRecord};
use crate::records::DecisionLog;

/// What routing decided for a completion, kept while the completion runs.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    pub id: String,
    pub policy: String,
    pub intent: String,
    pub domain: String,
    pub catalog_version: String,
}

/// The usage record of `served`, priced against `cfg` (the catalog the completion used).
pub fn record(cfg: &Config, r: &Routed, caller: Option<&Caller>, served: &Served) -> UsageRecord {
    let (p, c) = (served.prompt_tokens, served.completion_tokens);
    let alt = |b: &Backend| Alternative {
        backend: b.name.clone(),
        cost_usd: cost_usd(b, p, c),
        quality: quality_for(b, &r.intent, &r.domain).0,
    };
    let allowed =
        |b: &&Backend| caller.is_none_or(|c| c.backends.is_empty() || c.backends.contains(&b.name));
    let strongest = cfg
        .backends
        .iter()
        .filter(allowed)
        .map(alt)
        .reduce(|best, x| {
            let better = x.quality > best.quality
                || (x.quality == best.quality && x.cost_usd < best.cost_usd);
            if better {
                x
            } else {
                best
            }
        })
        .unwrap_or_default();
    let policy = if r.policy.is_empty() {
        &cfg.default_policy
    } else {
        &r.policy
    };
    let default = cfg
        .policies
        .get(policy)
        .and_then(|pol| cfg.backends.iter().find(|b| b.name == pol.default_backend))
        .map(alt)
        .unwrap_or_default();
    let quality = cfg
        .backends
        .iter()
        .find(|b| b.name == served.backend)
        .map(|b| quality_for(b, &r.intent, &r.domain).0)
        .unwrap_or(0.0);
    UsageRecord {
        kind: usage::KIND.into(),
        id: r.id.clone(),
        ts_ms: crate::records::now_ms(),
        tenant: caller.map(|c| c.tenant.clone()).unwrap_or_default(),
        key: caller.map(|c| c.key.clone()).unwrap_or_default(),
        backend: served.backend.clone(),
        policy: r.policy.clone(),
        intent: r.intent.clone(),
        domain: r.domain.clone(),
        catalog_version: r.catalog_version.clone(),
        prompt_tokens: p,
        completion_tokens: c,
        cost_usd: served.cost_usd,
        quality,
        strongest,
        default,
    }
}

/// Where the report reads its records.
pub enum Source {
    /// This replica's decision log.
    Local(Arc<DecisionLog>),
    /// The fleet's shared store.
    Fleet(Arc<SharedRecords>),
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the decision log is off (admin.decision_log = false): no usage was recorded")]
    NoRecords,
    #[error("reading the decision log: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] crate::fleet::StoreError),
}

/// The savings report over `[from_ms, to_ms)`.
pub async fn report(
    source: Option<&Source>,
    from_ms: u64,
    to_ms: u64,
) -> Result<SavingsReport, ReportError> {
    let records = match source.ok_or(ReportError::NoRecords)? {
        Source::Fleet(shared) => shared.usage(from_ms, to_ms).await?,
        Source::Local(log) => {
            let log = log.clone();
            tokio::task::spawn_blocking(move || {
                // Lines handed over before the call are in the files when it reads them.
                log.flush();
                usage::read_local(log.dir(), from_ms, to_ms)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??
        }
    };
    Ok(usage::report(records, from_ms, to_ms))
}
