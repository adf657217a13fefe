//! The OpenAI-compatible facade driven by the official `openai` Python SDK (installed into
//! target/py-venv by tests/python/setup.sh), against the in-tree mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use switchboard::auth::hash_key;
use switchboard_mock as mock;
use switchboard_mock::Mock;

use common::{catalog, mock_backend};

/// The venv's python, creating the venv if needed (a failure here fails the test loudly).
fn python() -> PathBuf {
    let setup = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/setup.sh");
    let out = Command::new("bash").arg(&setup).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed (it needs python3 and PyPI):\n{}",
        setup.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.is_file(), "no python at {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_openai_sdk_works_against_the_facade() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let m = Mock::start().await.unwrap();
    let url = m.base_url();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nsha256 = \"{}\"\ntenant = \"sdk\"\n",
            hash_key("sdk-key")
        ),
    )
    .unwrap();
    let mut cfg = catalog(vec![
        mock_backend("primary", "mock-500", &url, 0.9),
        mock_backend("secondary", "mock", &url, 0.6),
        mock_backend("alt", "mock-alt", &url, 0.3),
        mock_backend("dying", "mock-die-3", &url, 0.2),
    ]);
    cfg.server.api_keys_file = Some(keys);
    let server = common::TestServer::start(cfg).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_sdk_check.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .env("SB_BASE_URL", format!("http://{}/v1", server.http))
        .env("SB_API_KEY", "sdk-key")
        .env("SB_REPLY", mock::REPLY)
        .env("SB_PROMPT_TOKENS", mock::PROMPT_TOKENS.to_string())
        .env("SB_COMPLETION_TOKENS", mock::COMPLETION_TOKENS.to_string());
    // The SDK's own timeout (30 s a call) bounds the script.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("10 checks passed"), "{stdout}");
    // The SDK's calls reached the server's metrics under their routes.
    let metrics = server.engine_metrics();
    assert!(
        metrics.contains(
            r#"switchboard_http_requests_total{path="/v1/chat/completions",status="401"}"#
        ),
        "{metrics}"
    );
    server.stop().await;
}
