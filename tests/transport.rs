//! Transport limits through a real server on loopback: a client that never finishes its
//! headers, one that trickles its body, more connections than the cap, `/metrics` on an
//! address of its own, and the gRPC deadline applied when a client sends none.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (or 5 s pass): what it sent, and when it closed.
async fn read_to_close(s: &mut TcpStream) -> (String, Instant) {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the server never closed the connection");
    (String::from_utf8_lossy(&buf).into_owned(), Instant::now())
}

fn limited_config() -> switchboard::config::Config {
    let mut c = common::bundled_config();
    c.transport.http_header_read_timeout_ms = 400;
    c.transport.http_body_read_timeout_ms = 400;
    c.transport.http_max_connections = 2;
    c
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_connections_are_capped() {
    let server = TestServer::start(limited_config()).await;
    let start = Instant::now();
    // Two connections take both slots: one sends half a request head, one sends nothing.
    let mut half = TcpStream::connect(server.http).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A third, complete request waits for a slot.
    let mut third = TcpStream::connect(server.http).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (_, half_closed) = read_to_close(&mut half).await;
    let (_, silent_closed) = read_to_close(&mut silent).await;
    let (answer, answered) = read_to_close(&mut third).await;
    let cut = half_closed.min(silent_closed) - start;
    assert!(
        cut >= Duration::from_millis(350) && cut < Duration::from_secs(3),
        "slow connections closed after {cut:?}, expected about 400 ms"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answered >= half_closed.min(silent_closed),
        "the third connection was served while both slots were held"
    );
    // The server still serves normally.
    let r = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_naming_the_limit() {
    let server = TestServer::start(limited_config()).await;
    let mut s = TcpStream::connect(server.http).await.unwrap();
    let head = "POST /v1/route HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\":";
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let (answer, _) = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("http_body_read_timeout_ms"), "{answer}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn metrics_can_live_on_their_own_address() {
    let server = TestServer::start_opts(common::bundled_config(), true).await;
    let apart = server.metrics.expect("metrics address bound");
    let main = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap();
    assert_eq!(
        main.status(),
        404,
        "metrics must leave the client-facing port"
    );
    let r = reqwest::get(format!("http://{apart}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("switchboard_"));
    server.stop().await;
}

#[tokio::test]
async fn grpc_calls_without_a_deadline_get_the_default_one() {
    let mut c = common::bundled_config();
    c.transport.grpc_default_timeout_ms = 1;
    c.server.cache_entries = 0;
    let server = TestServer::start(c).await;
    let mut client = RouterClient::new(server.channel.clone());
    let prompt = "Explain, step by step and with examples, how a B-tree rebalances. ".repeat(20);
    let err = client
        .route_decision(RouteDecisionRequest {
            prompt,
            ..Default::default()
        })
        .await
        .expect_err("a 1 ms default deadline cannot hold an encoder pass");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{err:?}"
    );
    server.stop().await;
}
