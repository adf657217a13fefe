//! Proto messages ↔ engine and proxy types, shared by both transports: gRPC speaks the proto
//! messages as protobuf, HTTP's `/v1/route` as JSON with the same field names. No logic here:
//! the engine validates, naming fields.
use crate::engine::{RouteOutcome, RouteRequest};
use crate::policy::Preferences;
use crate::proto::v1 as pb;
use crate::proxy::{CompleteInput, GenParams, ProxyEvent};
use crate::records::usage::{SavingsReport, Totals};

/// Proxy event → proto event; `Serving` has no proto counterpart (Done names the backend).
pub fn to_event(e: ProxyEvent) -> Option<pb::CompleteEvent> {
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
            max_output_tokens: None,
            required_language: p.required_language,
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
            difficulty: p.small_fails,
            strong_gain: p.strong_gain,
            language: p.language.code.clone(),
            language_confidence: p.language.confidence,
            confidence: p.confidence,
            abstained: p.abstained,
            abstain_reason: p.abstain_reason().into(),
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
        catalog_version: o.catalog_version.clone(),
        timings: Some(pb::Timings {
            queue_us: o.timings.queue_us,
            embed_us: o.timings.embed_us,
            classify_us: o.timings.classify_us,
            rank_us: o.timings.rank_us,
            total_us: o.timings.total_us,
        }),
    }
}

fn savings_group(t: &Totals) -> pb::SavingsGroup {
    let (q, sq, dq) = t.qualities();
    let (ss, sp) = t.savings(t.strongest_cost_usd);
    let (ds, dp) = t.savings(t.default_cost_usd);
    pb::SavingsGroup {
        name: t.name.clone(),
        requests: t.requests,
        prompt_tokens: t.prompt_tokens,
        completion_tokens: t.completion_tokens,
        cost_usd: t.cost_usd,
        strongest_cost_usd: t.strongest_cost_usd,
        default_cost_usd: t.default_cost_usd,
        savings_vs_strongest_usd: ss,
        savings_vs_strongest_percent: sp,
        savings_vs_default_usd: ds,
        savings_vs_default_percent: dp,
        quality: q,
        strongest_quality: sq,
        default_quality: dq,
    }
}

/// The savings report as the Admin service returns it.
pub fn savings_report(r: &SavingsReport, fleet_wide: bool) -> pb::SavingsReport {
    let all = |v: &[Totals]| v.iter().map(savings_group).collect();
    pb::SavingsReport {
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        total: Some(savings_group(&r.total)),
        by_tenant: all(&r.by_tenant),
        by_key: all(&r.by_key),
        by_backend: all(&r.by_backend),
        by_intent: all(&r.by_intent),
        by_domain: all(&r.by_domain),
        fleet_wide,
    }
}
