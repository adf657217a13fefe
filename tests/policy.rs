//! Properties of the ranking policy over random catalogs and preferences, and A/B stickiness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use switchboard::classify::Prediction;
use switchboard::config::{Backend, Config, Policy, Variant};
use switchboard::policy::{self, Health, PolicyError, Preferences, RouteInput};

const CAPS: &[&str] = &["tools", "vision", "json_mode", "long_context"];

fn prediction(intent: &str, complexity: f32) -> Prediction {
    Prediction {
        intent: intent.into(),
        intent_probs: vec![1.0],
        domain: "other".into(),
        domain_probs: vec![1.0],
        complexity,
        small_fails: complexity,
        strong_gain: complexity,
        language: Default::default(),
        confidence: 0.9,
        abstained: false,
        untrained_language_share: None,
    }
}

fn policy_with(variants: Vec<Variant>) -> Policy {
    Policy {
        default_backend: "b0".into(),
        min_quality: 0.55,
        complexity_slope: 0.35,
        trade_off: 0.5,
        rules: vec![],
        variants,
    }
}

fn config(backends: Vec<Backend>, pol: Policy) -> Config {
    let mut policies = BTreeMap::new();
    policies.insert("p".to_string(), pol);
    Config {
        server: Default::default(),
        encoder: Default::default(),
        admin: Default::default(),
        transport: Default::default(),
        fleet: Default::default(),
        backends,
        policies,
        default_policy: "p".into(),
        file: "test".into(),
        version: "test".into(),
        path: None,
    }
}

prop_compose! {
    fn backend(i: usize)(
        inp in 0.0f64..20.0, out in 0.0f64..60.0, ctx in 1_000u32..200_000, lat in 50.0f64..3000.0,
        q in 0.3f64..1.0, qc in 0.3f64..1.0, caps in proptest::sample::subsequence(CAPS, 0..=CAPS.len()), healthy in prop::bool::weighted(0.85),
    ) -> (Backend, bool) {
        let mut quality = BTreeMap::new();
        quality.insert("default".to_string(), q);
        quality.insert("code".to_string(), qc);
        (Backend {
            name: format!("b{i}"), provider: "openai_compatible".into(), base_url: "http://127.0.0.1:1/v1".into(), api_key_env: None,
            model: format!("m{i}"), input_price_per_mtok: inp, output_price_per_mtok: out, context_window: ctx,
            capabilities: caps.iter().map(|s| s.to_string()).collect(), quality, domain_quality: BTreeMap::new(), languages: Vec::new(), latency_ms: lat,
            max_concurrency: 8, tags: vec![], first_token_timeout_ms: 1000, idle_timeout_ms: 30_000, total_timeout_ms: 600_000, connect_timeout_ms: 5_000,
        }, healthy)
    }
}

fn catalog() -> impl Strategy<Value = Vec<(Backend, bool)>> {
    (1usize..12).prop_flat_map(|n| (0..n).map(backend).collect::<Vec<_>>())
}

prop_compose! {
    fn prefs()(
        max_cost in prop::option::of(1e-6f64..0.05), max_lat in prop::option::of(100.0f64..3000.0),
        caps in proptest::sample::subsequence(CAPS, 0..=2), out in 1u32..4000,
    ) -> Preferences {
        Preferences { trade_off: None, max_cost_usd: max_cost, max_latency_ms: max_lat,
            required_capabilities: caps.iter().map(|s| s.to_string()).collect(), allow: vec![], deny: vec![], expected_output_tokens: out, max_output_tokens: None, required_language: String::new() }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_returned_backend_breaks_a_constraint(cat in catalog(), prefs in prefs(), tokens in 1u32..50_000, cx in 0.0f32..1.0, deny_first in any::<bool>()) {
        let health: HashMap<String, bool> = cat.iter().map(|(b, h)| (b.name.clone(), *h)).collect();
        let mut prefs = prefs;
        if deny_first { prefs.deny = vec!["b0".into()]; }
        let cfg = config(cat.into_iter().map(|(b, _)| b).collect(), policy_with(vec![]));
        let p = prediction("code", cx);
        let meta = HashMap::new();
        let input = RouteInput { prediction: &p, prompt_tokens: tokens, prefs: &prefs, metadata: &meta, request_key: "k" };
        let live = |n: &str| Health { healthy: health[n], latency_ms: None };
        match policy::rank(&cfg, "", &input, &live) {
            Ok(d) => {
                prop_assert!(!d.ranked.is_empty());
                for r in &d.ranked {
                    let b = cfg.backends.iter().find(|b| b.name == r.name).unwrap();
                    prop_assert!(health[&r.name]);
                    prop_assert!(!prefs.deny.contains(&r.name));
                    prop_assert!(prefs.required_capabilities.iter().all(|c| b.capabilities.contains(c)));
                    prop_assert!(tokens as u64 + prefs.expected_output_tokens as u64 <= b.context_window as u64);
                    if let Some(m) = prefs.max_cost_usd { prop_assert!(r.cost_usd <= m); }
                    if let Some(m) = prefs.max_latency_ms { prop_assert!(r.latency_ms <= m); }
                }
                for w in d.ranked.windows(2) { prop_assert!(w[0].score >= w[1].score); }
            }
            Err(PolicyError::NoneQualifies(why)) => prop_assert_eq!(why.len(), cfg.backends.len()),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn trade_off_is_monotone(cat in catalog(), tokens in 1u32..5_000, cx in 0.0f32..1.0, t1 in 0.0f64..1.0, t2 in 0.0f64..1.0) {
        let (lo, hi) = if t1 <= t2 { (t1, t2) } else { (t2, t1) };
        let cfg = config(cat.into_iter().map(|(b, _)| b).collect(), policy_with(vec![]));
        let p = prediction("code", cx);
        let meta = HashMap::new();
        let top = |t: f64| {
            let prefs = Preferences { trade_off: Some(t), expected_output_tokens: 256, ..Default::default() };
            let input = RouteInput { prediction: &p, prompt_tokens: tokens, prefs: &prefs, metadata: &meta, request_key: "k" };
            policy::rank(&cfg, "", &input, &|_| Health::default()).ok().map(|d| d.ranked[0].clone())
        };
        if let (Some(a), Some(b)) = (top(lo), top(hi)) {
            prop_assert!(b.quality >= a.quality - 1e-12, "quality fell from {} to {} as trade-off rose {lo} → {hi}", a.quality, b.quality);
            prop_assert!(a.cost_usd <= b.cost_usd + 1e-15, "cost rose from {} to {} as trade-off fell {hi} → {lo}", b.cost_usd, a.cost_usd);
        }
    }
}

#[test]
fn ab_assignment_is_sticky_and_splits_within_3_percent() {
    let variants = vec![
        Variant {
            name: "control".into(),
            percent: 70.0,
            rules: vec![],
        },
        Variant {
            name: "candidate".into(),
            percent: 30.0,
            rules: vec![],
        },
    ];
    let pol = policy_with(variants);
    let mut candidate = 0;
    for i in 0..10_000 {
        let key = format!("user-{i}");
        let v = policy::variant_for("p", &pol, &key).unwrap();
        assert_eq!(
            v.name,
            policy::variant_for("p", &pol, &key).unwrap().name,
            "not sticky for {key}"
        );
        if v.name == "candidate" {
            candidate += 1;
        }
    }
    let share = candidate as f64 / 10_000.0;
    assert!((share - 0.30).abs() <= 0.03, "candidate share {share}");
}

#[test]
fn empty_result_names_every_backends_reason() {
    let b = plain_backend("b0", 1.0, 100);
    let cfg = config(vec![b], policy_with(vec![]));
    let prefs = Preferences {
        required_capabilities: vec!["vision".into()],
        expected_output_tokens: 10,
        ..Default::default()
    };
    let err = rank_code_prompt(&cfg, &prefs).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("b0: lacks capability vision"), "{msg}");
}

#[test]
fn a_subnormal_trade_off_keeps_every_score_finite() {
    // (1 - t) / t overflows to infinity for t near 1e-310; infinity × a zero cost is NaN, and a
    // NaN score would sort first. The cost weight is capped instead.
    let cfg = config(
        vec![
            plain_backend("free", 0.0, 100_000),
            plain_backend("paid", 5.0, 100_000),
        ],
        policy_with(vec![]),
    );
    let prefs = Preferences {
        trade_off: Some(1e-310),
        expected_output_tokens: 10,
        ..Default::default()
    };
    let d = rank_code_prompt(&cfg, &prefs).unwrap();
    assert!(
        d.ranked.iter().all(|r| r.score.is_finite()),
        "{:?}",
        d.ranked
    );
    assert_eq!(
        d.ranked[0].name, "free",
        "cost dominates at the smallest trade-off"
    );
}

/// A backend of quality 0.8 for every intent, at `price` USD per million tokens either way.
fn plain_backend(name: &str, price: f64, context_window: u32) -> Backend {
    let mut quality = BTreeMap::new();
    quality.insert("default".to_string(), 0.8);
    Backend {
        name: name.into(),
        provider: "openai_compatible".into(),
        base_url: "http://x/v1".into(),
        api_key_env: None,
        model: "m".into(),
        input_price_per_mtok: price,
        output_price_per_mtok: price,
        context_window,
        capabilities: vec![],
        quality,
        domain_quality: BTreeMap::new(),
        languages: Vec::new(),
        latency_ms: 10.0,
        max_concurrency: 1,
        tags: vec![],
        first_token_timeout_ms: 1000,
        idle_timeout_ms: 30_000,
        total_timeout_ms: 600_000,
        connect_timeout_ms: 5_000,
    }
}

/// Ranks a 10-token code prompt of complexity 0.5 under `prefs`, every backend healthy.
fn rank_code_prompt(cfg: &Config, prefs: &Preferences) -> Result<policy::Decision, PolicyError> {
    let p = prediction("code", 0.5);
    let meta = HashMap::new();
    let input = RouteInput {
        prediction: &p,
        prompt_tokens: 10,
        prefs,
        metadata: &meta,
        request_key: "",
    };
    policy::rank(cfg, "", &input, &|_| Health::default())
}
