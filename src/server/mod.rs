//! The server: builds everything from `Config` once (encoder, live model, records, engine,
//! upstreams, gateway, registry), binds the listeners, starts the transports and owns
//! shutdown. `grpc` and `http` receive their handles from here; neither knows the other.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

mod load;
pub use load::{load_engine, ServeError};

use crate::auth::ApiKeys;
use crate::backends::breaker::BreakerConfig;
use crate::backends::Upstreams;
use crate::config::Config;
use crate::engine::Engine;
use crate::fleet::artifacts::Artifacts;
use crate::fleet::{Store, StoreError};
use crate::gateway::Gateway;
use crate::grpc::admin::AdminService;
use crate::live::fleet::Rollout;
use crate::live::registry::{Registry, RegistryDeps};
use crate::quota::Quotas;
use crate::records::shared::SharedRecords;
use crate::records::FeedbackLog;
use crate::reload::Reloader;
use crate::train::retrain::Retrainer;

/// Settings of `switchboard serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub config: Config,
    /// The Admin service's address and bearer token; served only when both are set.
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<String>,
    /// Serve `/metrics` here instead of on the HTTP address.
    pub metrics_addr: Option<SocketAddr>,
}

/// The Admin side: the registry over the live model, the feedback log and the retrainer.
struct AdminParts {
    listener: TcpListener,
    token: String,
    registry: Arc<Registry>,
    service: AdminService,
}

/// What the Admin service shares with the rest: the quota ledger, the registry, and in a
/// fleet the rollout and the shared records.
struct AdminDeps {
    quotas: Arc<Quotas>,
    registry: Arc<Registry>,
    rollout: Option<Arc<Rollout>>,
    shared: Option<Arc<SharedRecords>>,
    reloader: Arc<Reloader>,
}

fn admin_parts(
    engine: &Arc<Engine>,
    deps: AdminDeps,
    listener: TcpListener,
    token: String,
) -> Result<AdminParts, ServeError> {
    let cfg = engine.config().admin.clone();
    let path = cfg.state_dir.join("feedback.jsonl");
    let feedback = FeedbackLog::open(&path).map_err(|source| ServeError::Records {
        what: "feedback log",
        path,
        source,
    })?;
    let feedback = Arc::new(feedback);
    let AdminDeps {
        quotas,
        registry,
        rollout,
        shared,
        reloader,
    } = deps;
    let retrainer = Arc::new(Retrainer {
        registry: registry.clone(),
        embedder: engine.embedder.clone(),
        feedback: feedback.clone(),
        decisions: engine.decisions.clone(),
        cfg,
        shared: shared.clone(),
        rollout: rollout.clone(),
    });
    let service = AdminService {
        registry: registry.clone(),
        feedback,
        decisions: engine.decisions.clone(),
        retrainer,
        artifact_root: engine.config().admin.artifact_root.clone(),
        retraining: Default::default(),
        quotas,
        savings: match (&shared, &engine.decisions) {
            (Some(s), _) => Some(crate::savings::Source::Fleet(s.clone())),
            (None, Some(log)) => Some(crate::savings::Source::Local(log.clone())),
            (None, None) => None,
        },
        rollout,
        shared,
        reloader,
    };
    Ok(AdminParts {
        listener,
        token,
        registry,
        service,
    })
}

/// A bound, not yet running server; addresses are known (port 0 resolved).
pub struct Bound {
    grpc: TcpListener,
    http: TcpListener,
    metrics: Option<TcpListener>,
    pub engine: Arc<Engine>,
    pub gateway: Arc<Gateway>,
    admin: Option<AdminParts>,
    rollout: Option<Arc<Rollout>>,
    reloader: Arc<Reloader>,
}

impl Bound {
    pub fn grpc_addr(&self) -> Result<SocketAddr, ServeError> {
        local_addr(&self.grpc)
    }

    pub fn http_addr(&self) -> Result<SocketAddr, ServeError> {
        local_addr(&self.http)
    }

    /// `/metrics`' own address, when it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The Admin service's address, when it is served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|a| a.listener.local_addr().ok())
    }
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, ServeError> {
    l.local_addr().map_err(ServeError::LocalAddr)
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Refuses a non-loopback Router or HTTP address with no API keys, unless allowed.
fn check_exposure(cfg: &ServeConfig) -> Result<(), ServeError> {
    let s = &cfg.config.server;
    if s.api_keys_file.is_some() || s.allow_unauthenticated {
        return Ok(());
    }
    match [cfg.grpc_addr, cfg.http_addr]
        .into_iter()
        .find(|a| !a.ip().is_loopback())
    {
        Some(addr) => Err(ServeError::Unauthenticated { addr }),
        None => Ok(()),
    }
}

/// Loads everything and binds every address.
pub async fn bind(cfg: ServeConfig) -> Result<Bound, ServeError> {
    check_exposure(&cfg)?;
    if let Some(t) = cfg.admin_token.as_deref().map(str::trim) {
        if !t.is_empty() && t.len() < crate::grpc::admin::MIN_TOKEN_LEN {
            return Err(ServeError::AdminToken);
        }
    }
    let engine = load_engine(cfg.config).await?;
    let s = &engine.config().server;
    let breaker = BreakerConfig {
        consecutive_failures: s.breaker_failures.max(1),
        cooldown: Duration::from_millis(s.breaker_cooldown_ms),
        ..Default::default()
    };
    let store = Store::start(&engine.config().fleet, engine.metrics.clone())?;
    let upstreams = Upstreams::new(
        &engine.config(),
        breaker,
        engine.metrics.clone(),
        store.clone(),
    )?;
    let keys = match &s.api_keys_file {
        Some(p) => Some(Arc::new(ApiKeys::load(p)?)),
        None => None,
    };
    let quotas = Arc::new(Quotas::new(
        store.clone(),
        &engine.config().fleet,
        engine.metrics.clone(),
    ));
    let reloader = Arc::new(Reloader::new(
        engine.config_handle(),
        engine.live.clone(),
        upstreams.clone(),
        engine.metrics.clone(),
    ));
    let gateway = Arc::new(Gateway::new(
        engine.clone(),
        upstreams,
        keys,
        quotas.clone(),
    ));
    let registry = registry(&engine)?;
    let shared = shared_records(&engine, store.as_ref());
    let rollout = rollout(&engine, store.as_ref(), &registry)?;
    let admin = match (cfg.admin_addr, cfg.admin_token) {
        (Some(addr), Some(token)) if !token.trim().is_empty() => {
            let deps = AdminDeps {
                quotas,
                registry,
                rollout: rollout.clone(),
                shared,
                reloader: reloader.clone(),
            };
            Some(admin_parts(&engine, deps, listen(addr).await?, token)?)
        }
        (Some(addr), _) => {
            tracing::warn!(%addr, env = %engine.config().admin.token_env, "Admin service not served: no admin token is set");
            None
        }
        _ => None,
    };
    Ok(Bound {
        grpc: listen(cfg.grpc_addr).await?,
        http: listen(cfg.http_addr).await?,
        metrics: match cfg.metrics_addr {
            Some(a) => Some(listen(a).await?),
            None => None,
        },
        engine,
        gateway,
        admin,
        rollout,
        reloader,
    })
}

/// In a fleet with an artifact store, the classifier rollout.
fn rollout(
    engine: &Arc<Engine>,
    store: Option<&Store>,
    registry: &Arc<Registry>,
) -> Result<Option<Arc<Rollout>>, ServeError> {
    let (Some(store), Some(url)) = (store, &engine.config().fleet.artifact_url) else {
        return Ok(None);
    };
    let cache = engine.config().admin.state_dir.join("fleet-artifacts");
    let artifacts = Artifacts::open(url, cache)
        .map_err(|e| ServeError::Store(StoreError::Redis(e.to_string())))?;
    let poll = Duration::from_millis(engine.config().fleet.rollout_poll_ms);
    Ok(Some(Rollout::new(
        store.clone(),
        artifacts,
        registry.clone(),
        poll,
    )))
}

/// In a fleet, decision records also go to the shared store and feedback lives there.
fn shared_records(engine: &Engine, store: Option<&Store>) -> Option<Arc<SharedRecords>> {
    let (store, log) = (store?, engine.decisions.as_ref()?);
    let f = &engine.config().fleet;
    let shared = SharedRecords::new(
        store.clone(),
        f.decision_ttl_s,
        f.max_pending_writes,
        engine.metrics.clone(),
    );
    log.share(Box::new(shared.clone()));
    Some(shared)
}

/// The classifier registry over the live model (swaps from the Admin service or the fleet).
fn registry(engine: &Arc<Engine>) -> Result<Arc<Registry>, ServeError> {
    let deps = RegistryDeps {
        live: engine.live.clone(),
        config: engine.config_handle(),
        tokenizer: engine.embedder.tokenizer().clone(),
        metrics: engine.metrics.clone(),
    };
    Ok(Arc::new(Registry::new(
        deps,
        engine.config().admin.clone(),
    )?))
}

/// Serves until `shutdown` resolves. Then readiness and health go NOT_SERVING at once, the
/// listeners stop accepting, and requests in flight get `server.shutdown_grace_ms` to finish;
/// streams still open after that end with an error, and what remains is cancelled.
/// Health reports NOT_SERVING until a warm-up batch has gone through the encoder.
pub async fn run(
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (grpc_addr, http_addr) = (bound.grpc_addr()?, bound.http_addr()?);
    let engine = bound.engine.clone();
    let max = engine.config().server.max_request_bytes();
    let (health, router) =
        crate::grpc::router(bound.gateway.clone(), max, &engine.config().transport).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let synced = bound.rollout.as_ref().map(|r| r.synced());
    let follower = bound.rollout.clone().map(|r| {
        let wait = Duration::from_millis(engine.config().fleet.startup_sync_timeout_ms);
        tokio::spawn(r.follow(wait))
    });
    let watch_ms = engine.config().server.config_watch_ms;
    let catalog_watch = (watch_ms > 0).then(|| {
        let every = Duration::from_millis(watch_ms);
        tokio::spawn(bound.reloader.clone().watch(every))
    });
    let warm = tokio::spawn(warm_up(
        engine.clone(),
        health.clone(),
        ready.clone(),
        synced,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let not_ready = ready.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Load balancers see this before any listener closes.
        not_ready.store(false, Ordering::Release);
        health.not_serving().await;
        let _ = stop_tx.send(true);
    });
    let state = crate::http::HttpState {
        gateway: bound.gateway.clone(),
        ready,
    };
    let limits = engine.config().transport.clone();
    let metrics_apart = bound.metrics.is_some();
    if let Some(l) = bound.metrics {
        let app = crate::http::metrics_router(state.clone());
        let stop = stopped(stop_rx.clone());
        tokio::spawn(crate::http::serve(app, l, limits.clone(), stop));
    }
    let http_app = crate::http::router(state, !metrics_apart);
    let http = tokio::spawn(crate::http::serve(
        http_app,
        bound.http,
        limits,
        stopped(stop_rx.clone()),
    ));
    let (admin, watcher) = match bound.admin {
        Some(a) => spawn_admin(a, &engine, stop_rx.clone()),
        None => (None, None),
    };
    tracing::info!(%grpc_addr, %http_addr, "listening (gRPC, HTTP)");
    let grpc = tokio::spawn(crate::grpc::serve(
        router,
        bound.grpc,
        stopped(stop_rx.clone()),
    ));
    let transports = Transports { grpc, http, admin };
    let result = transports.drain(stop_rx, &bound.gateway, &engine).await;
    warm.abort();
    if let Some(f) = follower {
        f.abort();
    }
    for w in [watcher, catalog_watch].into_iter().flatten() {
        w.abort();
    }
    tracing::info!("server stopped");
    result
}

/// The running servers' tasks.
struct Transports {
    grpc: Task<Result<(), tonic::transport::Error>>,
    http: Task<std::io::Result<()>>,
    admin: Option<Task<Result<(), tonic::transport::Error>>>,
}

/// How long streams get to end after the gateway tells them the server is closing.
const CLOSE_STREAMS_GRACE: Duration = Duration::from_secs(2);

impl Transports {
    /// Waits for the transports to end; once shutdown is asked for, at most the grace period,
    /// then the gateway ends open streams, and whatever is still running is cancelled.
    async fn drain(
        mut self,
        stop: StopRx,
        gateway: &Gateway,
        engine: &Engine,
    ) -> Result<(), ServeError> {
        let grace = Duration::from_millis(engine.config().server.shutdown_grace_ms);
        tokio::select! {
            r = &mut self.grpc => return self.finish(Some(r)).await,
            _ = stopped(stop) => {}
        }
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutdown requested; draining in-flight requests"
        );
        if let Ok(r) = tokio::time::timeout(grace, &mut self.grpc).await {
            return self.finish(Some(r)).await;
        }
        tracing::warn!("shutdown grace passed; ending the streams still open");
        gateway.close_streams();
        match tokio::time::timeout(CLOSE_STREAMS_GRACE, &mut self.grpc).await {
            Ok(r) => self.finish(Some(r)).await,
            Err(_) => {
                self.grpc.abort();
                self.finish(None).await
            }
        }
    }

    /// Collects the results once the gRPC server is done (or was cancelled: `None`).
    async fn finish(
        self,
        grpc: Option<Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>>,
    ) -> Result<(), ServeError> {
        let http = match tokio::time::timeout(CLOSE_STREAMS_GRACE, self.http).await {
            Ok(Ok(r)) => r.map_err(ServeError::Http),
            _ => Ok(()),
        };
        if let Some(a) = self.admin {
            let _ = tokio::time::timeout(CLOSE_STREAMS_GRACE, a).await;
        }
        if let Some(Ok(r)) = grpc {
            r?;
        }
        http
    }
}

type StopRx = tokio::sync::watch::Receiver<bool>;
type Task<T> = tokio::task::JoinHandle<T>;

/// Resolves once shutdown has been asked for.
async fn stopped(mut rx: StopRx) {
    let _ = rx.wait_for(|v| *v).await;
}

/// The Admin server's task and the directory watch's, when configured.
type AdminTasks = (
    Option<Task<Result<(), tonic::transport::Error>>>,
    Option<Task<()>>,
);

/// The Admin service on its own listener, and the directory watch when configured.
fn spawn_admin(a: AdminParts, engine: &Engine, stop: StopRx) -> AdminTasks {
    let cfg = &engine.config().admin;
    let watcher = cfg.watch_dir.clone().map(|dir| {
        let every = Duration::from_millis(cfg.watch_interval_ms.max(10));
        tokio::spawn(crate::live::watch::run(a.registry.clone(), dir, every))
    });
    // Room above the inline limit, so an oversized upload gets our message naming the limit.
    let max = cfg.max_inline_bytes * 2 + (1 << 20);
    let router = crate::grpc::admin(a.service, &a.token, max, &engine.config().transport);
    let server = tokio::spawn(crate::grpc::serve(router, a.listener, stopped(stop)));
    (Some(server), watcher)
}

/// Health turns SERVING once a warm-up batch went through the encoder and, in a fleet with
/// a classifier rollout, once this replica runs the fleet's active generation.
async fn warm_up(
    engine: Arc<Engine>,
    health: crate::grpc::Health,
    ready: Arc<AtomicBool>,
    synced: Option<tokio::sync::watch::Receiver<bool>>,
) {
    if let Some(mut s) = synced {
        let _ = s.wait_for(|v| *v).await;
    }
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
            health.serving().await;
            tracing::info!("warm-up done; health is SERVING");
        }
        Err(e) => {
            tracing::error!(error = %e, "warm-up failed; health stays NOT_SERVING");
            return;
        }
    }
    // An encoder whose worker could not be restarted serves nobody: say so to the balancer.
    let mut every = tokio::time::interval(Duration::from_millis(250));
    while engine.embedder.is_healthy() {
        every.tick().await;
    }
    ready.store(false, Ordering::Release);
    health.not_serving().await;
    tracing::error!("the encoder is unavailable; health is NOT_SERVING");
}
