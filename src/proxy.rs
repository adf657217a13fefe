//! The completion proxy behind `Complete` (and later the HTTP facade): route, then call the
//! ranked backends in order with failover before the first token; after the first token an
//! upstream failure ends the stream with an error naming the backend and what was delivered.
//! Events go into a bounded channel; a failed send means the client left, and the upstream
//! request is dropped at once.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::backends::openai::{self, ChatEvent, ChatMessage, ChatRequest, UpstreamError};
use crate::backends::{Fleet, Slot};
use crate::config::Backend;
use crate::engine::{Engine, RouteError, RouteOutcome, RouteRequest};
use crate::policy::Live;

/// Generation parameters forwarded upstream.
#[derive(Debug, Clone, Default)]
pub struct GenParams {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub json: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CompleteInput {
    pub route: RouteRequest,
    pub params: GenParams,
    pub pinned: Option<String>,
}

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
    #[error("backend {backend} failed after {delivered_chunks} chunks ({delivered_chars} characters) reached the client: {error}")]
    MidStream {
        backend: String,
        delivered_chunks: usize,
        delivered_chars: usize,
        error: String,
    },
}

fn describe(a: &[AttemptInfo]) -> String {
    a.iter()
        .map(|x| format!("{}: {}", x.backend, x.error))
        .collect::<Vec<_>>()
        .join("; ")
}

pub struct Proxy {
    pub engine: Arc<Engine>,
    pub fleet: Arc<Fleet>,
    pub max_attempts: usize,
}

type Tx = mpsc::Sender<Result<ProxyEvent, ProxyError>>;
type Upstream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<ChatEvent, UpstreamError>> + Send>>;

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

impl Proxy {
    fn backend(&self, name: &str) -> Option<&Backend> {
        self.engine.config.backends.iter().find(|b| b.name == name)
    }

    /// Runs one completion, sending events to `tx` until done, failed, or the client leaves.
    pub async fn run(&self, input: CompleteInput, tx: Tx) {
        let started = Instant::now();
        let mut id = String::new();
        let result = self.run_inner(&input, &tx, started, &mut id).await;
        if let (Some(log), false) = (self.engine.decision_log.get(), id.is_empty()) {
            let backend = match &result {
                Ok(b) | Err(ProxyError::MidStream { backend: b, .. }) => b.as_str(),
                Err(_) => "",
            };
            log.served(&id, backend, result.is_ok());
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ProxyError::MidStream { .. }) => "mid_stream_failure",
            Err(ProxyError::AllFailed(_) | ProxyError::NoneAvailable(_)) => "unavailable",
            Err(_) => "rejected",
        };
        self.engine
            .metrics
            .proxy_requests
            .with_label_values(&[outcome])
            .inc();
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    }

    /// The ordered candidates: the pinned backend, or the routing decision's ranking.
    async fn candidates(
        &self,
        input: &CompleteInput,
    ) -> Result<(Option<RouteOutcome>, Vec<String>), ProxyError> {
        if let Some(name) = &input.pinned {
            if self.backend(name).is_none() {
                return Err(ProxyError::InvalidArgument {
                    field: "pinned_backend".into(),
                    message: format!("unknown backend {name:?}"),
                });
            }
            self.engine.validate(&input.route)?;
            return Ok((None, vec![name.clone()]));
        }
        // Health is judged by the proxy's own slot check, so that "all open" is an
        // Unavailable naming every breaker rather than a policy failure.
        let fleet = self.fleet.clone();
        let live = move |n: &str| Live {
            healthy: true,
            latency_ms: fleet.live(n).latency_ms,
        };
        let o = self.engine.route(&input.route, &live).await?;
        let names = o.decision.ranked.iter().map(|r| r.name.clone()).collect();
        Ok((Some(o), names))
    }

    /// One upstream call up to its first token, bounded by the backend's TTFT timeout.
    async fn first(&self, b: &Backend, req: &ChatRequest, t0: Instant) -> FirstOutcome<Upstream> {
        let timeout = Duration::from_millis(b.first_token_timeout_ms);
        tokio::time::timeout(timeout, async {
            match openai::open_stream(&self.fleet.http, b, req).await {
                Ok(s) => first_token(Box::pin(s) as Upstream, t0).await,
                Err(e) => FirstOutcome::Failed(e),
            }
        })
        .await
        .unwrap_or(FirstOutcome::Failed(UpstreamError::FirstTokenTimeout(
            timeout,
        )))
    }

    async fn run_inner(
        &self,
        input: &CompleteInput,
        tx: &Tx,
        started: Instant,
        id: &mut String,
    ) -> Result<String, ProxyError> {
        let (outcome, names) = self.candidates(input).await?;
        let trying = names.first().cloned().unwrap_or_default();
        let decision_id = outcome
            .as_ref()
            .map(|o| o.decision_id.clone())
            .unwrap_or_else(crate::engine::new_id);
        id.clone_from(&decision_id);
        if tx
            .send(Ok(ProxyEvent::Decision {
                decision_id,
                outcome: outcome.map(Box::new),
                trying,
            }))
            .await
            .is_err()
        {
            return Ok(String::new());
        }
        let req = chat_request(input);
        let m = &self.engine.metrics;
        let (mut attempts, mut calls) = (Vec::new(), 0);
        for name in &names {
            let Some(b) = self.backend(name) else {
                continue;
            };
            if calls >= self.max_attempts {
                break;
            }
            let slot = match self.fleet.acquire(name) {
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
            match self.first(b, &req, t0).await {
                FirstOutcome::Failed(e) => {
                    let retryable = e.retryable();
                    attempts.push(self.failed(name, slot, e, t0));
                    if !retryable {
                        break;
                    }
                }
                FirstOutcome::Empty(events, ttft) => {
                    self.fleet.finish(slot, true, Some(ttft), None);
                    return self
                        .done(input, b, String::new(), events, ttft, started, attempts, tx)
                        .await;
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
                    return self
                        .relay(input, b, slot, text, stream, ttft, started, attempts, tx)
                        .await;
                }
            }
        }
        if calls > 0 {
            return Err(ProxyError::AllFailed(attempts));
        }
        Err(self.none_available(attempts))
    }

    /// Accounts an attempt that failed before its first token (metrics, breaker, log).
    fn failed(&self, name: &str, slot: Slot, e: UpstreamError, t0: Instant) -> AttemptInfo {
        let retry_after = match &e {
            UpstreamError::Http { retry_after, .. } => *retry_after,
            _ => None,
        };
        self.engine
            .metrics
            .proxy_attempts
            .with_label_values(&[name, e.kind()])
            .inc();
        tracing::info!(backend = %name, error = %e, "upstream failed before the first token");
        self.fleet.finish(slot, false, None, retry_after);
        AttemptInfo {
            backend: name.to_string(),
            error: e.to_string(),
            elapsed_us: t0.elapsed().as_micros() as u64,
        }
    }

    /// No backend was called: why each was skipped, or every breaker's state when none was tried.
    fn none_available(&self, attempts: Vec<AttemptInfo>) -> ProxyError {
        let mut why: Vec<(String, String)> =
            attempts.into_iter().map(|a| (a.backend, a.error)).collect();
        if why.is_empty() {
            why = self
                .fleet
                .states()
                .into_iter()
                .map(|(b, s)| (b, format!("circuit {s}")))
                .collect();
        }
        ProxyError::NoneAvailable(why)
    }

    /// Forwards the rest of a stream whose first token is in hand.
    #[allow(clippy::too_many_arguments)]
    async fn relay<S>(
        &self,
        input: &CompleteInput,
        b: &Backend,
        slot: crate::backends::Slot,
        first: String,
        mut stream: S,
        ttft: Duration,
        started: Instant,
        attempts: Vec<AttemptInfo>,
        tx: &Tx,
    ) -> Result<String, ProxyError>
    where
        S: futures_util::Stream<Item = Result<ChatEvent, UpstreamError>> + Unpin,
    {
        let mut text = first.clone();
        let mut chunks = 1;
        let serving = ProxyEvent::Serving {
            backend: b.name.clone(),
            model: b.model.clone(),
        };
        if tx.send(Ok(serving)).await.is_err()
            || tx.send(Ok(ProxyEvent::Delta(first))).await.is_err()
        {
            return Ok(String::new()); // client gone: dropping `stream` closes the upstream request
        }
        let mut tail = Vec::new();
        loop {
            // Watch the client too: a cancelled client drops the upstream at once, not at
            // the upstream's next chunk.
            let item = tokio::select! {
                biased;
                _ = tx.closed() => return Ok(String::new()),
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            match item {
                Ok(ChatEvent::Delta(t)) => {
                    text.push_str(&t);
                    chunks += 1;
                    if tx.send(Ok(ProxyEvent::Delta(t))).await.is_err() {
                        return Ok(String::new());
                    }
                }
                Ok(other) => tail.push(other),
                Err(e) => {
                    self.fleet.finish(slot, false, Some(ttft), None);
                    return Err(ProxyError::MidStream {
                        backend: b.name.clone(),
                        delivered_chunks: chunks,
                        delivered_chars: text.chars().count(),
                        error: e.to_string(),
                    });
                }
            }
        }
        self.fleet.finish(slot, true, Some(ttft), None);
        self.done(input, b, text, tail, ttft, started, attempts, tx)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn done(
        &self,
        input: &CompleteInput,
        b: &Backend,
        text: String,
        events: Vec<ChatEvent>,
        ttft: Duration,
        started: Instant,
        attempts: Vec<AttemptInfo>,
        tx: &Tx,
    ) -> Result<String, ProxyError> {
        let mut finish = "stop".to_string();
        let mut usage = None;
        for e in events {
            match e {
                ChatEvent::Finish(f) => finish = f,
                ChatEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                } => usage = Some((prompt_tokens, completion_tokens)),
                ChatEvent::Delta(_) => {}
            }
        }
        let (prompt_tokens, completion_tokens, estimated) = match usage {
            Some((p, c)) => (p, c, false),
            None => {
                let tok = self.engine.embedder.tokenizer();
                let r = &input.route;
                let prompt = if r.messages.is_empty() {
                    r.prompt.clone()
                } else {
                    r.messages
                        .iter()
                        .map(|(_, c)| c.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                (
                    tok.count_tokens(&prompt) as u32,
                    tok.count_tokens(&text).saturating_sub(2) as u32,
                    true,
                )
            }
        };
        let cost_usd = crate::policy::cost_usd(b, prompt_tokens, completion_tokens);
        let m = &self.engine.metrics;
        m.tokens
            .with_label_values(&[b.name.as_str(), "prompt"])
            .inc_by(prompt_tokens as u64);
        m.tokens
            .with_label_values(&[b.name.as_str(), "completion"])
            .inc_by(completion_tokens as u64);
        m.cost_usd
            .with_label_values(&[b.name.as_str()])
            .inc_by(cost_usd);
        let done = DoneInfo {
            finish_reason: finish,
            prompt_tokens,
            completion_tokens,
            estimated,
            cost_usd,
            backend: b.name.clone(),
            model: b.model.clone(),
            ttft_us: ttft.as_micros() as u64,
            total_us: started.elapsed().as_micros() as u64,
            attempts,
        };
        let _ = tx.send(Ok(ProxyEvent::Done(Box::new(done)))).await;
        Ok(b.name.clone())
    }
}
