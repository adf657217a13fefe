//! Twenty swaps and rollbacks under a 32-client load: no request fails, and every answer names
//! a version that was live while it ran.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::proto::v1 as pb;
use switchboard::proto::v1::router_client::RouterClient;
use tonic::Code;

use super::common;
use super::fixtures::*;

/// (call start, call end, version made live) per accepted operation.
type Timeline = Vec<(Instant, Instant, String)>;

/// One admin operation of the swap plan.
enum Op<'a> {
    Swap(&'a Path),
    /// Roll back to this version ("" = the previous one).
    Back(&'a str),
}

impl Op<'_> {
    async fn apply(
        &self,
        adm: &mut Admin,
    ) -> Result<tonic::Response<pb::SwapClassifierResponse>, tonic::Status> {
        match self {
            Op::Swap(p) => adm.swap_classifier(swap_req(p)).await,
            Op::Back(v) => {
                let req = pb::RollbackClassifierRequest {
                    version: v.to_string(),
                };
                adm.rollback_classifier(req).await
            }
        }
    }
}

/// 32 clients sending distinct RouteDecisions until `stop`; each returns (sent, answered,
/// classifier version) per request and panics on any failed request.
fn spawn_load(
    channel: &tonic::transport::Channel,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinSet<Vec<(Instant, Instant, String)>> {
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..32 {
        let mut c = RouterClient::new(channel.clone());
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
    clients
}

/// Checks one swap or rollback's answer; returns the version it made live, if accepted.
async fn check_op(
    i: usize,
    channel: &tonic::transport::Channel,
    want_err: Option<Code>,
    want_live: &str,
    r: Result<tonic::Response<pb::SwapClassifierResponse>, tonic::Status>,
) -> Option<String> {
    match (want_err, r) {
        (None, Ok(resp)) => {
            let resp = resp.into_inner();
            assert!(resp.swapped, "op {i}: {resp:?}");
            assert_eq!(resp.version, want_live, "op {i}");
            // The new version (a full model included) answers the next request.
            let d = RouterClient::new(channel.clone())
                .route_decision(pb::RouteDecisionRequest {
                    prompt: format!("probe {i}: sum the first ten primes"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(d.classifier_version, want_live, "op {i}");
            Some(resp.version)
        }
        (Some(code), Err(e)) => {
            assert_eq!(e.code(), code, "op {i}: {e:?}");
            assert!(
                e.message().len() > 20,
                "op {i}: message too terse: {}",
                e.message()
            );
            None
        }
        (want, got) => panic!("op {i}: wanted {want:?}, got {got:?}"),
    }
}

/// Every response names a version that was live at some point during its request: version `k`
/// was live from its swap call's start until the next accepted call's end.
fn assert_each_was_live(
    timeline: &[(Instant, Instant, String)],
    responses: &[(Instant, Instant, String)],
) {
    let far = Instant::now() + Duration::from_secs(3600);
    let intervals: Vec<(Instant, Instant, &str)> = timeline
        .iter()
        .enumerate()
        .map(|(i, (start, _, v))| {
            (
                *start,
                timeline.get(i + 1).map(|n| n.1).unwrap_or(far),
                v.as_str(),
            )
        })
        .collect();
    for (rs, re, v) in responses {
        assert!(
            intervals
                .iter()
                .any(|(ls, le, lv)| lv == v && *ls <= *re && *le >= *rs),
            "response named {v}, not live during its request"
        );
    }
}

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
    embed_gate_set(&mut adm, &[&a, &f]).await;

    let mut timeline: Timeline = vec![(Instant::now(), Instant::now(), shipped_v.clone())];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = spawn_load(&server.channel, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 20 operations: (what, expected code or None for accepted, version it should make live)
    use Op::*;
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
        let r = op.apply(&mut adm).await;
        let t1 = Instant::now();
        if let Some(v) = check_op(i, &server.channel, want_err, want_live, r).await {
            timeline.push((t0, t1, v));
        }
        if want_err.is_some() {
            assert_eq!(
                live(&mut adm).await,
                before,
                "op {i}: a refused swap changed the live version"
            );
        }
        assert_eq!(
            live(&mut adm).await,
            server.engine.live.snapshot().version()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut responses = Vec::new();
    while let Some(r) = clients.join_next().await {
        responses.extend(r.unwrap());
    }
    assert_each_was_live(&timeline, &responses);
    assert_both_encoders_served(&responses, &va, &vf);
    assert_swaps_counted(&server.engine_metrics());
    server.stop().await;
}

/// Computes the gate set's embeddings for each folder's encoder (dry runs) before the load.
async fn embed_gate_set(adm: &mut Admin, dirs: &[&Path]) {
    for d in dirs {
        let mut r = swap_req(d);
        r.dry_run = true;
        let resp = adm.swap_classifier(r).await.unwrap().into_inner();
        assert!(
            !resp.swapped && resp.metrics["gate_intent_accuracy"] > 0.5,
            "{resp:?}"
        );
    }
}

/// Enough requests ran, and some were answered by the heads variant and by the full model.
fn assert_both_encoders_served(responses: &[(Instant, Instant, String)], va: &str, vf: &str) {
    let versions: std::collections::HashSet<&str> =
        responses.iter().map(|r| r.2.as_str()).collect();
    assert!(
        responses.len() > 200,
        "only {} requests ran",
        responses.len()
    );
    assert!(
        versions.contains(vf) && versions.contains(va),
        "{versions:?}"
    );
}

/// Every refusal and rollback of the plan is in the swaps metric.
fn assert_swaps_counted(m: &str) {
    for line in [
        r#"switchboard_classifier_swaps_total{op="swap",reason="rejected",result="rejected"} 3"#,
        r#"switchboard_classifier_swaps_total{op="swap",reason="invalid",result="rejected"} 2"#,
        r#"switchboard_classifier_swaps_total{op="rollback",reason="ok",result="accepted"} 7"#,
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}
