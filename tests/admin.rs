//! The Admin service over real sockets: the admin token, validated hot swaps under load (heads,
//! a full encoder + heads model, and three artifacts that must be refused), rollback, inline
//! swaps, compare-and-swap, dry runs, and the feedback → retrain → promote loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard::classify::{content_version, ClassifierMeta, META_FILE, WEIGHTS_FILE};
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

fn read_meta(dir: &Path) -> ClassifierMeta {
    serde_json::from_str(&std::fs::read_to_string(dir.join(META_FILE)).unwrap()).unwrap()
}

/// Writes a head folder: `meta` (version recomputed) with the shipped weights, or `weights`.
fn write_heads(dir: &Path, mut meta: ClassifierMeta, weights: Option<&[u8]>) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let shipped_w = std::fs::read(shipped().join(WEIGHTS_FILE)).unwrap();
    let w = weights.unwrap_or(&shipped_w);
    meta.version = content_version(w, &meta);
    std::fs::write(dir.join(WEIGHTS_FILE), w).unwrap();
    std::fs::write(
        dir.join(META_FILE),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    meta.version
}

/// The shipped heads with a slightly different calibration: a valid, distinct version.
fn variant(dir: &Path, factor: f32) -> String {
    let mut m = read_meta(&shipped());
    m.intent_temperature *= factor;
    write_heads(dir, m, None)
}

/// A full model: the bundled encoder converted to f32 (new weights file, new identity) with
/// the shipped heads re-bound to it.
fn full_model(dir: &Path) -> String {
    let src = common::model_dir();
    let enc = dir.join("encoder");
    std::fs::create_dir_all(enc.join("1_Pooling")).unwrap();
    for f in ["config.json", "tokenizer.json", "1_Pooling/config.json"] {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), enc.join(f)).unwrap();
        }
    }
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let f32s: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F32).unwrap()))
        .collect();
    candle_core::safetensors::save(&f32s, enc.join("model.safetensors")).unwrap();
    let sha = switchboard::embed::model::sha256_file(&enc.join("model.safetensors")).unwrap();
    let mut m = read_meta(&shipped());
    m.encoder.name = "all-MiniLM-L6-v2-f32".into();
    m.encoder.sha256 = sha;
    write_heads(dir, m, None)
}

/// Label names rotated: same shapes and label set, wrong answers; must fail the gate.
fn below_gate(dir: &Path) -> String {
    let mut m = read_meta(&shipped());
    m.intent_labels.rotate_left(1);
    m.domain_labels.rotate_left(1);
    write_heads(dir, m, None)
}

fn foreign_encoder(dir: &Path) -> String {
    let mut m = read_meta(&shipped());
    m.encoder.sha256 = "0".repeat(64);
    write_heads(dir, m, None)
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
    server.stop().await;
}
