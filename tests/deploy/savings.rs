//! The savings report on a recorded run of mixed traffic (two tenants, code, maths and chat
//! prompts, routed and pinned completions, three backends of different prices and
//! qualities): its spend is the sum of the costs the clients were told, and its counterfactual
//! costs match an independent recomputation from the catalog and each completion's tokens.
use std::collections::BTreeMap;

use switchboard::auth::hash_key;
use switchboard::config::{Backend, Config};
use switchboard::grpc::with_bearer;
use switchboard::proto::v1::admin_client::AdminClient;
use switchboard::proto::v1::complete_event::Event;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{CompleteRequest, GetSavingsRequest, RouteDecisionRequest};
use switchboard_mock::Mock;
use tonic::transport::Channel;

use crate::common::{self, ADMIN_TOKEN};

/// What one served completion told its client.
#[derive(Debug, Default)]
struct Told {
    tenant: &'static str,
    intent: String,
    domain: String,
    policy: String,
    backend: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    cost_usd: f64,
}

fn backend(mock: &Mock, name: &str, prices: (f64, f64), q: &[(&str, f64)]) -> Backend {
    let mut b = common::mock_backend(name, "mock", &mock.base_url(), 0.0);
    (b.input_price_per_mtok, b.output_price_per_mtok) = prices;
    b.quality = q.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    b
}

fn catalog(mock: &Mock, dir: &std::path::Path) -> Config {
    let mut cfg = common::catalog(vec![
        backend(
            mock,
            "cheap",
            (0.1, 0.4),
            &[("default", 0.6), ("code", 0.5)],
        ),
        backend(
            mock,
            "coder",
            (1.0, 4.0),
            &[("default", 0.7), ("code", 0.95)],
        ),
        backend(
            mock,
            "strong",
            (5.0, 20.0),
            &[("default", 0.9), ("code", 0.9)],
        ),
    ]);
    let keys = dir.join("keys.toml");
    let text = format!(
        "[[keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\nname = \"acme-key\"\n\n\
         [[keys]]\nsha256 = \"{}\"\ntenant = \"beta\"\nname = \"beta-key\"\n",
        hash_key("acme-key"),
        hash_key("beta-key"),
    );
    std::fs::write(&keys, text).unwrap();
    cfg.server.api_keys_file = Some(keys);
    cfg
}

async fn complete(c: &mut RouterClient<Channel>, key: &str, prompt: &str, pinned: &str) -> Told {
    let req = CompleteRequest {
        route: Some(RouteDecisionRequest {
            prompt: prompt.into(),
            ..Default::default()
        }),
        pinned_backend: pinned.into(),
        ..Default::default()
    };
    let mut s = c
        .complete(with_bearer(req, key).unwrap())
        .await
        .unwrap()
        .into_inner();
    let mut told = Told::default();
    while let Some(ev) = s.message().await.unwrap() {
        match ev.event {
            Some(Event::Decision(d)) => {
                if let Some(r) = d.decision {
                    let cl = r.classification.unwrap();
                    (told.intent, told.domain, told.policy) = (cl.intent, cl.domain, r.policy);
                }
            }
            Some(Event::Done(d)) => {
                let u = d.usage.unwrap();
                (told.prompt_tokens, told.completion_tokens) =
                    (u.prompt_tokens, u.completion_tokens);
                (told.backend, told.cost_usd) = (d.backend, d.cost_usd);
            }
            _ => {}
        }
    }
    assert!(!told.backend.is_empty(), "no Done for {prompt:?}");
    told
}

/// The independent check: quality as the catalog states it (the domain's, else the intent's,
/// else the default), the strongest backend (cheaper on a tie), and each price.
fn counterfactual(cfg: &Config, t: &Told) -> (f64, f64) {
    let quality = |b: &Backend| {
        b.domain_quality
            .get(&t.domain)
            .or_else(|| b.quality.get(&t.intent))
            .or_else(|| b.quality.get("default"))
            .copied()
            .unwrap()
    };
    let price = |b: &Backend| {
        (t.prompt_tokens as f64 * b.input_price_per_mtok
            + t.completion_tokens as f64 * b.output_price_per_mtok)
            / 1e6
    };
    let mut best = &cfg.backends[0];
    for b in &cfg.backends {
        let (q, bq) = (quality(b), quality(best));
        if q > bq || (q == bq && price(b) < price(best)) {
            best = b;
        }
    }
    let policy = if t.policy.is_empty() {
        &cfg.default_policy
    } else {
        &t.policy
    };
    let default = &cfg.policies[policy].default_backend;
    let default = cfg.backends.iter().find(|b| &b.name == default).unwrap();
    (price(best), price(default))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_adds_up_and_its_counterfactuals_recompute() {
    let mock = Mock::start().await.unwrap();
    let dir = common::scratch_dir("savings");
    let cfg = catalog(&mock, &dir);
    let server = common::TestServer::start(cfg.clone()).await;
    let mut c = RouterClient::new(server.channel.clone());
    let traffic = [
        (
            "acme-key",
            "Write a Rust function that parses an ISO date",
            "",
        ),
        (
            "acme-key",
            "Fix this Python: for i in range(10) print(i)",
            "",
        ),
        ("acme-key", "What is the derivative of x^3 + 2x?", ""),
        ("beta-key", "Hi! How are you today?", ""),
        ("beta-key", "Translate 'good morning' into French", ""),
        (
            "beta-key",
            "Summarize: the meeting moved to Tuesday at noon.",
            "strong",
        ),
        ("acme-key", "Tell me a joke about databases", "cheap"),
    ];
    let mut told = Vec::new();
    for (key, prompt, pinned) in traffic {
        let mut t = complete(&mut c, key, prompt, pinned).await;
        t.tenant = if key == "acme-key" { "acme" } else { "beta" };
        told.push(t);
    }
    let ch = Channel::from_shared(format!("http://{}", server.admin)).unwrap();
    let mut admin = AdminClient::new(ch.connect().await.unwrap());
    let r = admin
        .get_savings(with_bearer(GetSavingsRequest::default(), ADMIN_TOKEN).unwrap())
        .await
        .unwrap()
        .into_inner();
    let total = r.total.clone().unwrap();
    assert_eq!(total.requests, told.len() as u64, "{r:?}");
    let spent: f64 = told.iter().map(|t| t.cost_usd).sum();
    assert!(
        (total.cost_usd - spent).abs() < 1e-9,
        "{} vs {spent}",
        total.cost_usd
    );
    let (strongest, default) = told
        .iter()
        .map(|t| counterfactual(&cfg, t))
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    assert!(
        (total.strongest_cost_usd - strongest).abs() < 1e-9,
        "{total:?} vs {strongest}"
    );
    assert!(
        (total.default_cost_usd - default).abs() < 1e-9,
        "{total:?} vs {default}"
    );
    let saved = strongest - spent;
    assert!((total.savings_vs_strongest_usd - saved).abs() < 1e-9);
    assert!((total.savings_vs_strongest_percent - saved / strongest * 100.0).abs() < 1e-6);
    let mut by_tenant: BTreeMap<&str, f64> = BTreeMap::new();
    for t in &told {
        *by_tenant.entry(t.tenant).or_default() += t.cost_usd;
    }
    for g in &r.by_tenant {
        assert!(
            (by_tenant[g.name.as_str()] - g.cost_usd).abs() < 1e-9,
            "{g:?}"
        );
    }
    assert_eq!(r.by_tenant.len(), 2);
    let backends: u64 = r.by_backend.iter().map(|g| g.requests).sum();
    assert_eq!(backends, told.len() as u64);
    cli(&server, total.cost_usd, &dir);
    server.stop().await;
}

/// `switchboard savings --json` prints the same totals; `--html` writes a page with SVG bars.
fn cli(server: &common::TestServer, spent: f64, dir: &std::path::Path) {
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["savings", "--admin", &format!("http://{}", server.admin)])
            .args(extra)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    let cost = v["total"]["cost_usd"].as_f64().unwrap();
    assert!((cost - spent).abs() < 1e-12, "{v}");
    let page = dir.join("savings.html");
    run(&["--html", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(page).unwrap();
    assert!(
        html.contains("<svg") && html.contains("What routing saved"),
        "{html}"
    );
}
