//! `switchboard bench soak`: a bounded endurance run. A real `switchboard serve` child process
//! in front of the in-tree mock upstream takes mixed traffic (routed and pinned, streaming and
//! not, gRPC and HTTP, ~10% upstream faults of every kind, client cancellations) while its
//! classifier is swapped every minute. Every answer is checked: byte-exact, or ended with an
//! error. The server's resident memory, open descriptors, threads and p99 are sampled.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use switchboard::classify::artifact::variant;
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::complete_event::Event;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard_mock::REPLY;

use super::soak_report::{Sample, SoakReport};

/// Fault backends: (name, mock mode). The first three fail before the first token (failover
/// serves routed calls); the rest fail a pinned call somewhere in its life.
const FAULTS: &[(&str, &str)] = &[
    ("f500", "mock-500"),
    ("f429", "mock-429"),
    ("fhang", "mock-hang"),
    ("fdie", "mock-die-3"),
    ("fmalformed", "mock-malformed"),
    ("fstall", "mock-stall"),
    ("fendless", "mock-endless"),
    ("f400", "mock-400"),
    ("f401", "mock-401"),
];

fn backend(name: &str, model: &str, url: &str, quality: f64) -> String {
    format!(
        "[[backends]]\nname = \"{name}\"\nprovider = \"openai_compatible\"\nbase_url = \"{url}\"\nmodel = \"{model}\"\n\
         input_price_per_mtok = 1.0\noutput_price_per_mtok = 2.0\ncontext_window = 100000\n\
         capabilities = [\"streaming\"]\nlatency_ms = 100\nmax_concurrency = 10000\n\
         first_token_timeout_ms = 300\nidle_timeout_ms = 300\nconnect_timeout_ms = 1000\n\
         quality = {{ default = {quality} }}\n\n"
    )
}

/// The soak's catalog: two good backends and one per fault, with short timeouts.
fn config_text(mock_url: &str, tmp: &Path) -> String {
    let mut s = format!(
        "default_policy = \"p\"\n\n[server]\nmax_sse_line_bytes = 65536\nbreaker_failures = 5\n\
         breaker_cooldown_ms = 2000\n\n[admin]\nstate_dir = \"{}\"\nartifact_root = \"{}\"\n\n\
         [policies.p]\ndefault_backend = \"good-a\"\ntrade_off = 0.9\n\n",
        tmp.join("state").display(),
        tmp.display()
    );
    s += &backend("good-a", "mock", mock_url, 0.8);
    s += &backend("good-b", "mock", mock_url, 0.7);
    for (name, mode) in FAULTS {
        s += &backend(name, mode, mock_url, 0.95);
    }
    s
}

/// What the checks of one call found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The whole answer, byte-exact.
    Exact,
    /// Ended with an error (event, status or error body): what a fault should give.
    Error,
    /// The client left on purpose.
    Cancelled,
    /// Neither whole nor an error: what must never happen.
    Violation,
}

/// Counters shared by the clients and the sampler.
#[derive(Default)]
struct Tally {
    exact: AtomicU64,
    errors: AtomicU64,
    cancelled: AtomicU64,
    violations: AtomicU64,
    /// Latencies of good calls since the last sample.
    window: Mutex<Vec<Duration>>,
}

impl Tally {
    fn record(&self, seen: Seen, took: Duration, faulty: bool) {
        let c = match seen {
            Seen::Exact => &self.exact,
            Seen::Error => &self.errors,
            Seen::Cancelled => &self.cancelled,
            Seen::Violation => &self.violations,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if seen == Seen::Exact && !faulty {
            self.window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(took);
        }
    }
}

/// The clients' connections.
#[derive(Clone)]
struct Clients {
    http: reqwest::Client,
    chat_url: String,
    grpc: RouterClient<tonic::transport::Channel>,
}

/// An HTTP chat call; `cancel` drops the stream after its first delta.
async fn http_chat(c: &Clients, body: serde_json::Value, stream: bool, cancel: bool) -> Seen {
    let Ok(resp) = c.http.post(&c.chat_url).json(&body).send().await else {
        return Seen::Violation;
    };
    let ok = resp.status().is_success();
    if !stream || !ok {
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        return match (ok, v["choices"][0]["message"]["content"].as_str()) {
            (true, Some(t)) if t == REPLY => Seen::Exact,
            (false, _) if v["error"]["message"].is_string() => Seen::Error,
            _ => Seen::Violation,
        };
    }
    let mut events = resp.bytes_stream().eventsource();
    let mut text = String::new();
    while let Some(ev) = events.next().await {
        let Ok(ev) = ev else { return Seen::Violation };
        if ev.data == "[DONE]" {
            return if text == REPLY {
                Seen::Exact
            } else {
                Seen::Violation
            };
        }
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
        if v["error"]["message"].is_string() {
            return Seen::Error;
        }
        if let Some(d) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(d);
            if cancel && !d.is_empty() {
                return Seen::Cancelled;
            }
        }
    }
    Seen::Violation
}

/// A gRPC `Complete` call.
async fn grpc_complete(c: &Clients, prompt: String, allow: &[&str], pinned: &str) -> Seen {
    let req = pb::CompleteRequest {
        route: Some(pb::RouteDecisionRequest {
            prompt,
            preferences: Some(pb::Preferences {
                allow_backends: allow.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        pinned_backend: pinned.into(),
        ..Default::default()
    };
    let mut s = match c.grpc.clone().complete(req).await {
        Ok(r) => r.into_inner(),
        Err(_) => return Seen::Error,
    };
    let mut text = String::new();
    loop {
        match s.message().await {
            Ok(Some(ev)) => match ev.event {
                Some(Event::Delta(d)) => text.push_str(&d.text),
                Some(Event::Done(_)) => {
                    return if text == REPLY {
                        Seen::Exact
                    } else {
                        Seen::Violation
                    };
                }
                _ => {}
            },
            Ok(None) => return Seen::Violation,
            Err(_) => return Seen::Error,
        }
    }
}

fn chat_body(prompt: &str, model: &str, stream: bool, allow: &[&str]) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
        "switchboard": {"allow_backends": allow}})
}

/// One call of the mix; `k` picks the scenario. Returns what was seen and whether the call
/// was aimed at a fault.
async fn one(c: &Clients, k: usize, prompt: String) -> (Seen, bool) {
    const GOOD: &[&str] = &["good-a", "good-b"];
    let fault = FAULTS[k / 100 % FAULTS.len()].0;
    let early = FAULTS[k / 100 % 3].0;
    match k % 100 {
        0..=29 => (
            http_chat(c, chat_body(&prompt, "auto", true, GOOD), true, false).await,
            false,
        ),
        30..=44 => (
            http_chat(c, chat_body(&prompt, "good-b", false, &[]), false, false).await,
            false,
        ),
        45..=64 => (grpc_complete(c, prompt, GOOD, "").await, false),
        65..=74 => {
            let req = pb::RouteDecisionRequest {
                prompt,
                ..Default::default()
            };
            match c.grpc.clone().route_decision(req).await {
                Ok(r) if !r.get_ref().backends.is_empty() => (Seen::Exact, false),
                _ => (Seen::Violation, false),
            }
        }
        75..=79 => (
            http_chat(c, chat_body(&prompt, "auto", true, GOOD), true, true).await,
            false,
        ),
        // A fault ranked first: failover must still give the whole answer.
        80..=89 => {
            let allow = [early, "good-a"];
            (
                http_chat(c, chat_body(&prompt, "auto", true, &allow), true, false).await,
                true,
            )
        }
        90..=94 => (
            http_chat(c, chat_body(&prompt, fault, true, &[]), true, false).await,
            true,
        ),
        _ => (grpc_complete(c, prompt, &[], fault).await, true),
    }
}

/// One client: calls back to back until `until`.
async fn client(c: Clients, w: usize, until: Instant, tally: Arc<Tally>) {
    let mut i = 0usize;
    while Instant::now() < until {
        let k = (w * 7919 + i * 104_729) % 100_000;
        // One prompt in four repeats (cache hits), the rest are new (encoder on the path).
        let prompt = if i % 4 == 0 {
            "Summarise the plot of Hamlet in two sentences.".to_string()
        } else {
            format!("soak {w} {i}: {}", super::synthetic_prompt(w * 31 + i, 20))
        };
        let t = Instant::now();
        let (seen, faulty) = one(&c, k, prompt).await;
        tally.record(seen, t.elapsed(), faulty);
        i += 1;
    }
}

/// The server child, its addresses, and a count of panics in its log.
struct Server {
    child: Child,
    grpc: String,
    http: String,
    admin: String,
    panics: Arc<AtomicUsize>,
}

fn spawn_server(config: &Path, token: &str) -> anyhow::Result<Server> {
    let exe = std::env::current_exe()?;
    let any = "127.0.0.1:0";
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--grpc-addr",
            any,
            "--http-addr",
            any,
            "--admin-addr",
            any,
        ])
        .arg("--config")
        .arg(config)
        .env("SWITCHBOARD_ADMIN_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let panics = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = panics.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("panicked") {
                seen.fetch_add(1, Ordering::Relaxed);
                eprintln!("server: {line}");
            }
            if line.contains("switchboard bound") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(120))?;
    let addr = |k: &str| -> anyhow::Result<String> {
        let v = line
            .split(&format!("{k}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next());
        v.map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no {k}= in {line:?}"))
    };
    Ok(Server {
        grpc: addr("grpc")?,
        http: addr("http")?,
        admin: addr("admin")?,
        child,
        panics,
    })
}

/// RSS (MB), open descriptors and threads of `pid`, from /proc.
fn proc_usage(pid: u32) -> (f64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| -> f64 {
        let line = status.lines().find(|l| l.starts_with(k)).unwrap_or("");
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (field("VmRSS:") / 1024.0, fds, field("Threads:") as usize)
}

/// Swaps the classifier to the next variant every `every`, until `until`.
async fn swapper(
    admin: String,
    token: String,
    dirs: [PathBuf; 2],
    every: Duration,
    until: Instant,
) -> usize {
    let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{admin}")) else {
        return 0;
    };
    let Ok(ch) = ch.connect().await else { return 0 };
    let mut a = pb::admin_client::AdminClient::new(ch);
    let mut n = 0;
    while Instant::now() + every < until {
        tokio::time::sleep(every).await;
        let req = pb::SwapClassifierRequest {
            source: Some(pb::swap_classifier_request::Source::Path(
                dirs[n % 2].display().to_string(),
            )),
            ..Default::default()
        };
        let Ok(req) = switchboard::grpc::with_bearer(req, &token) else {
            break;
        };
        match a.swap_classifier(req).await {
            Ok(r) if r.get_ref().swapped => n += 1,
            Ok(r) => eprintln!("swap {n} refused: {:?}", r.get_ref().messages),
            Err(e) => eprintln!("swap {n} failed: {e}"),
        }
    }
    n
}

/// Runs the soak for `secs` with `concurrency` clients, sampling every `sample_secs`.
pub async fn soak(
    secs: f64,
    concurrency: usize,
    sample_secs: f64,
    swap_secs: f64,
) -> anyhow::Result<SoakReport> {
    let mock = switchboard_mock::Mock::start().await?;
    let tmp = std::env::temp_dir().join(format!("switchboard-soak-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let config = tmp.join("soak.toml");
    std::fs::write(&config, config_text(&mock.base_url(), &tmp))?;
    let base = switchboard::config::ServerConfig::default().classifier_dir;
    let dirs = [tmp.join("variant-a"), tmp.join("variant-b")];
    variant(&base, &dirs[0], 1.05)?;
    variant(&base, &dirs[1], 0.95)?;
    let token = switchboard::engine::new_id();
    let mut server = spawn_server(&config, &token)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))?
        .connect()
        .await?;
    let clients = Clients {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?,
        chat_url: format!("http://{}/v1/chat/completions", server.http),
        grpc: RouterClient::new(channel),
    };
    let (start, tally) = (Instant::now(), Arc::new(Tally::default()));
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        tasks.spawn(client(clients.clone(), w, until, tally.clone()));
    }
    let swaps = tokio::spawn(swapper(
        server.admin.clone(),
        token,
        dirs,
        Duration::from_secs_f64(swap_secs),
        until,
    ));
    let samples = sample(server.child.id(), &tally, start, until, sample_secs).await;
    while tasks.join_next().await.is_some() {}
    let swaps = swaps.await.unwrap_or(0);
    let status = stop(&mut server.child)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(SoakReport {
        secs,
        concurrency,
        swap_secs,
        samples,
        exact: tally.exact.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        cancelled: tally.cancelled.load(Ordering::Relaxed),
        violations: tally.violations.load(Ordering::Relaxed),
        swaps,
        panics: server.panics.load(Ordering::Relaxed),
        exit: status,
    })
}

/// Samples the server every `every` seconds until `until`.
async fn sample(
    pid: u32,
    tally: &Tally,
    start: Instant,
    until: Instant,
    every: f64,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut last = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs_f64(every)).await;
        let mut window =
            std::mem::take(&mut *tally.window.lock().unwrap_or_else(|p| p.into_inner()));
        let (rss_mb, fds, threads) = proc_usage(pid);
        let total = tally.exact.load(Ordering::Relaxed) + tally.errors.load(Ordering::Relaxed);
        let s = Sample {
            t: start.elapsed().as_secs_f64(),
            rss_mb,
            fds,
            threads,
            p99_ms: super::Stats::from(&mut window).p99,
            calls: total - last,
        };
        last = total;
        eprintln!("{s}");
        out.push(s);
    }
    out
}

/// SIGTERM, then the exit code (bounded wait).
fn stop(child: &mut Child) -> anyhow::Result<Option<i32>> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait()? {
            return Ok(s.code());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    Ok(None)
}
