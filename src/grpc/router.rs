//! `switchboard.v1.Router`: proto ↔ engine conversion and the one error → Status mapping.
//! Routing logic lives in `engine`; this file must not grow any.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{apply_caller, Caller};
use crate::embed::EmbedError;
use crate::engine::{Engine, RouteError, RouteOutcome, RouteRequest};
use crate::policy::{PolicyError, Preferences};
use crate::proto::v1 as pb;
use crate::proto::v1::router_server::Router;
use crate::proxy::{CompleteInput, GenParams, Proxy, ProxyError, ProxyEvent};
use tokio_stream::StreamExt;

pub struct RouterService {
    engine: Arc<Engine>,
    proxy: Arc<Proxy>,
}

impl RouterService {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self {
            engine: proxy.engine.clone(),
            proxy,
        }
    }
}

impl From<ProxyError> for Status {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Route(r) => r.into(),
            ProxyError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            ProxyError::AllFailed(_)
            | ProxyError::NoneAvailable(_)
            | ProxyError::MidStream { .. } => Status::unavailable(e.to_string()),
        }
    }
}

/// Proxy event → proto event; `Serving` has no proto counterpart (Done names the backend).
fn to_event(e: ProxyEvent) -> Option<pb::CompleteEvent> {
    use pb::complete_event::Event;
    let event = match e {
        ProxyEvent::Decision {
            decision_id,
            outcome,
            trying,
        } => Event::Decision(pb::DecisionEvent {
            decision: outcome.map(|o| to_response(&o)),
            trying_backend: trying,
            decision_id,
        }),
        ProxyEvent::Serving { .. } => return None,
        ProxyEvent::Delta(text) => Event::Delta(pb::DeltaEvent { text }),
        ProxyEvent::Done(d) => Event::Done(pb::DoneEvent {
            finish_reason: d.finish_reason,
            usage: Some(pb::Usage {
                prompt_tokens: d.prompt_tokens,
                completion_tokens: d.completion_tokens,
                estimated: d.estimated,
            }),
            cost_usd: d.cost_usd,
            backend: d.backend,
            model: d.model,
            time_to_first_token_us: d.ttft_us,
            total_us: d.total_us,
            attempts: d
                .attempts
                .into_iter()
                .map(|a| pb::Attempt {
                    backend: a.backend,
                    error: a.error,
                    elapsed_us: a.elapsed_us,
                })
                .collect(),
        }),
    };
    Some(pb::CompleteEvent { event: Some(event) })
}

/// Proto Complete request → proxy input.
pub fn to_complete_input(r: pb::CompleteRequest) -> CompleteInput {
    let p = r.params.unwrap_or_default();
    CompleteInput {
        route: to_route_request(r.route.unwrap_or_default()),
        params: GenParams {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            stop: p.stop,
            seed: p.seed,
            json: p.response_format == "json_object",
        },
        pinned: (!r.pinned_backend.is_empty()).then_some(r.pinned_backend),
    }
}

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Self {
        let msg = e.to_string();
        match e {
            RouteError::InvalidArgument { .. } => Status::invalid_argument(msg),
            RouteError::Embed { source, .. } => match source {
                EmbedError::EmptyInput | EmbedError::InputTooLong { .. } => {
                    Status::invalid_argument(msg)
                }
                EmbedError::Overloaded { .. } => Status::resource_exhausted(msg),
                EmbedError::Shutdown => Status::unavailable(msg),
                EmbedError::Tokenize(_) | EmbedError::Model(_) | EmbedError::Load(_) => {
                    Status::internal(msg)
                }
            },
            RouteError::Classify(_) => Status::internal(msg),
            RouteError::Policy(PolicyError::UnknownPolicy(_)) => {
                Status::invalid_argument(format!("policy: {msg}"))
            }
            RouteError::Policy(PolicyError::NoneQualifies(_)) => Status::failed_precondition(msg),
        }
    }
}

/// Proto request → engine request (no validation here: the engine does it, naming fields).
pub fn to_route_request(r: pb::RouteDecisionRequest) -> RouteRequest {
    let p = r.preferences.unwrap_or_default();
    RouteRequest {
        messages: r
            .messages
            .into_iter()
            .map(|m| (m.role, m.content))
            .collect(),
        prompt: r.prompt,
        prefs: Preferences {
            trade_off: p.trade_off,
            max_cost_usd: p.max_cost_usd,
            max_latency_ms: p.max_latency_ms.map(f64::from),
            required_capabilities: p.required_capabilities,
            allow: p.allow_backends,
            deny: p.deny_backends,
            expected_output_tokens: p.expected_output_tokens.unwrap_or(256),
        },
        top_k: r.top_k as usize,
        policy: r.policy,
        metadata: r.metadata.into_iter().collect(),
        request_key: r.request_key,
    }
}

fn probs(labels: &[String], p: &[f32]) -> Vec<pb::LabelProbability> {
    labels
        .iter()
        .zip(p)
        .map(|(l, &v)| pb::LabelProbability {
            label: l.clone(),
            probability: v,
        })
        .collect()
}

/// Engine outcome → proto response.
pub fn to_response(o: &RouteOutcome) -> pb::RouteDecisionResponse {
    let c = &o.classifier;
    let p = &o.prediction;
    pb::RouteDecisionResponse {
        decision_id: o.decision_id.clone(),
        classification: Some(pb::Classification {
            intent: p.intent.clone(),
            intent_probabilities: probs(&c.meta.intent_labels, &p.intent_probs),
            domain: p.domain.clone(),
            domain_probabilities: probs(&c.meta.domain_labels, &p.domain_probs),
            complexity: p.complexity,
            confidence: p.confidence,
            abstained: p.abstained,
        }),
        backends: o
            .decision
            .ranked
            .iter()
            .map(|r| pb::RankedBackend {
                name: r.name.clone(),
                model: r.model.clone(),
                provider: r.provider.clone(),
                score: r.score,
                estimated_quality: r.quality,
                estimated_cost_usd: r.cost_usd,
                estimated_latency_ms: r.latency_ms,
                healthy: r.healthy,
                reasons: r.reasons.clone(),
            })
            .collect(),
        policy: o.decision.policy.clone(),
        variant: o.decision.variant.clone(),
        classifier_version: o.classifier_version.clone(),
        timings: Some(pb::Timings {
            queue_us: o.timings.queue_us,
            embed_us: o.timings.embed_us,
            classify_us: o.timings.classify_us,
            rank_us: o.timings.rank_us,
            total_us: o.timings.total_us,
        }),
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route_decision(
        &self,
        request: Request<pb::RouteDecisionRequest>,
    ) -> Result<Response<pb::RouteDecisionResponse>, Status> {
        let span = tracing::info_span!(
            "route_decision",
            decision_id = tracing::field::Empty,
            intent = tracing::field::Empty
        );
        let engine = self.engine.clone();
        async move {
            let caller = request.extensions().get::<Caller>().cloned();
            let mut req = to_route_request(request.into_inner());
            apply_caller(&mut req, None, caller.as_ref()).map_err(Status::permission_denied)?;
            let fleet = self.proxy.fleet.clone();
            match engine.route(&req, &move |n: &str| fleet.live(n)).await {
                Ok(o) => {
                    let span = tracing::Span::current();
                    span.record("decision_id", o.decision_id.as_str());
                    span.record("intent", o.prediction.intent.as_str());
                    Ok(Response::new(to_response(&o)))
                }
                Err(e) => {
                    engine.metrics.errors.with_label_values(&[e.kind()]).inc();
                    tracing::info!(error = %e, "route_decision refused");
                    Err(e.into())
                }
            }
        }
        .instrument(span)
        .await
    }

    type CompleteStream = Pin<Box<dyn Stream<Item = Result<pb::CompleteEvent, Status>> + Send>>;

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<Self::CompleteStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let mut input = to_complete_input(request.into_inner());
        apply_caller(&mut input.route, input.pinned.as_deref(), caller.as_ref())
            .map_err(Status::permission_denied)?;
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let proxy = self.proxy.clone();
        let span = tracing::info_span!("complete", pinned = input.pinned.as_deref().unwrap_or(""));
        // The producer stops (and drops the upstream request) once the client is gone.
        tokio::spawn(async move { proxy.run(input, tx).await }.instrument(span));
        let stream =
            tokio_stream::wrappers::ReceiverStream::new(rx).filter_map(move |item| match item {
                Ok(e) => to_event(e).map(Ok),
                Err(e) => Some(Err(Status::from(e))),
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
