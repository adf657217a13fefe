//! A real `redis-server` on a free loopback port (persistence off) and replicas of the real
//! `switchboard serve` binary sharing it.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::proto::v1::admin_client::AdminClient;
use switchboard::proto::v1::router_client::RouterClient;
use tonic::transport::Channel;

use crate::common;

pub struct Redis {
    pub port: u16,
    binds: Vec<String>,
    child: Option<Child>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Redis {
    /// Starts `redis-server`, installing it first with tests/setup.sh where it is missing;
    /// a machine where that fails, fails here.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, &["127.0.0.1"])
    }

    /// Starts `redis-server` listening on `binds` (127.0.0.1 first).
    pub fn start_on(dir: &Path, binds: &[&str]) -> Self {
        let found = Command::new("sh")
            .args(["-c", "command -v redis-server"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup.sh");
            let ok = Command::new("bash")
                .arg(&setup)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "redis-server is missing and {} could not install it",
                setup.display()
            );
        }
        let mut r = Self {
            port: free_port(),
            binds: binds.iter().map(|b| b.to_string()).collect(),
            child: None,
            dir: dir.to_path_buf(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind"])
            .args(&self.binds)
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server could not be started (tests/setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 20 s",
            self.port
        );
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL: nothing flushed, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A synchronous client for fault injection.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `switchboard serve` process.
pub struct Replica {
    pub name: String,
    pub http: String,
    pub admin: String,
    child: std::sync::Mutex<Child>,
    channel: Channel,
    pub router: RouterClient<Channel>,
}

impl Replica {
    /// Starts replica `name` with `config` and waits until it is ready.
    pub async fn start(name: &str, dir: &Path, config: &Path) -> Self {
        let r = Self::spawn(name, dir, config).await;
        r.wait_ready().await;
        r
    }

    /// Waits (bounded) until its gRPC health is SERVING.
    pub async fn wait_ready(&self) {
        common::wait_serving(self.channel.clone()).await;
    }

    /// Starts replica `name` and returns once it listens (not yet ready).
    pub async fn spawn(name: &str, dir: &Path, config: &Path) -> Self {
        let env = [
            ("SWITCHBOARD_CONFIG", config.to_str().unwrap()),
            ("SWITCHBOARD_ADMIN_TOKEN", common::ADMIN_TOKEN),
        ];
        let (child, addrs) = common::spawn_serve(dir, &env);
        Self::from_child(name, child, &addrs).await
    }

    /// A replica started elsewhere (another network namespace), from its bound addresses.
    pub async fn from_child(
        name: &str,
        child: Child,
        addrs: &std::collections::HashMap<String, String>,
    ) -> Self {
        let grpc = addrs["grpc"].clone();
        let channel = Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            name: name.into(),
            http: addrs["http"].clone(),
            admin: addrs["admin"].clone(),
            child: std::sync::Mutex::new(child),
            router: RouterClient::new(channel.clone()),
            channel,
        }
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.admin))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AdminClient::new(ch)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn ready(&self) -> bool {
        let r = reqwest::Client::new()
            .get(format!("http://{}/readyz", self.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        r.is_ok_and(|r| r.status().is_success())
    }
}

impl Replica {
    /// SIGKILL, as a crash.
    pub fn kill(&self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A metric's value summed over the samples whose line contains every `parts`.
pub fn metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Adds `authorization: Bearer <key>`.
pub fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}
