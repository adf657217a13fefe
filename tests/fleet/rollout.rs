//! The classifier across three replicas: a swap under traffic reaches all within 5 s with
//! no failed request and no replica moving back; a lost pub/sub connection only delays it;
//! corrupt and wrong-encoder artifacts change nothing anywhere; a replica killed and
//! restarted is not ready until it runs the active generation; a rollback works after every
//! replica restarted.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::classify::artifact as swap;
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::RouteDecisionRequest;
use tonic::Code;

use crate::common;
use crate::harness::{with_key, Redis, Replica};

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/classifier")
}

fn swap_req(path: &Path) -> pb::SwapClassifierRequest {
    pb::SwapClassifierRequest {
        source: Some(pb::swap_classifier_request::Source::Path(
            path.display().to_string(),
        )),
        ..Default::default()
    }
}

/// The version a replica's RouteDecision names.
async fn version_of(r: &Replica) -> Result<String, tonic::Status> {
    let req = RouteDecisionRequest {
        prompt: "Write a haiku about routers.".into(),
        ..Default::default()
    };
    let mut c = r.router.clone();
    Ok(c.route_decision(with_key(req, "free-key"))
        .await?
        .into_inner()
        .classifier_version)
}

/// Waits (bounded) until every replica names `version`; returns how long it took.
async fn converge(r: &[Replica], version: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    for x in r {
        while version_of(x).await.unwrap() != version {
            assert!(
                t.elapsed() < limit,
                "{} not on {version} within {limit:?}",
                x.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    t.elapsed()
}

async fn fleet_info(r: &Replica) -> pb::ClassifierInfo {
    let mut a = r.admin().await;
    a.get_classifier(with_key(pb::GetClassifierRequest {}, common::ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
}

/// Route traffic at every replica until `stop`; each replica's responses in order.
fn traffic(r: &[Replica], stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    r.iter()
        .map(|x| {
            let (router, stop) = (x.router.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let req = RouteDecisionRequest {
                        prompt: format!("Summarise report number {}.", seen.len()),
                        ..Default::default()
                    };
                    let mut c = router.clone();
                    let v = c.route_decision(with_key(req, "free-key")).await;
                    seen.push(
                        v.expect("no request fails during a swap")
                            .into_inner()
                            .classifier_version,
                    );
                }
                seen
            })
        })
        .collect()
}

pub async fn rollout(dir: &Path, redis: &Redis, replicas: &mut [Replica], configs: &[PathBuf]) {
    let v1 = swap::variant(&shipped(), &dir.join("cand-1"), 1.1).unwrap();
    let v2 = swap::variant(&shipped(), &dir.join("cand-2"), 1.2).unwrap();
    swap_under_traffic(dir, replicas, &v1).await;
    let generation = lost_pubsub(dir, redis, replicas, &v2).await;
    bad_artifacts_change_nothing(dir, replicas, &v2, generation).await;

    // One replica killed and restarted: not ready until it runs the active generation.
    replicas[2] = restart_checking_readiness(&replicas[2], dir, &configs[2], &v2).await;
    // Every replica restarted (each comes back on v2), then a rollback returns to v1.
    for i in 0..replicas.len() {
        replicas[i] = restart_checking_readiness(&replicas[i], dir, &configs[i], &v2).await;
    }
    let mut a = replicas[0].admin().await;
    let rep = a
        .rollback_classifier(with_key(
            pb::RollbackClassifierRequest::default(),
            common::ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rep.version, v1, "{rep:?}");
    converge(replicas, &v1, Duration::from_secs(5)).await;
}

/// A swap on replica 2 under traffic on all three: no request fails, each replica moves
/// from the old version to the new one once and never back, all within 5 s.
async fn swap_under_traffic(dir: &Path, replicas: &[Replica], v1: &str) {
    let v0 = version_of(&replicas[0]).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(replicas, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut a = replicas[1].admin().await;
    let t = Instant::now();
    let rep = a
        .swap_classifier(with_key(swap_req(&dir.join("cand-1")), common::ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(rep.swapped && rep.version == v1, "{rep:?}");
    let took = converge(replicas, v1, Duration::from_secs(5)).await;
    eprintln!(
        "swap reached all replicas {:?} after the call, {:?} after it started",
        took,
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for (i, h) in load.into_iter().enumerate() {
        let seen = h.await.unwrap();
        assert!(!seen.is_empty());
        let first_new = seen.iter().position(|v| *v == v1).unwrap_or(seen.len());
        assert!(
            seen[..first_new].iter().all(|v| *v == v0),
            "replica {i}: {seen:?}"
        );
        assert!(
            seen[first_new..].iter().all(|v| *v == v1),
            "replica {i} moved back: {seen:?}"
        );
    }
    let info = fleet_info(&replicas[0]).await;
    assert_eq!(info.replicas.len(), 3, "{info:?}");
    assert!(
        info.replicas
            .iter()
            .all(|x| x.generation == info.generation && x.version == v1 && x.error.is_empty()),
        "{info:?}"
    );
}

/// Pub/sub connections killed right before the next swap: polling still converges.
/// Returns the generation it made active.
async fn lost_pubsub(dir: &Path, redis: &Redis, replicas: &[Replica], v2: &str) -> u64 {
    let mut con = redis.client();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut con)
        .unwrap();
    let mut a = replicas[0].admin().await;
    a.swap_classifier(with_key(swap_req(&dir.join("cand-2")), common::ADMIN_TOKEN))
        .await
        .unwrap();
    converge(replicas, v2, Duration::from_secs(5)).await;
    fleet_info(&replicas[2]).await.generation
}

/// Corrupt and wrong-encoder artifacts: refused, and nothing changes anywhere.
async fn bad_artifacts_change_nothing(dir: &Path, replicas: &[Replica], v2: &str, generation: u64) {
    let mut a = replicas[0].admin().await;
    swap::variant(&shipped(), &dir.join("bad-1"), 1.3).unwrap();
    std::fs::write(
        dir.join("bad-1").join(switchboard::classify::WEIGHTS_FILE),
        b"not safetensors",
    )
    .unwrap();
    let mut m = swap::read_meta(&shipped()).unwrap();
    m.encoder.sha256 = "0".repeat(64);
    let w = std::fs::read(shipped().join(switchboard::classify::WEIGHTS_FILE)).unwrap();
    swap::write_heads(&dir.join("bad-2"), m, &w).unwrap();
    for (bad, code) in [
        ("bad-1", Code::InvalidArgument),
        ("bad-2", Code::FailedPrecondition),
    ] {
        let e = a
            .swap_classifier(with_key(swap_req(&dir.join(bad)), common::ADMIN_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{bad}: {e:?}");
    }
    assert_eq!(fleet_info(&replicas[1]).await.generation, generation);
    for x in replicas.iter() {
        assert_eq!(version_of(x).await.unwrap(), v2);
    }
}

/// Kills `old` (SIGKILL) and starts it again; checks it is not ready before it names
/// `active`, and returns the new process once ready.
async fn restart_checking_readiness(
    old: &Replica,
    dir: &Path,
    config: &Path,
    active: &str,
) -> Replica {
    old.kill();
    let fresh = Replica::spawn(&old.name, dir, config).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fresh.ready().await {
        assert!(
            Instant::now() < deadline,
            "{} never became ready",
            fresh.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        version_of(&fresh).await.unwrap(),
        active,
        "{} ready before it ran the active generation",
        fresh.name
    );
    fresh
}
