//! The `switchboard` command line: thin wrappers over the library.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard::config::Config;
use switchboard::embed::{Embedder, EncoderConfig, Truncation};
use switchboard::grpc::{self, ServeConfig};
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{Preferences, RouteDecisionRequest};
use switchboard::train::fit::FitConfig;
use switchboard::train::run::TrainConfig;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Route LLM prompts with a local sentence encoder"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service (and /metrics on the HTTP address).
    Serve {
        #[arg(long, env = "SWITCHBOARD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "127.0.0.1:9090")]
        http_addr: SocketAddr,
        /// Catalog and settings (TOML); the bundled config/switchboard.toml when absent.
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// Check the config (and load the classifier it names), then exit.
        #[arg(long)]
        validate_config: bool,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Route one prompt and print the decision as a table.
    Route {
        prompt: String,
        /// Server to ask.
        #[arg(
            long,
            env = "SWITCHBOARD_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// Run in-process instead of calling a server.
        #[arg(long)]
        local: bool,
        #[arg(long)]
        trade_off: Option<f64>,
        #[arg(long, default_value = "")]
        policy: String,
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Embed one text and print the first values of its vector and the time taken.
    Embed {
        text: String,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Train the classifier heads on labelled JSONL and write a head folder.
    Train(TrainArgs),
    /// Evaluate a head on labelled JSONL (by default the trainer's dev split).
    Eval {
        #[arg(long = "data", required = true, value_delimiter = ',')]
        data: Vec<PathBuf>,
        #[arg(long, default_value = "models/classifier")]
        head: PathBuf,
        #[arg(long, env = "SWITCHBOARD_CACHE_DIR", default_value = ".cache")]
        cache_dir: PathBuf,
        /// Evaluate every row instead of the dev split.
        #[arg(long)]
        all_rows: bool,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value_t = 15)]
        dev_percent: u32,
        /// Rows sampled for typo robustness (0 = skip).
        #[arg(long, default_value_t = 1000)]
        typo_rows: usize,
        /// Where report.json and the SVG charts go.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Print the sha256 of an API key, for the keys file (`server.api_keys_file`).
    HashKey { key: String },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Latency switchboard adds over a direct call, against the in-tree mock upstream.
    Proxy {
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,200")]
        levels: Vec<usize>,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// RouteDecision through the real gRPC server on loopback.
    Route {
        #[arg(long, default_value_t = 100)]
        iterations: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Single-prompt latency and batched throughput of the encoder.
    Embed {
        #[arg(long, env = "SWITCHBOARD_BENCH_ITERATIONS", default_value_t = 100)]
        iterations: usize,
        #[arg(long, env = "SWITCHBOARD_BENCH_ROUNDS", default_value_t = 20)]
        rounds: usize,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// JSONL files (text, intent, domain, complexity); rows with the same id are merged.
    #[arg(
        long = "data",
        required = true,
        env = "SWITCHBOARD_TRAIN_DATA",
        value_delimiter = ','
    )]
    data: Vec<PathBuf>,
    /// Output head folder.
    #[arg(
        long,
        env = "SWITCHBOARD_TRAIN_OUT",
        default_value = "models/classifier"
    )]
    out: PathBuf,
    /// Embedding cache folder (inside the repo by default, so nothing lives outside it).
    #[arg(long, env = "SWITCHBOARD_CACHE_DIR", default_value = ".cache")]
    cache_dir: PathBuf,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 15)]
    dev_percent: u32,
    /// Hidden units per head (0 = linear heads).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 60)]
    max_epochs: usize,
    #[arg(long, default_value_t = 5)]
    patience: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.2)]
    dropout: f32,
    /// Loss weight of real user prompts (source = sharegpt).
    #[arg(long, default_value_t = 3.0)]
    real_weight: f32,
    #[arg(long, default_value_t = 10)]
    min_examples: usize,
    #[arg(long, default_value_t = 0.4)]
    abstain_threshold: f32,
    /// Use only the first N rows (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[command(flatten)]
    encoder: EncoderArgs,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            data: self.data.clone(),
            out: self.out.clone(),
            cache_dir: self.cache_dir.clone(),
            dev_percent: self.dev_percent,
            real_prompt_weight: self.real_weight,
            min_examples: self.min_examples,
            abstain_threshold: self.abstain_threshold,
            limit: self.limit,
            fit: FitConfig {
                hidden: self.hidden,
                max_epochs: self.max_epochs,
                patience: self.patience,
                lr: self.lr,
                weight_decay: self.weight_decay,
                batch_size: self.batch_size,
                dropout: self.dropout,
                seed: self.seed,
            },
        }
    }
}

#[derive(Args, Clone)]
struct EncoderArgs {
    /// Encoder folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "SWITCHBOARD_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Encoder worker threads, each running whole forward passes.
    #[arg(long, env = "SWITCHBOARD_WORKERS")]
    workers: Option<usize>,
    /// Threads per forward pass (candle's matmul pool; sets RAYON_NUM_THREADS).
    #[arg(long, env = "SWITCHBOARD_THREADS")]
    threads: Option<usize>,
    /// Token budget per prompt, special tokens included.
    #[arg(long, env = "SWITCHBOARD_MAX_TOKENS")]
    max_tokens: Option<usize>,
    #[arg(long, env = "SWITCHBOARD_TRUNCATION", value_enum)]
    truncation: Option<Truncation>,
    #[arg(long, env = "SWITCHBOARD_MAX_INPUT_BYTES")]
    max_input_bytes: Option<usize>,
    #[arg(long, env = "SWITCHBOARD_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    /// Use the GPU (needs the `cuda` feature).
    #[arg(long, env = "SWITCHBOARD_GPU")]
    gpu: bool,
}

impl EncoderArgs {
    fn config(&self) -> EncoderConfig {
        self.apply(EncoderConfig::default())
    }

    /// Flags given on the command line override `c` (the config file's `[encoder]`).
    fn apply(&self, mut c: EncoderConfig) -> EncoderConfig {
        if let Some(v) = &self.model_dir {
            c.model_dir = v.clone();
        }
        if let Some(v) = self.workers {
            c.workers = v;
        }
        if let Some(v) = self.max_tokens {
            c.max_tokens = v;
        }
        if let Some(v) = self.truncation {
            c.truncation = v;
        }
        if let Some(v) = self.max_input_bytes {
            c.max_input_bytes = v;
        }
        if let Some(v) = self.queue_capacity {
            c.queue_capacity = v;
        }
        c.use_gpu = self.gpu;
        c
    }

    /// Default: one candle thread per worker, so workers × threads = the machine's cores.
    fn threads(&self) -> usize {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        self.threads
            .unwrap_or_else(|| (cores / self.config().workers.max(1)).max(1))
    }
}

fn encoder_args(cmd: &Command) -> Option<&EncoderArgs> {
    match cmd {
        Command::Serve { encoder, .. }
        | Command::Embed { encoder, .. }
        | Command::Route { encoder, .. } => Some(encoder),
        Command::Train(t) => Some(&t.encoder),
        Command::Eval { encoder, .. } => Some(encoder),
        Command::Bench {
            what:
                BenchCommand::Embed { encoder, .. }
                | BenchCommand::Route { encoder, .. }
                | BenchCommand::Proxy { encoder, .. },
        } => Some(encoder),
        Command::HashKey { .. } => None,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(enc) = encoder_args(&cli.command) {
        // Must happen before any thread exists: candle reads it on every matmul.
        std::env::set_var("RAYON_NUM_THREADS", enc.threads().to_string());
    }
    init_tracing(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli.command))
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            grpc_addr,
            http_addr,
            config,
            validate_config,
            encoder,
        } => serve(grpc_addr, http_addr, config, validate_config, &encoder).await,
        Command::Route {
            prompt,
            server,
            local,
            trade_off,
            policy,
            config,
            encoder,
        } => {
            let req = RouteDecisionRequest {
                prompt,
                policy,
                preferences: Some(Preferences {
                    trade_off,
                    ..Default::default()
                }),
                ..Default::default()
            };
            route(req, server, local.then_some((config, encoder))).await
        }
        Command::Embed { text, encoder } => embed(&text, &encoder).await,
        Command::Train(args) => {
            let embedder = start(&args.encoder).await?;
            let out = switchboard::train::run::train(&embedder, &args.config()).await?;
            println!(
                "embedded {} new prompts in {:.1} s; trained on {} rows (dev {}) in {:.1} s",
                out.embedded, out.embed_secs, out.train_rows, out.dev_rows, out.fit_secs
            );
            println!(
                "wrote {} (version {})",
                args.out.display(),
                out.classifier.version()
            );
            println!("{}", switchboard::train::report::table(&out.dev_report));
            Ok(())
        }
        Command::Eval {
            data,
            head,
            cache_dir,
            all_rows,
            seed,
            dev_percent,
            typo_rows,
            out_dir,
            encoder,
        } => {
            let embedder = start(&encoder).await?;
            let cfg = switchboard::train::evaluate::EvalConfig {
                data,
                head,
                cache_dir,
                dev_split: (!all_rows).then_some((seed, dev_percent)),
                typo_rows,
                typo_rate: 0.05,
                out_dir,
            };
            let report = switchboard::train::evaluate::run(&embedder, &cfg).await?;
            println!("{}", switchboard::train::report::table(&report));
            Ok(())
        }
        Command::HashKey { key } => {
            println!("{}", switchboard::auth::hash_key(&key));
            Ok(())
        }
        Command::Bench { what } => bench(what).await,
    }
}

async fn serve(
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    config: Option<PathBuf>,
    validate: bool,
    encoder: &EncoderArgs,
) -> anyhow::Result<()> {
    let mut cfg = Config::read(config.as_deref())?;
    cfg.encoder = encoder.apply(cfg.encoder);
    if validate {
        let engine = grpc::load_engine(cfg).await?;
        println!(
            "config OK: {} backends, policies {:?}, classifier {}",
            engine.config.backends.len(),
            engine.config.policies.keys().collect::<Vec<_>>(),
            engine.classifier.load().version()
        );
        return Ok(());
    }
    let bound = grpc::bind(ServeConfig {
        grpc_addr,
        http_addr,
        config: cfg,
    })
    .await?;
    tracing::info!(grpc = %bound.grpc_addr()?, http = %bound.http_addr()?, "switchboard bound");
    grpc::run(bound, shutdown_signal()).await?;
    Ok(())
}

/// Asks `server`, or routes in-process when `local` carries the config and encoder flags.
async fn route(
    req: RouteDecisionRequest,
    server: String,
    local: Option<(Option<PathBuf>, EncoderArgs)>,
) -> anyhow::Result<()> {
    let resp = match local {
        Some((config, encoder)) => {
            let mut cfg = Config::read(config.as_deref())?;
            cfg.encoder = encoder.apply(cfg.encoder);
            let engine = grpc::load_engine(cfg).await?;
            let o = engine
                .route(&grpc::to_route_request(req), &|_| Default::default())
                .await?;
            grpc::to_response(&o, &engine)
        }
        None => RouterClient::connect(server)
            .await?
            .route_decision(req)
            .await?
            .into_inner(),
    };
    print!("{}", switchboard::display::decision_table(&resp));
    Ok(())
}

async fn embed(text: &str, encoder: &EncoderArgs) -> anyhow::Result<()> {
    let embedder = start(encoder).await?;
    let start = Instant::now();
    let e = embedder.embed(text).await?;
    let took = start.elapsed();
    let head: Vec<String> = e
        .vector
        .iter()
        .take(8)
        .map(|v| format!("{v:+.5}"))
        .collect();
    println!(
        "dim {} tokens {} [{} ...]",
        e.vector.len(),
        e.tokens,
        head.join(", ")
    );
    println!(
        "took {:.2} ms (queue {} us, forward {} us)",
        took.as_secs_f64() * 1e3,
        e.queue_us,
        e.embed_us
    );
    Ok(())
}

/// A server on 127.0.0.1 port 0 in this process, for the benchmarks.
struct LocalServer {
    addr: SocketAddr,
    engine: std::sync::Arc<switchboard::engine::Engine>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), grpc::ServeError>>,
}

impl LocalServer {
    async fn start(config: Config) -> anyhow::Result<Self> {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let bound = grpc::bind(ServeConfig {
            grpc_addr: any,
            http_addr: any,
            config,
        })
        .await?;
        let (addr, engine) = (bound.grpc_addr()?, bound.engine.clone());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(grpc::run(bound, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
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

async fn bench(what: BenchCommand) -> anyhow::Result<()> {
    match what {
        BenchCommand::Embed {
            iterations,
            rounds,
            encoder,
        } => {
            let embedder = start(&encoder).await?;
            let report =
                switchboard::bench::embed(&embedder, iterations, rounds, encoder.config().workers)
                    .await?;
            println!("{report}");
        }
        BenchCommand::Route {
            iterations,
            concurrency,
            config,
            encoder,
        } => {
            let mut cfg = Config::read(config.as_deref())?;
            cfg.encoder = encoder.apply(cfg.encoder);
            let server = LocalServer::start(cfg).await?;
            let report = switchboard::bench::route::route(
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
        BenchCommand::Proxy { levels, encoder } => {
            let mock = switchboard::mock::Mock::start().await?;
            let mut cfg = Config::read(None)?;
            cfg.encoder = encoder.apply(cfg.encoder);
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
            let report = switchboard::bench::proxy::proxy(&mock.base_url(), server.addr, &levels)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{report}");
            server.stop().await?;
        }
    }
    Ok(())
}

async fn start(args: &EncoderArgs) -> anyhow::Result<Embedder> {
    let cfg = args.config();
    tokio::task::spawn_blocking(move || Embedder::start(&cfg))
        .await?
        .context("loading the encoder")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}
