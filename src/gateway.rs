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
use crate::proxy::{pinned_misfit, CompleteInput, Plan, Proxy, ProxyError, ProxyEvent};

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
    /// Set when the server's shutdown grace has passed: open streams end with an error.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    pub fn new(engine: Arc<Engine>, upstreams: Arc<Upstreams>, keys: Option<Arc<ApiKeys>>) -> Self {
        let max_attempts = engine.config.server.max_attempts;
        let (closing, closed) = tokio::sync::watch::channel(false);
        let proxy = Proxy::new(engine.clone(), upstreams.clone(), max_attempts, closed);
        Self {
            engine,
            upstreams,
            proxy,
            keys,
            closing,
        }
    }

    /// Ends every completion still streaming with an error saying the server is shutting down
    /// (after the shutdown grace), so their connections can close.
    pub fn close_streams(&self) {
        let _ = self.closing.send(true);
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
        tokio::spawn(
            async move {
                match this.plan(&input).await {
                    Ok(plan) => this.proxy.run(&input, plan, &tx).await,
                    Err(e) => this.proxy.refuse(this.fail(e), &tx).await,
                }
            }
            .in_current_span(),
        );
        Ok(rx)
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
        })
    }

    /// Generation parameters in range; `max_tokens` also bounds the context-window check and
    /// the cost estimate's output length.
    fn check_params(&self, input: &mut CompleteInput) -> Result<(), ProxyError> {
        let largest = self
            .engine
            .config
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
        let cfg = &self.engine.config;
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
