//! The one routing facade every transport calls: the API-key check, the caller's limits on
//! backends, backend health for ranking, the errors metric, and starting a completion. gRPC
//! and HTTP only translate their wire formats to and from these calls.
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::auth::{apply_caller, ApiKeys, Caller};
use crate::backends::Upstreams;
use crate::engine::{new_id, Engine, RouteOutcome, RouteRequest};
use crate::error::{Error, ErrorKind};
use crate::proxy::{
    pinned_misfit, CompleteInput, OnServed, Plan, Proxy, ProxyError, ProxyEvent, Served,
};
use crate::quota::{Ask, Limits, Quotas, Reservation, Used};
use crate::savings::Routed;

/// What the usage record needs of a completion's routing (a pinned one has no outcome).
fn routed(plan: &Plan) -> Routed {
    let mut r = Routed {
        id: plan.decision_id.clone(),
        ..Routed::default()
    };
    if let Some(o) = &plan.outcome {
        r.policy = o.decision.policy.clone();
        r.intent = o.prediction.intent.clone();
        r.domain = o.prediction.domain.clone();
        r.catalog_version = o.catalog_version.clone();
    }
    r
}

/// The events of one completion, in order; an `Err` is the last item.
pub type CompletionRx = mpsc::Receiver<Result<ProxyEvent, Error>>;

/// Events a completion may queue before the client reads them; a slow client slows the relay.
const COMPLETION_BUFFER: usize = 32;

/// The error for a completion whose events stopped with neither `Done` nor an error: its task
/// died (a panic). Both transports end the stream with it rather than a silent success.
pub fn ended_without_answer() -> Error {
    Error::new(
        ErrorKind::Internal,
        "the completion ended without an answer or an error (its task failed; see the server log)",
    )
    .reason("completion_failed")
}

pub struct Gateway {
    engine: Arc<Engine>,
    upstreams: Arc<Upstreams>,
    proxy: Proxy,
    keys: Option<Arc<ApiKeys>>,
    quotas: Arc<Quotas>,
    /// Set when the server's shutdown grace has passed: open streams end with an error.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    pub fn new(
        engine: Arc<Engine>,
        upstreams: Arc<Upstreams>,
        keys: Option<Arc<ApiKeys>>,
        quotas: Arc<Quotas>,
    ) -> Self {
        let max_attempts = engine.config().server.max_attempts;
        let (closing, closed) = tokio::sync::watch::channel(false);
        let proxy = Proxy::new(engine.clone(), upstreams.clone(), max_attempts, closed);
        Self {
            engine,
            upstreams,
            proxy,
            keys,
            quotas,
            closing,
        }
    }

    /// The quota and usage ledger (usage reports).
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Ends every completion still streaming with an error saying the server is shutting down
    /// (after the shutdown grace), so their connections can close.
    pub fn close_streams(&self) {
        let _ = self.closing.send(true);
    }

    /// Brings the gauges read at scrape time up to date (encoder, versions, breakers).
    pub fn refresh_metrics(&self) {
        self.engine.refresh_metrics();
        let m = &self.engine.metrics;
        m.breaker_state.reset();
        for (backend, state) in self.upstreams.states() {
            let v = match state {
                "closed" => 0,
                "half_open" => 1,
                _ => 2,
            };
            m.breaker_state
                .with_label_values(&[backend.as_str()])
                .set(v);
        }
    }

    /// The engine (config, metrics, live model) for read-only endpoints.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The caller behind an `authorization` header value; `None` when no keys are configured.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<Caller>, Error> {
        match &self.keys {
            None => Ok(None),
            Some(keys) => keys
                .check(authorization)
                .map(Some)
                .map_err(|e| self.fail(e)),
        }
    }

    /// A routing decision (RouteDecision, `/v1/route`): unhealthy backends are not ranked.
    pub async fn route(
        &self,
        mut req: RouteRequest,
        caller: Option<&Caller>,
    ) -> Result<RouteOutcome, Error> {
        apply_caller(&mut req, None, caller).map_err(|e| self.fail(e))?;
        if let Some(c) = caller {
            self.count_request(c).await?;
        }
        let up = &self.upstreams;
        self.engine
            .route(&req, &|n: &str| up.health(n))
            .await
            .map_err(|e| self.fail(e))
    }

    /// Starts a completion (`Complete`, `/v1/chat/completions`) in the current span and
    /// returns its events. Dropping the receiver cancels the upstream request.
    pub fn complete(
        self: &Arc<Self>,
        mut input: CompleteInput,
        caller: Option<&Caller>,
    ) -> Result<CompletionRx, Error> {
        apply_caller(&mut input.route, input.pinned.as_deref(), caller)
            .map_err(|e| self.fail(e))?;
        self.check_params(&mut input).map_err(|e| self.fail(e))?;
        let (tx, rx) = mpsc::channel(COMPLETION_BUFFER);
        let this = self.clone();
        let caller = caller.cloned();
        tokio::spawn(
            async move {
                let planned = this.plan(&input).await.map_err(Error::from);
                let reserved = match planned {
                    Ok(plan) => this
                        .reserve(&mut input, &plan, caller.as_ref())
                        .await
                        .map(|r| (plan, r)),
                    Err(e) => Err(e),
                };
                match reserved {
                    Ok((mut plan, r)) => {
                        plan.on_served = this.usage_hook(&plan, caller.as_ref());
                        let served = this.proxy.run(&input, plan, &tx).await;
                        this.settle(r, served);
                    }
                    Err(e) => this.proxy.refuse(this.fail(e), &tx).await,
                }
            }
            .in_current_span(),
        );
        Ok(rx)
    }

    /// A routing decision counts against the caller's requests-per-minute limits only.
    async fn count_request(&self, c: &Caller) -> Result<(), Error> {
        let mut subjects = c.subjects();
        for s in &mut subjects {
            s.limits = Limits {
                requests_per_minute: s.limits.requests_per_minute,
                ..Limits::default()
            };
        }
        if subjects.iter().all(|s| s.limits.is_empty()) {
            return Ok(());
        }
        let ask = Ask {
            id: new_id(),
            ..Ask::default()
        };
        self.quotas
            .reserve(&subjects, &ask)
            .await
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    /// Reserves the completion's estimated tokens and cost against the caller's limits. The
    /// estimate is an upper bound over every candidate: the prompt's tokens, plus `max_tokens`
    /// (imposed as `server.budget_max_tokens` under a spend budget when the request set none),
    /// at the dearest candidate's prices.
    async fn reserve(
        &self,
        input: &mut CompleteInput,
        plan: &Plan,
        caller: Option<&Caller>,
    ) -> Result<Reservation, Error> {
        let mut ask = Ask {
            id: plan.decision_id.clone(),
            ..Ask::default()
        };
        let subjects = caller.map(Caller::subjects).unwrap_or_default();
        if let Some(c) = caller.filter(|c| c.meters_usage()) {
            let cfg = self.engine.config();
            if c.has_budget() && input.params.max_tokens.is_none() {
                input.params.max_tokens = Some(cfg.server.budget_max_tokens);
            }
            let prompt = self.engine.conversation_tokens(&input.route);
            let output = input
                .params
                .max_tokens
                .unwrap_or(input.route.prefs.expected_output_tokens);
            ask.tokens = u64::from(prompt) + u64::from(output);
            ask.usd = plan
                .candidates
                .iter()
                .filter_map(|n| cfg.backends.iter().find(|b| b.name == *n))
                .map(|b| crate::policy::cost_usd(b, prompt, output))
                .fold(0.0, f64::max);
        }
        Ok(self.quotas.reserve(&subjects, &ask).await?)
    }

    /// Charges what was served (or gives the reservation back when nothing was).
    fn settle(&self, r: Reservation, served: Option<Served>) {
        match served {
            Some(s) => {
                let used = Used {
                    tokens: s.tokens(),
                    backend: s.backend,
                    usd: s.cost_usd,
                };
                self.quotas.settle(r, &used)
            }
            None => self.quotas.release(r),
        }
    }

    /// Logs a served completion's usage with its counterfactual costs (the savings report),
    /// when the decision log is on.
    fn usage_hook(&self, plan: &Plan, caller: Option<&Caller>) -> Option<OnServed> {
        let log = self.engine.decisions.clone()?;
        let (engine, routed, caller) = (self.engine.clone(), routed(plan), caller.cloned());
        Some(Arc::new(move |s: &Served| {
            let cfg = engine.config();
            log.usage(&crate::savings::record(&cfg, &routed, caller.as_ref(), s));
        }))
    }

    /// Who a completion tries, in order. Health is left to the proxy's own slot check, so
    /// that "every breaker open" is an Unavailable naming each backend, not a ranking failure.
    async fn plan(&self, input: &CompleteInput) -> Result<Plan, ProxyError> {
        if let Some(name) = &input.pinned {
            if !self.proxy.knows(name) {
                return Err(ProxyError::InvalidArgument {
                    field: "pinned_backend".into(),
                    message: format!("unknown backend {name:?}"),
                });
            }
            self.engine.validate(&input.route)?;
            self.check_pinned(name, input)?;
            return Ok(Plan {
                decision_id: new_id(),
                outcome: None,
                candidates: vec![name.clone()],
                on_served: None,
            });
        }
        let up = &self.upstreams;
        let o = self
            .engine
            .route(&input.route, &|n: &str| up.latency_only(n))
            .await?;
        Ok(Plan {
            decision_id: o.decision_id.clone(),
            candidates: o.decision.ranked.iter().map(|r| r.name.clone()).collect(),
            outcome: Some(o),
            on_served: None,
        })
    }

    /// Generation parameters in range; `max_tokens` also bounds the context-window check and
    /// the cost estimate's output length.
    fn check_params(&self, input: &mut CompleteInput) -> Result<(), ProxyError> {
        let largest = self
            .engine
            .config()
            .backends
            .iter()
            .map(|b| b.context_window)
            .max();
        let invalid = |(field, message)| ProxyError::InvalidArgument { field, message };
        input
            .params
            .validate(largest.unwrap_or(0))
            .map_err(invalid)?;
        let prefs = &mut input.route.prefs;
        prefs.max_output_tokens = input.params.max_tokens;
        if let Some(m) = input.params.max_tokens {
            prefs.expected_output_tokens = prefs.expected_output_tokens.min(m);
        }
        Ok(())
    }

    /// A pinned backend gets the capability and context-window checks ranking applies.
    fn check_pinned(&self, name: &str, input: &CompleteInput) -> Result<(), ProxyError> {
        let cfg = self.engine.config();
        let Some(b) = cfg.backends.iter().find(|b| b.name == name) else {
            return Ok(());
        };
        let prefs = &input.route.prefs;
        let output = prefs
            .expected_output_tokens
            .max(prefs.max_output_tokens.unwrap_or(0));
        // A token covers at least one byte (plus [CLS] and [SEP]): when the bytes fit, the
        // tokens do, and the tokenizer stays off the pinned path.
        let r = &input.route;
        let bytes = r.prompt.len() + r.messages.iter().map(|(_, c)| c.len()).sum::<usize>();
        let bound = u32::try_from(bytes + 2).unwrap_or(u32::MAX);
        let tokens = if bound as u64 + output as u64 <= b.context_window as u64 {
            bound
        } else {
            self.engine.conversation_tokens(r)
        };
        match pinned_misfit(b, &prefs.required_capabilities, tokens, output) {
            Some((field, message)) => Err(ProxyError::InvalidArgument { field, message }),
            None => Ok(()),
        }
    }

    /// Counts an error by its kind and hands it on.
    fn fail(&self, e: impl Into<Error>) -> Error {
        let e = e.into();
        self.engine
            .metrics
            .errors
            .with_label_values(&[e.kind.label()])
            .inc();
        e
    }
}
