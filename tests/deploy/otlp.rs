//! The real OTLP/HTTP exporter: a `serve` process with OTEL_EXPORTER_OTLP_ENDPOINT set sends
//! its spans, as protobuf, to a collector stand-in on loopback, at the latest when it shuts
//! down on SIGTERM.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;

use crate::common::{scratch_dir, spawn_serve, wait_serving};

type Posts = Arc<Mutex<Vec<(String, Bytes)>>>;

/// Accepts POST /v1/traces and keeps each body with its content type.
async fn collector() -> (String, Posts) {
    let posts: Posts = Arc::default();
    let kept = posts.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |h: HeaderMap, body: Bytes| {
            let kept = kept.clone();
            async move {
                let ct = h
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                kept.lock().unwrap().push((ct, body));
                ""
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, posts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() {
    let (url, posts) = collector().await;
    let scratch = scratch_dir("otlp");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_SERVICE_NAME", "switchboard-otlp-test"),
    ];
    let (mut child, addrs) = spawn_serve(&scratch, &env);
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", addrs["grpc"]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    wait_serving(ch.clone()).await;
    RouterClient::new(ch)
        .route_decision(RouteDecisionRequest {
            prompt: "Explain OTLP in one line".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let posts = posts.lock().unwrap();
    assert!(!posts.is_empty(), "no spans were exported");
    let all: Vec<u8> = posts.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(
        posts.iter().all(|(ct, _)| ct == "application/x-protobuf"),
        "{posts:?}"
    );
    let has = |s: &str| all.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(
        has("switchboard-otlp-test"),
        "the service name is in the resource"
    );
    for name in ["route_decision", "route", "embed", "classify", "rank"] {
        assert!(has(name), "no {name} span exported");
    }
}
