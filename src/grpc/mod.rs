//! The gRPC transport: the Router service (with health and reflection) and the Admin service,
//! each on its own listener. Handlers translate proto messages and call the gateway or the
//! registry; the server is assembled in `server`, which hands over the listeners.
pub mod admin;
pub mod router;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::transport::{ms, TransportConfig};
use crate::gateway::Gateway;
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::router_server::RouterServer;
use admin::AdminService;
use router::RouterService;
use status::IntoStatus;

/// The health reporter of a Router server, set SERVING once the encoder is warm.
#[derive(Clone)]
pub struct Health(tonic_health::server::HealthReporter);

impl Health {
    pub async fn serving(&self) {
        self.0.set_serving::<RouterServer<RouterService>>().await;
    }

    pub async fn not_serving(&self) {
        self.0
            .set_not_serving::<RouterServer<RouterService>>()
            .await;
    }
}

/// A client request carrying `authorization: Bearer <token>` (the CLI, tests, benchmarks).
pub fn with_bearer<T>(
    msg: T,
    token: &str,
) -> Result<tonic::Request<T>, tonic::metadata::errors::InvalidMetadataValue> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

/// Checks the API key (when keys are configured) and attaches the caller to the request.
fn api_key_interceptor(
    gateway: Arc<Gateway>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |mut req: tonic::Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Some(caller) = gateway.authenticate(header).map_err(IntoStatus::status)? {
            req.extensions_mut().insert(caller);
        }
        Ok(req)
    }
}

/// The Router service behind the API-key check, beside health and reflection; health starts
/// NOT_SERVING. `max_message` bounds a decoded request.
pub async fn router(
    gateway: Arc<Gateway>,
    max_message: usize,
    limits: &TransportConfig,
) -> Result<(Health, tonic::transport::server::Router), tonic_reflection::server::Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health(reporter);
    health.not_serving().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = RouterServer::new(RouterService::new(gateway.clone()))
        .max_decoding_message_size(max_message);
    let router = limited(limits)
        .timeout(ms(limits.grpc_default_timeout_ms))
        .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            service,
            api_key_interceptor(gateway),
        ));
    Ok((health, router))
}

/// A server builder with `[transport]`'s per-connection limits: concurrent streams, keepalive
/// pings, and a maximum connection age so that clients rebalance across replicas.
fn limited(t: &TransportConfig) -> Server {
    Server::builder()
        .max_concurrent_streams(t.grpc_max_concurrent_streams)
        .http2_keepalive_interval(Some(ms(t.grpc_keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(ms(t.grpc_keepalive_timeout_ms)))
        .max_connection_age(ms(t.grpc_max_connection_age_ms))
        .max_connection_age_grace(ms(t.grpc_max_connection_age_grace_ms))
}

/// The Admin service behind the admin token, with no default deadline (a retrain runs for
/// minutes). `max_message` bounds a decoded request.
pub fn admin(
    service: AdminService,
    token: &str,
    max_message: usize,
    limits: &TransportConfig,
) -> tonic::transport::server::Router {
    let svc = AdminServer::new(service).max_decoding_message_size(max_message);
    limited(limits)
        .trace_fn(|req| tracing::info_span!("admin", path = %req.uri().path()))
        .add_service(InterceptedService::new(
            svc,
            admin::token_interceptor(token),
        ))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains requests in flight.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Without TCP_NODELAY small responses wait ~40 ms for delayed ACKs.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
