//! SIGTERM during load: the real binary stops accepting, finishes in-flight requests, exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let (mut child, addrs) = common::spawn_serve(&std::env::temp_dir(), &[]);
    let addr = &addrs["grpc"];
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let mut set = tokio::task::JoinSet::new();
    for i in 0..32 {
        let mut c = RouterClient::new(channel.clone());
        let text = format!(
            "request {i}: {}",
            "please explain how the scheduler balances tenants under load ".repeat(4)
        );
        set.spawn(async move {
            c.route_decision(RouteDecisionRequest {
                prompt: text,
                ..Default::default()
            })
            .await
        });
    }
    // Once one answer is back every request has been sent; now ask the server to stop.
    let first = set.join_next().await.unwrap().unwrap();
    assert!(first.is_ok(), "{first:?}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut ok = 1;
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert!(r.is_ok(), "in-flight request failed during shutdown: {r:?}");
        ok += 1;
    }
    assert_eq!(ok, 32);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
