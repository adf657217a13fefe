//! The shared store of a fleet: one Redis connection per replica (the `redis` crate's
//! connection manager, which reconnects by itself), every operation under a deadline, every
//! key under one hash tag. An unreachable store is an outage to ride out, never a reason to
//! stop serving: callers get an error at once and decide (fail open or closed); a background
//! task keeps trying to connect, and a gauge and a counter tell the operator.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::FleetConfig;

pub mod artifacts;
use crate::metrics::Metrics;

/// Why a store operation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the shared store is not connected")]
    NotConnected,
    #[error("the shared store did not answer within {0} ms")]
    Timeout(u64),
    #[error("the shared store failed: {0}")]
    Redis(String),
}

/// A handle on the shared store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    prefix: String,
    replica: String,
    op_timeout: Duration,
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Store {
    /// Starts connecting to `cfg.redis_url` in the background; `None` when no store is
    /// configured. A bad URL is an error at once (the config is wrong, not the network).
    pub fn start(cfg: &FleetConfig, metrics: Arc<Metrics>) -> Result<Option<Self>, StoreError> {
        let Some(url) = &cfg.redis_url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str()).map_err(|e| {
            StoreError::Redis(format!("fleet.redis_url: {}", redact_url(&e.to_string())))
        })?;
        let store = Self {
            inner: Arc::new(Inner {
                client: client.clone(),
                conn: ArcSwapOption::empty(),
                prefix: format!("{{{}}}", cfg.key_prefix),
                replica: cfg.replica_id.clone().unwrap_or_else(default_replica_id),
                op_timeout: Duration::from_millis(cfg.op_timeout_ms),
                up: AtomicBool::new(false),
                metrics,
            }),
        };
        let connect = Duration::from_millis(cfg.connect_timeout_ms);
        tokio::spawn(connect_loop(Arc::downgrade(&store.inner), client, connect));
        Ok(Some(store))
    }

    /// `{prefix}:part`: every key shares the hash tag.
    pub fn key(&self, part: &str) -> String {
        format!("{}:{part}", self.inner.prefix)
    }

    /// A dedicated pub/sub connection (not the shared one), under the connect deadline.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let t = self.inner.op_timeout * 4;
        match tokio::time::timeout(t, self.inner.client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Timeout(t.as_millis() as u64)),
        }
    }

    /// This replica's name in the fleet.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// Whether the last operation reached the store.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Runs one operation (a command, a pipeline, a script) under the deadline. `op` names it
    /// in the errors metric.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.inner.conn.load_full() else {
            return Err(self.failed(op, StoreError::NotConnected));
        };
        let ms = self.inner.op_timeout.as_millis() as u64;
        match tokio::time::timeout(self.inner.op_timeout, f((*conn).clone())).await {
            Ok(Ok(v)) => {
                self.set_up(true);
                Ok(v)
            }
            Ok(Err(e)) => Err(self.failed(op, StoreError::Redis(e.to_string()))),
            Err(_) => Err(self.failed(op, StoreError::Timeout(ms))),
        }
    }

    fn failed(&self, op: &'static str, e: StoreError) -> StoreError {
        self.inner
            .metrics
            .store_errors
            .with_label_values(&[op])
            .inc();
        tracing::debug!(op, error = %e, "shared store operation failed");
        // A refused, broken or silent connection is an outage; an error the store itself
        // answered (a script error) is not.
        let outage = match &e {
            StoreError::NotConnected | StoreError::Timeout(_) => true,
            StoreError::Redis(msg) => is_connection_error(msg),
        };
        if outage {
            self.set_up(false);
        }
        e
    }

    fn set_up(&self, up: bool) {
        let was = self.inner.up.swap(up, Ordering::Relaxed);
        if was != up {
            self.inner.metrics.store_up.set(up as i64);
            if up {
                tracing::info!("shared store reachable");
            } else {
                tracing::warn!("shared store unreachable: serving with local state");
            }
        }
    }
}

fn is_connection_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "connection",
        "refused",
        "broken pipe",
        "reset",
        "timed out",
        "io error",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Keeps trying until the first connection is made; the manager reconnects after that.
async fn connect_loop(inner: std::sync::Weak<Inner>, client: redis::Client, timeout: Duration) {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let mut delay = Duration::from_millis(50);
    loop {
        if inner.upgrade().is_none() {
            return;
        }
        let attempt = ConnectionManager::new_with_config(client.clone(), cfg.clone());
        match tokio::time::timeout(timeout * 2, attempt).await {
            Ok(Ok(conn)) => {
                if let Some(i) = inner.upgrade() {
                    i.conn.store(Some(Arc::new(conn)));
                    Store { inner: i }.set_up(true);
                }
                return;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "shared store: connect failed"),
            Err(_) => tracing::debug!("shared store: connect timed out"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Host name and process id: unique among the replicas of one host and across hosts.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "replica".into());
    format!("{host}-{}", std::process::id())
}

/// A URL's password never reaches a log or an error message.
fn redact_url(s: &str) -> String {
    match (s.find("://"), s.find('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***{}", &s[..a], &s[b..]),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("redis://user:pw@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("redis://host:1"), "redis://host:1");
    }
}
