//! The HTTP transport: the OpenAI-compatible facade (`/v1/chat/completions`, `/v1/models`,
//! `/v1/route`), Prometheus `/metrics`, `/healthz` (process up) and `/readyz` (model warm).
//! Handlers translate JSON and call the gateway; the server is assembled in `server`.
mod api;
mod chat;
pub mod error;
mod listen;
pub(crate) mod wire;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::gateway::Gateway;

#[derive(Clone)]
pub struct HttpState {
    pub gateway: Arc<Gateway>,
    /// Set once the encoder is warm (`/readyz`).
    pub ready: Arc<AtomicBool>,
}

async fn metrics(State(s): State<HttpState>) -> String {
    s.gateway.refresh_metrics();
    s.gateway.engine().metrics.render()
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if !s.gateway.engine().embedder.is_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "encoder unavailable\n")
    } else if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Every `/v1` request: a span, the API-key check, and the request counter.
async fn guard(State(s): State<HttpState>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("http", method = %req.method(), path = %path, status = tracing::field::Empty);
    let headers = req.headers();
    crate::telemetry::adopt_parent(&span, &|k| {
        headers.get(k)?.to_str().ok().map(str::to_string)
    });
    async move {
        let start = Instant::now();
        let h = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let resp = match (s.gateway.authenticate(h), json_body(&req)) {
            (Err(e), _) => error::ApiError::from(e).into_response(),
            (Ok(_), Err(e)) => e.into_response(),
            (Ok(caller), Ok(())) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                match read_body(&s, req).await {
                    Ok(req) => next.run(req).await,
                    Err(e) => e.into_response(),
                }
            }
        };
        let status = resp.status();
        tracing::Span::current().record("status", status.as_u16());
        let m = &s.gateway.engine().metrics;
        m.http_requests
            .with_label_values(&[path.as_str(), status.as_str()])
            .inc();
        m.http_seconds
            .with_label_values(&[path.as_str()])
            .observe(start.elapsed().as_secs_f64());
        resp
    }
    .instrument(span)
    .await
}

/// A POST must say its body is JSON. A browser sends a cross-site form or `text/plain` POST
/// without asking first (no CORS preflight); requiring JSON stops a web page from making the
/// operator's browser spend the operator's provider keys through a local switchboard.
fn json_body(req: &Request) -> Result<(), error::ApiError> {
    if req.method() != axum::http::Method::POST {
        return Ok(());
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    let e = error::ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        format!("header content-type: must be application/json, found {ct:?}"),
    );
    Err(error::ApiError {
        param: Some("header content-type".into()),
        ..e
    })
}

/// The request body, read in full within `transport.http_body_read_timeout_ms` and no larger
/// than the body limit: a client trickling its body holds a connection for that long at most.
async fn read_body(s: &HttpState, req: Request) -> Result<Request, error::ApiError> {
    let cfg = s.gateway.engine().config();
    let deadline = Duration::from_millis(cfg.transport.http_body_read_timeout_ms);
    let limit = body_limit(s);
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(body_read_error(&e, limit)),
        Err(_) => {
            let e = error::ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "body: not received in full within {} ms (transport.http_body_read_timeout_ms)",
                    deadline.as_millis()
                ),
            );
            return Err(e.code("request_timeout"));
        }
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn body_read_error(e: &axum::Error, limit: usize) -> error::ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            let msg = format!("body: longer than the limit of {limit} bytes");
            let e =
                error::ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", msg);
            return e.code("request_too_large");
        }
        source = err.source();
    }
    error::ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        format!("body: cannot be read: {e}"),
    )
}

fn body_limit(s: &HttpState) -> usize {
    s.gateway.engine().config().server.max_request_bytes()
}

async fn not_found() -> Response {
    error::ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint",
    )
    .code("unknown_url")
    .into_response()
}

/// The HTTP router; `/metrics` is on it unless it is served on an address of its own.
pub fn router(state: HttpState, with_metrics: bool) -> axum::Router {
    let limit = body_limit(&state);
    let v1 = axum::Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(api::models))
        .route("/v1/route", post(api::route))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit));
    let mut app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if with_metrics {
        app = app.route("/metrics", get(metrics));
    }
    app.merge(v1).with_state(state)
}

/// `/metrics` alone, for its own address (kept off the port clients reach).
pub fn metrics_router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Serves `router` on `listener` under `[transport]`'s limits until `shutdown` resolves,
/// then drains requests in flight.
pub async fn serve(
    router: axum::Router,
    listener: TcpListener,
    limits: crate::config::TransportConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(router, listener, &limits, shutdown).await
}
