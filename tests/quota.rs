//! Quotas and budgets in a single process (the in-memory ledger) over the real server and
//! the mock upstream: a requests-per-minute limit admits exactly its number, a spend budget
//! under concurrent clients is never overshot by more than one request's estimate, refusals
//! name the limit and carry Retry-After on both transports, and the usage report adds up to
//! the costs the clients were told.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use switchboard::auth::hash_key;
use switchboard::proto::v1::admin_client::AdminClient;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{GetUsageRequest, RouteDecisionRequest};
use switchboard_mock::Mock;
use tonic::transport::Channel;
use tonic::Code;

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn keys_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("keys.toml");
    let text = format!(
        "[[keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\nname = \"acme-rpm\"\nrequests_per_minute = 5\n\n\
         [[keys]]\nsha256 = \"{}\"\ntenant = \"thrifty\"\nname = \"thrifty-key\"\n\n\
         [tenants.thrifty]\nusd_per_day = 0.002\n",
        hash_key("rpm-key"),
        hash_key("budget-key"),
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// One completion's served cost, or the status it was refused with.
async fn complete(c: RouterClient<Channel>, key: &str) -> Result<f64, tonic::Status> {
    common::complete_cost(c, key, "Say hello to the budget.", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_admit_exactly_and_usage_adds_up() {
    let mock = Mock::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::catalog(vec![
        common::mock_backend("cheap", "mock", &mock.base_url(), 0.7),
        common::mock_backend("strong", "mock", &mock.base_url(), 0.9),
    ]);
    cfg.server.api_keys_file = Some(keys_file(dir.path()));
    // Small enough that the estimate stays an upper bound near the mock's real usage.
    cfg.server.budget_max_tokens = 20;
    let server = common::TestServer::start(cfg).await;
    let c = RouterClient::new(server.channel.clone());
    requests_per_minute(&server, c.clone()).await;
    let served = budget(c).await;
    usage_report(&server, &served).await;
    server.stop().await;
}

/// Exactly 5 of 8 pass; the rest name the limit with Retry-After, on both transports.
async fn requests_per_minute(server: &common::TestServer, mut c: RouterClient<Channel>) {
    // Requests per minute: exactly 5 of 8 pass; the rest name the limit with Retry-After.
    let route = || RouteDecisionRequest {
        prompt: "What is the capital of France?".into(),
        ..Default::default()
    };
    let mut ok = 0;
    for _ in 0..8 {
        match c.route_decision(with_key(route(), "rpm-key")).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message().contains("requests_per_minute limit of 5"),
                    "{e:?}"
                );
                let retry: u64 = e
                    .metadata()
                    .get("retry-after")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "{retry}");
            }
        }
    }
    assert_eq!(ok, 5);
    // The same key over HTTP: 429 with a Retry-After header.
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/route", server.http))
        .bearer_auth("rpm-key")
        .json(&serde_json::json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
}

/// A 0.002 USD daily budget under 50 concurrent completions: the served costs.
async fn budget(c: RouterClient<Channel>) -> Vec<f64> {
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(complete(c.clone(), "budget-key")))
        .collect();
    let (mut served, mut refused) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(cost) => served.push(cost),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("usd_per_day"), "{e:?}");
                refused += 1;
            }
        }
    }
    let spent: f64 = served.iter().sum();
    assert!(
        !served.is_empty() && refused > 0,
        "{} served, {refused} refused",
        served.len()
    );
    // The reservation is an upper bound of each real cost here, so not even one request over.
    assert!(spent <= 0.002 + 1e-9, "spent {spent}");
    served
}

async fn usage_report(server: &common::TestServer, served: &[f64]) {
    let spent: f64 = served.iter().sum();
    // The usage report: the tenant's spend is the sum of the served costs, to the micro-dollar.
    let ch = Channel::from_shared(format!("http://{}", server.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut a = AdminClient::new(ch);
    let rep = a
        .get_usage(with_key(GetUsageRequest { days: 1 }, common::ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let row = |scope: &str, name: &str| {
        rep.rows
            .iter()
            .find(|r| r.scope == scope && r.name == name)
            .unwrap_or_else(|| panic!("no {scope} {name} in {:?}", rep.rows))
            .clone()
    };
    let t = row("tenant", "thrifty");
    assert_eq!(t.requests, served.len() as u64);
    assert!(
        (t.usd - spent).abs() <= 1e-6 * served.len() as f64,
        "{} vs {spent}",
        t.usd
    );
    assert_eq!(row("key", "thrifty-key").requests, served.len() as u64);
    let by_backend: u64 = rep
        .rows
        .iter()
        .filter(|r| r.scope == "backend")
        .map(|r| r.requests)
        .sum();
    assert_eq!(by_backend, served.len() as u64);
    let bad = a
        .get_usage(with_key(
            GetUsageRequest { days: 1000 },
            common::ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert!(bad.message().contains("days"), "{bad:?}");

    cli_usage_matches(server, t.requests).await;
    // And the metrics say the same.
    let m = server.engine_metrics();
    assert!(
        m.contains("switchboard_quota_rejections_total{limit=\"usd_per_day\",scope=\"tenant\"}"),
        "{m}"
    );
    assert!(m.contains("switchboard_spend_usd_total{name=\"thrifty\",scope=\"tenant\"}"));
}

/// `switchboard usage --json` prints the same report as the Admin call.
async fn cli_usage_matches(server: &common::TestServer, requests: u64) {
    let admin = format!("http://{}", server.admin);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "usage",
                "--admin",
                &admin,
                "--token",
                common::ADMIN_TOKEN,
                "--json",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scope"] == "tenant" && r["name"] == "thrifty")
        .expect("the tenant's row");
    assert_eq!(cli["requests"].as_u64(), Some(requests));
}
