//! `POST /v1/chat/completions`: the OpenAI wire format over `Proxy::run`, the same engine as
//! gRPC `Complete`. Until the first token a failure is a plain HTTP error with an OpenAI
//! error body; after it, an SSE `data: {"error": …}` event ends the stream. Dropping the
//! response body (client gone) drops the receiver, which cancels the upstream request.
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use tracing::Instrument;

use super::error::ApiError;
use super::{wire, HttpState};
use crate::auth::Caller;
use crate::error::Error;
use crate::gateway::{ended_without_answer, CompletionRx as Rx};
use crate::proxy::{DoneInfo, ProxyEvent};

/// The completion's events stopped without a last event: its task died.
fn ended_early() -> ApiError {
    ApiError::from(ended_without_answer())
}

/// What is known when the first token arrives, for headers and every chunk.
#[derive(Default)]
struct Head {
    decision_id: String,
    intent: Option<String>,
    classifier_version: Option<String>,
    catalog_version: Option<String>,
    backend: String,
    model: String,
    created: u64,
}

impl Head {
    fn headers(&self, h: &mut HeaderMap) {
        let mut set = |name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        set("x-switchboard-decision-id", &self.decision_id);
        set("x-switchboard-backend", &self.backend);
        if let Some(i) = &self.intent {
            set("x-switchboard-intent", i);
        }
        if let Some(v) = &self.classifier_version {
            set("x-switchboard-classifier-version", v);
        }
        if let Some(v) = &self.catalog_version {
            set("x-switchboard-catalog-version", v);
        }
    }

    fn id(&self) -> String {
        format!("chatcmpl-{}", self.decision_id)
    }
}

pub async fn chat_completions(
    State(s): State<HttpState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!(
        "chat_completions",
        decision_id = tracing::field::Empty,
        backend = tracing::field::Empty
    );
    async move {
        match handle(s, caller.map(|c| c.0), headers, body).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(status = %e.status, error = %e.message, "chat completion refused");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status();
    let e = ApiError::new(
        status,
        "invalid_request_error",
        format!("body: {}", r.body_text()),
    );
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        e.code("request_too_large")
    } else {
        e
    }
}

async fn handle(
    s: HttpState,
    caller: Option<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: wire::ChatRequest = wire::parse(&body.map_err(body_error)?)?;
    let stream = req.stream;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let input = wire::to_input(req, &headers, &s.gateway.engine().config())?;
    let mut rx = s.gateway.complete(input, caller.as_ref())?;
    let mut head = Head {
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..Default::default()
    };
    let first = loop {
        match rx.recv().await {
            None => return Err(ended_early()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(ProxyEvent::Decision {
                decision_id,
                outcome,
                ..
            })) => {
                tracing::Span::current().record("decision_id", decision_id.as_str());
                head.decision_id = decision_id;
                head.intent = outcome.as_ref().map(|o| o.prediction.intent.clone());
                head.catalog_version = outcome.as_ref().map(|o| o.catalog_version.clone());
                head.classifier_version = outcome.map(|o| o.classifier_version);
            }
            Some(Ok(ProxyEvent::Serving { backend, model })) => {
                tracing::Span::current().record("backend", backend.as_str());
                (head.backend, head.model) = (backend, model);
            }
            Some(Ok(ev)) => break ev,
        }
    };
    if let ProxyEvent::Done(d) = &first {
        (head.backend, head.model) = (d.backend.clone(), d.model.clone());
    }
    if stream {
        Ok(sse(head, first, rx, include_usage))
    } else {
        collect(head, first, rx).await
    }
}

async fn collect(head: Head, first: ProxyEvent, mut rx: Rx) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut next = Some(first);
    let done = loop {
        match next.take() {
            Some(ProxyEvent::Delta(t)) => text.push_str(&t),
            Some(ProxyEvent::Done(d)) => break d,
            Some(_) => {}
            None => {}
        }
        next = match rx.recv().await {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ended_early()),
        };
    };
    let body = json!({
        "id": head.id(),
        "object": "chat.completion",
        "created": head.created,
        "model": done.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": done.finish_reason,
        }],
        "usage": usage(&done),
        "switchboard": extra(&head, &done),
    });
    let mut resp = Json(body).into_response();
    head.headers(resp.headers_mut());
    Ok(resp)
}

fn usage(d: &DoneInfo) -> serde_json::Value {
    json!({
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "total_tokens": u64::from(d.prompt_tokens) + u64::from(d.completion_tokens),
    })
}

/// switchboard's own account of the request, beside the OpenAI fields.
fn extra(head: &Head, d: &DoneInfo) -> serde_json::Value {
    json!({
        "decision_id": head.decision_id,
        "backend": d.backend,
        "intent": head.intent,
        "classifier_version": head.classifier_version,
        "catalog_version": head.catalog_version,
        "usage_estimated": d.estimated,
        "cost_usd": d.cost_usd,
        "time_to_first_token_us": d.ttft_us,
        "attempts": d.attempts.iter().map(|a| json!({
            "backend": a.backend, "error": a.error, "elapsed_us": a.elapsed_us,
        })).collect::<Vec<_>>(),
    })
}

/// Writes SSE frames exactly as OpenAI's streaming API does.
struct Frames {
    /// `data: {"id":…,"choices":[{"index":0,"delta":` — shared by every chunk.
    prefix: String,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Frames {
    fn new(head: &Head, include_usage: bool) -> Self {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let prefix = format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"system_fingerprint\":null,\"choices\":[{{\"index\":0,\"delta\":",
            q(&head.id()),
            head.created,
            q(&head.model)
        );
        Self {
            prefix,
            id: head.id(),
            created: head.created,
            model: head.model.clone(),
            include_usage,
        }
    }

    fn chunk(&self, out: &mut String, delta: &str, finish: Option<&str>) {
        out.push_str(&self.prefix);
        out.push_str(delta);
        out.push_str(",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => out.push_str(&serde_json::to_string(f).unwrap_or_else(|_| "null".into())),
            None => out.push_str("null"),
        }
        out.push_str("}]");
        if self.include_usage {
            out.push_str(",\"usage\":null");
        }
        out.push_str("}\n\n");
    }

    fn content(&self, out: &mut String, text: &str) {
        let escaped = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
        self.chunk(out, &format!("{{\"content\":{escaped}}}"), None);
    }

    fn done(&self, out: &mut String, d: &DoneInfo) {
        self.chunk(out, "{}", Some(&d.finish_reason));
        if self.include_usage {
            let v = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": null, "choices": [], "usage": usage(d),
            });
            out.push_str(&format!("data: {v}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
    }
}

/// One step of the SSE body: the bytes for the next proxy event, and whether it was the last.
fn frame(f: &Frames, ev: Option<Result<ProxyEvent, Error>>) -> (String, bool) {
    let mut out = String::new();
    match ev {
        Some(Ok(ProxyEvent::Delta(t))) => {
            f.content(&mut out, &t);
            (out, false)
        }
        Some(Ok(ProxyEvent::Done(d))) => {
            f.done(&mut out, &d);
            (out, true)
        }
        Some(Ok(_)) => (out, false),
        Some(Err(e)) => {
            tracing::info!(error = %e, "stream failed after the first byte");
            (format!("data: {}\n\n", ApiError::from(e).body()), true)
        }
        None => (format!("data: {}\n\n", ended_early().body()), true),
    }
}

fn sse(head: Head, first: ProxyEvent, rx: Rx, include_usage: bool) -> Response {
    let frames = Frames::new(&head, include_usage);
    let mut opening = String::new();
    frames.chunk(&mut opening, r#"{"role":"assistant","content":""}"#, None);
    let (rest, end) = frame(&frames, Some(Ok(first)));
    opening.push_str(&rest);
    let state = (rx, frames, end);
    let tail = futures_util::stream::unfold(state, |(mut rx, frames, ended)| async move {
        if ended {
            return None;
        }
        // Coalesce what is already queued into one write: one syscall and TCP segment for a
        // burst of deltas instead of one each.
        let (mut out, mut end) = frame(&frames, rx.recv().await);
        while !end {
            let Ok(ev) = rx.try_recv() else { break };
            let (more, e) = frame(&frames, Some(ev));
            out.push_str(&more);
            end = e;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(out)), (rx, frames, end)))
    });
    let opening = futures_util::stream::once(async move { Ok(Bytes::from(opening)) });
    let body = Body::from_stream(futures_util::StreamExt::chain(opening, tail));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    head.headers(h);
    resp
}
