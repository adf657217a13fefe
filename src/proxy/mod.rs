//! The completion proxy behind gRPC `Complete` and HTTP `/v1/chat/completions`: given the
//! ranked candidates (routing happened before, in `gateway`), call them in order with failover
//! before the first token; after the first token an upstream failure ends the stream with an
//! error naming the backend and what was delivered. Events go into a bounded channel; a failed
//! send means the client left, and the upstream request is dropped at once.
mod params;
mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::backends::openai::{self, ChatEvent, ChatMessage, ChatRequest, Fault, UpstreamError};
use crate::backends::{Slot, Upstreams};
use crate::config::Backend;
use crate::engine::{Engine, RouteError, RouteOutcome, RouteRequest};
use crate::error::{Error, ErrorKind};

pub use params::{pinned_misfit, GenParams, MAX_STOP, MAX_STOP_BYTES};

#[derive(Debug, Clone, Default)]
pub struct CompleteInput {
    pub route: RouteRequest,
    pub params: GenParams,
    pub pinned: Option<String>,
}

/// Who to call, in order: the routing decision's ranking, or the pinned backend alone.
#[derive(Clone)]
pub struct Plan {
    /// The routing decision's id, or a fresh one when pinned.
    pub decision_id: String,
    pub outcome: Option<RouteOutcome>,
    pub candidates: Vec<String>,
    /// Told what was served before the client gets `Done`, so a record of it (the usage
    /// log) exists by the time the client can ask about it.
    pub on_served: Option<OnServed>,
}

/// See `Plan::on_served`.
pub type OnServed = Arc<dyn Fn(&Served) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct AttemptInfo {
    pub backend: String,
    pub error: String,
    pub elapsed_us: u64,
}

#[derive(Debug, Clone)]
pub struct DoneInfo {
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub estimated: bool,
    pub cost_usd: f64,
    pub backend: String,
    pub model: String,
    pub ttft_us: u64,
    pub total_us: u64,
    pub attempts: Vec<AttemptInfo>,
}

#[derive(Debug, Clone)]
pub enum ProxyEvent {
    /// Always first. `decision_id` is the routing decision's, or a fresh id when pinned.
    Decision {
        decision_id: String,
        outcome: Option<Box<RouteOutcome>>,
        trying: String,
    },
    /// The backend whose answer is being relayed, right before its first delta.
    Serving {
        backend: String,
        model: String,
    },
    Delta(String),
    Done(Box<DoneInfo>),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("every candidate failed before the first token: {}", describe(.0))]
    AllFailed(Vec<AttemptInfo>),
    #[error("no backend can take the request: {}", .0.iter().map(|(b, s)| format!("{b}: {s}")).collect::<Vec<_>>().join("; "))]
    NoneAvailable(Vec<(String, String)>),
    /// The upstream refused the request itself (its fault classification is the caller's).
    #[error("backend {backend} rejected the request (HTTP {status}): {message}")]
    Rejected {
        backend: String,
        status: u16,
        message: String,
    },
    /// The server's shutdown grace passed while this stream was open.
    #[error("the server is shutting down; {delivered_chars} characters of backend {backend}'s answer reached the client")]
    ShuttingDown {
        backend: String,
        delivered_chars: usize,
    },
    #[error("backend {backend} failed after {delivered_chunks} chunks ({delivered_chars} characters) reached the client: {error}")]
    MidStream {
        backend: String,
        delivered_chunks: usize,
        delivered_chars: usize,
        error: String,
    },
}

impl From<ProxyError> for Error {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Route(r) => r.into(),
            ProxyError::InvalidArgument { field, message } => {
                Error::field(ErrorKind::InvalidArgument, field, message)
            }
            ProxyError::AllFailed(_) | ProxyError::NoneAvailable(_) => {
                Error::new(ErrorKind::Unavailable, e.to_string()).reason("no_backend_available")
            }
            ProxyError::Rejected { status, .. } => {
                let kind = match status {
                    404 => ErrorKind::NotFound,
                    413 => ErrorKind::TooLarge,
                    _ => ErrorKind::InvalidArgument,
                };
                Error::new(kind, e.to_string()).reason("upstream_rejected")
            }
            ProxyError::ShuttingDown { .. } => {
                Error::new(ErrorKind::Unavailable, e.to_string()).reason("shutting_down")
            }
            ProxyError::MidStream { .. } => {
                Error::new(ErrorKind::UpstreamFailed, e.to_string()).reason("upstream_failed")
            }
        }
    }
}

fn describe(a: &[AttemptInfo]) -> String {
    a.iter()
        .map(|x| format!("{}: {}", x.backend, x.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a served completion used: its backend, tokens (prompt and completion) and cost.
#[derive(Debug, Clone)]
pub struct Served {
    pub backend: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_usd: f64,
}

impl Served {
    pub fn tokens(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
    }
}

/// How one completion ended.
pub enum Ended {
    /// A backend answered and the client got everything, up to `Done`.
    Served(Served),
    /// No candidate produced a first token (or none could be called).
    FailedBeforeFirstToken(ProxyError),
    /// `backend` failed after part of its answer reached the client.
    FailedMidStream { backend: String, error: ProxyError },
    /// The client went away; the upstream request was dropped.
    ClientGone,
}

pub type Tx = mpsc::Sender<Result<ProxyEvent, Error>>;
type Upstream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<ChatEvent, UpstreamError>> + Send>>;

pub struct Proxy {
    engine: Arc<Engine>,
    upstreams: Arc<Upstreams>,
    max_attempts: usize,
    /// Becomes true when the server's shutdown grace has passed.
    closing: tokio::sync::watch::Receiver<bool>,
}

fn chat_request(input: &CompleteInput) -> ChatRequest {
    let r = &input.route;
    let messages = if r.messages.is_empty() {
        vec![ChatMessage {
            role: "user".into(),
            content: r.prompt.clone(),
        }]
    } else {
        r.messages
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.clone(),
                content: content.clone(),
            })
            .collect()
    };
    let p = &input.params;
    ChatRequest {
        messages,
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        stop: p.stop.clone(),
        seed: p.seed,
        response_format: p.json.then(|| serde_json::json!({"type": "json_object"})),
    }
}

/// How one upstream call ended before reaching the client.
enum FirstOutcome<S> {
    Token(String, S, Duration),
    Empty(Vec<ChatEvent>, Duration),
    Failed(UpstreamError),
}

async fn first_token<S>(mut stream: S, started: Instant) -> FirstOutcome<S>
where
    S: futures_util::Stream<Item = Result<ChatEvent, UpstreamError>> + Unpin,
{
    let mut early = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(ChatEvent::Delta(t))) => {
                return FirstOutcome::Token(t, stream, started.elapsed())
            }
            Some(Ok(other)) => early.push(other),
            Some(Err(e)) => return FirstOutcome::Failed(e),
            None => return FirstOutcome::Empty(early, started.elapsed()),
        }
    }
}

/// One completion in progress: what every step after the first token needs.
struct Attempt<'a> {
    input: &'a CompleteInput,
    backend: &'a Backend,
    started: Instant,
    /// When this backend's call must be over (`total_timeout_ms` from its start).
    deadline: Instant,
    ttft: Duration,
    /// The failed attempts before this one.
    attempts: Vec<AttemptInfo>,
    tx: &'a Tx,
    on_served: Option<&'a OnServed>,
    /// This attempt's span (OpenTelemetry GenAI attributes are recorded on it).
    span: tracing::Span,
}

impl<'a> Attempt<'a> {
    /// An attempt on `backend` that started at `t0`, in a completion that started at `started`.
    fn new(
        input: &'a CompleteInput,
        backend: &'a Backend,
        (started, t0): (Instant, Instant),
        tx: &'a Tx,
        (on_served, span): (Option<&'a OnServed>, &tracing::Span),
    ) -> Self {
        Self {
            input,
            backend,
            started,
            deadline: t0 + Duration::from_millis(backend.total_timeout_ms),
            ttft: Duration::ZERO,
            attempts: Vec::new(),
            tx,
            on_served,
            span: span.clone(),
        }
    }
}

/// One upstream call's span, named and attributed per OpenTelemetry's GenAI conventions; its
/// context is what the call's `traceparent` header carries.
fn upstream_span(b: &Backend) -> tracing::Span {
    tracing::info_span!(
        "upstream",
        otel.name = %format!("chat {}", b.model),
        otel.kind = "client",
        backend = %b.name,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = %b.provider,
        gen_ai.request.model = %b.model,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

impl Proxy {
    pub fn new(
        engine: Arc<Engine>,
        upstreams: Arc<Upstreams>,
        max_attempts: usize,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            engine,
            upstreams,
            max_attempts: max_attempts.max(1),
            closing,
        }
    }

    /// Whether `name` is a catalog backend (a pinned completion's check).
    pub fn knows(&self, name: &str) -> bool {
        self.engine.config().backends.iter().any(|b| b.name == name)
    }

    /// Runs one completion along `plan`, sending events to `tx` until done, failed, or the
    /// client leaves. Returns what was used when a backend served it.
    pub async fn run(&self, input: &CompleteInput, plan: Plan, tx: &Tx) -> Option<Served> {
        let id = plan.decision_id.clone();
        let ended = self.serve(input, plan, tx).await;
        if let Some(log) = &self.engine.decisions {
            let (backend, ok) = match &ended {
                Ended::Served(s) => (s.backend.as_str(), true),
                Ended::FailedMidStream { backend, .. } => (backend.as_str(), false),
                Ended::FailedBeforeFirstToken(_) => ("", false),
                Ended::ClientGone => ("", true),
            };
            log.served(&id, backend, ok);
        }
        let (label, error, served) = match ended {
            Ended::Served(s) => ("ok", None, Some(s)),
            Ended::ClientGone => ("ok", None, None),
            Ended::FailedMidStream { error, .. } => ("mid_stream_failure", Some(error), None),
            Ended::FailedBeforeFirstToken(e @ ProxyError::Rejected { .. }) => {
                ("upstream_rejected", Some(e), None)
            }
            Ended::FailedBeforeFirstToken(e) => ("unavailable", Some(e), None),
        };
        self.count(label);
        if let Some(e) = error {
            let _ = tx.send(Err(e.into())).await;
        }
        served
    }

    /// A completion refused before any upstream call (routing or validation failed).
    pub async fn refuse(&self, error: Error, tx: &Tx) {
        self.count("rejected");
        let _ = tx.send(Err(error)).await;
    }

    fn count(&self, outcome: &str) {
        self.engine
            .metrics
            .proxy_requests
            .with_label_values(&[outcome])
            .inc();
    }

    /// One upstream call up to its first token, bounded by the backend's TTFT timeout.
    async fn first(&self, b: &Backend, req: &ChatRequest, t0: Instant) -> FirstOutcome<Upstream> {
        let timeout = Duration::from_millis(b.first_token_timeout_ms);
        tokio::time::timeout(timeout, async {
            let max_line = self.engine.config().server.max_sse_line_bytes;
            let Some(http) = self.upstreams.client(&b.name) else {
                return FirstOutcome::Failed(UpstreamError::Connect("not in the catalog".into()));
            };
            match openai::open_stream(&http, b, req, max_line).await {
                Ok(s) => first_token(Box::pin(s) as Upstream, t0).await,
                Err(e) => FirstOutcome::Failed(e),
            }
        })
        .await
        .unwrap_or(FirstOutcome::Failed(UpstreamError::FirstTokenTimeout(
            timeout,
        )))
    }

    /// Sends the decision, then tries the candidates in order.
    async fn serve(&self, input: &CompleteInput, plan: Plan, tx: &Tx) -> Ended {
        let started = Instant::now();
        let decision = ProxyEvent::Decision {
            decision_id: plan.decision_id,
            outcome: plan.outcome.map(Box::new),
            trying: plan.candidates.first().cloned().unwrap_or_default(),
        };
        let on_served = plan.on_served;
        if tx.send(Ok(decision)).await.is_err() {
            return Ended::ClientGone;
        }
        let req = chat_request(input);
        let m = &self.engine.metrics;
        // One catalog for the whole completion, even when a reload lands meanwhile.
        let cfg = self.engine.config();
        let (mut attempts, mut calls) = (Vec::new(), 0);
        for name in &plan.candidates {
            let Some(b) = cfg.backends.iter().find(|b| &b.name == name) else {
                continue;
            };
            if calls >= self.max_attempts {
                break;
            }
            let slot = match self.upstreams.acquire(name) {
                Ok(s) => s,
                Err(skip) => {
                    attempts.push(AttemptInfo {
                        backend: name.clone(),
                        error: format!("skipped: {skip}"),
                        elapsed_us: 0,
                    });
                    continue;
                }
            };
            calls += 1;
            let t0 = Instant::now();
            let span = upstream_span(b);
            let first = self.first(b, &req, t0).instrument(span.clone()).await;
            let mut at = Attempt::new(input, b, (started, t0), tx, (on_served.as_ref(), &span));
            match first {
                FirstOutcome::Failed(e) if e.fault() == Fault::Caller => {
                    span.record("error.type", e.to_string());
                    return Ended::FailedBeforeFirstToken(self.rejected(name, slot, e));
                }
                FirstOutcome::Failed(e) => {
                    span.record("error.type", e.to_string());
                    attempts.push(self.failed(name, slot, e, t0))
                }
                FirstOutcome::Empty(events, ttft) => {
                    self.upstreams.finish(slot, true, Some(ttft), None);
                    (at.ttft, at.attempts) = (ttft, attempts);
                    return self.done(&at, String::new(), events).instrument(span).await;
                }
                FirstOutcome::Token(text, stream, ttft) => {
                    m.proxy_attempts
                        .with_label_values(&[name.as_str(), "ok"])
                        .inc();
                    m.ttft_seconds
                        .with_label_values(&[name.as_str()])
                        .observe(ttft.as_secs_f64());
                    if !attempts.is_empty() {
                        m.failovers.inc();
                    }
                    (at.ttft, at.attempts) = (ttft, attempts);
                    return self.relay(at, slot, text, stream).instrument(span).await;
                }
            }
        }
        if calls > 0 {
            return Ended::FailedBeforeFirstToken(ProxyError::AllFailed(attempts));
        }
        Ended::FailedBeforeFirstToken(self.none_available(attempts))
    }

    /// Accounts an attempt that failed before its first token (metrics, breaker, log).
    fn failed(&self, name: &str, slot: Slot, e: UpstreamError, t0: Instant) -> AttemptInfo {
        let retry_after = match &e {
            UpstreamError::Http { retry_after, .. } => *retry_after,
            _ => None,
        };
        self.count_attempt(name, &e);
        tracing::info!(backend = %name, error = %e, "upstream failed before the first token");
        self.upstreams.finish(slot, false, None, retry_after);
        AttemptInfo {
            backend: name.to_string(),
            error: e.public(),
            elapsed_us: t0.elapsed().as_micros() as u64,
        }
    }

    /// The upstream refused the request itself: the backend is healthy (it answered), and the
    /// caller gets its reason.
    fn rejected(&self, name: &str, slot: Slot, e: UpstreamError) -> ProxyError {
        self.count_attempt(name, &e);
        tracing::info!(backend = %name, error = %e, "upstream rejected the request");
        self.upstreams.finish(slot, true, None, None);
        let (status, message) = match &e {
            UpstreamError::Http { status, body, .. } => (*status, openai::upstream_message(body)),
            other => (0, other.public()),
        };
        ProxyError::Rejected {
            backend: name.to_string(),
            status,
            message,
        }
    }

    fn count_attempt(&self, name: &str, e: &UpstreamError) {
        let m = &self.engine.metrics.proxy_attempts;
        m.with_label_values(&[name, e.kind()]).inc();
    }

    /// No backend was called: why each was skipped, or every breaker's state when none was tried.
    fn none_available(&self, attempts: Vec<AttemptInfo>) -> ProxyError {
        let mut why: Vec<(String, String)> =
            attempts.into_iter().map(|a| (a.backend, a.error)).collect();
        if why.is_empty() {
            why = self
                .upstreams
                .states()
                .into_iter()
                .map(|(b, s)| (b, format!("circuit {s}")))
                .collect();
        }
        ProxyError::NoneAvailable(why)
    }
}
