//! Three real `switchboard serve` processes sharing a real `redis-server`, with the in-tree
//! mock upstream: breakers opened on one replica are skipped by all and probed once by the
//! fleet; a requests-per-minute limit and a spend budget hold across replicas; a store
//! outage costs no routing request, and the usage written meanwhile arrives afterwards; the
//! classifier rolls out to every replica, and back (rollout.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod partition;
mod rollout;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard::auth::hash_key;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{GetUsageRequest, RouteDecisionRequest};
use switchboard_mock::Mock;
use tonic::transport::Channel;
use tonic::Code;

use harness::{metric, with_key, Redis, Replica};

const COOLDOWN_MS: u64 = 2_000;

fn write_config(dir: &std::path::Path, i: usize, redis: &str, mock: &str) -> std::path::PathBuf {
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nsha256 = \"{}\"\ntenant = \"ops\"\nname = \"free\"\n\n\
             [[keys]]\nsha256 = \"{}\"\ntenant = \"rl\"\nname = \"rpm60\"\nrequests_per_minute = 60\n\n\
             [[keys]]\nsha256 = \"{}\"\ntenant = \"thrifty\"\nname = \"budget\"\n\n\
             [tenants.thrifty]\nusd_per_day = 0.002\n",
            hash_key("free-key"),
            hash_key("rpm-key"),
            hash_key("budget-key"),
        ),
    )
    .unwrap();
    let backend = |name: &str, q: f64| {
        format!(
            "[[backends]]\nname = \"{name}\"\nprovider = \"openai_compatible\"\nbase_url = \"{mock}\"\n\
             model = \"mock\"\ninput_price_per_mtok = 1.0\noutput_price_per_mtok = 4.0\n\
             context_window = 100000\nlatency_ms = 100\nquality = {{ default = {q} }}\n\n"
        )
    };
    let state = dir.join(format!("state-{i}"));
    let text = format!(
        "default_policy = \"p\"\n\n[server]\napi_keys_file = \"{}\"\nbreaker_failures = 3\n\
         breaker_cooldown_ms = {COOLDOWN_MS}\nbudget_max_tokens = 20\n\n[admin]\nstate_dir = \"{}\"\n\
         gate_set = \"{}\"\n\n\
         [fleet]\nredis_url = \"{redis}\"\nreplica_id = \"r{i}\"\nbreaker_sync_ms = 100\n\
         artifact_url = \"file://{}\"\n\n{}{}\
         [policies.p]\ndefault_backend = \"good\"\n",
        keys.display(),
        state.display(),
        common::fixture("gate_small.jsonl").display(),
        dir.join("artifacts").display(),
        backend("good", 0.8),
        backend("down", 0.5),
    );
    let path = dir.join(format!("replica-{i}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn prompt(p: &str) -> RouteDecisionRequest {
    RouteDecisionRequest {
        prompt: p.into(),
        ..Default::default()
    }
}

/// A completion's served cost, or the status that ended it.
async fn complete(c: RouterClient<Channel>, key: &str, pinned: &str) -> Result<f64, tonic::Status> {
    common::complete_cost(c, key, "Say hello to the fleet.", pinned).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_breakers_quotas_and_ride_out_a_store_outage() {
    let dir = common::scratch_dir("fleet");
    let mut redis = Redis::start(&dir);
    let mock = Mock::start().await.unwrap();
    let (mut replicas, mut configs) = (Vec::new(), Vec::new());
    for i in 1..=3 {
        let cfg = write_config(&dir, i, &redis.url(), &mock.base_url());
        replicas.push(Replica::start(&format!("r{i}"), &dir, &cfg).await);
        configs.push(cfg);
    }
    shared_breakers(&replicas, &mock).await;
    exact_quotas(&replicas).await;
    fleet_feedback(&replicas, &redis).await;
    store_outage(&dir, &replicas, &mut redis).await;
    rollout::rollout(&dir, &redis, &mut replicas, &configs).await;
    drop(replicas);
    // A partition of one replica from a store of its own, in a network namespace.
    let pdir = common::scratch_dir("partition");
    let config_for = |url: &str, i: usize| write_config(&pdir, i, url, &mock.base_url());
    partition::partition(&pdir, config_for).await;
}

/// A backend failing through replica 1 is skipped by replicas 2 and 3 within a second; after
/// the cooldown the whole fleet sends one probe, and a good probe closes it everywhere.
async fn shared_breakers(r: &[Replica], mock: &Mock) {
    mock.counters.fail_all.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let e = complete(r[0].router.clone(), "free-key", "down")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    let opened = Instant::now();
    let open_on = |m: &str| {
        metric(
            m,
            "switchboard_breaker_transitions_total",
            &["down", "\"open\""],
        )
    };
    assert_eq!(open_on(&r[0].metrics().await), 1.0);
    for x in &r[1..] {
        loop {
            if open_on(&x.metrics().await) >= 1.0 {
                break;
            }
            assert!(
                opened.elapsed() < Duration::from_secs(1),
                "{} did not follow within 1 s",
                x.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Skipped without a call.
        let before = mock.counters.requests.load(Ordering::SeqCst);
        let e = complete(x.router.clone(), "free-key", "down")
            .await
            .unwrap_err();
        assert!(e.message().contains("circuit open"), "{e:?}");
        assert_eq!(mock.counters.requests.load(Ordering::SeqCst), before);
    }
    // Past the cooldown, traffic on every replica: the fleet sends exactly one probe (it
    // fails, and reopens the breaker everywhere for another cooldown).
    let before = mock.counters.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(COOLDOWN_MS).saturating_sub(opened.elapsed())).await;
    let window = Instant::now() + Duration::from_millis(COOLDOWN_MS * 3 / 4);
    while Instant::now() < window {
        let calls: Vec<_> = r
            .iter()
            .map(|x| complete(x.router.clone(), "free-key", "down"))
            .collect();
        for res in futures_util::future::join_all(calls).await {
            assert!(res.is_err());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        mock.counters.requests.load(Ordering::SeqCst) - before,
        1,
        "one probe in the fleet"
    );
    // The upstream recovers: the next probe closes the breaker on every replica.
    mock.counters.fail_all.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_millis(COOLDOWN_MS * 4);
    'closed: loop {
        assert!(
            Instant::now() < deadline,
            "the fleet did not close the breaker"
        );
        let calls: Vec<_> = r
            .iter()
            .map(|x| complete(x.router.clone(), "free-key", "down"))
            .collect();
        let ok = futures_util::future::join_all(calls)
            .await
            .iter()
            .filter(|x| x.is_ok())
            .count();
        if ok == r.len() {
            break 'closed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 60 requests per minute through three replicas admit 60, not 180; a 0.002 USD budget
/// under 50 concurrent completions is not overshot, and the recorded spend is the sum of
/// the costs the clients were told.
async fn exact_quotas(r: &[Replica]) {
    let mut admitted = 0;
    for i in 0..90 {
        let mut c = r[i % 3].router.clone();
        match c
            .route_decision(with_key(prompt("What is 2 + 2?"), "rpm-key"))
            .await
        {
            Ok(_) => admitted += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.metadata().get("retry-after").is_some());
            }
        }
    }
    assert_eq!(admitted, 60);

    let tasks: Vec<_> = (0..50)
        .map(|i| tokio::spawn(complete(r[i % 3].router.clone(), "budget-key", "")))
        .collect();
    let mut served = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(cost) => served.push(cost),
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    let spent: f64 = served.iter().sum();
    assert!(
        !served.is_empty() && served.len() < 50,
        "{} served",
        served.len()
    );
    assert!(spent <= 0.002 + 1e-9, "spent {spent} over the 0.002 budget");
    // Settlements are written after the answer: wait (bounded) until all have landed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut a = r[2].admin().await;
        let rep = a
            .get_usage(with_key(GetUsageRequest { days: 1 }, common::ADMIN_TOKEN))
            .await
            .unwrap()
            .into_inner();
        let t = rep
            .rows
            .iter()
            .find(|x| x.scope == "tenant" && x.name == "thrifty");
        if let Some(t) = t.filter(|t| t.requests == served.len() as u64) {
            assert!(
                (t.usd - spent).abs() <= 1e-6 * served.len() as f64,
                "{} vs {spent}",
                t.usd
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached {} requests: {t:?}",
            served.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet_savings(r, served.len() as u64, spent).await;
}

/// The savings report read on one replica covers the completions every replica served.
async fn fleet_savings(r: &[Replica], served: u64, spent: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut a = r[1].admin().await;
        let req = switchboard::proto::v1::GetSavingsRequest::default();
        let rep = a
            .get_savings(with_key(req, common::ADMIN_TOKEN))
            .await
            .unwrap()
            .into_inner();
        assert!(rep.fleet_wide);
        let t = rep.by_tenant.iter().find(|g| g.name == "thrifty");
        if let Some(t) = t.filter(|t| t.requests == served) {
            assert!(
                (t.cost_usd - spent).abs() < 1e-9,
                "{} vs {spent}",
                t.cost_usd
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "savings never reached {served}: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store is killed for 10 s under traffic: routing never fails, readiness holds, a
/// budgeted completion is refused (budgets fail closed) while an unbudgeted one is served,
/// and the usage of what was served meanwhile reaches the store once it is back.
async fn store_outage(dir: &std::path::Path, r: &[Replica], redis: &mut Redis) {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/classifier");
    switchboard::classify::artifact::variant(&shipped, &dir.join("cand-outage"), 1.05).unwrap();
    redis.stop();
    // Admin writes need the store: refused with UNAVAILABLE, nothing half-done.
    let mut a = r[0].admin().await;
    let req = switchboard::proto::v1::SwapClassifierRequest {
        source: Some(
            switchboard::proto::v1::swap_classifier_request::Source::Path(
                dir.join("cand-outage").display().to_string(),
            ),
        ),
        ..Default::default()
    };
    let e = a
        .swap_classifier(with_key(req, common::ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let until = Instant::now() + Duration::from_secs(10);
    let (mut routed, mut served, mut i) = (0, 0u64, 0);
    while Instant::now() < until {
        let x = &r[i % 3];
        i += 1;
        let mut c = x.router.clone();
        c.route_decision(with_key(prompt("Translate 'hello' to French."), "rpm-key"))
            .await
            .map(|_| routed += 1)
            .or_else(|e| {
                if e.code() == Code::ResourceExhausted {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .unwrap_or_else(|e| panic!("routing failed during the outage on {}: {e:?}", x.name));
        assert!(x.ready().await, "{} stopped being ready", x.name);
        if i % 10 == 0 {
            complete(x.router.clone(), "free-key", "").await.unwrap();
            served += 1;
            let e = complete(x.router.clone(), "budget-key", "")
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert!(e.message().contains("budgets_on_outage"), "{e:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(routed > 0 && served > 0);
    for x in r {
        let m = x.metrics().await;
        assert!(
            metric(&m, "switchboard_shared_store_errors_total", &[]) > 0.0,
            "{}",
            x.name
        );
    }
    redis.restart();
    resynchronised(r, served).await;
}

/// Held writes are replayed: the store (empty after its restart) learns the usage, and every
/// replica sees the store again.
async fn resynchronised(r: &[Replica], served: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut a = r[0].admin().await;
        let rep = a
            .get_usage(with_key(GetUsageRequest { days: 1 }, common::ADMIN_TOKEN))
            .await;
        let n = rep
            .ok()
            .and_then(|x| {
                let rows = x.into_inner().rows;
                rows.into_iter()
                    .find(|x| x.scope == "key" && x.name == "free")
            })
            .map_or(0, |x| x.requests);
        if n == served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage after the outage: {n} of {served}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for x in r {
        let m = x.metrics().await;
        assert_eq!(
            metric(&m, "switchboard_shared_store_up", &[]),
            1.0,
            "{}",
            x.name
        );
    }
}

/// Feedback sent to replica 3 for a decision made on replica 1 is recorded once, in the
/// fleet's stream, and the next retrain (on replica 2) trains on it.
async fn fleet_feedback(r: &[Replica], redis: &Redis) {
    use switchboard::proto::v1 as pb;
    let mut c = r[0].router.clone();
    let id = c
        .route_decision(with_key(
            prompt("Fix the bug in this Rust borrow checker error."),
            "free-key",
        ))
        .await
        .unwrap()
        .into_inner()
        .decision_id;
    let mut a3 = r[2].admin().await;
    let intent = a3
        .get_classifier(with_key(pb::GetClassifierRequest {}, common::ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .intent_labels[0]
        .clone();
    let fb = || pb::RecordFeedbackRequest {
        decision_id: id.clone(),
        intent: Some(intent.clone()),
        ..Default::default()
    };
    // The decision record reaches the store just after the answer: retry NotFound briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let seq = loop {
        match a3
            .record_feedback(with_key(fb(), common::ADMIN_TOKEN))
            .await
        {
            Ok(x) => break x.into_inner().sequence,
            Err(e) if e.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("feedback refused: {e:?}"),
        }
    };
    assert!(seq >= 1);
    let mut con = redis.client();
    let n: u64 = redis::cmd("XLEN")
        .arg("{switchboard}:feedback")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 1, "one feedback record in the fleet's stream");
    // An unknown decision is refused everywhere.
    let mut bad = fb();
    bad.decision_id = "no-such-decision".into();
    let e = a3
        .record_feedback(with_key(bad, common::ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let mut a2 = r[1].admin().await;
    let req = pb::RetrainRequest {
        include_feedback: true,
        max_epochs: 1,
        seed: 7,
        ..Default::default()
    };
    let mut s = a2
        .retrain(with_key(req, common::ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(p) = s.message().await.unwrap() {
        messages.push(p.message);
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("0 data rows, 1 feedback corrections")),
        "{messages:?}"
    );
}
