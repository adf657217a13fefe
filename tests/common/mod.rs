//! Helpers shared by the integration tests: the bundled encoder with test-sized settings.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use switchboard::embed::{Embedder, EncoderConfig};

pub fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "bundled encoder missing at {}: the tests need models/ from the repository",
        dir.display()
    );
    dir
}

pub fn encoder_config() -> EncoderConfig {
    EncoderConfig {
        model_dir: model_dir(),
        ..EncoderConfig::default()
    }
}

pub fn embedder(cfg: &EncoderConfig) -> Embedder {
    Embedder::start(cfg).expect("bundled encoder loads")
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
