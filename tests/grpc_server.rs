//! The real server on a real socket (port 0): health flips to SERVING after warm-up,
//! reflection lists the services, /metrics answers, and shutdown stops the server cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_metrics_and_shutdown() {
    let server = common::TestServer::start(common::bundled_config()).await;
    assert_ne!(server.grpc.port(), 0);

    let mut reflection = ServerReflectionClient::new(server.channel.clone());
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

    // Plain HTTP/1.1 GET over a socket: /metrics is Prometheus text with our prefix.
    let body = http_get(server.http, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("switchboard_encoder_queue_depth"), "{body}");
    assert!(http_get(server.http, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));

    server.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
