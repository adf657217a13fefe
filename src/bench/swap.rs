//! `switchboard bench swap`: RouteDecision latency from concurrent clients with and without
//! classifier swaps (heads-only variants, a full encoder + heads model, rollbacks) going on
//! through the Admin service. Also home of the artifact builders the swap tests use.
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Stats;
use crate::classify::{content_version, ClassifierMeta, META_FILE, WEIGHTS_FILE};
use crate::proto::v1 as pb;
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::router_client::RouterClient;

fn io(e: impl fmt::Display) -> String {
    e.to_string()
}

pub fn read_meta(dir: &Path) -> Result<ClassifierMeta, String> {
    let text = std::fs::read_to_string(dir.join(META_FILE)).map_err(io)?;
    serde_json::from_str(&text).map_err(io)
}

/// Writes a head folder with `meta` (version recomputed) and `weights`; returns the version.
pub fn write_heads(dir: &Path, mut meta: ClassifierMeta, weights: &[u8]) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(io)?;
    meta.version = content_version(weights, &meta);
    std::fs::write(dir.join(WEIGHTS_FILE), weights).map_err(io)?;
    let text = serde_json::to_string_pretty(&meta).map_err(io)?;
    std::fs::write(dir.join(META_FILE), text).map_err(io)?;
    Ok(meta.version)
}

/// `base`'s heads with the intent temperature scaled: a valid, distinct version.
pub fn variant(base: &Path, out: &Path, factor: f32) -> Result<String, String> {
    let mut m = read_meta(base)?;
    m.intent_temperature *= factor;
    let w = std::fs::read(base.join(WEIGHTS_FILE)).map_err(io)?;
    write_heads(out, m, &w)
}

/// A full model: `base`'s own encoder (or, for heads only, the encoder in `encoder_dir`)
/// re-saved as f32 (a new weights file, so a new encoder identity) with `base`'s heads bound
/// to it.
pub fn full_model(base: &Path, encoder_dir: &Path, out: &Path) -> Result<String, String> {
    let own = crate::classify::own_encoder(base);
    let encoder_dir = own.as_deref().unwrap_or(encoder_dir);
    let enc = out.join("encoder");
    crate::embed::model::copy_encoder_files(encoder_dir, &enc).map_err(io)?;
    let dev = candle_core::Device::Cpu;
    let tensors =
        candle_core::safetensors::load(encoder_dir.join("model.safetensors"), &dev).map_err(io)?;
    let f32s = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(candle_core::DType::F32)?)))
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()
        .map_err(io)?;
    candle_core::safetensors::save(&f32s, enc.join("model.safetensors")).map_err(io)?;
    let mut m = read_meta(base)?;
    m.encoder.name = format!("{}-f32", m.encoder.name);
    m.encoder.sha256 =
        crate::embed::model::sha256_file(&enc.join("model.safetensors")).map_err(io)?;
    let w = std::fs::read(base.join(WEIGHTS_FILE)).map_err(io)?;
    write_heads(out, m, &w)
}

#[derive(Debug, Clone)]
pub struct SwapReport {
    pub rows: Vec<(&'static str, usize, usize, Stats, usize)>,
}

impl fmt::Display for SwapReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<34} {:>7} {:>5} {:>8} {:>8} {:>8}",
            "phase", "reqs", "err", "p50 ms", "p99 ms", "swaps"
        )?;
        for (name, n, err, s, swaps) in &self.rows {
            writeln!(
                f,
                "{name:<34} {n:>7} {err:>5} {:>8.2} {:>8.2} {swaps:>8}",
                s.p50, s.p99
            )?;
        }
        if let [(_, _, _, base, _), (_, _, _, with, _)] = self.rows.as_slice() {
            writeln!(f, "p99 with swaps / without: {:.2}", with.p99 / base.p99)?;
        }
        Ok(())
    }
}

type Admin = AdminClient<tonic::transport::Channel>;

fn authed<T>(msg: T, token: &str) -> Result<tonic::Request<T>, String> {
    crate::auth::with_bearer(msg, token).map_err(io)
}

/// `concurrency` clients for `secs`; returns latencies and errors.
async fn load(
    router: &RouterClient<tonic::transport::Channel>,
    concurrency: usize,
    secs: f64,
    tag: &str,
) -> (Vec<Duration>, usize) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let mut c = router.clone();
        let tag = tag.to_string();
        set.spawn(async move {
            let (mut lat, mut err, mut i) = (Vec::new(), 0, 0);
            while Instant::now() < until {
                let prompt = format!(
                    "{tag} {w} {i}: {}",
                    super::synthetic_prompt(w * 7919 + i, 24)
                );
                let t = Instant::now();
                match c
                    .route_decision(pb::RouteDecisionRequest {
                        prompt,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => err += 1,
                }
                i += 1;
            }
            (lat, err)
        });
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    while let Some(Ok((l, e))) = set.join_next().await {
        all.extend(l);
        errors += e;
    }
    (all, errors)
}

/// Swaps every `every`, cycling heads A, heads B, rollback, full model, rollback.
async fn swapper(
    mut a: Admin,
    token: String,
    dirs: [std::path::PathBuf; 3],
    secs: f64,
    every: Duration,
) -> Result<usize, String> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0;
    while Instant::now() < until {
        tokio::time::sleep(every).await;
        let path = |d: &std::path::PathBuf| pb::SwapClassifierRequest {
            source: Some(pb::swap_classifier_request::Source::Path(
                d.display().to_string(),
            )),
            ..Default::default()
        };
        let r = match n % 5 {
            0 => a.swap_classifier(authed(path(&dirs[0]), &token)?).await,
            1 => a.swap_classifier(authed(path(&dirs[1]), &token)?).await,
            3 => a.swap_classifier(authed(path(&dirs[2]), &token)?).await,
            _ => {
                a.rollback_classifier(authed(pb::RollbackClassifierRequest::default(), &token)?)
                    .await
            }
        };
        r.map_err(|e| format!("swap {n}: {e}"))?;
        n += 1;
    }
    Ok(n)
}

/// Runs both phases against a server at `grpc` with its Admin service at `admin`.
pub async fn swap(
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    token: &str,
    base: &Path,
    encoder_dir: &Path,
    concurrency: usize,
    secs: f64,
) -> Result<SwapReport, String> {
    let tmp = std::env::temp_dir().join(format!(
        "switchboard-bench-swap-{}",
        crate::engine::new_id()
    ));
    let dirs = [tmp.join("a"), tmp.join("b"), tmp.join("full")];
    variant(base, &dirs[0], 1.05)?;
    variant(base, &dirs[1], 0.95)?;
    full_model(base, encoder_dir, &dirs[2])?;
    let connect = |a: std::net::SocketAddr| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{a}"))
            .map_err(io)?
            .connect()
            .await
            .map_err(io)
    };
    let router = RouterClient::new(connect(grpc).await?);
    let mut adm = AdminClient::new(connect(admin).await?);
    // Warm: the gate set's embeddings for both encoders (computed once per encoder).
    for d in [&dirs[0], &dirs[2]] {
        let req = pb::SwapClassifierRequest {
            source: Some(pb::swap_classifier_request::Source::Path(
                d.display().to_string(),
            )),
            dry_run: true,
            ..Default::default()
        };
        adm.swap_classifier(authed(req, token)?).await.map_err(io)?;
    }
    load(&router, concurrency, 1.0, "warm").await;
    let (mut base_lat, base_err) = load(&router, concurrency, secs, "steady").await;
    let sw = tokio::spawn(swapper(
        adm,
        token.to_string(),
        dirs,
        secs,
        Duration::from_millis(500),
    ));
    let (mut lat, err) = load(&router, concurrency, secs, "swapping").await;
    let swaps = sw.await.map_err(io)??;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(SwapReport {
        rows: vec![
            (
                "RouteDecision, no swaps",
                base_lat.len(),
                base_err,
                Stats::from(&mut base_lat),
                0,
            ),
            (
                "RouteDecision, swap every 500 ms",
                lat.len(),
                err,
                Stats::from(&mut lat),
                swaps,
            ),
        ],
    })
}
