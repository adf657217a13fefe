//! `[fleet]`: the shared store that makes many replicas behave as one router. Unset (the
//! default), every replica keeps its own state in memory, as a single process always has.
use serde::Deserialize;

/// What a limit does while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOutage {
    /// Admit the request (the limit is not enforced until the store is back).
    Open,
    /// Refuse the request with UNAVAILABLE.
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS is not built in): the shared store.
    pub redis_url: Option<String>,
    /// Every key lives under the hash tag `{<key_prefix>}`, so multi-key scripts stay on one
    /// Redis Cluster slot.
    pub key_prefix: String,
    /// This replica's name in the fleet's records (default: host name and process id).
    pub replica_id: Option<String>,
    /// One store operation's deadline; past it the operation counts as an outage.
    pub op_timeout_ms: u64,
    /// Connecting (and reconnecting) to the store.
    pub connect_timeout_ms: u64,
    /// How often breaker states are read from the store (they are also pushed on change).
    pub breaker_sync_ms: u64,
    /// Rate limits (requests and tokens per minute) during an outage: open by default, so
    /// an outage of the store is not an outage of routing.
    pub rate_limits_on_outage: OnOutage,
    /// Spend budgets during an outage: closed by default, since money spent while nobody
    /// counts cannot be taken back.
    pub budgets_on_outage: OnOutage,
    /// Where classifier artifacts go (`file:///shared/dir`, or a bucket URL where the build
    /// supports it). With `redis_url`, swaps and rollbacks then reach every replica.
    pub artifact_url: Option<String>,
    /// How often a replica reads the active classifier generation (pub/sub also tells it).
    pub rollout_poll_ms: u64,
    /// A starting replica is not ready until it runs the active generation; if the store
    /// cannot be reached for this long it starts with its own classifier, and says so.
    pub startup_sync_timeout_ms: u64,
    /// How long decision records stay in the shared store for fleet-wide feedback (each is
    /// about 2.5 KB: the embedding is most of it).
    pub decision_ttl_s: u64,
    /// Usage and settlement writes held while the store is unreachable, replayed when it
    /// returns; past this many the oldest are dropped (and counted).
    pub max_pending_writes: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "switchboard".into(),
            replica_id: None,
            op_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            breaker_sync_ms: 200,
            rate_limits_on_outage: OnOutage::Open,
            budgets_on_outage: OnOutage::Closed,
            max_pending_writes: 100_000,
            artifact_url: None,
            decision_ttl_s: 86_400,
            rollout_poll_ms: 1_000,
            startup_sync_timeout_ms: 30_000,
        }
    }
}

impl FleetConfig {
    /// Range and shape checks; errors name the TOML path.
    pub fn check(&self) -> Result<(), (String, String)> {
        let p = |k: &str| format!("fleet.{k}");
        if let Some(u) = &self.redis_url {
            if !(u.starts_with("redis://") || u.starts_with("redis+unix://")) {
                return Err((
                    p("redis_url"),
                    format!("must start with redis:// or redis+unix://, found {u:?}"),
                ));
            }
        }
        if let Some(u) = &self.artifact_url {
            if url::Url::parse(u).is_err() {
                return Err((p("artifact_url"), format!("not a URL: {u:?}")));
            }
        }
        let k = &self.key_prefix;
        if k.is_empty() || k.len() > 64 || k.contains(['{', '}', ' ']) {
            return Err((
                p("key_prefix"),
                "must be 1 to 64 characters without braces or spaces".into(),
            ));
        }
        for (name, v, max) in [
            ("op_timeout_ms", self.op_timeout_ms, 60_000),
            ("connect_timeout_ms", self.connect_timeout_ms, 60_000),
            ("breaker_sync_ms", self.breaker_sync_ms, 60_000),
            (
                "max_pending_writes",
                self.max_pending_writes as u64,
                10_000_000,
            ),
            ("rollout_poll_ms", self.rollout_poll_ms, 3_600_000),
            (
                "startup_sync_timeout_ms",
                self.startup_sync_timeout_ms,
                3_600_000,
            ),
            ("decision_ttl_s", self.decision_ttl_s, 90 * 86_400),
        ] {
            if !(1..=max).contains(&v) {
                return Err((p(name), format!("must be in [1, {max}], found {v}")));
            }
        }
        Ok(())
    }

    /// Whether the classifier is rolled out fleet-wide (a store and an artifact store).
    pub fn rollout(&self) -> bool {
        self.redis_url.is_some() && self.artifact_url.is_some()
    }

    /// Whether the state is shared (a store is configured).
    pub fn shared(&self) -> bool {
        self.redis_url.is_some()
    }
}
