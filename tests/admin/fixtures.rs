//! What the Admin tests share: an authenticated client, the test config, and head folders made
//! from the shipped classifier (valid variants, a full model, and artifacts that must be refused).
use std::path::{Path, PathBuf};

use switchboard::classify::artifact as swap;
use switchboard::classify::WEIGHTS_FILE;
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::admin_client::AdminClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::common;

pub type Intercept =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub type Admin = AdminClient<InterceptedService<Channel, Intercept>>;

pub async fn admin(addr: std::net::SocketAddr, token: Option<&str>) -> Admin {
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
pub fn config() -> switchboard::config::Config {
    let mut c = common::bundled_config();
    c.admin.gate_set =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gate_small.jsonl");
    c
}

pub fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/classifier")
}

pub fn shipped_weights() -> Vec<u8> {
    std::fs::read(shipped().join(WEIGHTS_FILE)).unwrap()
}

/// The shipped heads with a slightly different calibration: a valid, distinct version.
pub fn variant(dir: &Path, factor: f32) -> String {
    swap::variant(&shipped(), dir, factor).unwrap()
}

/// The bundled encoder re-saved as f32 (a new identity) with the shipped heads bound to it.
pub fn full_model(dir: &Path) -> String {
    swap::full_model(&shipped(), &common::model_dir(), dir).unwrap()
}

/// Label names rotated: same shapes and label set, wrong answers; must fail the gate.
pub fn below_gate(dir: &Path) -> String {
    let mut m = swap::read_meta(&shipped()).unwrap();
    m.intent_labels.rotate_left(1);
    m.domain_labels.rotate_left(1);
    swap::write_heads(dir, m, &shipped_weights()).unwrap()
}

pub fn foreign_encoder(dir: &Path) -> String {
    let mut m = swap::read_meta(&shipped()).unwrap();
    m.encoder.sha256 = "0".repeat(64);
    swap::write_heads(dir, m, &shipped_weights()).unwrap()
}

pub fn corrupt(dir: &Path) {
    variant(dir, 1.5);
    std::fs::write(dir.join(WEIGHTS_FILE), b"this is not a safetensors file").unwrap();
}

pub fn swap_req(path: &Path) -> pb::SwapClassifierRequest {
    pb::SwapClassifierRequest {
        source: Some(pb::swap_classifier_request::Source::Path(
            path.display().to_string(),
        )),
        ..Default::default()
    }
}

pub async fn live(a: &mut Admin) -> String {
    a.get_classifier(pb::GetClassifierRequest {})
        .await
        .unwrap()
        .into_inner()
        .live
        .unwrap()
        .version
}
