//! Client API keys over the real server: missing or wrong keys are Unauthenticated, a key's
//! tenant and backend list bind every request made with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use switchboard::auth::hash_key;
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::{CompleteRequest, Preferences, RouteDecisionRequest};
use tonic::Code;

fn with_key<T>(msg: T, key: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_gate_and_scope_requests() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\nbackends = [\"gpt-4o-mini\", \"llama-3.1-8b-local\"]\n\n[[keys]]\nsha256 = \"{}\"\ntenant = \"ops\"\n",
            hash_key("acme-key"),
            hash_key("ops-key")
        ),
    )
    .unwrap();
    let mut cfg = common::bundled_config();
    cfg.server.api_keys_file = Some(keys);
    let server = common::TestServer::start(cfg).await;
    let mut c = RouterClient::new(server.channel.clone());
    let req = || RouteDecisionRequest {
        prompt: "Prove that there are infinitely many primes.".into(),
        ..Default::default()
    };

    for key in [None, Some("wrong-key")] {
        let e = c.route_decision(with_key(req(), key)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{key:?}");
        let e = c
            .complete(with_key(CompleteRequest::default(), key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    // A restricted key only ever sees its backends.
    let r = c
        .route_decision(with_key(req(), Some("acme-key")))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = r.backends.iter().map(|b| b.name.as_str()).collect();
    assert!(
        !names.is_empty()
            && names
                .iter()
                .all(|n| ["gpt-4o-mini", "llama-3.1-8b-local"].contains(n)),
        "{names:?}"
    );
    let outside = RouteDecisionRequest {
        preferences: Some(Preferences {
            allow_backends: vec!["gpt-4o".into()],
            ..Default::default()
        }),
        ..req()
    };
    assert_eq!(
        c.route_decision(with_key(outside, Some("acme-key")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let pinned = CompleteRequest {
        route: Some(req()),
        pinned_backend: "gpt-4o".into(),
        ..Default::default()
    };
    assert_eq!(
        c.complete(with_key(pinned, Some("acme-key")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // An unrestricted key sees the whole catalog.
    let r = c
        .route_decision(with_key(req(), Some("ops-key")))
        .await
        .unwrap()
        .into_inner();
    assert!(r.backends.len() >= 5);
    server.stop().await;
}
