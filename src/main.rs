//! The `switchboard` command line: thin wrappers over the library.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard::embed::{Embedder, EncoderConfig, Truncation};
use switchboard::grpc::{self, ServeConfig};

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
    /// Run the gRPC service.
    Serve {
        #[arg(long, env = "SWITCHBOARD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Embed one text and print the first values of its vector and the time taken.
    Embed {
        text: String,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
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
        let mut c = EncoderConfig::default();
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
        Command::Serve { encoder, .. } | Command::Embed { encoder, .. } => Some(encoder),
        Command::Bench {
            what: BenchCommand::Embed { encoder, .. },
        } => Some(encoder),
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
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { grpc_addr, encoder } => {
            let cfg = ServeConfig {
                grpc_addr,
                encoder: encoder.config(),
            };
            let bound = grpc::bind(&cfg).await?;
            tracing::info!(addr = %bound.local_addr()?, "switchboard bound");
            grpc::run(bound, shutdown_signal()).await?;
        }
        Command::Embed { text, encoder } => {
            let embedder = start(&encoder).await?;
            let start = Instant::now();
            let e = embedder.embed(&text).await?;
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
        }
        Command::Bench {
            what:
                BenchCommand::Embed {
                    iterations,
                    rounds,
                    encoder,
                },
        } => {
            let embedder = start(&encoder).await?;
            let report =
                switchboard::bench::embed(&embedder, iterations, rounds, encoder.config().workers)
                    .await?;
            println!("{report}");
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
