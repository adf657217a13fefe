//! `switchboard bench proxy`: what switchboard adds over calling the upstream directly. The
//! in-tree mock upstream called directly, `Complete` through the real gRPC server (backend
//! pinned, then routed) and the OpenAI-compatible HTTP facade (pinned; streaming and not) run
//! side by side at several concurrencies.
use std::fmt;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use super::{cpu_time, Stats};
use switchboard::proto::v1::complete_event::Event;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{CompleteRequest, RouteDecisionRequest};

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct Row {
    pub path: &'static str,
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub rps: f64,
    pub total: Stats,
    pub ttfb: Stats,
    /// Process CPU time per request, ms (client + mock included; compare rows).
    pub cpu_ms: f64,
}

#[derive(Debug, Clone)]
pub struct ProxyReport {
    pub rows: Vec<Row>,
}

impl fmt::Display for ProxyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:>4} {:>6} {:>4} {:>9}  {:>8} {:>8}  {:>8} {:>8}  {:>7}",
            "path",
            "conc",
            "reqs",
            "err",
            "req/s",
            "p50 ms",
            "p99 ms",
            "ttfb50",
            "ttfb99",
            "cpu ms"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<24} {:>4} {:>6} {:>4} {:>9.1}  {:>8.3} {:>8.3}  {:>8.3} {:>8.3}  {:>7.3}",
                r.path,
                r.concurrency,
                r.requests,
                r.errors,
                r.rps,
                r.total.p50,
                r.total.p99,
                r.ttfb.p50,
                r.ttfb.p99,
                r.cpu_ms
            )?;
        }
        Ok(())
    }
}

/// (time to first delta, total, ok)
type Sample = (Duration, Duration, bool);

/// One OpenAI-style chat call (the mock directly, or switchboard's facade: same wire format).
async fn openai_call(
    http: reqwest::Client,
    url: String,
    model: &'static str,
    stream: bool,
) -> Sample {
    let start = Instant::now();
    let body = serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]});
    let Ok(resp) = http.post(url).json(&body).send().await else {
        return (start.elapsed(), start.elapsed(), false);
    };
    if !resp.status().is_success() {
        return (start.elapsed(), start.elapsed(), false);
    }
    if !stream {
        let ok = resp
            .bytes()
            .await
            .is_ok_and(|b| b.windows(9).any(|w| w == b"\"choices\""));
        return (start.elapsed(), start.elapsed(), ok);
    }
    let mut ev = resp.bytes_stream().eventsource();
    let mut first = None;
    let mut ok = false;
    while let Some(e) = ev.next().await {
        let Ok(e) = e else { break };
        if first.is_none() && e.data.contains("\"content\":\"T") {
            first = Some(start.elapsed());
        }
        if e.data == "[DONE]" {
            ok = true;
        }
    }
    (
        first.unwrap_or(start.elapsed()),
        start.elapsed(),
        ok && first.is_some(),
    )
}

async fn via_grpc(
    mut c: RouterClient<tonic::transport::Channel>,
    pinned: bool,
    prompt: String,
) -> Sample {
    let start = Instant::now();
    let req = CompleteRequest {
        route: Some(RouteDecisionRequest {
            prompt,
            ..Default::default()
        }),
        pinned_backend: if pinned { "mock".into() } else { String::new() },
        ..Default::default()
    };
    let Ok(resp) = c.complete(req).await else {
        return (start.elapsed(), start.elapsed(), false);
    };
    let mut s = resp.into_inner();
    let (mut first, mut done) = (None, false);
    while let Ok(Some(ev)) = s.message().await {
        match ev.event {
            Some(Event::Delta(_)) if first.is_none() => first = Some(start.elapsed()),
            Some(Event::Done(_)) => done = true,
            _ => {}
        }
    }
    (first.unwrap_or(start.elapsed()), start.elapsed(), done)
}

async fn level<F, Fut>(path: &'static str, concurrency: usize, requests: usize, make: F) -> Row
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Sample> + Send + 'static,
{
    let cpu0 = cpu_time();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per_worker: Vec<Vec<Fut>> = (0..concurrency)
        .map(|w| {
            (0..requests)
                .filter(|i| i % concurrency == w)
                .map(&make)
                .collect()
        })
        .collect();
    for futs in per_worker {
        set.spawn(async move {
            let mut out = Vec::with_capacity(futs.len());
            for f in futs {
                out.push(f.await);
            }
            out
        });
    }
    let mut samples = Vec::with_capacity(requests);
    while let Some(r) = set.join_next().await {
        samples.extend(r.unwrap_or_default());
    }
    let wall = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let errors = samples.iter().filter(|s| !s.2).count();
    let (mut t, mut f): (Vec<Duration>, Vec<Duration>) = samples.iter().map(|s| (s.1, s.0)).unzip();
    Row {
        path,
        concurrency,
        requests,
        errors,
        rps: requests as f64 / wall.as_secs_f64(),
        total: Stats::from(&mut t),
        ttfb: Stats::from(&mut f),
        cpu_ms: cpu.as_secs_f64() * 1e3 / requests as f64,
    }
}

/// Runs the proxy benchmark: `mock_url` is the mock's base URL, `addr` switchboard's gRPC
/// address, with a catalog whose backend "mock" points at the mock.
pub async fn proxy(
    mock_url: &str,
    addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    levels: &[usize],
) -> Result<ProxyReport, String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{mock_url}/chat/completions");
    let facade = format!("http://{http_addr}/v1/chat/completions");
    let call = |url: &String, model: &'static str, stream: bool| {
        openai_call(http.clone(), url.clone(), model, stream)
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let client = RouterClient::new(channel);
    // Warm both paths (connections, classification of the routed prompt).
    for _ in 0..20 {
        call(&url, "mock", true).await;
        call(&facade, "mock", true).await;
        via_grpc(client.clone(), true, "warm".into()).await;
        via_grpc(
            client.clone(),
            false,
            "warm up the classification cache".into(),
        )
        .await;
    }
    let mut rows = Vec::new();
    for &c in levels {
        let n = (c * 40).clamp(400, 6000);
        rows.push(level("direct, stream", c, n, |_| call(&url, "mock", true)).await);
        rows.push(level("direct, non-stream", c, n, |_| call(&url, "mock", false)).await);
        rows.push(level("http facade, stream", c, n, |_| call(&facade, "mock", true)).await);
        rows.push(
            level("http facade, non-stream", c, n, |_| {
                call(&facade, "mock", false)
            })
            .await,
        );
        rows.push(
            level("grpc Complete, pinned", c, n, |_| {
                via_grpc(client.clone(), true, "hello".into())
            })
            .await,
        );
        rows.push(
            level("grpc Complete, routed", c, n, |_| {
                via_grpc(
                    client.clone(),
                    false,
                    "warm up the classification cache".into(),
                )
            })
            .await,
        );
    }
    // Routed with a new prompt each time: classification (encoder forward) on the path.
    rows.push(
        level("routed, uncached", 1, 100, |i| {
            via_grpc(
                client.clone(),
                false,
                format!("request {i}: please write a short poem about the sea"),
            )
        })
        .await,
    );
    Ok(ProxyReport { rows })
}
