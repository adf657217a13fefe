//! The `switchboard` binary: the command line (`cli`), thin wrappers over the library, the
//! Admin client (`classifier`), the decision table (`table`) and the benchmarks (`bench`).
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

mod bench;
mod classifier;
mod cli;
mod savings;
mod table;

// glibc malloc spent ~15% of the proxy path's CPU (measured with perf); mimalloc's per-thread
// free lists avoid its arena locks and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::Parser;
use cli::{encoder_args, Cli, Command, EncoderArgs};
use switchboard::config::Config;
use switchboard::convert::{to_response, to_route_request};
use switchboard::embed::Embedder;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{Preferences, RouteDecisionRequest};
use switchboard::server::{self, ServeConfig};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(dir) = &cli.models_dir {
        switchboard::assets::set_models_dir(dir.clone());
    }
    if let Some(enc) = encoder_args(&cli.command) {
        // Must happen before any thread exists: candle reads it on every matmul.
        std::env::set_var("RAYON_NUM_THREADS", enc.threads().to_string());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let traces = {
        let _in_runtime = runtime.enter();
        init_tracing(cli.log_json)?
    };
    let out = runtime.block_on(run(cli.command));
    // Sends the last batch of spans (bounded by the exporter's timeout).
    drop(traces);
    out
}

/// Logs to stderr (text, or JSON lines), and spans to an OTLP collector when
/// OTEL_EXPORTER_OTLP_ENDPOINT is set.
fn init_tracing(json: bool) -> anyhow::Result<switchboard::telemetry::Guard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    });
    let json_lines = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    switchboard::telemetry::use_w3c_propagation();
    let provider = if switchboard::telemetry::export_requested() {
        Some(switchboard::telemetry::otlp_provider().context("OTLP trace exporter")?)
    } else {
        None
    };
    let otel = provider.as_ref().map(switchboard::telemetry::layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json_lines)
        .with(otel)
        .init();
    Ok(switchboard::telemetry::Guard(provider))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            grpc_addr,
            http_addr,
            admin_addr,
            metrics_addr,
            config,
            validate_config,
            allow_unauthenticated,
            overrides,
            encoder,
        } => {
            let addrs = (grpc_addr, http_addr, admin_addr, metrics_addr);
            let mut cfg = Config::read(config.as_deref())?;
            cfg.encoder = encoder.apply(cfg.encoder);
            cfg.server.allow_unauthenticated |= allow_unauthenticated;
            overrides.apply(&mut cfg);
            serve(addrs, cfg, validate_config).await
        }
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
        Command::Train(args) => train(&args).await,
        Command::Eval {
            data,
            head,
            cache_dir,
            all_rows,
            seed,
            dev_percent,
            typo_rows,
            out_dir,
            no_spell_fix,
            untrained_language_share,
            encoder,
        } => {
            let cfg = switchboard::train::evaluate::EvalConfig {
                data,
                head,
                cache_dir,
                dev_split: (!all_rows).then_some((seed, dev_percent)),
                typo_rows,
                typo_rate: 0.05,
                out_dir,
                spell_fix: !no_spell_fix,
                untrained_language_share: (untrained_language_share > 0.0)
                    .then_some(untrained_language_share),
            };
            eval(&cfg, encoder).await
        }
        Command::Recalibrate {
            from,
            out,
            intent_temperature_factor,
        } => recalibrate(&from, &out, intent_temperature_factor),
        Command::HashKey { key } => {
            println!("{}", switchboard::auth::hash_key(&key));
            Ok(())
        }
        Command::Bench { what } => bench::run(what).await,
        Command::Probe { url } => probe(&url).await,
        admin => admin_client(admin).await,
    }
}

/// The commands that talk to the Admin service.
async fn admin_client(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Classifier { admin, op } => classifier::run(&admin.admin, &admin.token, op).await,
        Command::Usage { admin, days, json } => {
            classifier::usage(&admin.admin, &admin.token, days, json).await
        }
        Command::Savings {
            admin,
            hours,
            json,
            html,
        } => savings::run(&admin.admin, &admin.token, hours, json, html.as_deref()).await,
        _ => anyhow::bail!("not an Admin service command"),
    }
}

/// `switchboard probe`: one bounded GET.
async fn probe(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?;
    let status = client.get(url).send().await?.status();
    anyhow::ensure!(status.is_success(), "{url}: {status}");
    Ok(())
}

/// `switchboard recalibrate`: a copy of the heads with the intent temperature scaled.
fn recalibrate(from: &std::path::Path, out: &std::path::Path, f: f32) -> anyhow::Result<()> {
    anyhow::ensure!(
        f.is_finite() && f > 0.0,
        "--intent-temperature-factor must be a positive number, found {f}"
    );
    let version = switchboard::classify::artifact::variant(from, out, f)?;
    println!("wrote {} (version {version})", out.display());
    Ok(())
}

/// `switchboard train`: heads on frozen embeddings, or a fine-tune when layers are given.
async fn train(args: &cli::TrainArgs) -> anyhow::Result<()> {
    let out = if let Some(ft) = args.finetune() {
        let enc = args.encoder.config();
        let out = switchboard::train::finetune::finetune(&enc, &args.config(), &ft).await?;
        println!(
            "fine-tuned the top {} layers with the heads on {} rows in {:.1} s ({} epochs); embedded the dev split ({} rows, {} new) in {:.1} s",
            ft.layers, out.train_rows, out.fit_secs, out.history.len(), out.dev_rows, out.embedded, out.embed_secs
        );
        out
    } else {
        let embedder = start(&args.encoder).await?;
        let out = switchboard::train::run::train(&embedder, &args.config()).await?;
        println!(
            "embedded {} new prompts in {:.1} s; trained on {} rows (dev {}) in {:.1} s",
            out.embedded, out.embed_secs, out.train_rows, out.dev_rows, out.fit_secs
        );
        out
    };
    println!(
        "wrote {} (version {})",
        args.out.display(),
        out.classifier.version()
    );
    println!(
        "{}",
        switchboard::train::report::language_mix(&out.classifier.meta.languages)
    );
    println!("{}", switchboard::train::report::table(&out.dev_report));
    Ok(())
}

/// `switchboard eval`: a head folder that carries its own encoder is evaluated with it.
async fn eval(
    cfg: &switchboard::train::evaluate::EvalConfig,
    mut encoder: cli::EncoderArgs,
) -> anyhow::Result<()> {
    if let Some(dir) = switchboard::classify::own_encoder(&cfg.head) {
        encoder.model_dir = Some(dir);
    }
    let embedder = start(&encoder).await?;
    let report = switchboard::train::evaluate::run(&embedder, cfg).await?;
    println!("{}", switchboard::train::report::table(&report));
    Ok(())
}

async fn serve(
    (grpc_addr, http_addr, admin_addr, metrics_addr): (
        SocketAddr,
        SocketAddr,
        SocketAddr,
        Option<SocketAddr>,
    ),
    cfg: Config,
    validate: bool,
) -> anyhow::Result<()> {
    if validate {
        let engine = server::load_engine(cfg).await?;
        println!(
            "config OK: {} backends, policies {:?}, classifier {} from {}",
            engine.config().backends.len(),
            engine.config().policies.keys().collect::<Vec<_>>(),
            engine.live.snapshot().version(),
            engine.config().server.classifier_dir.display()
        );
        return Ok(());
    }
    let admin_token = std::env::var(&cfg.admin.token_env).ok();
    let bound = server::bind(ServeConfig {
        grpc_addr,
        http_addr,
        config: cfg,
        admin_addr: Some(admin_addr),
        admin_token,
        metrics_addr,
    })
    .await?;
    let admin = bound
        .admin_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    tracing::info!(grpc = %bound.grpc_addr()?, http = %bound.http_addr()?, admin = %admin, "switchboard bound");
    server::run(bound, shutdown_signal()).await?;
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
            let engine = server::load_engine(cfg).await?;
            let o = engine
                .route(&to_route_request(req), &|_| Default::default())
                .await?;
            to_response(&o)
        }
        None => RouterClient::connect(server)
            .await?
            .route_decision(req)
            .await?
            .into_inner(),
    };
    print!("{}", table::decision_table(&resp));
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

/// Loads the encoder named by the flags (off the runtime) and starts its workers.
pub(crate) async fn start(args: &EncoderArgs) -> anyhow::Result<Embedder> {
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
    tracing::info!("shutdown signal received");
}
