//! The shipped dashboard and alert rules: promtool accepts the rules and their unit tests, and
//! every metric either names exists in the /metrics of a live server that served routing,
//! completions with a failover, a quota refusal, a budget, a refused swap and a refused reload.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard::auth::hash_key;
use switchboard::grpc::with_bearer;
use switchboard::proto::v1::admin_client::AdminClient;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{
    Preferences, ReloadConfigRequest, RollbackClassifierRequest, RouteDecisionRequest,
};
use switchboard_mock::Mock;
use tonic::transport::Channel;

use crate::common::{self, ADMIN_TOKEN};

fn observability() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(observability())
        .output()
        .expect("promtool runs (tests/setup.sh installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// Every `switchboard_…` name in the dashboard's queries and the rules' expressions.
fn named_metrics() -> BTreeSet<String> {
    let dash = std::fs::read_to_string(observability().join("switchboard-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let templating = dash["templating"]["list"].as_array().unwrap();
    exprs.extend(
        templating
            .iter()
            .map(|v| v["query"].as_str().unwrap().to_string()),
    );
    let rules = std::fs::read_to_string(observability().join("alerts.yml")).unwrap();
    exprs.extend(
        rules
            .lines()
            .skip_while(|l| !l.starts_with("groups:"))
            .map(str::to_string),
    );
    let mut names = BTreeSet::new();
    for e in &exprs {
        for (i, _) in e.match_indices("switchboard_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `switchboard_` in prose (a comment's "switchboard stopped…") is not a metric.
            if name.len() > "switchboard_".len() {
                names.insert(name);
            }
        }
    }
    assert!(names.len() > 20, "too few metric names found: {names:?}");
    names
}

fn keys_file(dir: &Path) -> PathBuf {
    let p = dir.join("keys.toml");
    let text = format!(
        "[[keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\nname = \"acme-key\"\n\n\
         [[keys]]\nsha256 = \"{}\"\ntenant = \"slow\"\nname = \"slow-key\"\nrequests_per_minute = 1\n\n\
         [tenants.acme]\nusd_per_day = 10.0\n",
        hash_key("acme-key"),
        hash_key("slow-key"),
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    with_bearer(msg, key).unwrap()
}

/// Routing, an invalid request, a quota refusal, completions that fail over, an HTTP call, a
/// refused rollback and a refused reload.
async fn drive(server: &common::TestServer) {
    let mut c = RouterClient::new(server.channel.clone());
    let route = |trade_off: f64| RouteDecisionRequest {
        prompt: "Prove that the square root of two is irrational".into(),
        preferences: Some(Preferences {
            trade_off: Some(trade_off),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.route_decision(with_key(route(0.5), "acme-key"))
        .await
        .unwrap();
    c.route_decision(with_key(route(5.0), "acme-key"))
        .await
        .unwrap_err();
    c.route_decision(with_key(route(0.5), "slow-key"))
        .await
        .unwrap();
    let refused = c
        .route_decision(with_key(route(0.5), "slow-key"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    for _ in 0..2 {
        let cost = common::complete_cost(c.clone(), "acme-key", "Say hello.", "").await;
        assert!(cost.unwrap() > 0.0);
    }
    let http = reqwest::Client::new()
        .get(format!("http://{}/v1/models", server.http))
        .bearer_auth("acme-key")
        .send()
        .await
        .unwrap();
    assert!(http.status().is_success(), "{http:?}");
    let ch = Channel::from_shared(format!("http://{}", server.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::new(ch);
    let rollback = RollbackClassifierRequest::default();
    admin
        .rollback_classifier(with_key(rollback, ADMIN_TOKEN))
        .await
        .unwrap_err();
    let reload = admin
        .reload_config(with_key(ReloadConfigRequest {}, ADMIN_TOKEN))
        .await;
    assert_eq!(reload.unwrap_err().code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_name_is_served() {
    let mock = Mock::start().await.unwrap();
    let dir = common::scratch_dir("observe");
    let mut cfg = common::catalog(vec![
        common::mock_backend("flaky", "mock-500", &mock.base_url(), 0.99),
        common::mock_backend("steady", "mock", &mock.base_url(), 0.5),
    ]);
    cfg.server.api_keys_file = Some(keys_file(&dir));
    cfg.server.budget_max_tokens = 64;
    let server = common::TestServer::start(cfg).await;
    drive(&server).await;
    let text = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let served: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<String> = named_metrics()
        .into_iter()
        .filter(|n| !served.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "named but not served: {missing:?}\n{text}"
    );
    assert!(text.contains("switchboard_failovers_total 2"), "{text}");
    server.stop().await;
}
