//! `switchboard bench route`: RouteDecision through the real gRPC server over loopback, beside
//! the bare encoder forward and the encoder's own batched throughput measured in the same run.
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{prompt_of, Stats};
use switchboard::classify::Prediction;
use switchboard::config::Config;
use switchboard::engine::Engine;
use switchboard::policy::{self, Health, Preferences, RouteInput};
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;

#[derive(Debug, Clone)]
pub struct RouteReport {
    pub iterations: usize,
    pub c1: Stats,
    pub bare_forward: Stats,
    pub concurrency: usize,
    pub cn_rps: f64,
    pub cn: Stats,
    pub embed_rps: f64,
    pub rank50_us: Stats,
    /// Server-reported classify stage (heads on the embedding), from the concurrency-1 run.
    pub classify_us: Stats,
    /// `Classifier::prepare` (typo repair) in process: the prompts as sent, with 5% character
    /// noise, and 2,000-character noisy prompts.
    pub repair_us: [Stats; 3],
    pub cache_hit: Stats,
}

impl fmt::Display for RouteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "RouteDecision over loopback gRPC, 64-token prompts, each distinct (no cache hits), {} iterations", self.iterations)?;
        writeln!(f, "concurrency 1   {}", self.c1)?;
        writeln!(
            f,
            "bare forward    {}   p50 ratio {:.3}",
            self.bare_forward,
            self.c1.p50 / self.bare_forward.p50
        )?;
        writeln!(f, "concurrency {:<3} {:.1} req/s, {}; encoder alone on the same prompts {:.1} prompts/s (ratio {:.3})", self.concurrency, self.cn_rps, self.cn, self.embed_rps, self.cn_rps / self.embed_rps)?;
        writeln!(
            f,
            "rank, 50-backend catalog: min {:.2} p50 {:.2} p99 {:.2} µs",
            self.rank50_us.min * 1e3,
            self.rank50_us.p50 * 1e3,
            self.rank50_us.p99 * 1e3
        )?;
        writeln!(
            f,
            "classify stage (server timings): min {:.1} p50 {:.1} p99 {:.1} µs",
            self.classify_us.min * 1e3,
            self.classify_us.p50 * 1e3,
            self.classify_us.p99 * 1e3
        )?;
        let [clean, noisy, long] = &self.repair_us;
        writeln!(
            f,
            "typo repair (prepare) p50 / p99 µs: prompts as sent {:.1} / {:.1}, 5% noise {:.1} / {:.1}, 2,000 chars 5% noise {:.1} / {:.1}",
            clean.p50 * 1e3,
            clean.p99 * 1e3,
            noisy.p50 * 1e3,
            noisy.p99 * 1e3,
            long.p50 * 1e3,
            long.p99 * 1e3
        )?;
        writeln!(
            f,
            "cache hit (repeated prompt), end to end: {}",
            self.cache_hit
        )
    }
}

fn bench_err(e: impl fmt::Display) -> String {
    e.to_string()
}

/// A catalog of `n` backends made by cycling the given config's backends.
fn big_catalog(base: &Config, n: usize) -> Config {
    let mut cfg = base.clone();
    cfg.backends = (0..n)
        .map(|i| {
            let mut b = base.backends[i % base.backends.len()].clone();
            b.name = format!("{}-{i}", b.name);
            b.input_price_per_mtok *= 1.0 + (i as f64) / 100.0;
            b
        })
        .collect();
    let first = cfg.backends[0].name.clone();
    for p in cfg.policies.values_mut() {
        p.default_backend = first.clone();
        p.rules.clear();
        p.variants.clear();
    }
    cfg
}

fn rank_bench(cfg: &Config, p: &Prediction) -> Stats {
    let big = big_catalog(cfg, 50);
    let prefs = Preferences {
        expected_output_tokens: 256,
        max_output_tokens: None,
        ..Default::default()
    };
    let meta = HashMap::new();
    let input = RouteInput {
        prediction: p,
        prompt_tokens: 64,
        prefs: &prefs,
        metadata: &meta,
        request_key: "bench",
    };
    let mut samples = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let start = Instant::now();
        let d = policy::rank(&big, "", &input, &|_| Health::default());
        std::hint::black_box(d.is_ok());
        samples.push(start.elapsed());
    }
    Stats::from(&mut samples)
}

/// Times the live classifier's typo repair on `prompts`, on noisy copies, and on long noisy ones.
fn repair_bench(engine: &Engine, prompts: &[String]) -> [Stats; 3] {
    let c = engine.live.snapshot().classifier.clone();
    let noisy: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| switchboard::train::evaluate::typo_noise(p, 0.05, i as u64))
        .collect();
    let long: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text: String = p
                .repeat(2000 / p.len().max(1) + 1)
                .chars()
                .take(2000)
                .collect();
            switchboard::train::evaluate::typo_noise(&text, 0.05, i as u64)
        })
        .collect();
    [prompts, &noisy[..], &long[..]].map(|set| {
        let mut samples: Vec<Duration> = set
            .iter()
            .map(|p| {
                let s = Instant::now();
                std::hint::black_box(c.prepare(p));
                s.elapsed()
            })
            .collect();
        Stats::from(&mut samples)
    })
}

/// Runs the route benchmark against a server listening on `addr`, backed by `engine`.
pub async fn route(
    engine: Arc<Engine>,
    addr: std::net::SocketAddr,
    iterations: usize,
    concurrency: usize,
) -> Result<RouteReport, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(bench_err)?
        .connect()
        .await
        .map_err(bench_err)?;
    let mut client = RouterClient::new(channel.clone());
    let embedder = engine.embedder.clone();
    let prompts: Vec<String> = (0..iterations + 1)
        .map(|i| prompt_of(&embedder, 64, 1000 + i))
        .collect();
    // The last prompt warms the connection and the encoder; it is not timed.
    decide(&mut client, prompts[iterations].clone()).await?;
    let (mut c1, mut bare, mut classify) = (Vec::new(), Vec::new(), Vec::new());
    for p in &prompts[..iterations] {
        let start = Instant::now();
        let r = decide(&mut client, p.clone()).await?;
        c1.push(start.elapsed());
        classify.push(Duration::from_micros(
            r.timings.map(|t| t.classify_us).unwrap_or(0),
        ));
        bare.push(bare_forward(&embedder, p).await?);
    }
    // Closed loop at `concurrency`: distinct 32-token prompts, each sent once.
    let load: Vec<String> = (0..concurrency * 12)
        .map(|i| prompt_of(&embedder, 32, 50_000 + i))
        .collect();
    let (cn_rps, mut cn) = closed_loop(&load, concurrency, |p| {
        let mut c = RouterClient::new(channel.clone());
        async move { decide(&mut c, p).await.map(|_| ()) }
    })
    .await?;
    let embed_load: Vec<String> = (0..concurrency * 12)
        .map(|i| prompt_of(&embedder, 32, 90_000 + i))
        .collect();
    let (embed_rps, _) = closed_loop(&embed_load, concurrency, |p| {
        let e = embedder.clone();
        async move { e.embed(&p).await.map(|_| ()).map_err(bench_err) }
    })
    .await?;
    let probe = engine
        .route(
            &switchboard::engine::RouteRequest {
                prompt: "probe".into(),
                ..Default::default()
            },
            &|_| Health::default(),
        )
        .await
        .map_err(bench_err)?;
    let mut hits = Vec::new();
    for _ in 0..iterations.max(50) {
        let start = Instant::now();
        decide(&mut client, prompts[0].clone()).await?;
        hits.push(start.elapsed());
    }
    Ok(RouteReport {
        iterations,
        c1: Stats::from(&mut c1),
        bare_forward: Stats::from(&mut bare),
        concurrency,
        cn_rps,
        cn: Stats::from(&mut cn),
        embed_rps,
        rank50_us: rank_bench(&engine.config(), &probe.prediction),
        classify_us: Stats::from(&mut classify),
        repair_us: repair_bench(&engine, &prompts),
        cache_hit: Stats::from(&mut hits),
    })
}

async fn decide(
    client: &mut RouterClient<tonic::transport::Channel>,
    prompt: String,
) -> Result<switchboard::proto::v1::RouteDecisionResponse, String> {
    let req = RouteDecisionRequest {
        prompt,
        ..Default::default()
    };
    Ok(client
        .route_decision(req)
        .await
        .map_err(bench_err)?
        .into_inner())
}

/// One encoder forward of `prompt` alone, outside the server (tensors built before the clock).
async fn bare_forward(
    embedder: &switchboard::embed::Embedder,
    prompt: &str,
) -> Result<Duration, String> {
    let ids = embedder.tokenizer().encode(prompt).map_err(bench_err)?.ids;
    let m = embedder.model();
    tokio::task::spawn_blocking(move || -> Result<Duration, String> {
        let (t, mask) = m.batch_tensors(&[&ids]).map_err(bench_err)?;
        let s = Instant::now();
        let out = m
            .bert()
            .forward(&t, &mask, switchboard::embed::bert::Mode::Inference)
            .map_err(bench_err)?;
        std::hint::black_box(out);
        Ok(s.elapsed())
    })
    .await
    .map_err(bench_err)?
}

/// `concurrency` workers take items from `items` until none are left; returns (items/s, latencies).
async fn closed_loop<F, Fut>(
    items: &[String],
    concurrency: usize,
    call: F,
) -> Result<(f64, Vec<Duration>), String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let queue = Arc::new(std::sync::Mutex::new(items.to_vec()));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let q = queue.clone();
        let mut futs = Vec::new();
        // Pre-build this worker's calls so `call` need not be Send.
        while let Some(p) = q.lock().map_err(bench_err)?.pop() {
            futs.push(call(p));
            if futs.len() * concurrency >= items.len() {
                break;
            }
        }
        set.spawn(async move {
            let mut lat = Vec::new();
            for f in futs {
                let s = Instant::now();
                f.await?;
                lat.push(s.elapsed());
            }
            Ok::<_, String>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.map_err(bench_err)??);
    }
    Ok((all.len() as f64 / start.elapsed().as_secs_f64(), all))
}
