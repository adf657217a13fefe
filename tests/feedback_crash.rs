//! The feedback log survives a crash: the real binary is killed with SIGKILL right after
//! RecordFeedback returns; after a restart every acknowledged record is in the log, and the
//! next record continues the sequence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Child;

use switchboard::proto::v1 as pb;
use switchboard::proto::v1::admin_client::AdminClient;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::records::FeedbackLog;
use tonic::transport::Channel;

const TOKEN: &str = "crash-test-token";

/// Starts `switchboard serve` in `dir`; returns the child, its gRPC and admin addresses.
fn start(dir: &Path) -> (Child, String, String) {
    let (child, addrs) = common::spawn_serve(dir, &[("SWITCHBOARD_ADMIN_TOKEN", TOKEN)]);
    (child, addrs["grpc"].clone(), addrs["admin"].clone())
}

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn admin(addr: &str) -> AdminClient<Channel> {
    AdminClient::new(channel(addr).await)
}

async fn connect(addr: &str) -> Channel {
    let channel = channel(addr).await;
    common::wait_serving(channel.clone()).await;
    channel
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    switchboard::grpc::with_bearer(msg, TOKEN).unwrap()
}

/// Records one feedback item; returns the sequence number the server acknowledged.
async fn record(a: &mut AdminClient<Channel>, req: pb::RecordFeedbackRequest) -> u64 {
    a.record_feedback(authed(req))
        .await
        .unwrap()
        .into_inner()
        .sequence
}

async fn decision(grpc: &str, prompt: &str) -> String {
    let mut c = RouterClient::new(connect(grpc).await);
    let req = pb::RouteDecisionRequest {
        prompt: prompt.into(),
        ..Default::default()
    };
    c.route_decision(req)
        .await
        .unwrap()
        .into_inner()
        .decision_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_feedback_survives_sigkill() {
    let dir = common::scratch_dir("crash");
    let (mut child, grpc, admin_addr) = start(&dir);
    let id = decision(&grpc, "Write a SQL query that lists customers by revenue").await;
    let mut a = admin(&admin_addr).await;
    let mut acked = Vec::new();
    for i in 0..25u32 {
        let req = pb::RecordFeedbackRequest {
            decision_id: id.clone(),
            intent: (i % 2 == 0).then(|| "code".to_string()),
            outcome: if i % 3 == 0 {
                "failure".into()
            } else {
                "success".into()
            },
            rating: i % 5 + 1,
            comment: format!("record {i}"),
            ..Default::default()
        };
        acked.push(record(&mut a, req).await);
    }
    // Killed the moment the last acknowledgement is in hand: no graceful shutdown.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acked, (1..=25).collect::<Vec<u64>>());

    let log = dir.join("state/feedback.jsonl");
    let records = FeedbackLog::read(&log).unwrap();
    assert_eq!(records.len(), 25);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.sequence, i as u64 + 1);
        assert_eq!(r.comment, format!("record {i}"));
        assert_eq!(r.decision_id, id);
    }
    // A restarted server sees them all: the next record is number 26.
    let (mut child, grpc, admin_addr) = start(&dir);
    let id2 = decision(&grpc, "Summarise this paragraph in one line").await;
    let mut a = admin(&admin_addr).await;
    let req = pb::RecordFeedbackRequest {
        decision_id: id2,
        outcome: "success".into(),
        ..Default::default()
    };
    assert_eq!(record(&mut a, req).await, 26);
    // The decision made before the crash is still known after it.
    let req = pb::RecordFeedbackRequest {
        decision_id: id,
        rating: 4,
        ..Default::default()
    };
    assert_eq!(record(&mut a, req).await, 27);
    child.kill().unwrap();
    child.wait().unwrap();
}
