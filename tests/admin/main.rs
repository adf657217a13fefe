//! The Admin service over real sockets: the admin token, validated hot swaps under load (heads,
//! a full encoder + heads model, and three artifacts that must be refused), rollback, inline
//! swaps, compare-and-swap, dry runs, and the feedback → retrain → promote loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod fixtures;
mod swaps;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switchboard::classify::{META_FILE, WEIGHTS_FILE};
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::router_client::RouterClient;
use tonic::transport::Channel;
use tonic::Code;

use fixtures::*;

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
    assert_eq!(server.engine.live.snapshot().version(), before);
    let feedback = server
        .engine
        .config()
        .admin
        .state_dir
        .join("feedback.jsonl");
    assert_eq!(std::fs::read_to_string(&feedback).unwrap_or_default(), "");
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
    let bytes = switchboard::classify::artifact::pack_inline(&dir).unwrap();
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
    bad_feedback_is_refused(&mut a, &mut c).await;
    let last = retrain_with_feedback(&mut a).await;
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
    let margin = server.engine.config().admin.gate_margin;
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

/// Bad feedback is refused, naming the field; nothing is appended.
async fn bad_feedback_is_refused(a: &mut Admin, c: &mut RouterClient<Channel>) {
    let e = a
        .record_feedback(pb::RecordFeedbackRequest {
            decision_id: "0".repeat(32),
            intent: Some("code".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let id = route(c, "hello there").await.decision_id;
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
}

/// Retrains on the training slice plus the feedback, promoting if better; returns the last
/// progress message (the result) after checking that epochs were streamed.
async fn retrain_with_feedback(a: &mut Admin) -> pb::RetrainProgress {
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
    assert!(epochs >= 1, "no epoch progress streamed");
    last.unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_paths_stay_under_the_artifact_root_and_retrains_run_one_at_a_time() {
    let server = common::TestServer::start(config()).await;
    let mut a = admin(server.admin, Some(common::ADMIN_TOKEN)).await;
    // Outside the root (the tests' working directory, the repository), existing or not: the
    // same refusal, so the reply does not tell which.
    let mut replies = Vec::new();
    for outside in ["/etc", "/nonexistent/heads"] {
        let e = a
            .swap_classifier(swap_req(Path::new(outside)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("admin.artifact_root"),
            "{}",
            e.message()
        );
        replies.push(e.message().replace(outside, "<path>"));
    }
    assert_eq!(replies[0], replies[1]);
    // A link inside the root that points outside is resolved first, and refused.
    let dir = common::scratch_dir("links");
    std::os::unix::fs::symlink("/etc", dir.join("out")).unwrap();
    let e = a
        .swap_classifier(swap_req(&dir.join("out")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // One retrain at a time: a second, while the first runs, is refused naming the first.
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_slice.jsonl");
    let req = pb::RetrainRequest {
        data_path: data.display().to_string(),
        seed: 7,
        max_epochs: 30,
        ..Default::default()
    };
    let mut first = a.retrain(req.clone()).await.unwrap().into_inner();
    let e = a.retrain(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("another retrain is running") && e.message().contains("train_slice"),
        "{}",
        e.message()
    );
    while first.message().await.unwrap().is_some() {}
    // Once it has ended, the next one may run; a caller that leaves cancels it, and nothing
    // is written after that.
    let heads = server.engine.config().admin.state_dir.join("heads");
    let written = || std::fs::read_dir(&heads).map(|d| d.count()).unwrap_or(0);
    let before = written();
    assert!(before >= 1, "the finished retrain wrote its heads");
    let mut second = a
        .retrain(pb::RetrainRequest { seed: 8, ..req })
        .await
        .unwrap()
        .into_inner();
    assert!(second.message().await.unwrap().is_some());
    drop(second);
    wait_retrain_slot(&mut a).await;
    assert_eq!(written(), before, "a cancelled retrain wrote heads");
    server.stop().await;
}

/// Waits (bounded) until a retrain may start, using one that fails at once inside the slot.
async fn wait_retrain_slot(a: &mut Admin) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match a.retrain(pb::RetrainRequest::default()).await {
            Ok(s) => {
                let e = s.into_inner().message().await.unwrap_err();
                assert!(e.message().contains("nothing to train on"), "{e:?}");
                return;
            }
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retrain kept running after its caller left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_admin_token_is_refused_at_start() {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let r = switchboard::server::bind(switchboard::server::ServeConfig {
        grpc_addr: any,
        http_addr: any,
        config: config(),
        admin_addr: Some(any),
        admin_token: Some("short\n".into()),
        metrics_addr: None,
    })
    .await;
    let e = r.err().expect("a short token is refused").to_string();
    assert!(e.contains("admin token") && e.contains("16"), "{e}");
}
