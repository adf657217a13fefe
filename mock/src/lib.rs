//! An OpenAI-compatible mock upstream for switchboard's tests and `bench proxy`: `/v1/chat/completions`,
//! streaming (SSE) and not, with scripted behaviours chosen per request by the `model` field
//! (`mock-400`, `mock-401`, `mock-500`, `mock-429`, `mock-429-<Retry-After value>`, `mock-hang`, `mock-slow`, `mock-die-3`, `mock-nousage`,
//! `mock-malformed`, `mock-stall`, `mock-endless`, `mock-flaky10` (every 10th request fails); anything else streams normally). It counts requests and open streams so
//! tests can assert that a cancelled client closes the upstream connection.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Json;
use serde_json::{json, Value};

/// The reply text every normal stream produces, split into `CHUNKS` deltas.
pub const REPLY: &str = "The quick brown fox jumps over the lazy dog. Routing works.";
/// Usage the mock reports.
pub const PROMPT_TOKENS: u32 = 21;
pub const COMPLETION_TOKENS: u32 = 13;

#[derive(Default)]
pub struct Counters {
    /// When set, every request gets HTTP 500 (a whole provider down).
    pub fail_all: std::sync::atomic::AtomicBool,
    pub requests: AtomicUsize,
    pub open_streams: AtomicUsize,
    pub completed_streams: AtomicUsize,
    /// The `traceparent` header of the latest request, if it had one.
    pub last_traceparent: std::sync::Mutex<Option<String>>,
}

/// A running mock.
pub struct Mock {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Mock {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(counters.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener.tap_io(nodelay), app).await;
        });
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decrements `open_streams` when the response body is dropped (client gone or stream done).
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Splits the reply into word-sized deltas.
pub fn deltas() -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in REPLY.chars() {
        cur.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let v = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {v}\n\n")
}

fn usage_chunk(model: &str) -> String {
    let v = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}});
    format!("data: {v}\n\n")
}

async fn chat(
    State(c): State<Arc<Counters>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let n = c.requests.fetch_add(1, Ordering::SeqCst);
    *c.last_traceparent.lock().unwrap_or_else(|p| p.into_inner()) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let model = body["model"].as_str().unwrap_or("mock").to_string();
    if c.fail_all.load(Ordering::SeqCst) || (model == "mock-flaky10" && n % 10 == 0) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response();
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    match model.as_str() {
        "mock-500" => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response()
        }
        "mock-429" => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
            return r;
        }
        // The caller's fault, as OpenAI reports it.
        "mock-400" => {
            let e = json!({"error": {"message": "temperature: must be at most 2, found 9",
                "type": "invalid_request_error", "param": "temperature", "code": null}});
            return (StatusCode::BAD_REQUEST, Json(e)).into_response();
        }
        // The operator's fault: a revoked provider key.
        "mock-401" => {
            let e = json!({"error": {"message": "Incorrect API key provided",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
            return (StatusCode::UNAUTHORIZED, Json(e)).into_response();
        }
        // `mock-429-<value>`: 429 with `Retry-After: <value>` as given (hostile values too).
        m if m.starts_with("mock-429-") => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            if let Ok(v) = HeaderValue::from_str(&m["mock-429-".len()..]) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        "mock-hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    if !stream {
        let v = json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}});
        return Json(v).into_response();
    }
    let plan = StreamPlan {
        include_usage: body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false)
            && model != "mock-nousage",
        die_after: model.strip_prefix("mock-die-").and_then(|n| n.parse().ok()),
        slow: model == "mock-slow",
        malformed: model == "mock-malformed",
        stall: model == "mock-stall",
        endless: model == "mock-endless",
        model,
    };
    c.open_streams.fetch_add(1, Ordering::SeqCst);
    let guard = OpenGuard(c.clone());
    let counters = c.clone();
    let body_stream = async_stream(guard, move |tx| produce(tx, plan, counters));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body_stream)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// How one streamed reply behaves, read from the requested model name.
struct StreamPlan {
    model: String,
    include_usage: bool,
    /// Break the connection before this delta.
    die_after: Option<usize>,
    /// One delta, then nothing, with the connection open.
    stall: bool,
    /// One delta, then a line that never ends (no newline), until the client goes.
    endless: bool,
    /// 100 ms between deltas.
    slow: bool,
    /// A chunk that is not JSON after the role chunk.
    malformed: bool,
}

type ChunkTx = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Writes one streamed reply as the plan says; counts it once it ends normally.
async fn produce(tx: ChunkTx, plan: StreamPlan, counters: Arc<Counters>) {
    let model = &plan.model;
    let role = chunk(model, json!({"role": "assistant", "content": ""}), None);
    let _ = tx.send(Ok(Bytes::from(role))).await;
    if plan.malformed {
        let _ = tx
            .send(Ok(Bytes::from("data: {this is not json\n\n")))
            .await;
        return;
    }
    for (i, d) in deltas().iter().enumerate() {
        if i == 1 && plan.stall {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        if i == 1 && plan.endless {
            let block = Bytes::from(vec![b'x'; 16 * 1024]);
            let mut line = Ok(Bytes::from(
                "data: {\"choices\":[{\"delta\":{\"content\":\"",
            ));
            while tx.send(line).await.is_ok() {
                line = Ok(block.clone());
            }
            return;
        }
        if plan.die_after == Some(i) {
            // hyper drops what is still in its write buffer when the body fails: give the
            // chunks already produced time to reach the socket, so exactly `i` arrive.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx
                .send(Err(std::io::Error::other("mock died mid-stream")))
                .await;
            return;
        }
        if plan.slow {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let delta = chunk(model, json!({"content": d}), None);
        if tx.send(Ok(Bytes::from(delta))).await.is_err() {
            return;
        }
    }
    let stop = chunk(model, json!({}), Some("stop"));
    let _ = tx.send(Ok(Bytes::from(stop))).await;
    if plan.include_usage {
        let _ = tx.send(Ok(Bytes::from(usage_chunk(model)))).await;
    }
    let _ = tx.send(Ok(Bytes::from("data: [DONE]\n\n"))).await;
    counters.completed_streams.fetch_add(1, Ordering::SeqCst);
}

/// A body fed by a spawned producer through a small channel. The guard lives in the body, so
/// `open_streams` drops the moment the server drops the body (client gone), not at the
/// producer's next send.
fn async_stream<F, Fut>(guard: OpenGuard, f: F) -> Body
where
    F: FnOnce(ChunkTx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    let s = futures_util::stream::unfold((rx, guard), |(mut rx, g)| async move {
        rx.recv().await.map(|item| (item, (rx, g)))
    });
    Body::from_stream(s)
}

/// Small SSE frames must not wait for delayed ACKs (Nagle).
fn nodelay(s: &mut tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
}
