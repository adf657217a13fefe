//! Generation parameters are checked before any upstream call (each error names its field),
//! pinned backends get ranking's capability and context-window rules, `max_tokens` steers
//! routing away from windows too small for it, and errors reaching a client carry no
//! internal URL, key variable name, upstream body or echoed prompt text.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use switchboard_mock::Mock;

use common::{catalog, mock_backend};

struct Setup {
    m: Mock,
    server: common::TestServer,
    http: reqwest::Client,
}

const SECRET_VAR: &str = "SWITCHBOARD_TEST_PROVIDER_KEY_NEVER_SET";

impl Setup {
    async fn start() -> Self {
        let m = Mock::start().await.unwrap();
        let url = m.base_url();
        let mut small = mock_backend("small", "mock", &url, 0.9);
        small.context_window = 2_000;
        let mut big = mock_backend("big", "mock", &url, 0.5);
        big.context_window = 50_000;
        let mut keyless = mock_backend("keyless", "mock", &url, 0.1);
        keyless.api_key_env = Some(SECRET_VAR.into());
        let mut down = mock_backend("down", "mock", "http://127.0.0.1:9/v1", 0.1);
        down.connect_timeout_ms = 500;
        let failing = mock_backend("failing", "mock-500", &url, 0.1);
        let cfg = catalog(vec![small, big, keyless, down, failing]);
        Self {
            m,
            server: common::TestServer::start(cfg).await,
            http: reqwest::Client::new(),
        }
    }

    async fn chat(&self, extra: Value) -> (u16, Value) {
        let (status, v, _) = self.chat_from(extra).await;
        (status, v)
    }

    /// Status, body, and the backend that answered (`x-switchboard-backend`).
    async fn chat_from(&self, extra: Value) -> (u16, Value, String) {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": "Write a haiku about autumn."}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .http
            .post(format!("http://{}/v1/chat/completions", self.server.http))
            .json(&body)
            .send()
            .await
            .unwrap();
        let backend = r.headers().get("x-switchboard-backend");
        let backend = backend
            .map(|h| h.to_str().unwrap().to_string())
            .unwrap_or_default();
        (r.status().as_u16(), r.json().await.unwrap(), backend)
    }

    fn upstream_calls(&self) -> usize {
        self.m.counters.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_parameters_are_refused_before_any_upstream_call() {
    let s = Setup::start().await;
    let before = s.upstream_calls();
    let long_stop = "x".repeat(300);
    let cases = [
        (json!({"temperature": 9}), "temperature"),
        (json!({"temperature": -0.5}), "temperature"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": 200_000}), "max_tokens"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"stop": ["ok", long_stop]}), "stop[1]"),
        (json!({"stop": [""]}), "stop[0]"),
        (json!({"model": "small", "max_tokens": 1_999}), "max_tokens"),
        (
            json!({"model": "small", "switchboard": {"required_capabilities": ["vision"]}}),
            "switchboard.required_capabilities[0]",
        ),
    ];
    for (extra, field) in cases {
        let (status, v) = s.chat(extra.clone()).await;
        assert_eq!(status, 400, "{extra}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{extra}: {msg} should name {field}");
    }
    assert_eq!(
        s.upstream_calls(),
        before,
        "a refused request reached an upstream"
    );
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_routes_past_a_window_too_small_for_it() {
    let s = Setup::start().await;
    let allow = json!({"allow_backends": ["small", "big"]});
    let (status, v, backend) = s.chat_from(json!({"switchboard": allow})).await;
    assert_eq!((status, backend.as_str()), (200, "small"), "{v}");
    // The better-ranked backend's 2,000-token window cannot hold 5,000 output tokens.
    let (status, v, backend) = s
        .chat_from(json!({"max_tokens": 5_000, "switchboard": allow}))
        .await;
    assert_eq!((status, backend.as_str()), (200, "big"), "{v}");
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_name_the_backend_but_no_internals() {
    let s = Setup::start().await;
    for (model, how) in [
        ("keyless", "no API key"),
        ("down", "could not connect"),
        ("failing", "HTTP 500"),
    ] {
        let (status, v) = s.chat(json!({"model": model})).await;
        assert_eq!(status, 503, "{model}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(model) && msg.contains(how), "{model}: {msg}");
        for secret in [SECRET_VAR, "127.0.0.1", "http://", "upstream exploded"] {
            assert!(!msg.contains(secret), "{model}: {msg} leaks {secret}");
        }
    }
    // A type error quotes no prompt text (the message is also what the log records).
    let bad = json!({"messages": [{"role": "user", "content": {"text": "my secret diagnosis"}}]});
    let (status, v) = s.chat(bad).await;
    assert_eq!(status, 400, "{v}");
    let bad = json!({"max_tokens": "my secret diagnosis"});
    let (status, v) = s.chat(bad).await;
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("max_tokens") && msg.contains("a string"),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "{msg}");
    s.server.stop().await;
}
