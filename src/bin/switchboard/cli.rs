//! The command line's arguments (clap): part of the `switchboard` binary, not of the library.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use switchboard::embed::{EncoderConfig, Truncation};
use switchboard::train::finetune::{FinetuneConfig, Select};
use switchboard::train::fit::FitConfig;
use switchboard::train::TrainConfig;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Route LLM prompts with a local sentence encoder"
)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_JSON")]
    pub log_json: bool,
    /// Folder holding the bundled models (the encoder, `classifier/`). Default: `models/`
    /// next to the executable, then `../share/switchboard/models`, then the source tree.
    #[arg(long, global = true, env = "SWITCHBOARD_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gRPC service (and /metrics on the HTTP address).
    Serve {
        #[arg(long, env = "SWITCHBOARD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "127.0.0.1:9090")]
        http_addr: SocketAddr,
        /// The Admin service (classifier swap, feedback, retrain); served only when the admin
        /// token is set in the environment variable `admin.token_env` names
        /// (SWITCHBOARD_ADMIN_TOKEN by default).
        #[arg(
            long,
            env = "SWITCHBOARD_ADMIN_ADDR",
            default_value = "127.0.0.1:50052"
        )]
        admin_addr: SocketAddr,
        /// Serve Prometheus `/metrics` on this address instead of the HTTP one (so scrapers
        /// and clients need not share a port).
        #[arg(long, env = "SWITCHBOARD_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        /// Catalog and settings (TOML); the bundled config/switchboard.toml when absent.
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// Check the config (and load the classifier it names), then exit.
        #[arg(long)]
        validate_config: bool,
        /// Serve a non-loopback address without client API keys (`server.allow_unauthenticated`):
        /// only when something in front of switchboard authenticates callers.
        #[arg(long, env = "SWITCHBOARD_ALLOW_UNAUTHENTICATED")]
        allow_unauthenticated: bool,
        #[command(flatten)]
        overrides: ServeOverrides,
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
        /// Embed the rows as written, without the classifier's typo repair (to measure it).
        #[arg(long)]
        no_spell_fix: bool,
        /// Abstain on prompts in languages under this share of the classifier's training rows,
        /// as the server does (0 = never).
        #[arg(long, default_value_t = switchboard::classify::language::DEFAULT_MIN_SHARE,
              value_parser = share)]
        untrained_language_share: f64,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Write a copy of a classifier's heads with its intent temperature scaled (a new,
    /// swappable version: recalibration without retraining).
    Recalibrate {
        /// The classifier folder to start from.
        #[arg(long, default_value = "models/classifier")]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Multiplies the intent head's temperature (> 1 softens its confidences).
        #[arg(long, default_value_t = 1.1)]
        intent_temperature_factor: f32,
    },
    /// Print the sha256 of an API key, for the keys file (`server.api_keys_file`).
    HashKey { key: String },
    /// Operate the live classifier through the Admin service.
    Classifier {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        op: ClassifierOp,
    },
    /// Requests, tokens and spend per API key, tenant and backend, from the Admin service
    /// (fleet-wide when the replicas share a store).
    Usage {
        #[command(flatten)]
        admin: AdminArgs,
        /// UTC days to sum, ending today.
        #[arg(long, default_value_t = 1)]
        days: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What routing saved: spend by tenant, key, backend, intent and domain against the
    /// strongest backend for each prompt and the policy's default (from the Admin service).
    Savings {
        #[command(flatten)]
        admin: AdminArgs,
        /// Hours to cover, ending now.
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Write a self-contained HTML page (SVG bars) to this file instead.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Exit 0 when the server's readiness endpoint answers 200 within 3 s (a container
    /// HEALTHCHECK needs no curl in the image).
    Probe {
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// Where the Admin service is, and its token.
#[derive(Args)]
pub struct AdminArgs {
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN",
        default_value = "http://127.0.0.1:50052"
    )]
    pub admin: String,
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Latency switchboard adds over a direct call, against the in-tree mock upstream.
    Proxy {
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,200")]
        levels: Vec<usize>,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Endurance: a `serve` child under mixed traffic with upstream faults and swaps; samples
    /// its memory, descriptors, threads and p99 (needs the `mock` feature).
    Soak {
        /// Length of the run, in seconds.
        #[arg(long, default_value_t = 1500.0)]
        secs: f64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Seconds between samples.
        #[arg(long, default_value_t = 10.0)]
        sample_secs: f64,
        /// Seconds between classifier swaps.
        #[arg(long, default_value_t = 60.0)]
        swap_secs: f64,
        /// Write the RSS and p99 chart here (SVG).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// RouteDecision latency from concurrent clients with and without classifier swaps.
    Swap {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// RouteDecision under a quota, with the in-memory ledger and with the shared store
    /// (start `redis-server` first), side by side.
    Fleet {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
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
        /// Measure a random-weight BERT of this shape instead (LAYERSxHIDDEN, e.g. 12x768),
        /// with the encoder folder's tokenizer.
        #[arg(long)]
        shape: Option<String>,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
}

/// A share in [0, 1] from the command line.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number in [0, 1], found {s:?}")),
    }
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// JSONL files (text, intent, domain, complexity); rows with the same id are merged.
    #[arg(
        long = "data",
        required = true,
        env = "SWITCHBOARD_TRAIN_DATA",
        value_delimiter = ','
    )]
    pub data: Vec<PathBuf>,
    /// Output head folder.
    #[arg(
        long,
        env = "SWITCHBOARD_TRAIN_OUT",
        default_value = "models/classifier"
    )]
    pub out: PathBuf,
    /// Embedding cache folder (inside the repo by default, so nothing lives outside it).
    #[arg(long, env = "SWITCHBOARD_CACHE_DIR", default_value = ".cache")]
    pub cache_dir: PathBuf,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value_t = 15)]
    pub dev_percent: u32,
    /// Hidden units per head (0 = linear heads).
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 60)]
    pub max_epochs: usize,
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f32,
    /// Loss weight of real user prompts (source = sharegpt).
    #[arg(long, default_value_t = 3.0)]
    pub real_weight: f32,
    /// Multiply each real prompt's weight by (mean real class size / its class size)^this, so
    /// thin real classes count (0 = off; 0.5 = square-root balancing).
    #[arg(long, default_value_t = 0.0)]
    pub real_class_balance: f32,
    #[arg(long, default_value_t = 10)]
    pub min_examples: usize,
    #[arg(long, default_value_t = 0.4)]
    pub abstain_threshold: f32,
    /// Use only the first N rows (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Also fine-tune the encoder's top N layers with the heads (0 = heads only, on frozen
    /// embeddings). The output folder then holds `encoder/` beside the heads.
    #[arg(long, default_value_t = 0)]
    pub finetune_layers: usize,
    #[arg(long, default_value_t = 2)]
    pub finetune_epochs: usize,
    #[arg(long, default_value_t = 5e-5)]
    pub encoder_lr: f64,
    #[arg(long, default_value_t = 16)]
    pub finetune_batch: usize,
    /// Rows per fine-tuning epoch: every real prompt, then a seeded sample of the rest.
    #[arg(long, default_value_t = 12000)]
    pub finetune_rows: usize,
    /// Dev rows scored after each fine-tuning epoch (early stopping).
    #[arg(long, default_value_t = 800)]
    pub finetune_dev_rows: usize,
    /// Start the heads from this head folder when fine-tuning (labels and shape must match).
    #[arg(long)]
    pub init_heads: Option<PathBuf>,
    /// Share of fine-tuning rows added again with 5% character noise.
    #[arg(long, default_value_t = 0.0)]
    pub finetune_noise: f32,
    /// Keep this classifier's intent head (made for the `--model-dir` encoder) and train the
    /// domain and complexity heads afresh on every train row; its `encoder/`, if any, is
    /// copied to `--out`.
    #[arg(long, conflicts_with = "finetune_layers")]
    pub keep_heads: Option<PathBuf>,
    /// Word list the typo-repair lexicon adds to the training prompts' words (`classify::spell`).
    #[arg(long, default_value = "models/spell/words.txt")]
    pub spell_dictionary: PathBuf,
    /// Save heads without typo repair (prompts reach the encoder as written).
    #[arg(long)]
    pub no_spell_fix: bool,
    /// Dev figure that picks the fine-tuned epoch to keep.
    #[arg(long, value_enum, default_value_t = Select::Loss)]
    pub finetune_select: Select,
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

impl TrainArgs {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            data: self.data.clone(),
            out: self.out.clone(),
            cache_dir: self.cache_dir.clone(),
            dev_percent: self.dev_percent,
            real_prompt_weight: self.real_weight,
            real_class_balance: self.real_class_balance,
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
            keep_heads: self.keep_heads.clone(),
            spell_dictionary: (!self.no_spell_fix).then(|| self.spell_dictionary.clone()),
        }
    }

    /// The fine-tuning settings, when `--finetune-layers` is set.
    pub fn finetune(&self) -> Option<FinetuneConfig> {
        (self.finetune_layers > 0).then(|| FinetuneConfig {
            layers: self.finetune_layers,
            epochs: self.finetune_epochs,
            encoder_lr: self.encoder_lr,
            batch_size: self.finetune_batch,
            max_rows: self.finetune_rows,
            dev_rows: self.finetune_dev_rows,
            // candle's dropout draws from an unseeded RNG; without it a run is deterministic.
            encoder_dropout: 0.0,
            init_heads: self.init_heads.clone(),
            noise_share: self.finetune_noise,
            select: self.finetune_select,
        })
    }
}

/// Settings a deployment sets from its environment (a Kubernetes Secret, a mounted volume)
/// rather than in the catalog file, which is shared by every replica and reloaded live.
#[derive(Args, Clone)]
pub struct ServeOverrides {
    /// `server.api_keys_file`: the client API keys (TOML).
    #[arg(long, env = "SWITCHBOARD_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// `admin.state_dir`: decision and feedback logs, retrained heads.
    #[arg(long, env = "SWITCHBOARD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// `fleet.redis_url`: share breakers, quotas, records and rollouts with other replicas.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// `fleet.artifact_url`: where classifier artifacts are published for the fleet.
    #[arg(long, env = "SWITCHBOARD_ARTIFACT_URL")]
    pub artifact_url: Option<String>,
}

impl ServeOverrides {
    pub fn apply(&self, c: &mut switchboard::config::Config) {
        if let Some(v) = &self.api_keys_file {
            c.server.api_keys_file = Some(v.clone());
        }
        if let Some(v) = &self.state_dir {
            c.admin.state_dir = v.clone();
        }
        if let Some(v) = &self.redis_url {
            c.fleet.redis_url = Some(v.clone());
        }
        if let Some(v) = &self.artifact_url {
            c.fleet.artifact_url = Some(v.clone());
        }
    }
}

#[derive(Args, Clone)]
pub struct EncoderArgs {
    /// Encoder folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "SWITCHBOARD_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Encoder worker threads, each running whole forward passes.
    #[arg(long, env = "SWITCHBOARD_WORKERS")]
    pub workers: Option<usize>,
    /// Threads per forward pass (candle's matmul pool; sets RAYON_NUM_THREADS).
    #[arg(long, env = "SWITCHBOARD_THREADS")]
    pub threads: Option<usize>,
    /// Token budget per prompt, special tokens included.
    #[arg(long, env = "SWITCHBOARD_MAX_TOKENS")]
    pub max_tokens: Option<usize>,
    #[arg(long, env = "SWITCHBOARD_TRUNCATION", value_enum)]
    pub truncation: Option<Truncation>,
    #[arg(long, env = "SWITCHBOARD_MAX_INPUT_BYTES")]
    pub max_input_bytes: Option<usize>,
    #[arg(long, env = "SWITCHBOARD_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Use the GPU (needs the `cuda` feature).
    #[arg(long, env = "SWITCHBOARD_GPU")]
    pub gpu: bool,
}

impl EncoderArgs {
    pub fn config(&self) -> EncoderConfig {
        self.apply(EncoderConfig::default())
    }

    /// Flags given on the command line override `c` (the config file's `[encoder]`).
    pub fn apply(&self, mut c: EncoderConfig) -> EncoderConfig {
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
    pub fn threads(&self) -> usize {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        self.threads
            .unwrap_or_else(|| (cores / self.config().workers.max(1)).max(1))
    }
}

pub fn encoder_args(cmd: &Command) -> Option<&EncoderArgs> {
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
                | BenchCommand::Fleet { encoder, .. }
                | BenchCommand::Proxy { encoder, .. }
                | BenchCommand::Swap { encoder, .. },
        } => Some(encoder),
        Command::Bench {
            what: BenchCommand::Soak { .. },
        }
        | Command::HashKey { .. }
        | Command::Recalibrate { .. }
        | Command::Classifier { .. }
        | Command::Usage { .. }
        | Command::Savings { .. }
        | Command::Probe { .. } => None,
    }
}

#[derive(Subcommand)]
pub enum ClassifierOp {
    /// The live version, its labels and metrics, and the versions kept for rollback.
    Status,
    /// Validate a head folder (or a full model: encoder/ + heads) and swap it in.
    Swap {
        /// Folder on the server.
        path: PathBuf,
        /// Send the heads' bytes instead of the path (heads only; the server need not see it).
        #[arg(long)]
        inline: bool,
        /// Refuse unless this version is live (compare-and-swap).
        #[arg(long, default_value = "")]
        expected_version: String,
        #[arg(long)]
        dry_run: bool,
        /// Swap even if the evaluation gate fails.
        #[arg(long)]
        force: bool,
    },
    /// Back to the previous version, or to a named kept one.
    Rollback {
        #[arg(default_value = "")]
        version: String,
    },
    /// Retrain the live heads on a dataset (JSONL on the server) plus recorded feedback.
    Retrain {
        #[arg(long)]
        data: Option<PathBuf>,
        /// Leave out the feedback log.
        #[arg(long)]
        no_feedback: bool,
        /// Swap the new heads in if they pass the gate and fit the feedback at least as well.
        #[arg(long)]
        promote: bool,
        #[arg(long, default_value_t = 20)]
        max_epochs: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}
