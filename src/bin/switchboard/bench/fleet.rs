//! `switchboard bench fleet`: what the shared store costs a routed call. The same server is
//! run twice in this process, with the in-memory ledger and with Redis, each behind an API
//! key with a requests-per-minute limit (so every RouteDecision does its quota round trip),
//! and RouteDecision is timed one call at a time (p50) and at a concurrency (throughput).
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use switchboard::config::Config;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;
use tonic::transport::Channel;

use super::{cpu_time, synthetic_prompt, Stats};

const KEY: &str = "bench-fleet-key";

/// One mode's numbers.
pub struct Mode {
    pub name: &'static str,
    pub single: Stats,
    pub rps: f64,
    /// This process's CPU (clients and server) per call in the concurrent phase, µs.
    pub cpu_us: f64,
}

pub struct Report {
    pub concurrency: usize,
    pub modes: Vec<Mode>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "RouteDecision with a requests-per-minute quota, gRPC over loopback"
        )?;
        for m in &self.modes {
            writeln!(
                f,
                "{:<16} c=1 {}   c={} {:8.0} req/s  {:6.1} µs CPU/call (clients + server)",
                m.name, m.single, self.concurrency, m.rps, m.cpu_us
            )?;
        }
        if let [a, b] = &self.modes[..] {
            writeln!(
                f,
                "shared − local: p50 {:+.3} ms, throughput {:.0}% here; with Redis on cores of its own, \
                 CPU-bound throughput would be {:.0}% (the ratio of CPU per call)",
                b.single.p50 - a.single.p50,
                100.0 * b.rps / a.rps,
                100.0 * a.cpu_us / b.cpu_us
            )?;
        }
        Ok(())
    }
}

/// Writes a keys file with one key under a limit no benchmark reaches.
pub fn keys_file(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join("bench-keys.toml");
    let text = format!(
        "[[keys]]\nsha256 = \"{}\"\ntenant = \"bench\"\nname = \"bench\"\nrequests_per_minute = 4000000000\n",
        switchboard::auth::hash_key(KEY)
    );
    std::fs::write(&p, text)?;
    Ok(p)
}

fn request(i: usize) -> tonic::Request<RouteDecisionRequest> {
    let mut r = tonic::Request::new(RouteDecisionRequest {
        prompt: synthetic_prompt(i % 256, 24),
        ..Default::default()
    });
    if let Ok(v) = format!("Bearer {KEY}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Times `iterations` calls one at a time, then `iterations` calls at `concurrency`.
pub async fn measure(
    name: &'static str,
    addr: SocketAddr,
    iterations: usize,
    concurrency: usize,
) -> anyhow::Result<Mode> {
    let ch = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let c = RouterClient::new(ch);
    for i in 0..256 {
        c.clone().route_decision(request(i)).await?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let t = Instant::now();
        c.clone().route_decision(request(i)).await?;
        samples.push(t.elapsed());
    }
    let single = Stats::from(&mut samples);
    let (t, cpu0) = (Instant::now(), cpu_time());
    let per = iterations.div_ceil(concurrency.max(1));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    c.clone().route_decision(request(w * per + i)).await?;
                }
                Ok::<_, tonic::Status>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let calls = (per * concurrency.max(1)) as f64;
    let rps = calls / t.elapsed().as_secs_f64().max(1e-9);
    let cpu_us = (cpu_time() - cpu0).as_secs_f64() * 1e6 / calls;
    Ok(Mode {
        name,
        single,
        rps,
        cpu_us,
    })
}

/// `cfg` with the bench key file and, when given, the shared store.
pub fn config(mut cfg: Config, keys: &std::path::Path, redis: Option<&str>) -> Config {
    cfg.server.api_keys_file = Some(keys.to_path_buf());
    cfg.fleet.redis_url = redis.map(str::to_string);
    cfg.fleet.key_prefix = format!("bench-{}", std::process::id());
    cfg
}
