//! A copy of the binary outside the build tree finds its models through `--models-dir`,
//! `SWITCHBOARD_MODELS_DIR` or a `models/` folder beside it, and says where it looked when
//! none has them.
use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard::proto::v1::router_client::RouterClient;
use switchboard::proto::v1::RouteDecisionRequest;

use crate::common::{scratch_dir, spawn_serve_bin, wait_serving};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// The binary copied to `<dir>/bin/switchboard`.
fn copied(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let to = bin.join("switchboard");
    std::fs::copy(env!("CARGO_BIN_EXE_switchboard"), &to).unwrap();
    to
}

fn validate(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--validate-config"])
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_MODELS_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_missing_models_folder_names_the_places_tried() {
    let scratch = scratch_dir("relocate-missing");
    let bin = copied(&scratch);
    let nowhere = &scratch.join("no-models-here");
    let nowhere = nowhere.to_str().unwrap();
    let (ok, text) = validate(&bin, &scratch, &["--models-dir", nowhere], &[]);
    assert!(!ok, "served without models: {text}");
    assert!(
        text.contains("not found; looked in: ") && text.contains(nowhere),
        "{text}"
    );
    let (ok, text) = validate(&bin, &scratch, &[], &[("SWITCHBOARD_MODELS_DIR", nowhere)]);
    assert!(!ok && text.contains(nowhere), "{text}");
}

#[test]
fn models_beside_the_executable_are_found_before_the_source_tree() {
    let scratch = scratch_dir("relocate-beside");
    let bin = copied(&scratch);
    std::os::unix::fs::symlink(models(), scratch.join("bin/models")).unwrap();
    let (ok, text) = validate(&bin, &scratch, &[], &[]);
    assert!(ok, "{text}");
    let beside = &scratch.join("bin/models/classifier");
    assert!(text.contains(&beside.display().to_string()), "{text}");
}

#[tokio::test]
async fn a_copied_binary_serves_with_the_models_dir_flag() {
    let scratch = scratch_dir("relocate-serve");
    let bin = copied(&scratch);
    let dir = models();
    let args = ["--models-dir", dir.to_str().unwrap()];
    let (mut child, addrs) = spawn_serve_bin(&bin, &scratch, &args, &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", addrs["grpc"]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    wait_serving(channel.clone()).await;
    let r = RouterClient::new(channel)
        .route_decision(RouteDecisionRequest {
            prompt: "Write a Rust function that reverses a linked list".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.backends.is_empty(), "{r:?}");
    assert_eq!(r.classification.as_ref().unwrap().intent, "code", "{r:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}
