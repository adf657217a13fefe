//! Encoder worker supervision through a real server: a worker that panics is restarted and
//! only its batch's callers see an error (at once, not a hang); one that keeps panicking is
//! given up on, and readiness, gRPC health and metrics say so. Also: decision-log drops are
//! exported.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::TestServer;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn ask(i: usize) -> RouteDecisionRequest {
    RouteDecisionRequest {
        prompt: format!("Write a Python function number {i} that reverses a linked list."),
        ..Default::default()
    }
}

async fn metrics(server: &TestServer) -> String {
    let r = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap();
    r.text().await.unwrap()
}

async fn health(server: &TestServer) -> i32 {
    let mut h = HealthClient::new(server.channel.clone());
    let req = HealthCheckRequest {
        service: "switchboard.v1.Router".into(),
    };
    h.check(req).await.unwrap().into_inner().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_is_restarted_and_its_callers_get_an_error_at_once() {
    let mut cfg = common::bundled_config();
    cfg.server.cache_entries = 0;
    let server = TestServer::start(cfg).await;
    let mut c = RouterClient::new(server.channel.clone());
    let embedder = &server.engine.embedder;
    embedder.inject_worker_panics(1);
    let t0 = Instant::now();
    let err = c
        .route_decision(ask(0))
        .await
        .expect_err("its batch panicked");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("encoder worker failed"), "{err:?}");
    // The next request is served by the restarted worker.
    let ok = c
        .route_decision(ask(1))
        .await
        .expect("restarted worker serves");
    assert!(!ok.into_inner().backends.is_empty());
    assert_eq!(embedder.restarts(), 1);
    assert!(embedder.is_healthy());
    let m = metrics(&server).await;
    assert!(
        m.contains("switchboard_encoder_worker_restarts_total 1"),
        "{m}"
    );
    assert!(m.contains("switchboard_encoder_available 1"), "{m}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_keeps_panicking_turns_readiness_off() {
    let mut cfg = common::bundled_config();
    cfg.server.cache_entries = 0;
    let server = TestServer::start(cfg).await;
    let mut c = RouterClient::new(server.channel.clone());
    server.engine.embedder.inject_worker_panics(usize::MAX);
    let mut i = 0;
    while server.engine.embedder.is_healthy() {
        i += 1;
        assert!(i < 20, "the encoder was never given up on");
        let err = c
            .route_decision(ask(i))
            .await
            .expect_err("every batch panics");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }
    // Now refused at once, without queueing.
    let t0 = Instant::now();
    let err = c
        .route_decision(ask(99))
        .await
        .expect_err("encoder given up on");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(err.message().contains("unavailable"), "{err:?}");
    let r = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(&server).await != ServingStatus::NotServing as i32 {
        assert!(Instant::now() < deadline, "gRPC health still SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = metrics(&server).await;
    assert!(m.contains("switchboard_encoder_available 0"), "{m}");
    server.stop().await;
}

#[tokio::test]
async fn decision_log_drops_are_exported() {
    let mut cfg = common::bundled_config();
    cfg.admin.decision_log = true;
    let server = TestServer::start(cfg).await;
    let log = server.engine.decisions.clone().expect("decision log on");
    log.dropped.fetch_add(3, Ordering::Relaxed);
    let m = metrics(&server).await;
    assert!(
        m.contains("switchboard_decision_log_dropped_total 3"),
        "{m}"
    );
    server.stop().await;
}
