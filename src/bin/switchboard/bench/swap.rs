//! `switchboard bench swap`: RouteDecision latency from concurrent clients with and without
//! classifier swaps (heads-only variants, a full encoder + heads model, rollbacks) going on
//! through the Admin service. Also home of the artifact builders the swap tests use.
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Stats;

fn io(e: impl fmt::Display) -> String {
    e.to_string()
}
use switchboard::classify::artifact::{full_model, variant};
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::admin_client::AdminClient;
use switchboard::proto::v1::router_client::RouterClient;

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
    switchboard::grpc::with_bearer(msg, token).map_err(io)
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
        switchboard::engine::new_id()
    ));
    let dirs = [tmp.join("a"), tmp.join("b"), tmp.join("full")];
    variant(base, &dirs[0], 1.05).map_err(io)?;
    variant(base, &dirs[1], 0.95).map_err(io)?;
    full_model(base, encoder_dir, &dirs[2]).map_err(io)?;
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
