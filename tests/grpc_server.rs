//! The real server on a real socket (port 0): health flips to SERVING after warm-up,
//! reflection lists the services, and shutdown stops the server cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use switchboard::grpc::{self, ServeConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_shutdown() {
    let cfg = ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        encoder: common::encoder_config(),
    };
    let bound = grpc::bind(&cfg).await.unwrap();
    let addr = bound.local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::run(bound, async {
        let _ = stop_rx.await;
    }));
    let url = format!("http://{addr}");
    let channel = loop {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Readiness probe: poll until SERVING, bounded.
    let mut health = HealthClient::new(channel.clone());
    let req = || HealthCheckRequest {
        service: "switchboard.v1.Router".into(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = health.check(req()).await.unwrap().into_inner().status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        assert_eq!(status, ServingStatus::NotServing as i32);
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let outbound = tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut inbound = reflection
        .server_reflection_info(outbound)
        .await
        .unwrap()
        .into_inner();
    let resp = inbound.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"switchboard.v1.Router".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops");
    result.unwrap().unwrap();
}
