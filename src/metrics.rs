//! Prometheus metrics, all prefixed `switchboard_`, durations in seconds. One registry per
//! service instance (tests run several servers in one process).
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The service's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub decisions: IntCounterVec,
    pub stage_seconds: HistogramVec,
    pub batch_size: prometheus::Histogram,
    pub queue_depth: IntGauge,
    pub abstains: prometheus::IntCounter,
    pub errors: IntCounterVec,
    pub cache: IntCounterVec,
    pub breaker_changes: IntCounterVec,
    pub proxy_requests: IntCounterVec,
    pub proxy_attempts: IntCounterVec,
    pub failovers: prometheus::IntCounter,
    pub tokens: IntCounterVec,
    pub cost_usd: prometheus::CounterVec,
    pub ttft_seconds: HistogramVec,
    pub http_requests: IntCounterVec,
    pub classifier_swaps: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub encoder_restarts: prometheus::IntCounter,
    pub encoder_available: IntGauge,
    pub decision_log_dropped: prometheus::IntCounter,
    pub store_errors: IntCounterVec,
    pub store_up: IntGauge,
    pub store_writes_dropped: prometheus::IntCounter,
    pub quota_rejections: IntCounterVec,
    pub spend_usd: prometheus::CounterVec,
    pub usage_tokens: IntCounterVec,
    pub grpc_requests: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub catalog_info: IntGaugeVec,
    pub classifier_info: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub budget_limit: prometheus::GaugeVec,
    pub languages: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> PromResult<T> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// A metric's name and help text.
type Doc = (&'static str, &'static str);

/// Registers a labelled integer counter.
fn counters(r: &Registry, (name, help): Doc, labels: &[&str]) -> PromResult<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// Registers an integer counter.
fn counter(r: &Registry, (name, help): Doc) -> PromResult<prometheus::IntCounter> {
    reg(r, prometheus::IntCounter::new(name, help)?)
}

/// Registers a labelled integer gauge.
fn gauges(r: &Registry, (name, help): Doc, labels: &[&str]) -> PromResult<IntGaugeVec> {
    reg(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// Leaves `label` as the one series of an info gauge, set to 1.
fn one_hot(g: &IntGaugeVec, label: &str) {
    g.reset();
    g.with_label_values(&[label]).set(1);
}

/// Registers a labelled histogram with the given bucket bounds.
fn histograms(
    r: &Registry,
    (name, help): Doc,
    buckets: &[f64],
    labels: &[&str],
) -> PromResult<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    reg(r, HistogramVec::new(opts, labels)?)
}

const DECISIONS: Doc = (
    "decisions_total",
    "Routing decisions by intent, domain, top backend and A/B variant",
);
const STAGES: Doc = ("stage_seconds", "Latency per request stage");
const BATCH: Doc = (
    "encoder_batch_size",
    "Prompts per encoder batch seen by requests",
);
const QUEUE: Doc = ("encoder_queue_depth", "Prompts waiting for the encoder");
const ABSTAINS: Doc = ("abstains_total", "Decisions where the classifier abstained");
const ERRORS: Doc = ("errors_total", "Failed requests by error kind");
const CACHE: Doc = ("classification_cache_total", "Classification cache lookups");
const BREAKERS: Doc = ("breaker_transitions_total", "Circuit breaker state changes");
const PROXIED: Doc = ("proxy_requests_total", "Proxied completions by outcome");
const ATTEMPTS: Doc = (
    "proxy_attempts_total",
    "Upstream attempts by backend and result",
);
const FAILOVERS: Doc = (
    "failovers_total",
    "Completions served by a backend other than the first tried",
);
const TOKENS: Doc = ("tokens_total", "Tokens by serving backend and kind");
const COST: Doc = ("cost_usd_total", "Cost in USD by serving backend");
const TTFT: Doc = ("ttft_seconds", "Upstream time to first token");
const HTTP: Doc = (
    "http_requests_total",
    "HTTP /v1 requests by route and status",
);
const SWAPS: Doc = (
    "classifier_swaps_total",
    "Classifier swap and rollback attempts by outcome and reason",
);
const HTTP_HEAD: Doc = (
    "http_response_head_seconds",
    "Time to the HTTP response head (first token when streaming)",
);

const RESTARTS: Doc = (
    "encoder_worker_restarts_total",
    "Encoder workers restarted after a panic",
);
const AVAILABLE: Doc = (
    "encoder_available",
    "1 while the encoder serves, 0 once a worker failed too often to be restarted",
);
const DROPPED: Doc = (
    "decision_log_dropped_total",
    "Decision-log records dropped because the writer fell behind or failed",
);

const STORE_ERRORS: Doc = (
    "shared_store_errors_total",
    "Shared-store operations that failed or timed out, by operation",
);
const STORE_UP: Doc = (
    "shared_store_up",
    "1 while the shared store answers (always 0 without one)",
);
const STORE_DROPPED: Doc = (
    "shared_store_writes_dropped_total",
    "Usage writes dropped because the shared store stayed unreachable past the pending bound",
);
const QUOTA: Doc = (
    "quota_rejections_total",
    "Requests refused by a quota or budget, by scope (key, tenant) and limit",
);
const SPEND: Doc = (
    "spend_usd_total",
    "Spend in USD of served completions by scope (key, tenant) and name",
);
const USAGE_TOKENS: Doc = (
    "usage_tokens_total",
    "Tokens of served completions by scope (key, tenant) and name",
);

const GRPC: Doc = (
    "grpc_requests_total",
    "Router RPCs by method and status code (a completion counts when its stream starts)",
);
const RELOADS: Doc = (
    "config_reloads_total",
    "Catalog reloads by origin (watch, admin) and outcome (ok, unchanged, refused)",
);
const CATALOG: Doc = ("catalog_info", "1 for the catalog version in force");
const CLASSIFIER: Doc = ("classifier_info", "1 for the live classifier version");
const BREAKER: Doc = (
    "breaker_state",
    "Circuit breaker per backend: 0 closed, 1 half-open, 2 open",
);
const LANGUAGES: Doc = (
    "language_decisions_total",
    "Routing decisions by the prompt's detected language (ISO 639-3, or unknown)",
);
const BUDGET: Doc = (
    "budget_usd_limit",
    "Spend budget in USD per scope, name and period (day, month), for alerting on spend",
);

type PromResult<T> = Result<T, prometheus::Error>;

/// Request stages run from microseconds (classify) to seconds (a proxied call).
const STAGE_BUCKETS: &[f64] = &[
    1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const TTFT_BUCKETS: &[f64] = &[
    1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const HTTP_BUCKETS: &[f64] = &[
    1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Metrics {
    pub fn new() -> PromResult<Self> {
        let r = Registry::new_custom(Some("switchboard".into()), None)?;
        let batch = HistogramOpts::new(BATCH.0, BATCH.1)
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        let cost = prometheus::CounterVec::new(Opts::new(COST.0, COST.1), &["backend"])?;
        let spend = prometheus::CounterVec::new(Opts::new(SPEND.0, SPEND.1), &["scope", "name"])?;
        Ok(Self {
            decisions: counters(&r, DECISIONS, &["intent", "domain", "backend", "variant"])?,
            stage_seconds: histograms(&r, STAGES, STAGE_BUCKETS, &["stage"])?,
            batch_size: reg(&r, prometheus::Histogram::with_opts(batch)?)?,
            queue_depth: reg(&r, IntGauge::new(QUEUE.0, QUEUE.1)?)?,
            abstains: counter(&r, ABSTAINS)?,
            errors: counters(&r, ERRORS, &["type"])?,
            cache: counters(&r, CACHE, &["result"])?,
            breaker_changes: counters(&r, BREAKERS, &["backend", "state"])?,
            proxy_requests: counters(&r, PROXIED, &["outcome"])?,
            proxy_attempts: counters(&r, ATTEMPTS, &["backend", "result"])?,
            failovers: counter(&r, FAILOVERS)?,
            tokens: counters(&r, TOKENS, &["backend", "kind"])?,
            cost_usd: reg(&r, cost)?,
            ttft_seconds: histograms(&r, TTFT, TTFT_BUCKETS, &["backend"])?,
            http_requests: counters(&r, HTTP, &["path", "status"])?,
            classifier_swaps: counters(&r, SWAPS, &["op", "result", "reason"])?,
            http_seconds: histograms(&r, HTTP_HEAD, HTTP_BUCKETS, &["path"])?,
            encoder_restarts: counter(&r, RESTARTS)?,
            encoder_available: reg(&r, IntGauge::new(AVAILABLE.0, AVAILABLE.1)?)?,
            decision_log_dropped: counter(&r, DROPPED)?,
            store_errors: counters(&r, STORE_ERRORS, &["op"])?,
            store_up: reg(&r, IntGauge::new(STORE_UP.0, STORE_UP.1)?)?,
            store_writes_dropped: counter(&r, STORE_DROPPED)?,
            quota_rejections: counters(&r, QUOTA, &["scope", "limit"])?,
            spend_usd: reg(&r, spend)?,
            usage_tokens: counters(&r, USAGE_TOKENS, &["scope", "name"])?,
            grpc_requests: counters(&r, GRPC, &["method", "code"])?,
            config_reloads: counters(&r, RELOADS, &["origin", "outcome"])?,
            catalog_info: gauges(&r, CATALOG, &["version"])?,
            classifier_info: gauges(&r, CLASSIFIER, &["version"])?,
            breaker_state: gauges(&r, BREAKER, &["backend"])?,
            budget_limit: reg(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(BUDGET.0, BUDGET.1),
                    &["scope", "name", "period"],
                )?,
            )?,
            languages: counters(&r, LANGUAGES, &["language"])?,
            registry: r,
        })
    }

    /// Marks `version` as the catalog in force (the only series of `catalog_info`).
    pub fn catalog(&self, version: &str) {
        one_hot(&self.catalog_info, version);
    }

    /// Marks `version` as the live classifier.
    pub fn classifier(&self, version: &str) {
        one_hot(&self.classifier_info, version);
    }

    /// Raises a counter kept elsewhere (a component's own atomic) to `total`.
    pub fn catch_up(c: &prometheus::IntCounter, total: u64) {
        c.inc_by(total.saturating_sub(c.get()));
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
