//! The server: wiring of the gRPC services, health, reflection, the HTTP side and graceful
//! shutdown. Service logic lives in the submodules and in `engine`.
mod router;

pub use router::{to_response, to_route_request};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::admin::logs::{DecisionLog, DecisionLogConfig, FeedbackLog};
use crate::admin::registry::Registry;
use crate::admin::{AdminService, AdminState};
use crate::backends::breaker::BreakerConfig;
use crate::backends::Fleet;
use crate::classify::{Classifier, ClassifyError};
use crate::config::{Config, ConfigError};
use crate::embed::{EmbedError, Embedder};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::proto::v1::router_server::RouterServer;
use crate::proxy::Proxy;
use std::time::Duration;

/// Settings of `switchboard serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub config: Config,
    /// The Admin service's address and bearer token; served only when both are set.
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<String>,
}

/// Errors while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Loads the encoder and the classifier and validates the config against its labels.
pub async fn load_engine(config: Config) -> Result<Arc<Engine>, ServeError> {
    let mut enc = config.encoder.clone();
    if let Some(dir) = crate::classify::own_encoder(&config.server.classifier_dir) {
        tracing::info!(encoder = %dir.display(), "the classifier folder carries its own encoder");
        enc.model_dir = dir;
    }
    let embedder = tokio::task::spawn_blocking(move || Embedder::start(&enc))
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))??;
    let classifier = Classifier::load(&config.server.classifier_dir, &embedder.info())?;
    config.validate(
        &classifier.meta.intent_labels,
        &classifier.meta.domain_labels,
    )?;
    let metrics = Arc::new(Metrics::new().map_err(|e| ServeError::Setup(e.to_string()))?);
    Ok(Arc::new(Engine::new(
        embedder,
        classifier,
        Arc::new(config),
        metrics,
    )))
}

/// A bound, not yet running server; addresses are known (port 0 resolved).
pub struct Bound {
    grpc: TcpListener,
    http: TcpListener,
    pub engine: Arc<Engine>,
    pub proxy: Arc<Proxy>,
    keys: Option<Arc<crate::auth::ApiKeys>>,
    admin: Option<(TcpListener, Arc<AdminState>, String)>,
}

impl Bound {
    pub fn grpc_addr(&self) -> Result<SocketAddr, ServeError> {
        self.grpc
            .local_addr()
            .map_err(|e| ServeError::Setup(e.to_string()))
    }
    /// The Admin service's address, when it is served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(l, _, _)| l.local_addr().ok())
    }
    pub fn http_addr(&self) -> Result<SocketAddr, ServeError> {
        self.http
            .local_addr()
            .map_err(|e| ServeError::Setup(e.to_string()))
    }
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Loads everything and binds both addresses.
pub async fn bind(cfg: ServeConfig) -> Result<Bound, ServeError> {
    let engine = load_engine(cfg.config).await?;
    let s = &engine.config.server;
    let breaker = BreakerConfig {
        consecutive_failures: s.breaker_failures.max(1),
        cooldown: Duration::from_millis(s.breaker_cooldown_ms),
        ..Default::default()
    };
    let fleet = Fleet::new(&engine.config, breaker, engine.metrics.clone())
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let proxy = Arc::new(Proxy {
        engine: engine.clone(),
        fleet: Arc::new(fleet),
        max_attempts: s.max_attempts.max(1),
    });
    let keys = match &engine.config.server.api_keys_file {
        Some(p) => Some(Arc::new(crate::auth::ApiKeys::load(p)?)),
        None => None,
    };
    let decisions = open_decision_log(&engine)?;
    let admin = match (cfg.admin_addr, cfg.admin_token) {
        (Some(addr), Some(token)) if !token.is_empty() => {
            let state = admin_state(&engine, decisions)?;
            Some((listen(addr).await?, Arc::new(state), token))
        }
        (Some(addr), _) => {
            tracing::warn!(%addr, env = %engine.config.admin.token_env, "Admin service not served: no admin token is set");
            None
        }
        _ => None,
    };
    Ok(Bound {
        grpc: listen(cfg.grpc_addr).await?,
        http: listen(cfg.http_addr).await?,
        engine,
        proxy,
        keys,
        admin,
    })
}

fn open_decision_log(engine: &Arc<Engine>) -> Result<Option<Arc<DecisionLog>>, ServeError> {
    let a = &engine.config.admin;
    if !a.decision_log {
        return Ok(None);
    }
    let dir = a.state_dir.join("decisions");
    let log = DecisionLog::open(DecisionLogConfig {
        dir: dir.clone(),
        file_bytes: a.decision_file_bytes,
        files: a.decision_files,
        log_prompts: a.log_prompts,
    })
    .map_err(|e| {
        ServeError::Setup(format!(
            "admin.state_dir: decision log {}: {e}",
            dir.display()
        ))
    })?;
    let log = Arc::new(log);
    let _ = engine.decision_log.set(log.clone());
    Ok(Some(log))
}

fn admin_state(
    engine: &Arc<Engine>,
    decisions: Option<Arc<DecisionLog>>,
) -> Result<AdminState, ServeError> {
    let cfg = engine.config.admin.clone();
    let registry = Registry::new(
        engine.clone(),
        cfg.clone(),
        &engine.config.server.classifier_dir,
    )
    .map_err(|e| ServeError::Setup(format!("admin.gate_set: {e}")))?;
    let path = cfg.state_dir.join("feedback.jsonl");
    let feedback = FeedbackLog::open(&path).map_err(|e| {
        ServeError::Setup(format!(
            "admin.state_dir: feedback log {}: {e}",
            path.display()
        ))
    })?;
    Ok(AdminState {
        registry,
        feedback,
        decisions,
        cfg,
    })
}

/// Serves until `shutdown` resolves, then stops accepting and drains in-flight requests.
/// Health reports NOT_SERVING until a warm-up batch has gone through the encoder.
pub async fn run(
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (grpc_addr, http_addr) = (bound.grpc_addr()?, bound.http_addr()?);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<RouterServer<router::RouterService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let engine = bound.engine.clone();
    let ready = Arc::new(AtomicBool::new(false));
    let warm = tokio::spawn(warm_up(engine.clone(), health, ready.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let http_app = crate::http::router(crate::http::HttpState {
        proxy: bound.proxy.clone(),
        ready,
        keys: bound.keys.clone(),
    });
    let http = axum::serve(bound.http.tap_io(crate::http::nodelay), http_app)
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let http = tokio::spawn(async move { http.await });
    let watcher = bound.admin.as_ref().and_then(|(_, state, _)| {
        let dir = state.cfg.watch_dir.clone()?;
        let every = Duration::from_millis(state.cfg.watch_interval_ms.max(10));
        Some(tokio::spawn(crate::admin::watch::run(
            state.clone(),
            dir,
            every,
        )))
    });
    let admin = bound
        .admin
        .map(|(listener, state, token)| spawn_admin(listener, state, &token, stop_rx.clone()));
    tracing::info!(%grpc_addr, %http_addr, "listening (gRPC, HTTP)");
    let max = engine.config.server.max_prompt_bytes * 2 + 64 * 1024;
    let result = Server::builder()
        .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            RouterServer::new(router::RouterService::new(bound.proxy))
                .max_decoding_message_size(max),
            crate::auth::interceptor(bound.keys),
        ))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY small responses wait ~40 ms for delayed ACKs.
            tonic::transport::server::TcpIncoming::from(bound.grpc).with_nodelay(Some(true)),
            stopped(stop_rx),
        )
        .await;
    warm.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    let _ = http.await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    tracing::info!("server stopped");
    Ok(result?)
}

type StopRx = tokio::sync::watch::Receiver<bool>;

/// Resolves once shutdown has been asked for.
async fn stopped(mut rx: StopRx) {
    let _ = rx.wait_for(|v| *v).await;
}

/// The Admin service on its own listener, behind the admin token.
fn spawn_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    token: &str,
    stop: StopRx,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    // Room above the inline limit, so an oversized upload gets our message naming the limit.
    let max = state.cfg.max_inline_bytes * 2 + (1 << 20);
    let svc = crate::proto::v1::admin_server::AdminServer::new(AdminService { state })
        .max_decoding_message_size(max);
    let server = Server::builder()
        .trace_fn(|req| tracing::info_span!("admin", path = %req.uri().path()))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            svc,
            crate::admin::token_interceptor(token),
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop),
        );
    tokio::spawn(server)
}

async fn warm_up(
    engine: Arc<Engine>,
    health: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
) {
    let probe: Vec<String> = [
        "warm-up probe",
        "a second, somewhat longer warm-up probe sentence for the encoder",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match engine.embedder.embed_many(&probe).await {
        Ok(_) => {
            ready.store(true, Ordering::Release);
            health
                .set_serving::<RouterServer<router::RouterService>>()
                .await;
            tracing::info!("warm-up done; health is SERVING");
        }
        Err(e) => tracing::error!(error = %e, "warm-up failed; health stays NOT_SERVING"),
    }
}
