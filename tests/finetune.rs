//! Fine-tuning the encoder's top layer with the heads on a small real slice: gradients reach
//! the encoder (only the trained layer changes), and the result is one artifact — an encoder
//! folder plus heads bound to its sha256 — that loads as the server loads it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use switchboard::classify::{Classifier, ClassifyError};
use switchboard::embed::{Embedder, EncoderConfig};
use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;
use switchboard::train::finetune::{self, FinetuneConfig, Select};

fn weights(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.contains("position_ids"))
        .map(|(k, t)| {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (k, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finetuning_the_top_layer_moves_only_it_and_yields_one_loadable_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ft");
    let enc = common::encoder_config();
    let ft = FinetuneConfig {
        layers: 1,
        epochs: 1,
        encoder_lr: 1e-4,
        batch_size: 16,
        max_rows: 64,
        dev_rows: 32,
        encoder_dropout: 0.0,
        init_heads: None,
        noise_share: 0.25,
        select: Select::IntentAccuracy,
    };
    let outcome = finetune::finetune(
        &enc,
        &common::slice_config(&out, &tmp.path().join("cache")),
        &ft,
    )
    .await
    .unwrap();
    assert_eq!(outcome.train_rows, 80, "64 rows and 16 noisy copies");
    assert_eq!(outcome.history.len(), 1);
    assert!(
        outcome.dev_report.intent.n >= 40,
        "whole dev split evaluated"
    );

    only_the_top_layer_moved(
        &enc.model_dir.join("model.safetensors"),
        &out.join("encoder/model.safetensors"),
    );

    // The heads name the new encoder: they load with it and are refused by the base one.
    let tuned_enc: Embedder = common::embedder(&EncoderConfig {
        model_dir: out.join("encoder"),
        ..enc.clone()
    });
    let base_enc: Embedder = common::embedder(&enc);
    assert_ne!(
        tuned_enc.info().weights_sha256,
        base_enc.info().weights_sha256
    );
    let loaded = Classifier::load(&out, &tuned_enc.info()).unwrap();
    assert_eq!(loaded.version(), outcome.classifier.version());
    assert!(matches!(
        Classifier::load(&out, &base_enc.info()),
        Err(ClassifyError::EncoderMismatch(_))
    ));
    let e = tuned_enc
        .embed("Write a Python function that reverses a list.")
        .await
        .unwrap();
    let p = loaded.predict(&e.vector, e.tokens, None).unwrap();
    assert!((0.0..=1.0).contains(&p.complexity), "{p:?}");

    a_server_runs_it_with_its_own_encoder(&out, &tuned_enc, outcome.classifier.version()).await;
}

/// Only the top layer (index 5 of 6) changed; embeddings and lower layers are untouched.
fn only_the_top_layer_moved(base: &Path, tuned: &Path) {
    let (base, tuned) = (weights(base), weights(tuned));
    assert_eq!(base.len(), tuned.len());
    let (mut changed, mut frozen_changed) = (0, Vec::new());
    for (name, v) in &base {
        if v != &tuned[name] {
            if name.contains("encoder.layer.5.") {
                changed += 1;
            } else {
                frozen_changed.push(name.clone());
            }
        }
    }
    assert!(changed >= 10, "only {changed} top-layer weights moved");
    assert!(
        frozen_changed.is_empty(),
        "frozen weights moved: {frozen_changed:?}"
    );
}

/// A server pointed at the folder runs it with its own encoder, not the configured one.
async fn a_server_runs_it_with_its_own_encoder(out: &Path, tuned_enc: &Embedder, version: &str) {
    let mut cfg = common::catalog(vec![common::mock_backend(
        "m",
        "mock",
        "http://127.0.0.1:9",
        0.5,
    )]);
    cfg.server.classifier_dir = out.to_path_buf();
    let server = common::TestServer::start(cfg).await;
    assert_eq!(
        server.engine.embedder.info().weights_sha256,
        tuned_enc.info().weights_sha256
    );
    let mut client = RouterClient::new(server.channel.clone());
    let r = client
        .route_decision(RouteDecisionRequest {
            prompt: "Write a Python function that reverses a list.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.classifier_version, version);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finetuning_refuses_a_layer_count_the_encoder_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = FinetuneConfig {
        layers: 7,
        epochs: 1,
        encoder_lr: 1e-4,
        batch_size: 16,
        max_rows: 16,
        dev_rows: 16,
        encoder_dropout: 0.0,
        init_heads: None,
        noise_share: 0.0,
        select: Select::Loss,
    };
    let cfg = common::slice_config(&tmp.path().join("x"), &tmp.path().join("cache"));
    let err = finetune::finetune(&common::encoder_config(), &cfg, &ft)
        .await
        .err()
        .expect("7 layers of a 6-layer encoder must fail");
    assert!(err.to_string().contains("--finetune-layers"), "{err}");
}
