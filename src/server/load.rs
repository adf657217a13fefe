//! Loading what the server is built on: the encoder and the classifier (validated against the
//! catalog), and the decision log; and the errors of starting or running the server.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::classify::{Classifier, ClassifyError};
use crate::config::{Config, ConfigError};
use crate::embed::{EmbedError, Embedder};
use crate::engine::{Engine, EngineParts};
use crate::fleet::StoreError;
use crate::live::gate::GateError;
use crate::live::{Live, LiveModel};
use crate::metrics::Metrics;
use crate::records::{DecisionLog, DecisionLogConfig};

/// Errors while starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("admin.gate_set: {0}")]
    Gate(#[from] GateError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("refusing to serve {addr} without client API keys: anyone who reaches it could spend the provider keys; set server.api_keys_file, or server.allow_unauthenticated = true (--allow-unauthenticated) if something in front authenticates")]
    Unauthenticated { addr: SocketAddr },
    #[error("the admin token is shorter than {} characters: make a longer one (e.g. openssl rand -hex 16)", crate::grpc::admin::MIN_TOKEN_LEN)]
    AdminToken,
    #[error("the bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("admin.state_dir: {what} {}: {source}", path.display())]
    Records {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Assets(#[from] crate::assets::AssetError),
    #[error("fleet: {0}")]
    Store(#[from] StoreError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP client for the backends: {0}")]
    Upstreams(#[from] reqwest::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("loading the encoder: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP transport: {0}")]
    Http(std::io::Error),
}

/// Loads the encoder and the classifier, validates the config against its labels, and opens
/// the decision log (when on): the engine every transport routes through.
pub async fn load_engine(config: Config) -> Result<Arc<Engine>, ServeError> {
    let mut enc = config.encoder.clone();
    let dir = config.server.classifier_dir.clone();
    crate::assets::check_default(&dir, crate::assets::CLASSIFIER)?;
    crate::assets::check_default(&enc.model_dir, crate::assets::ENCODER)?;
    if let Some(own) = crate::classify::own_encoder(&dir) {
        tracing::info!(encoder = %own.display(), "the classifier folder carries its own encoder");
        enc.model_dir = own;
    }
    let embedder = tokio::task::spawn_blocking(move || Embedder::start(&enc)).await??;
    let classifier = Classifier::load(&dir, &embedder.info())?;
    config.validate(
        &classifier.meta.intent_labels,
        &classifier.meta.domain_labels,
    )?;
    let live = LiveModel::new(
        Arc::new(classifier),
        embedder.model(),
        dir.display().to_string(),
    );
    let decisions = open_decision_log(&config)?;
    Ok(Arc::new(Engine::new(EngineParts {
        embedder,
        live: Arc::new(Live::new(live)),
        config: Arc::new(config),
        metrics: Arc::new(Metrics::new()?),
        decisions,
    })))
}

fn open_decision_log(config: &Config) -> Result<Option<Arc<DecisionLog>>, ServeError> {
    let a = &config.admin;
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
    .map_err(|source| ServeError::Records {
        what: "decision log",
        path: dir,
        source,
    })?;
    Ok(Some(Arc::new(log)))
}
