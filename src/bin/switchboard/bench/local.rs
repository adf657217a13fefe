//! The benchmarks' harness: a real server on 127.0.0.1 port 0 in this process, and the
//! dispatch of `switchboard bench …` to the benchmark modules.
use std::net::SocketAddr;

use anyhow::Context;
use switchboard::config::Config;
use switchboard::server::{self, ServeConfig};

use crate::cli::{BenchCommand, EncoderArgs};

/// A server on 127.0.0.1 port 0 in this process, for the benchmarks.
struct LocalServer {
    addr: SocketAddr,
    /// The HTTP facade's address (the proxy benchmark calls it).
    #[cfg_attr(not(feature = "mock"), allow(dead_code))]
    http: SocketAddr,
    admin: Option<SocketAddr>,
    engine: std::sync::Arc<switchboard::engine::Engine>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

impl LocalServer {
    async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with_admin(config, None).await
    }

    async fn start_with_admin(config: Config, token: Option<&str>) -> anyhow::Result<Self> {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let bound = server::bind(ServeConfig {
            grpc_addr: any,
            http_addr: any,
            config,
            admin_addr: token.map(|_| any),
            admin_token: token.map(str::to_string),
            metrics_addr: None,
        })
        .await?;
        let admin = bound.admin_addr();
        let (addr, http, engine) = (bound.grpc_addr()?, bound.http_addr()?, bound.engine.clone());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(bound, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            http,
            admin,
            engine,
            stop,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// `bench embed`, on the configured encoder or on a random-weight one of `shape`.
async fn bench_embed(
    iterations: usize,
    rounds: usize,
    shape: Option<&str>,
    mut encoder: EncoderArgs,
) -> anyhow::Result<()> {
    let scratch = match shape {
        Some(s) => {
            let (layers, hidden) = super::shape::parse(s)?;
            let dir =
                std::env::temp_dir().join(format!("switchboard-shape-{s}-{}", std::process::id()));
            super::shape::write(&dir, layers, hidden, &encoder.config().model_dir)?;
            println!("random-weight BERT {layers} layers × {hidden} (mean pooling)");
            encoder.model_dir = Some(dir.clone());
            Some(dir)
        }
        None => None,
    };
    let embedder = crate::start(&encoder).await?;
    let report = super::embed(&embedder, iterations, rounds, encoder.config().workers).await;
    if let Some(dir) = scratch {
        std::fs::remove_dir_all(dir)?;
    }
    println!("{}", report?);
    Ok(())
}

/// `switchboard bench …`.
pub async fn run(what: BenchCommand) -> anyhow::Result<()> {
    match what {
        BenchCommand::Embed {
            iterations,
            rounds,
            shape,
            encoder,
        } => bench_embed(iterations, rounds, shape.as_deref(), encoder).await?,
        BenchCommand::Route {
            iterations,
            concurrency,
            config,
            encoder,
        } => {
            let server = LocalServer::start(bench_config(config.as_deref(), &encoder)?).await?;
            let report = super::route::route(
                server.engine.clone(),
                server.addr,
                iterations,
                concurrency,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            println!("{report}");
            server.stop().await?;
        }
        BenchCommand::Swap {
            concurrency,
            secs,
            encoder,
        } => bench_swap(concurrency, secs, &encoder).await?,
        BenchCommand::Fleet {
            redis_url,
            iterations,
            concurrency,
            config,
            encoder,
        } => {
            let base = bench_config(config.as_deref(), &encoder)?;
            bench_fleet(base, &redis_url, iterations, concurrency).await?
        }
        #[cfg(feature = "mock")]
        BenchCommand::Proxy { levels, encoder } => bench_proxy(&levels, &encoder).await?,
        #[cfg(feature = "mock")]
        BenchCommand::Soak {
            secs,
            concurrency,
            sample_secs,
            swap_secs,
            svg,
        } => {
            let report = super::soak::soak(secs, concurrency, sample_secs, swap_secs).await?;
            println!("{report}");
            if let Some(path) = svg {
                std::fs::write(&path, report.svg())?;
            }
            anyhow::ensure!(report.passed(), "the soak run missed its targets");
        }
        #[cfg(not(feature = "mock"))]
        BenchCommand::Soak { .. } => anyhow::bail!(
            "bench soak needs the in-tree mock upstream: cargo run --release --features mock -- bench soak"
        ),
        #[cfg(not(feature = "mock"))]
        BenchCommand::Proxy { .. } => anyhow::bail!(
            "bench proxy needs the in-tree mock upstream: cargo run --release --features mock -- bench proxy"
        ),
    }
    Ok(())
}

/// The same server with the in-memory ledger, then with Redis at `redis_url`.
async fn bench_fleet(
    base: Config,
    redis_url: &str,
    iterations: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let keys = super::fleet::keys_file(&dir)?;
    let mut modes = Vec::new();
    for (name, url) in [("in-memory", None), ("redis", Some(redis_url))] {
        let cfg = super::fleet::config(base.clone(), &keys, url);
        let server = LocalServer::start(cfg).await?;
        let m = &server.engine.metrics;
        if url.is_some() {
            // Time calls that reach the store, not ones failing open while it connects.
            let t = std::time::Instant::now();
            while m.store_up.get() != 1 {
                anyhow::ensure!(
                    t.elapsed().as_secs() < 10,
                    "Redis at {redis_url} did not answer"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let errors = || {
            use prometheus::core::Collector;
            m.store_errors
                .collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|x| x.get_counter().get_value())
                .sum::<f64>()
        };
        let before = errors();
        modes.push(super::fleet::measure(name, server.addr, iterations, concurrency).await?);
        anyhow::ensure!(
            errors() == before,
            "shared-store errors during the run: the numbers would include calls that failed open"
        );
        server.stop().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", super::fleet::Report { concurrency, modes });
    Ok(())
}

/// The config at `path` (the bundled one if None) with the encoder flags applied.
fn bench_config(path: Option<&std::path::Path>, encoder: &EncoderArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::read(path)?;
    cfg.encoder = encoder.apply(cfg.encoder);
    Ok(cfg)
}

/// `bench swap`: a server with the admin service on a throwaway state dir.
async fn bench_swap(concurrency: usize, secs: f64, encoder: &EncoderArgs) -> anyhow::Result<()> {
    let mut cfg = bench_config(None, encoder)?;
    let state = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    cfg.admin.state_dir = state.clone();
    // The variants the benchmark swaps in are written under the temp dir.
    cfg.admin.artifact_root = std::env::temp_dir();
    let (base, enc_dir) = (
        cfg.server.classifier_dir.clone(),
        cfg.encoder.model_dir.clone(),
    );
    let token = switchboard::engine::new_id();
    let server = LocalServer::start_with_admin(cfg, Some(&token)).await?;
    let admin = server.admin.context("admin service not bound")?;
    let report = super::swap::swap(
        server.addr,
        admin,
        &token,
        &base,
        &enc_dir,
        concurrency,
        secs,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    println!("{report}");
    server.stop().await?;
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

/// `bench proxy`: the bundled config with one backend, the in-process mock upstream.
#[cfg(feature = "mock")]
async fn bench_proxy(levels: &[usize], encoder: &EncoderArgs) -> anyhow::Result<()> {
    let mock = switchboard_mock::Mock::start().await?;
    let mut cfg = bench_config(None, encoder)?;
    let mut b = cfg.backends[0].clone();
    (
        b.name,
        b.model,
        b.base_url,
        b.api_key_env,
        b.max_concurrency,
    ) = (
        "mock".into(),
        "mock".into(),
        mock.base_url(),
        None,
        1_000_000,
    );
    cfg.backends = vec![b];
    for p in cfg.policies.values_mut() {
        p.default_backend = "mock".into();
        p.rules.clear();
    }
    let server = LocalServer::start(cfg).await?;
    let report = super::proxy::proxy(&mock.base_url(), server.addr, server.http, levels)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("{report}");
    server.stop().await?;
    Ok(())
}
