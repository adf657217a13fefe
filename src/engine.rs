//! The routing engine, independent of transport: validate → classifier input → (cache) →
//! embed → classify → rank, on one snapshot of the live model, and record the decision. Every
//! transport reaches it through `gateway`; it knows nothing of callers or wire formats.
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use lru::LruCache;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::classify::input::{classifier_input, Turn};
use crate::classify::{Classifier, ClassifyError, Features, Prediction};
use crate::config::Config;
use crate::embed::{EmbedError, Embedder};
use crate::error::{Error, ErrorKind};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::policy::{self, Decision, Health, PolicyError, Preferences, RouteInput};
use crate::records::{DecisionLog, DecisionRecord};

/// Roles accepted in a conversation.
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// A transport-independent routing request.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    pub messages: Vec<(String, String)>,
    pub prompt: String,
    pub prefs: Preferences,
    pub top_k: usize,
    pub policy: String,
    pub metadata: HashMap<String, String>,
    pub request_key: String,
}

/// Errors of a routing request; `field` names the request field at fault.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The request is over a configured size limit (the message names it).
    #[error("{field}: {message}")]
    TooLarge { field: String, message: String },
    #[error("{field}: {source}")]
    Embed { field: String, source: EmbedError },
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl From<RouteError> for Error {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::InvalidArgument { field, message } => {
                Error::field(ErrorKind::InvalidArgument, field, message)
            }
            RouteError::TooLarge { field, message } => {
                Error::field(ErrorKind::TooLarge, field, message)
            }
            RouteError::Embed { field, source } => {
                let inner = Error::from(source);
                Error {
                    field: Some(field.clone()),
                    message: format!("{field}: {}", inner.message),
                    ..inner
                }
            }
            RouteError::Classify(c) => Error::new(ErrorKind::Internal, c.to_string()),
            RouteError::Policy(p @ PolicyError::UnknownPolicy(_)) => {
                Error::field(ErrorKind::InvalidArgument, "policy", p)
            }
            RouteError::Policy(p @ PolicyError::NoneQualifies(_)) => {
                Error::new(ErrorKind::FailedPrecondition, p.to_string())
                    .reason("no_backend_qualifies")
            }
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RouteError {
    RouteError::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}

/// Per-stage timings in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub queue_us: u64,
    pub embed_us: u64,
    pub classify_us: u64,
    pub rank_us: u64,
    pub total_us: u64,
}

/// The answer to a routing request.
#[derive(Debug, Clone)]
pub struct RouteOutcome {
    pub decision_id: String,
    pub prediction: Arc<Prediction>,
    pub classifier_version: String,
    /// The catalog the ranking used (`Config::version`).
    pub catalog_version: String,
    /// The classifier that produced `prediction` (its labels name the probabilities).
    pub classifier: Arc<Classifier>,
    /// What the classifier saw: for the decision log, from which heads can be retrained.
    pub features: Arc<Features>,
    pub decision: Decision,
    pub timings: Timings,
    pub cache_hit: bool,
}

type CacheKey = (String, [u8; 16]);
/// A cached classification, its features and the token count of its input text.
type Cached = (Arc<Prediction>, Arc<Features>, u32);

/// One classification: what `classify` returns.
struct Classified {
    prediction: Arc<Prediction>,
    classifier: Arc<Classifier>,
    features: Arc<Features>,
    text_tokens: u32,
    cache_hit: bool,
}

/// What the engine is built from.
pub struct EngineParts {
    /// The encoder's queue and workers (and tokenizer); requests embed with the live model.
    pub embedder: Embedder,
    pub live: Arc<Live>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Where every decision is recorded, when the decision log is on.
    pub decisions: Option<Arc<DecisionLog>>,
}

pub struct Engine {
    pub embedder: Embedder,
    pub live: Arc<Live>,
    /// The catalog and settings; the catalog part is swapped whole by a reload (`catalog`).
    config: Arc<ArcSwap<Config>>,
    pub metrics: Arc<Metrics>,
    pub decisions: Option<Arc<DecisionLog>>,
    /// Classifications by (classifier version, prompt hash): a version names its encoder
    /// too, so a swap needs no invalidation.
    cache: Option<Mutex<LruCache<CacheKey, Cached>>>,
}

impl Engine {
    pub fn new(p: EngineParts) -> Self {
        let cache =
            NonZeroUsize::new(p.config.server.cache_entries).map(|n| Mutex::new(LruCache::new(n)));
        Self {
            embedder: p.embedder,
            live: p.live,
            config: Arc::new(ArcSwap::new(p.config)),
            metrics: p.metrics,
            decisions: p.decisions,
            cache,
        }
    }

    /// The configuration in force: take it once per request, so one request sees one catalog.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The swappable configuration itself, for whatever reloads or checks against it.
    pub fn config_handle(&self) -> Arc<ArcSwap<Config>> {
        self.config.clone()
    }

    /// Checks the request's preferences; errors name the field.
    fn validate_prefs(p: &Preferences, cfg: &Config) -> Result<(), RouteError> {
        let lang = p.required_language.as_str();
        if !lang.is_empty() && lang != "auto" && !crate::classify::language::known(lang) {
            return Err(invalid(
                "preferences.required_language",
                format!("unknown language {lang:?}; expected an ISO 639-3 code or \"auto\""),
            ));
        }
        if let Some(t) = p.trade_off {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid(
                    "preferences.trade_off",
                    format!("must be in [0, 1], found {t}"),
                ));
            }
        }
        for (field, v) in [
            ("preferences.max_cost_usd", p.max_cost_usd),
            ("preferences.max_latency_ms", p.max_latency_ms),
        ] {
            if let Some(v) = v.filter(|v| v.is_nan() || *v < 0.0) {
                return Err(invalid(field, format!("must be ≥ 0, found {v}")));
            }
        }
        for (field, list) in [
            ("preferences.allow_backends", &p.allow),
            ("preferences.deny_backends", &p.deny),
        ] {
            for (i, name) in list.iter().enumerate() {
                if !cfg.backends.iter().any(|b| &b.name == name) {
                    return Err(invalid(
                        format!("{field}[{i}]"),
                        format!("unknown backend {name:?}"),
                    ));
                }
            }
        }
        for (i, c) in p.required_capabilities.iter().enumerate() {
            if !crate::config::CAPABILITIES.contains(&c.as_str()) {
                return Err(invalid(
                    format!("preferences.required_capabilities[{i}]"),
                    format!("unknown capability {c:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Validates a request (sizes, roles, preferences, policy) and returns the classifier
    /// input text. `route` calls it; a pinned completion, which skips routing, calls it too.
    pub fn validate(&self, req: &RouteRequest) -> Result<String, RouteError> {
        let cfg = self.config();
        let s = &cfg.server;
        if req.messages.len() > s.max_messages {
            return Err(invalid(
                "messages",
                format!(
                    "{} messages, over the limit of {}",
                    req.messages.len(),
                    s.max_messages
                ),
            ));
        }
        let mut bytes = req.prompt.len();
        for (i, (role, content)) in req.messages.iter().enumerate() {
            if !ROLES.contains(&role.as_str()) {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {role:?}; expected one of {ROLES:?}"),
                ));
            }
            bytes += content.len();
        }
        if bytes > s.max_prompt_bytes {
            let field = if req.messages.is_empty() {
                "prompt"
            } else {
                "messages"
            };
            return Err(RouteError::TooLarge {
                field: field.into(),
                message: format!(
                    "{bytes} bytes, over the limit of {} bytes (server.max_prompt_bytes)",
                    s.max_prompt_bytes
                ),
            });
        }
        Self::validate_prefs(&req.prefs, &cfg)?;
        if !req.policy.is_empty() && !cfg.policies.contains_key(&req.policy) {
            return Err(invalid(
                "policy",
                format!("unknown policy {:?}", req.policy),
            ));
        }
        let text = if req.messages.is_empty() {
            if req.prompt.trim().is_empty() {
                return Err(invalid(
                    "messages",
                    "empty conversation: give `messages` with a user turn, or `prompt`",
                ));
            }
            req.prompt.trim().to_string()
        } else {
            if !req.prompt.is_empty() {
                return Err(invalid(
                    "prompt",
                    "give either `messages` or `prompt`, not both",
                ));
            }
            let turns: Vec<Turn<'_>> = req
                .messages
                .iter()
                .map(|(r, c)| Turn {
                    role: r,
                    content: c,
                })
                .collect();
            classifier_input(&turns).ok_or_else(|| invalid("messages", "no non-empty user turn"))?
        };
        Ok(text)
    }

    /// Classifies `text` with one snapshot of the live model, through the cache.
    async fn classify(&self, text: &str, timings: &mut Timings) -> Result<Classified, RouteError> {
        let live = self.live.snapshot();
        let classifier = live.classifier.clone();
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&Sha256::digest(text.as_bytes())[..16]);
        let key = (classifier.version().to_string(), hash);
        if let Some(c) = &self.cache {
            if let Some((p, f, tokens)) = c.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
                self.metrics.cache.with_label_values(&["hit"]).inc();
                return Ok(Classified {
                    prediction: p.clone(),
                    classifier,
                    features: f.clone(),
                    text_tokens: *tokens,
                    cache_hit: true,
                });
            }
            self.metrics.cache.with_label_values(&["miss"]).inc();
        }
        // Typo repair is part of the classify stage's time (the heads' lexicon).
        let t = Instant::now();
        let input = classifier.prepare(text);
        let prepare_us = t.elapsed().as_micros() as u64;
        let embed_span = tracing::info_span!(
            "embed",
            tokens = tracing::field::Empty,
            batch = tracing::field::Empty
        );
        // The language is told while the encoder works (the embedding is queued first), so
        // its ~0.1 ms hides behind the forward pass instead of adding to it.
        let embedding = self
            .embedder
            .embed_with(&live.encoder, &input)
            .instrument(embed_span.clone());
        let (e, language) = tokio::join!(biased; embedding, async {
            crate::classify::language::detect(text)
        });
        let e = e.map_err(|source| RouteError::Embed {
            field: "messages".into(),
            source,
        })?;
        embed_span.record("tokens", e.tokens);
        embed_span.record("batch", e.batch_size);
        timings.queue_us = e.queue_us;
        timings.embed_us = e.embed_us;
        self.metrics.batch_size.observe(e.batch_size as f64);
        let t = Instant::now();
        let classify_span = tracing::info_span!("classify", classifier = %classifier.version(), intent = tracing::field::Empty, language = tracing::field::Empty);
        let server = &self.config().server;
        let mut p = classify_span
            .in_scope(|| classifier.predict(&e.vector, e.tokens, server.abstain_threshold))?;
        classifier.apply_language(&mut p, language, server.untrained_language_share());
        classify_span.record("intent", p.intent.as_str());
        classify_span.record("language", p.language.code.as_str());
        let p = Arc::new(p);
        timings.classify_us = prepare_us + t.elapsed().as_micros() as u64;
        let features = Arc::new(Features {
            embedding: e.vector,
            tokens: e.tokens as u32,
        });
        let text_tokens = e.original_tokens as u32;
        if let Some(c) = &self.cache {
            c.lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(key, (p.clone(), features.clone(), text_tokens));
        }
        Ok(Classified {
            prediction: p,
            classifier,
            features,
            text_tokens,
            cache_hit: false,
        })
    }

    /// Tokens of the whole conversation (or the bare prompt), for context-window checks.
    pub fn conversation_tokens(&self, req: &RouteRequest) -> u32 {
        let tok = self.embedder.tokenizer();
        if req.messages.is_empty() {
            return tok.count_tokens(&req.prompt) as u32;
        }
        let all: Vec<&str> = req.messages.iter().map(|(_, c)| c.as_str()).collect();
        tok.count_tokens(&all.join("\n")) as u32
    }

    /// Routes one request (in a `route` span, with `embed`, `classify` and `rank` below it).
    pub async fn route(
        &self,
        req: &RouteRequest,
        health: &(dyn Fn(&str) -> Health + Sync),
    ) -> Result<RouteOutcome, RouteError> {
        let span =
            tracing::info_span!("route", policy = %req.policy, cache_hit = tracing::field::Empty);
        self.route_inner(req, health).instrument(span).await
    }

    async fn route_inner(
        &self,
        req: &RouteRequest,
        health: &(dyn Fn(&str) -> Health + Sync),
    ) -> Result<RouteOutcome, RouteError> {
        let start = Instant::now();
        let text = self.validate(req)?;
        let mut timings = Timings::default();
        let c = self.classify(&text, &mut timings).await?;
        let (prediction, text_tokens, cache_hit) = (c.prediction, c.text_tokens, c.cache_hit);
        let t = Instant::now();
        // A single turn is the classifier input itself: its token count is already known.
        let prompt_tokens = if req.messages.len() <= 1 {
            text_tokens
        } else {
            self.conversation_tokens(req)
        };
        let input = RouteInput {
            prediction: &prediction,
            prompt_tokens,
            prefs: &req.prefs,
            metadata: &req.metadata,
            request_key: &req.request_key,
        };
        let cfg = self.config();
        tracing::Span::current().record("cache_hit", cache_hit);
        let rank_span = tracing::info_span!("rank", backends = cfg.backends.len());
        let mut decision =
            rank_span.in_scope(|| policy::rank(&cfg, &req.policy, &input, health))?;
        if req.top_k > 0 {
            decision.ranked.truncate(req.top_k);
        }
        timings.rank_us = t.elapsed().as_micros() as u64;
        timings.total_us = start.elapsed().as_micros() as u64;
        self.observe(&prediction, &decision, &timings, cache_hit);
        let outcome = RouteOutcome {
            decision_id: new_id(),
            prediction,
            classifier_version: c.classifier.version().to_string(),
            catalog_version: cfg.version.clone(),
            classifier: c.classifier,
            features: c.features,
            decision,
            timings,
            cache_hit,
        };
        if let Some(log) = &self.decisions {
            log.record(decision_record(&outcome), &text);
        }
        Ok(outcome)
    }

    fn observe(&self, p: &Prediction, d: &Decision, t: &Timings, cache_hit: bool) {
        let m = &self.metrics;
        let top = d.ranked.first().map(|r| r.name.as_str()).unwrap_or("");
        m.decisions
            .with_label_values(&[
                p.intent.as_str(),
                p.domain.as_str(),
                top,
                d.variant.as_str(),
            ])
            .inc();
        let language = if p.language.code.is_empty() {
            "unknown"
        } else {
            &p.language.code
        };
        m.languages.with_label_values(&[language]).inc();
        if p.abstained {
            m.abstains.inc();
        }
        let stages = [
            ("queue", t.queue_us),
            ("embed", t.embed_us),
            ("classify", t.classify_us),
            ("rank", t.rank_us),
            ("total", t.total_us),
        ];
        // A cache hit has no queue/embed/classify stages to report.
        for (stage, us) in stages.into_iter().skip(if cache_hit { 3 } else { 0 }) {
            m.stage_seconds
                .with_label_values(&[stage])
                .observe(us as f64 / 1e6);
        }
        m.queue_depth.set(self.embedder.queue_depth() as i64);
    }

    /// Brings the values other components keep (queue depth, worker restarts, decision-log
    /// drops) into the metrics, right before a scrape.
    pub fn refresh_metrics(&self) {
        let m = &self.metrics;
        m.queue_depth.set(self.embedder.queue_depth() as i64);
        m.encoder_available.set(self.embedder.is_healthy() as i64);
        m.classifier(self.live.snapshot().version());
        m.catalog(&self.config.load().version);
        Metrics::catch_up(&m.encoder_restarts, self.embedder.restarts());
        if let Some(log) = &self.decisions {
            let dropped = log.dropped.load(std::sync::atomic::Ordering::Relaxed);
            Metrics::catch_up(&m.decision_log_dropped, dropped);
        }
    }
}

/// The decision log's line for an outcome (the prompt is added by the log, if it keeps them).
fn decision_record(o: &RouteOutcome) -> DecisionRecord {
    DecisionRecord {
        id: o.decision_id.clone(),
        ts_ms: crate::records::now_ms(),
        classifier_version: o.classifier_version.clone(),
        catalog_version: o.catalog_version.clone(),
        encoder: o.classifier.meta.encoder.sha256.clone(),
        intent: o.prediction.intent.clone(),
        domain: o.prediction.domain.clone(),
        language: o.prediction.language.code.clone(),
        abstain_reason: o.prediction.abstain_reason().into(),
        complexity: o.prediction.complexity,
        confidence: o.prediction.confidence,
        tokens: o.features.tokens,
        embedding: DecisionRecord::encode_embedding(&o.features.embedding),
        top_backend: o
            .decision
            .ranked
            .first()
            .map(|b| b.name.clone())
            .unwrap_or_default(),
        policy: o.decision.policy.clone(),
        prompt: None,
    }
}

/// A random 128-bit id, hex.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
