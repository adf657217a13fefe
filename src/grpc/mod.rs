//! The gRPC server: wiring of services, health, reflection and graceful shutdown.
//! Service logic lives in the submodules; this file only assembles and runs them.
mod router;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::embed::{EmbedError, Embedder, EncoderConfig};
use crate::proto::v1::router_server::RouterServer;

/// Settings of `switchboard serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub encoder: EncoderConfig,
}

/// Errors while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound, not yet running server; `local_addr` is known (port 0 resolved).
pub struct Bound {
    listener: TcpListener,
    embedder: Embedder,
}

impl Bound {
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })
    }
}

/// Loads the encoder and binds the gRPC address.
pub async fn bind(cfg: &ServeConfig) -> Result<Bound, ServeError> {
    let enc = cfg.encoder.clone();
    let embedder = tokio::task::spawn_blocking(move || Embedder::start(&enc))
        .await
        .map_err(|e| EmbedError::Load(e.to_string()))??;
    let listener = TcpListener::bind(cfg.grpc_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.grpc_addr,
            source,
        })?;
    Ok(Bound { listener, embedder })
}

/// Serves until `shutdown` resolves, then stops accepting and drains in-flight requests.
/// Health reports NOT_SERVING until a warm-up batch has gone through the encoder.
pub async fn run(
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = bound.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<RouterServer<router::RouterService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let router = router::RouterService::new(bound.embedder.clone());
    let embedder = bound.embedder.clone();
    let warm = tokio::spawn(async move {
        let probe: Vec<String> = [
            "warm-up probe",
            "a second, somewhat longer warm-up probe sentence",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match embedder.embed_many(&probe).await {
            Ok(_) => {
                health
                    .set_serving::<RouterServer<router::RouterService>>()
                    .await;
                tracing::info!("warm-up done; health is SERVING");
            }
            Err(e) => tracing::error!(error = %e, "warm-up failed; health stays NOT_SERVING"),
        }
    });
    tracing::info!(%addr, "gRPC listening");
    let result = Server::builder()
        .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(RouterServer::new(router))
        .serve_with_incoming_shutdown(TcpListenerStream::new(bound.listener), shutdown)
        .await;
    warm.abort();
    tracing::info!("gRPC server stopped");
    Ok(result?)
}
