//! The HTTP side: Prometheus `/metrics`, `/healthz` (process up) and `/readyz` (model warm).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::engine::Engine;

#[derive(Clone)]
pub struct HttpState {
    pub engine: Arc<Engine>,
    pub ready: Arc<AtomicBool>,
}

async fn metrics(State(s): State<HttpState>) -> String {
    s.engine
        .metrics
        .queue_depth
        .set(s.engine.embedder.queue_depth() as i64);
    s.engine.metrics.render()
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming up\n")
    }
}

/// Sets TCP_NODELAY on an accepted connection: small responses and SSE frames must not wait
/// for delayed ACKs (Nagle). For `axum::serve(listener.tap_io(nodelay), …)`.
pub fn nodelay(s: &mut tokio::net::TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// The HTTP router.
pub fn router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}
