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
    sigterm(&child);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_stalled_stream_after_the_grace_and_exits_zero() {
    // A stream whose upstream went quiet must not keep the process alive past its grace: it
    // ends with UNAVAILABLE saying the server is shutting down, and the process exits 0.
    use switchboard::proto::v1::complete_event::Event;
    use switchboard::proto::v1::CompleteRequest;
    let mock = switchboard_mock::Mock::start().await.unwrap();
    let dir = common::scratch_dir("grace");
    let config = stalled_catalog(&dir, &mock.base_url());
    let env = [
        ("SWITCHBOARD_CONFIG", config.to_str().unwrap()),
        ("SWITCHBOARD_ADMIN_TOKEN", ""),
    ];
    let (mut child, addrs) = common::spawn_serve(&dir, &env);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs["grpc"]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    common::wait_serving(channel.clone()).await;
    let mut c = RouterClient::new(channel);
    let req = CompleteRequest {
        route: Some(RouteDecisionRequest {
            prompt: "hello".into(),
            ..Default::default()
        }),
        pinned_backend: "stall".into(),
        ..Default::default()
    };
    let mut stream = c.complete(req).await.unwrap().into_inner();
    // Read up to the first delta: the upstream is now stalled.
    loop {
        let e = stream
            .message()
            .await
            .unwrap()
            .expect("a delta before the stall");
        if matches!(e.event, Some(Event::Delta(_))) {
            break;
        }
    }
    let t = std::time::Instant::now();
    sigterm(&child);
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("the stalled stream ends after the grace");
    let e = end.expect_err("it ends with an error, not OK");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("shutting down"), "{}", e.message());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn an_open_address_without_api_keys_is_refused_at_start() {
    // Binding beyond loopback with no client keys would let anyone spend the provider keys:
    // the process refuses before it listens, and says how to allow it.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "serve",
            "--grpc-addr",
            "0.0.0.0:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env_remove("SWITCHBOARD_ALLOW_UNAUTHENTICATED")
        .env("SWITCHBOARD_ADMIN_TOKEN", "")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0") && err.contains("server.allow_unauthenticated"),
        "{err}"
    );
}

/// A catalog with one backend whose upstream stalls after its first delta, and a 500 ms
/// shutdown grace; returns the file's path.
fn stalled_catalog(dir: &std::path::Path, base_url: &str) -> std::path::PathBuf {
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            r#"default_policy = "p"

[server]
shutdown_grace_ms = 500

[[backends]]
name = "stall"
provider = "openai_compatible"
base_url = "{}"
model = "mock-stall"
input_price_per_mtok = 1.0
output_price_per_mtok = 1.0
context_window = 100000
latency_ms = 100
quality = {{ default = 0.5 }}

[policies.p]
default_backend = "stall"
"#,
            base_url
        ),
    )
    .unwrap();
    config
}

/// Sends SIGTERM to the server process.
fn sigterm(child: &std::process::Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}
