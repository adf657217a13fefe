//! A partition, not a stop: one replica runs in its own network namespace, reaching Redis over
//! one veth pair and its clients over another. Cutting the first leaves the other replicas
//! and Redis untouched: the cut-off replica keeps serving, its readiness does not flap, and
//! it joins the fleet's newest classifier generation once the link is back. Needs root (CI
//! and the development machines run as root); without it the test fails, naming why.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::classify::artifact as swap;
use switchboard::proto::v1 as pb;
use switchboard::proto::v1::RouteDecisionRequest;

use crate::common;
use crate::harness::{with_key, Redis, Replica};

/// Addresses on the two veth pairs (this test's own namespace, nothing else is there).
const STORE_HOST: &str = "10.231.0.1";
const STORE_NS: &str = "10.231.0.2";
const CLIENT_HOST: &str = "10.231.1.1";
const CLIENT_NS: &str = "10.231.1.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's `ip` runs");
    assert!(
        out.status.success(),
        "ip {}: {} (the partition test needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with two veth pairs to the host; removed on drop.
pub struct Netns {
    pub name: String,
    store_link: String,
}

impl Netns {
    pub fn new() -> Self {
        let tag = std::process::id() % 100_000;
        let name = format!("sbpart{tag}");
        let (s, c) = (format!("sbs{tag}"), format!("sbc{tag}"));
        // A namespace left by a killed earlier run (usually none: its error is not news).
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            store_link: format!("{s}h"),
        };
        for (link, host, inner) in [(&s, STORE_HOST, STORE_NS), (&c, CLIENT_HOST, CLIENT_NS)] {
            let (h, n) = (format!("{link}h"), format!("{link}n"));
            ip(&["link", "add", &h, "type", "veth", "peer", "name", &n]);
            ip(&["link", "set", &n, "netns", &name]);
            ip(&["addr", "add", &format!("{host}/30"), "dev", &h]);
            ip(&["link", "set", &h, "up"]);
            let exec = |a: &[&str]| {
                let mut v = vec!["netns", "exec", &name, "ip"];
                v.extend_from_slice(a);
                ip(&v);
            };
            exec(&["addr", "add", &format!("{inner}/30"), "dev", &n]);
            exec(&["link", "set", &n, "up"]);
            exec(&["link", "set", "lo", "up"]);
        }
        ns
    }

    /// Cuts (or restores) the replica's link to the store only.
    pub fn store_link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.store_link,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.store_link])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.store_link.replace("sbs", "sbc")])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `switchboard serve` inside the namespace, listening on its client address.
fn spawn_in_ns(
    ns: &Netns,
    dir: &Path,
    config: &Path,
) -> (
    std::process::Child,
    std::collections::HashMap<String, String>,
) {
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let any = format!("{CLIENT_NS}:0");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, bin, "serve"])
        .args([
            "--grpc-addr",
            &any,
            "--http-addr",
            &any,
            "--admin-addr",
            &any,
        ])
        .env("SWITCHBOARD_CONFIG", config)
        .env("SWITCHBOARD_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addrs = common::bound_addrs(&mut child);
    (child, addrs)
}

async fn version_of(r: &Replica) -> String {
    let req = RouteDecisionRequest {
        prompt: "Plan a trip to Lisbon.".into(),
        ..Default::default()
    };
    let mut c = r.router.clone();
    c.route_decision(with_key(req, "free-key"))
        .await
        .expect("routing works, partitioned or not")
        .into_inner()
        .classifier_version
}

async fn swap_on(r: &Replica, dir: &Path) {
    let mut a = r.admin().await;
    let req = pb::SwapClassifierRequest {
        source: Some(pb::swap_classifier_request::Source::Path(
            dir.display().to_string(),
        )),
        ..Default::default()
    };
    a.swap_classifier(with_key(req, common::ADMIN_TOKEN))
        .await
        .unwrap();
}

async fn wait_for(r: &Replica, version: &str, limit: Duration) {
    let t = Instant::now();
    while version_of(r).await != version {
        assert!(
            t.elapsed() < limit,
            "{} not on {version} within {limit:?}",
            r.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `config_for(redis_url)` writes a replica config and returns its path.
pub async fn partition(dir: &Path, config_for: impl Fn(&str, usize) -> PathBuf) {
    let ns = Netns::new();
    let redis = Redis::start_on(dir, &["127.0.0.1", STORE_HOST]);
    let local = format!("redis://127.0.0.1:{}", redis.port);
    let remote = format!("redis://{STORE_HOST}:{}", redis.port);
    let a = Replica::start("p1", dir, &config_for(&local, 11)).await;
    let (child, addrs) = spawn_in_ns(&ns, dir, &config_for(&remote, 12));
    let cut = Replica::from_child("p2 (in its namespace)", child, &addrs).await;
    cut.wait_ready().await;
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/classifier");
    let v1 = swap::variant(&shipped, &dir.join("part-1"), 1.15).unwrap();
    let v2 = swap::variant(&shipped, &dir.join("part-2"), 1.25).unwrap();
    swap_on(&a, &dir.join("part-1")).await;
    wait_for(&cut, &v1, Duration::from_secs(10)).await;

    ns.store_link(false);
    swap_on(&a, &dir.join("part-2")).await;
    wait_for(&a, &v2, Duration::from_secs(5)).await;
    // Cut off for 5 s: it serves what it has, and stays ready throughout.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(version_of(&cut).await, v1);
        assert!(cut.ready().await, "readiness flapped during the partition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ns.store_link(true);
    wait_for(&cut, &v2, Duration::from_secs(20)).await;
    assert!(cut.ready().await);
}
