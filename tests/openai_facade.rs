//! The OpenAI-compatible HTTP facade at the wire level: SSE framing, headers, error bodies and
//! statuses, `/v1/route`, and client disconnect cancelling the upstream request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard_mock as mock;
use switchboard_mock::Mock;

use common::{catalog, mock_backend};

struct Setup {
    m: Mock,
    server: common::TestServer,
    http: reqwest::Client,
}

impl Setup {
    async fn start() -> Self {
        let m = Mock::start().await.unwrap();
        let url = m.base_url();
        let mut slow = mock_backend("slow", "mock-slow", &url, 0.2);
        slow.max_concurrency = 1;
        let mut cfg = catalog(vec![mock_backend("fast", "mock", &url, 0.8), slow]);
        cfg.server.max_prompt_bytes = 4096;
        let server = common::TestServer::start(cfg).await;
        Self {
            m,
            server,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.http)
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Prove that sqrt(2) is irrational."}]}]})
}

async fn error_of(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    let e = &v["error"];
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error body lacks {k}: {v}");
    }
    e.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_stream_is_framed_as_openai_does() {
    let s = Setup::start().await;
    let mut body = chat("auto", true);
    body["stream_options"] = json!({"include_usage": true});
    let r = s.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["x-switchboard-backend"], "fast");
    assert_eq!(h["x-switchboard-intent"], "math");
    let id = h["x-switchboard-decision-id"].to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert!(frames.iter().all(|f| f.starts_with("data: ")), "{text}");
    assert_eq!(*frames.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(&f[6..]).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let mut content = String::new();
    for c in &chunks {
        assert_eq!(c["id"], format!("chatcmpl-{id}"));
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "mock");
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            content.push_str(t);
        }
    }
    assert_eq!(content, mock::REPLY);
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[n - 2]["usage"], Value::Null);
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(
        chunks[n - 1]["usage"]["total_tokens"],
        mock::PROMPT_TOKENS + mock::COMPLETION_TOKENS
    );
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_use_openai_bodies_and_statuses() {
    let s = Setup::start().await;
    let e = error_of(
        s.post("/v1/chat/completions", chat("nope", false)).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    let e = error_of(
        s.post("/v1/chat/completions", chat("auto:nope", false))
            .await,
        404,
    )
    .await;
    assert_eq!(e["param"], "model");
    let bad_role = json!({"model": "auto", "messages": [{"role": "wizard", "content": "hi"}]});
    let e = error_of(s.post("/v1/chat/completions", bad_role).await, 400).await;
    assert_eq!(e["param"], "messages[0].role");
    let bad_type = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"});
    let e = error_of(s.post("/v1/chat/completions", bad_type).await, 400).await;
    assert_eq!(e["param"], "temperature", "{e}");
    let tools =
        json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "tools": [{}]});
    let e = error_of(s.post("/v1/chat/completions", tools).await, 400).await;
    assert_eq!(e["param"], "tools");
    let big = "x".repeat(5000);
    let long = json!({"model": "auto", "messages": [{"role": "user", "content": big}]});
    let e = error_of(s.post("/v1/chat/completions", long).await, 413).await;
    assert_eq!(e["param"], "messages");
    let huge =
        json!({"model": "auto", "messages": [{"role": "user", "content": "y".repeat(200_000)}]});
    // The server answers 413 before reading the whole body and closes that connection; it
    // must not go back into the client's pool, or the next request can hit a broken pipe.
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .header("connection", "close")
        .json(&huge)
        .send()
        .await
        .unwrap();
    let e = error_of(r, 413).await;
    assert_eq!(e["code"], "request_too_large");
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .header("x-switchboard-trade-off", "lots")
        .json(&chat("auto", false))
        .send()
        .await
        .unwrap();
    let e = error_of(r, 400).await;
    assert_eq!(e["param"], "header x-switchboard-trade-off");
    hostile_numbers_and_content_types_are_refused(&s).await;
    let e = error_of(s.post("/v1/nothing", json!({})).await, 404).await;
    assert_eq!(e["code"], "unknown_url");
    // Every upstream down: 503 before the first byte, also when streaming.
    s.m.counters.fail_all.store(true, Ordering::SeqCst);
    for stream in [false, true] {
        let e = error_of(
            s.post("/v1/chat/completions", chat("auto", stream)).await,
            503,
        )
        .await;
        assert_eq!(e["code"], "no_backend_available");
        assert!(e["message"].as_str().unwrap().contains("fast"), "{e}");
    }
    s.m.counters.fail_all.store(false, Ordering::SeqCst);
    // And the service keeps serving.
    let r = s.post("/v1/chat/completions", chat("fast", false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], mock::REPLY);
    assert_eq!(v["switchboard"]["backend"], "fast");
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_models_and_preferences() {
    let s = Setup::start().await;
    let r = s
        .post(
            "/v1/route",
            json!({"prompt": "Prove that sqrt(2) is irrational.", "preferences": {"trade_off": 1.0}, "top_k": 1}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["classification"]["intent"], "math", "{v}");
    assert_eq!(v["classification"]["language"], "eng", "{v}");
    assert!(v["classification"]["difficulty"].as_f64().is_some(), "{v}");
    assert_eq!(v["backends"].as_array().unwrap().len(), 1);
    assert_eq!(v["backends"][0]["name"], "fast");
    assert_eq!(v["decision_id"].as_str().unwrap().len(), 32);
    let e = error_of(
        s.post("/v1/route", json!({"prompt": "hi", "bogus": 1}))
            .await,
        400,
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("bogus"), "{e}");
    let e = error_of(
        s.post(
            "/v1/route",
            json!({"prompt": "hi", "preferences": {"deny_backends": ["zzz"]}}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(e["param"], "switchboard.deny_backends[0]");

    let models: Value = s
        .http
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "auto");
    assert!(
        ids.contains(&"auto:balanced") && ids.contains(&"slow"),
        "{ids:?}"
    );

    // Preferences from the body's `switchboard` field: deny the top backend.
    let mut body = chat("auto", false);
    body["switchboard"] = json!({"deny_backends": ["fast"]});
    let r = s.post("/v1/chat/completions", body).await;
    assert_eq!(r.headers()["x-switchboard-backend"], "slow");
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_disconnect_cancels_the_upstream() {
    let s = Setup::start().await;
    let r = s.post("/v1/chat/completions", chat("slow", true)).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"content\"").count() < 3 {
        seen.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    assert_eq!(s.m.counters.open_streams.load(Ordering::SeqCst), 1);
    drop(body);
    let t = Instant::now();
    while s.m.counters.open_streams.load(Ordering::SeqCst) > 0 {
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "upstream still open after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.m.counters.completed_streams.load(Ordering::SeqCst), 0);
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outcome_feedback_names_the_completion_that_served() {
    use switchboard::proto::v1::admin_client::AdminClient;
    use switchboard::proto::v1::RecordFeedbackRequest;
    let s = Setup::start().await;
    // Pinned: no routing happened, yet the decision id is logged with the serving backend.
    let r = s.post("/v1/chat/completions", chat("fast", false)).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-switchboard-decision-id"]
        .to_str()
        .unwrap()
        .to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.server.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut a = AdminClient::new(channel);
    let msg = RecordFeedbackRequest {
        decision_id: id.clone(),
        outcome: "success".into(),
        rating: 5,
        ..Default::default()
    };
    let req = switchboard::grpc::with_bearer(msg, common::ADMIN_TOKEN).unwrap();
    assert_eq!(
        a.record_feedback(req).await.unwrap().into_inner().sequence,
        1
    );
    let dir = s.server.engine.config().admin.state_dir.join("decisions");
    let t = Instant::now();
    let served = loop {
        let text: String = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        // The completion's usage line carries the id too; this is the `served` one.
        let served = |l: &&str| l.contains(&id) && l.contains("\"kind\":\"served\"");
        if let Some(line) = text.lines().find(served) {
            break line.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no served record for {id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let v: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(v["kind"], "served");
    assert_eq!(v["backend"], "fast");
    assert_eq!(v["ok"], true);
    s.server.stop().await;
}

/// NaN or infinite header numbers, a negative budget, and POSTs that are not JSON: refused
/// before anything runs, each naming what was wrong.
async fn hostile_numbers_and_content_types_are_refused(s: &Setup) {
    // Not a number that parses to NaN or infinity either: refused, naming the header.
    for v in ["NaN", "inf"] {
        let r = s
            .http
            .post(s.url("/v1/chat/completions"))
            .header("x-switchboard-max-latency-ms", v)
            .json(&chat("auto", false))
            .send()
            .await
            .unwrap();
        let e = error_of(r, 400).await;
        assert_eq!(
            e["param"], "header x-switchboard-max-latency-ms",
            "{v}: {e}"
        );
    }
    // A POST that does not say it is JSON (what a web page's form or text/plain fetch sends
    // without a CORS preflight) is refused before anything runs.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = s
            .http
            .post(s.url("/v1/chat/completions"))
            .header("content-type", ct)
            .header("connection", "close")
            .body(chat("auto", false).to_string())
            .send()
            .await
            .unwrap();
        let e = error_of(r, 415).await;
        assert_eq!(e["param"], "header content-type", "{ct}: {e}");
    }
    let mut negative = chat("auto", false);
    negative["switchboard"] = json!({"max_latency_ms": -1.0});
    let e = error_of(s.post("/v1/chat/completions", negative).await, 400).await;
    assert_eq!(e["param"], "switchboard.max_latency_ms", "{e}");
}
