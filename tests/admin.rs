//! The Admin service over real sockets: the admin token, validated hot swaps under load (heads,
//! a full encoder + heads model, and three artifacts that must be refused), rollback, inline
//! swaps, compare-and-swap, dry runs, and the feedback → retrain → promote loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard::bench::swap;
use switchboard::classify::{META_FILE, WEIGHTS_FILE};
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::admin_client::AdminClient;
use switchboard::proto::v1::router_client::RouterClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Intercept =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Admin = AdminClient<InterceptedService<Channel, Intercept>>;

async fn admin(addr: std::net::SocketAddr, token: Option<&str>) -> Admin {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header = token.map(|t| format!("Bearer {t}"));
    let f: Intercept = Box::new(move |mut r: tonic::Request<()>| {
        if let Some(h) = &header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        Ok(r)
    });
    AdminClient::with_interceptor(channel, f).max_decoding_message_size(64 << 20)
}

/// The bundled config with the small gate set (tests/fixtures/gate_small.jsonl).
fn config() -> switchboard::config::Config {
    let mut c = common::bundled_config();
    c.admin.gate_set =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gate_small.jsonl");
    c
}

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/classifier")
}

fn shipped_weights() -> Vec<u8> {
    std::fs::read(shipped().join(WEIGHTS_FILE)).unwrap()
}

/// The shipped heads with a slightly different calibration: a valid, distinct version.
fn variant(dir: &Path, factor: f32) -> String {
    swap::variant(&shipped(), dir, factor).unwrap()
}

/// The bundled encoder re-saved as f32 (a new identity) with the shipped heads bound to it.
fn full_model(dir: &Path) -> String {
    swap::full_model(&shipped(), &common::model_dir(), dir).unwrap()
}

/// Label names rotated: same shapes and label set, wrong answers; must fail the gate.
fn below_gate(dir: &Path) -> String {
    let mut m = swap::read_meta(&shipped()).unwrap();
    m.intent_labels.rotate_left(1);
    m.domain_labels.rotate_left(1);
    swap::write_heads(dir, m, &shipped_weights()).unwrap()
}

fn foreign_encoder(dir: &Path) -> String {
    let mut m = swap::read_meta(&shipped()).unwrap();
    m.encoder.sha256 = "0".repeat(64);
    swap::write_heads(dir, m, &shipped_weights()).unwrap()
}

fn corrupt(dir: &Path) {
    variant(dir, 1.5);
    std::fs::write(dir.join(WEIGHTS_FILE), b"this is not a safetensors file").unwrap();
}

fn swap_req(path: &Path) -> pb::SwapClassifierRequest {
    pb::SwapClassifierRequest {
        source: Some(pb::swap_classifier_request::Source::Path(
            path.display().to_string(),
        )),
        ..Default::default()
    }
}

async fn live(a: &mut Admin) -> String {
    a.get_classifier(pb::GetClassifierRequest {})
        .await
        .unwrap()
        .into_inner()
        .live
        .unwrap()
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_rpcs_need_the_admin_token_and_change_nothing_without_it() {
    let server = common::TestServer::start(config()).await;
    let dir = common::scratch_dir("heads");
    variant(&dir, 1.1);
    let before = live(&mut admin(server.admin, Some(common::ADMIN_TOKEN)).await).await;
    for token in [None, Some("wrong-token"), Some("")] {
        let mut a = admin(server.admin, token).await;
        let codes = [
            a.get_classifier(pb::GetClassifierRequest {})
                .await
                .map(|_| ()),
            a.swap_classifier(swap_req(&dir)).await.map(|_| ()),
            a.rollback_classifier(pb::RollbackClassifierRequest::default())
                .await
                .map(|_| ()),
            a.record_feedback(pb::RecordFeedbackRequest {
                decision_id: "x".into(),
                outcome: "success".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
            a.retrain(pb::RetrainRequest {
                include_feedback: true,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        ];
        for c in codes {
            assert_eq!(
                c.unwrap_err().code(),
                Code::Unauthenticated,
                "token {token:?}"
            );
        }
    }
    let mut a = admin(server.admin, Some(common::ADMIN_TOKEN)).await;
    assert_eq!(live(&mut a).await, before);
    assert_eq!(server.engine.classifier.load().version(), before);
    let feedback = server.engine.config.admin.state_dir.join("feedback.jsonl");
    assert_eq!(std::fs::read_to_string(&feedback).unwrap_or_default(), "");
    server.stop().await;
}

/// (call start, call end, version made live) per accepted operation.
type Timeline = Arc<Mutex<Vec<(Instant, Instant, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_swaps_under_load_fail_no_request() {
    let server = common::TestServer::start(config()).await;
    let root = common::scratch_dir("swaps");
    let (a, b, f, bad, foreign, broken) = (
        root.join("a"),
        root.join("b"),
        root.join("full"),
        root.join("gate"),
        root.join("foreign"),
        root.join("corrupt"),
    );
    let va = variant(&a, 1.05);
    let vb = variant(&b, 0.95);
    let vf = full_model(&f);
    below_gate(&bad);
    foreign_encoder(&foreign);
    corrupt(&broken);
    let mut adm = admin(server.admin, Some(common::ADMIN_TOKEN)).await;
    let shipped_v = live(&mut adm).await;
    // Compute the gate set's embeddings for both encoders before the load starts.
    for d in [&a, &f] {
        let mut r = swap_req(d);
        r.dry_run = true;
        let resp = adm.swap_classifier(r).await.unwrap().into_inner();
        assert!(
            !resp.swapped && resp.metrics["gate_intent_accuracy"] > 0.5,
            "{resp:?}"
        );
    }

    let timeline: Timeline = Arc::new(Mutex::new(vec![(
        Instant::now(),
        Instant::now(),
        shipped_v.clone(),
    )]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..32 {
        let mut c = RouterClient::new(server.channel.clone());
        let stop = stop.clone();
        clients.spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let prompt = format!("client {i} request {n}: how do I sort a list of tuples in Python by the second item?");
                let t0 = Instant::now();
                let r = c.route_decision(pb::RouteDecisionRequest { prompt, ..Default::default() }).await;
                let r = r.unwrap_or_else(|e| panic!("request failed during swaps: {e:?}"));
                seen.push((t0, Instant::now(), r.into_inner().classifier_version));
                n += 1;
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 20 operations: (what, expected code or None for accepted, version it should make live)
    use Op::*;
    enum Op<'a> {
        Swap(&'a Path),
        Back(&'a str),
    }
    let plan: Vec<(Op, Option<Code>, &str)> = vec![
        (Swap(&a), None, &va),
        (Swap(&b), None, &vb),
        (Back(""), None, &va),
        (Swap(&broken), Some(Code::InvalidArgument), ""),
        (Swap(&f), None, &vf),
        (Swap(&foreign), Some(Code::FailedPrecondition), ""),
        (Back(""), None, &va),
        (Swap(&bad), Some(Code::FailedPrecondition), ""),
        (Swap(&b), None, &vb),
        (Back(&shipped_v), None, &shipped_v),
        (Swap(&f), None, &vf),
        (Back(""), None, &shipped_v),
        (Swap(&a), None, &va),
        (Swap(&broken), Some(Code::InvalidArgument), ""),
        (Swap(&f), None, &vf),
        (Back(""), None, &va),
        (Swap(&bad), Some(Code::FailedPrecondition), ""),
        (Swap(&b), None, &vb),
        (Back(""), None, &va),
        (Back(&shipped_v), None, &shipped_v),
    ];
    assert_eq!(plan.len(), 20);
    for (i, (op, want_err, want_live)) in plan.into_iter().enumerate() {
        let before = live(&mut adm).await;
        let t0 = Instant::now();
        let r = match op {
            Swap(p) => adm.swap_classifier(swap_req(p)).await,
            Back(v) => {
                adm.rollback_classifier(pb::RollbackClassifierRequest { version: v.into() })
                    .await
            }
        };
        let t1 = Instant::now();
        match (want_err, r) {
            (None, Ok(resp)) => {
                let resp = resp.into_inner();
                assert!(resp.swapped, "op {i}: {resp:?}");
                assert_eq!(resp.version, want_live, "op {i}");
                timeline.lock().unwrap().push((t0, t1, resp.version));
                // The new version (a full model included) answers the next request.
                let d = RouterClient::new(server.channel.clone())
                    .route_decision(pb::RouteDecisionRequest {
                        prompt: format!("probe {i}: sum the first ten primes"),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(d.classifier_version, want_live, "op {i}");
            }
            (Some(code), Err(e)) => {
                assert_eq!(e.code(), code, "op {i}: {e:?}");
                assert!(
                    e.message().len() > 20,
                    "op {i}: message too terse: {}",
                    e.message()
                );
                assert_eq!(
                    live(&mut adm).await,
                    before,
                    "op {i}: a refused swap changed the live version"
                );
            }
            (want, got) => panic!("op {i}: wanted {want:?}, got {got:?}"),
        }
        assert_eq!(
            live(&mut adm).await,
            server.engine.classifier.load().version()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut responses = Vec::new();
    while let Some(r) = clients.join_next().await {
        responses.extend(r.unwrap());
    }
    // Every response names a version that was live at some point during its request.
    let tl = timeline.lock().unwrap().clone();
    let far = Instant::now() + Duration::from_secs(3600);
    let intervals: Vec<(Instant, Instant, &str)> = tl
        .iter()
        .enumerate()
        .map(|(i, (start, _, v))| {
            (
                *start,
                tl.get(i + 1).map(|n| n.1).unwrap_or(far),
                v.as_str(),
            )
        })
        .collect();
    for (rs, re, v) in &responses {
        assert!(
            intervals
                .iter()
                .any(|(ls, le, lv)| lv == v && *ls <= *re && *le >= *rs),
            "response named {v}, not live during its request"
        );
    }
    let versions: std::collections::HashSet<&str> =
        responses.iter().map(|r| r.2.as_str()).collect();
    assert!(
        responses.len() > 200,
        "only {} requests ran",
        responses.len()
    );
    assert!(
        versions.contains(vf.as_str()) && versions.contains(va.as_str()),
        "{versions:?}"
    );
    let m = server.engine_metrics();
    for line in [
        r#"switchboard_classifier_swaps_total{op="swap",reason="rejected",result="rejected"} 3"#,
        r#"switchboard_classifier_swaps_total{op="swap",reason="invalid",result="rejected"} 2"#,
        r#"switchboard_classifier_swaps_total{op="rollback",reason="ok",result="accepted"} 7"#,
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_swaps_cas_dry_run_and_limits() {
    let mut cfg = config();
    cfg.admin.max_inline_bytes = 4 << 20;
    let server = common::TestServer::start(cfg).await;
    let dir = common::scratch_dir("inline");
    let v = variant(&dir, 1.2);
    let mut a = admin(server.admin, Some(common::ADMIN_TOKEN)).await;
    let shipped_v = live(&mut a).await;
    let bytes = switchboard::admin::registry::pack_inline(&dir).unwrap();
    let inline = |b: Vec<u8>| pb::SwapClassifierRequest {
        source: Some(pb::swap_classifier_request::Source::InlineHeads(b)),
        ..Default::default()
    };
    // Compare-and-swap against a version that is not live.
    let mut r = inline(bytes.clone());
    r.expected_version = "0123456789abcdef".into();
    let e = a.swap_classifier(r).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("expected_version"), "{e:?}");
    // Dry run: validated, not swapped.
    let mut r = inline(bytes.clone());
    r.dry_run = true;
    let resp = a.swap_classifier(r).await.unwrap().into_inner();
    assert!(!resp.swapped && resp.version == v, "{resp:?}");
    assert_eq!(live(&mut a).await, shipped_v);
    // Heads without metadata, and an artifact over the limit.
    let raw = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let e = a.swap_classifier(inline(raw)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("classifier.json"), "{e:?}");
    let e = a
        .swap_classifier(inline(vec![0u8; 5 << 20]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("admin.max_inline_bytes"), "{e:?}");
    // The real swap, with CAS on the live version; the router then answers with it.
    let mut r = inline(bytes);
    r.expected_version = shipped_v.clone();
    let resp = a.swap_classifier(r).await.unwrap().into_inner();
    assert!(resp.swapped && resp.previous_version == shipped_v);
    let mut c = RouterClient::new(server.channel.clone());
    let d = c
        .route_decision(pb::RouteDecisionRequest {
            prompt: "Translate 'good morning' into French".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.classifier_version, v);
    let info = a
        .get_classifier(pb::GetClassifierRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.live.unwrap().source, "inline");
    assert_eq!(info.kept[0].version, shipped_v);
    let e = a
        .rollback_classifier(pb::RollbackClassifierRequest {
            version: "feedfacefeedface".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Retrain requests that cannot run say why, with the field.
    let req = pb::RetrainRequest {
        data_path: "/nonexistent/data.jsonl".into(),
        ..Default::default()
    };
    let e = a.retrain(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("data_path:"), "{e:?}");
    let req = pb::RetrainRequest::default();
    let mut stream = a.retrain(req).await.unwrap().into_inner();
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nothing to train on"), "{e:?}");
    server.stop().await;
}

async fn route(c: &mut RouterClient<Channel>, prompt: &str) -> pb::RouteDecisionResponse {
    let req = pb::RouteDecisionRequest {
        prompt: prompt.into(),
        ..Default::default()
    };
    c.route_decision(req).await.unwrap().into_inner()
}

/// The runner-up intent: the plausible correction an operator would make.
fn runner_up(d: &pb::RouteDecisionResponse) -> String {
    let mut p = d.classification.clone().unwrap().intent_probabilities;
    p.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    p[1].label.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feedback_retrain_promote_closes_the_loop() {
    let mut cfg = config();
    cfg.admin.feedback_weight = 20.0;
    let server = common::TestServer::start(cfg).await;
    let mut a = admin(server.admin, Some(common::ADMIN_TOKEN)).await;
    let mut c = RouterClient::new(server.channel.clone());
    let before = live(&mut a).await;
    let prompts = [
        "Can you help me name my new bakery? Something cozy.",
        "What do you think about remote work?",
        "Turn these notes into a short paragraph: met client, agreed budget, next call Friday",
        "Is this review positive or negative: 'the battery died in two days'",
    ];
    let mut corrections = Vec::new();
    for p in prompts {
        let d = route(&mut c, p).await;
        let want = runner_up(&d);
        assert_ne!(d.classification.as_ref().unwrap().intent, want);
        let seq = a
            .record_feedback(pb::RecordFeedbackRequest {
                decision_id: d.decision_id.clone(),
                intent: Some(want.clone()),
                comment: "operator correction".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .sequence;
        assert_eq!(seq as usize, corrections.len() + 1);
        corrections.push((p, want));
    }
    // Bad feedback is refused, naming the field; nothing is appended.
    let e = a
        .record_feedback(pb::RecordFeedbackRequest {
            decision_id: "0".repeat(32),
            intent: Some("code".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let id = route(&mut c, "hello there").await.decision_id;
    let e = a
        .record_feedback(pb::RecordFeedbackRequest {
            decision_id: id,
            intent: Some("poetry".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("intent:"), "{e:?}");

    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_slice.jsonl");
    let req = pb::RetrainRequest {
        data_path: data.display().to_string(),
        include_feedback: true,
        promote_if_better: true,
        seed: 7,
        max_epochs: 30,
    };
    let mut s = a.retrain(req).await.unwrap().into_inner();
    let (mut epochs, mut last) = (0, None);
    while let Some(p) = s.message().await.unwrap() {
        epochs += usize::from(p.epoch > 0);
        last = Some(p);
    }
    let last = last.unwrap();
    assert!(epochs >= 1, "no epoch progress streamed");
    assert!(last.promoted, "not promoted: {}", last.message);
    assert_ne!(last.version, before);
    assert_eq!(live(&mut a).await, last.version);
    assert!(Path::new(&last.output_path).join(META_FILE).is_file());
    // The corrected prompts are now classified as corrected, by the new version.
    for (p, want) in &corrections {
        let d = route(&mut c, p).await;
        assert_eq!(d.classifier_version, last.version);
        assert_eq!(&d.classification.unwrap().intent, want, "{p}");
    }
    // Held-out: the gate metrics did not fall more than the margin below the old head's.
    let mut dry = swap_req(&shipped());
    dry.dry_run = true;
    dry.force = true;
    let old = a.swap_classifier(dry).await.unwrap().into_inner().metrics;
    let margin = server.engine.config.admin.gate_margin;
    for k in ["gate_intent_accuracy", "gate_domain_accuracy"] {
        assert!(
            last.dev_metrics[k] >= old[k] - margin,
            "{k}: {} vs {}",
            last.dev_metrics[k],
            old[k]
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_folder_dropped_into_the_watch_dir_is_validated_and_swapped_in() {
    let watch = common::scratch_dir("watch");
    let staging = common::scratch_dir("staging");
    let mut cfg = config();
    cfg.admin.watch_dir = Some(watch.to_path_buf());
    cfg.admin.watch_interval_ms = 50;
    let server = common::TestServer::start(cfg).await;
    let mut a = admin(server.admin, Some(common::ADMIN_TOKEN)).await;
    let shipped_v = live(&mut a).await;
    // A folder that fails the gate is refused; the live version stays.
    below_gate(&staging.join("bad"));
    std::fs::rename(staging.join("bad"), watch.join("bad")).unwrap();
    let rejected =
        r#"switchboard_classifier_swaps_total{op="watch",reason="rejected",result="rejected"} 1"#;
    // A bound, not a sleep: the first try also embeds the gate set, slow on a loaded 2-core box.
    let t = Instant::now();
    while !server.engine_metrics().contains(rejected) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the bad folder was never tried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live(&mut a).await, shipped_v);
    // A good one goes live.
    let v = variant(&staging.join("good"), 1.3);
    std::fs::rename(staging.join("good"), watch.join("good")).unwrap();
    let t = Instant::now();
    while live(&mut a).await != v {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the new folder never went live"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}
