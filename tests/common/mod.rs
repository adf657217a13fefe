//! Helpers shared by the integration tests: the bundled encoder with test-sized settings.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use std::collections::BTreeMap;

use switchboard::config::{Backend, Config};
use switchboard::embed::{Embedder, EncoderConfig};

pub fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "bundled encoder missing at {}: the tests need models/ from the repository",
        dir.display()
    );
    dir
}

pub fn encoder_config() -> EncoderConfig {
    EncoderConfig {
        model_dir: model_dir(),
        ..EncoderConfig::default()
    }
}

pub fn embedder(cfg: &EncoderConfig) -> Embedder {
    Embedder::start(cfg).expect("bundled encoder loads")
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A real server on 127.0.0.1 port 0 (gRPC and HTTP), ready (health SERVING) when returned.
pub struct TestServer {
    pub grpc: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    pub channel: tonic::transport::Channel,
    /// The Admin service (token `ADMIN_TOKEN`).
    pub admin: std::net::SocketAddr,
    /// `/metrics`' own address, when started with one.
    pub metrics: Option<std::net::SocketAddr>,
    pub engine: std::sync::Arc<switchboard::engine::Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<Result<(), switchboard::server::ServeError>>>,
}

impl TestServer {
    pub async fn start(config: switchboard::config::Config) -> Self {
        Self::start_opts(config, false).await
    }

    /// `metrics_apart`: serve `/metrics` on an address of its own.
    pub async fn start_opts(config: switchboard::config::Config, metrics_apart: bool) -> Self {
        use switchboard::server::{self as grpc, ServeConfig};
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bound = grpc::bind(ServeConfig {
            grpc_addr: any,
            http_addr: any,
            config,
            admin_addr: Some(any),
            admin_token: Some(ADMIN_TOKEN.into()),
            metrics_addr: metrics_apart.then_some(any),
        })
        .await
        .expect("server binds");
        let metrics = bound.metrics_addr();
        let admin = bound.admin_addr().expect("admin service bound");
        let (grpc_addr, http) = (bound.grpc_addr().unwrap(), bound.http_addr().unwrap());
        let engine = bound.engine.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(grpc::run(bound, async {
            let _ = rx.await;
        }));
        let url = format!("http://{grpc_addr}");
        let channel = loop {
            if let Ok(c) = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                break c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        wait_serving(channel.clone()).await;
        Self {
            grpc: grpc_addr,
            http,
            channel,
            admin,
            metrics,
            engine,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// The server's Prometheus text.
    pub fn engine_metrics(&self) -> String {
        self.engine.metrics.render()
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(std::time::Duration::from_secs(20), h)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
        let state = self.engine.config().admin.state_dir.clone();
        let ours = state.starts_with(env!("CARGO_TARGET_TMPDIR"))
            && state
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("switchboard-state-"));
        if ours {
            std::fs::remove_dir_all(state).unwrap();
        }
    }
}

/// Polls gRPC health until SERVING (bounded).
pub async fn wait_serving(channel: tonic::transport::Channel) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let req = HealthCheckRequest {
            service: "switchboard.v1.Router".into(),
        };
        let status = health.check(req).await.unwrap().into_inner().status;
        if status == ServingStatus::Serving as i32 {
            return;
        }
        assert_eq!(status, ServingStatus::NotServing as i32);
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became SERVING"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const STATE_TAG: &str = "state";

/// The admin token of every `TestServer`.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A fresh, empty directory under cargo's per-target temp dir (`target/tmp`, never the system
/// one, so nothing outlives a clean clone), removed when the guard drops.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// The directory, left in place (under target/tmp) for the rest of the test binary.
    pub fn keep(self) -> PathBuf {
        self.0.keep()
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        self.0.path()
    }
}

fn new_tempdir(tag: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    tempfile::Builder::new()
        .prefix(&format!("switchboard-{tag}-"))
        .tempdir_in(root)
        .unwrap()
}

pub fn scratch_dir(tag: &str) -> Scratch {
    Scratch(new_tempdir(tag))
}

/// The bundled config with the test encoder settings and a fresh state directory.
pub fn bundled_config() -> switchboard::config::Config {
    let mut c = switchboard::config::Config::read(None).expect("bundled config parses");
    c.encoder = encoder_config();
    // Kept past this call (the config outlives any guard); `TestServer::stop` removes it.
    c.admin.state_dir = new_tempdir(STATE_TAG).keep();
    c
}

/// A backend served by the in-tree mock (`model` picks the mock's behaviour).
pub fn mock_backend(name: &str, model: &str, base_url: &str, quality: f64) -> Backend {
    let mut q = BTreeMap::new();
    q.insert("default".to_string(), quality);
    Backend {
        name: name.into(),
        provider: "openai_compatible".into(),
        base_url: base_url.into(),
        api_key_env: None,
        model: model.into(),
        input_price_per_mtok: 1.0,
        output_price_per_mtok: 4.0,
        context_window: 100_000,
        capabilities: vec!["streaming".into()],
        quality: q,
        domain_quality: BTreeMap::new(),
        languages: Vec::new(),
        latency_ms: 100.0,
        max_concurrency: 1000,
        tags: vec![],
        first_token_timeout_ms: 2_000,
        idle_timeout_ms: 30_000,
        total_timeout_ms: 600_000,
        connect_timeout_ms: 5_000,
    }
}

/// The bundled config with `backends` as the catalog, no rules or variants, the first
/// backend as every policy's default, and a breaker that never opens.
pub fn catalog(backends: Vec<Backend>) -> Config {
    let mut c = bundled_config();
    let first = backends[0].name.clone();
    c.backends = backends;
    for p in c.policies.values_mut() {
        p.default_backend = first.clone();
        p.rules.clear();
        p.variants.clear();
    }
    c.server.breaker_failures = 1000;
    c
}

/// Runs the real `switchboard serve` binary in `dir` on free ports with `env` added; returns
/// the child and the addresses its `switchboard bound` log line names (grpc, http, admin).
pub fn spawn_serve(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    std::collections::HashMap<String, String>,
) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"));
    spawn_serve_bin(bin, dir, &[], env)
}

/// `spawn_serve` with another copy of the binary and extra arguments.
pub fn spawn_serve_bin(
    bin: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    std::collections::HashMap<String, String>,
) {
    let any = "127.0.0.1:0";
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "serve",
        "--grpc-addr",
        any,
        "--http-addr",
        any,
        "--admin-addr",
        any,
    ])
    .args(args)
    .env("RUST_LOG", "info")
    .current_dir(dir)
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let addrs = bound_addrs(&mut child);
    (child, addrs)
}

/// The addresses (grpc, http, admin) a starting `switchboard serve` names in its
/// `switchboard bound` log line, read from its piped stderr (bounded: 60 s).
/// SWITCHBOARD_TEST_LOGS=DIR keeps each process's log there, for debugging a failure.
pub fn bound_addrs(child: &mut std::process::Child) -> std::collections::HashMap<String, String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut keep = std::env::var_os("SWITCHBOARD_TEST_LOGS").map(|d| {
        let p = std::path::Path::new(&d).join(format!("serve-{}.log", child.id()));
        std::fs::File::create(p).unwrap()
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            if !line.contains("switchboard bound") {
                continue;
            }
            let addrs = ["grpc", "http", "admin"]
                .iter()
                .filter_map(|k| {
                    let v = line
                        .split(&format!("{k}="))
                        .nth(1)?
                        .split_whitespace()
                        .next()?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect();
            let _ = tx.send(addrs);
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("server logs its addresses")
}

/// A file under tests/fixtures (missing → the test fails here, loudly).
pub fn fixture(name: &str) -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p
}

/// Training settings for the small real slice (`tests/fixtures/train_slice.jsonl`).
pub fn slice_config(
    out: &std::path::Path,
    cache: &std::path::Path,
) -> switchboard::train::TrainConfig {
    switchboard::train::TrainConfig {
        data: vec![fixture("train_slice.jsonl")],
        out: out.to_path_buf(),
        cache_dir: cache.to_path_buf(),
        dev_percent: 25,
        real_prompt_weight: 3.0,
        real_class_balance: 0.0,
        min_examples: 10,
        abstain_threshold: 0.4,
        limit: 0,
        fit: switchboard::train::fit::FitConfig {
            hidden: 64,
            max_epochs: 40,
            patience: 5,
            lr: 2e-3,
            weight_decay: 1e-4,
            batch_size: 32,
            dropout: 0.1,
            seed: 11,
        },
        keep_heads: None,
        spell_dictionary: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/spell/words.txt"),
        ),
    }
}

/// One `Complete` with `authorization: Bearer <key>` (pinned to `pinned` unless empty): the
/// served cost from its Done event, or the status that ended it.
pub async fn complete_cost(
    mut c: switchboard::proto::v1::router_client::RouterClient<tonic::transport::Channel>,
    key: &str,
    prompt: &str,
    pinned: &str,
) -> Result<f64, tonic::Status> {
    use switchboard::proto::v1::complete_event::Event;
    use switchboard::proto::v1::{CompleteRequest, RouteDecisionRequest};
    let mut req = tonic::Request::new(CompleteRequest {
        route: Some(RouteDecisionRequest {
            prompt: prompt.into(),
            ..Default::default()
        }),
        pinned_backend: pinned.into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let mut s = c.complete(req).await?.into_inner();
    while let Some(ev) = s.message().await? {
        if let Some(Event::Done(d)) = ev.event {
            return Ok(d.cost_usd);
        }
    }
    Err(tonic::Status::internal("stream ended without Done"))
}
