//! Decision and feedback records shared by a fleet. Each decision record is also written to
//! the store under its id (with a TTL, through a bounded queue off the request path), so
//! feedback sent to any replica finds the decision whichever replica made it; feedback goes
//! to one Redis Stream, and is acknowledged only once the store has it; a retrain on any
//! replica reads the whole fleet's feedback and the decisions it names. Usage records (one per
//! served completion) go to a Redis Stream whose entry ids are the store's clock, so the
//! savings report reads a time window with one XRANGE.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::decisions::DecisionRecord;
use super::feedback::FeedbackRecord;
use super::usage::UsageRecord;
use crate::fleet::{Store, StoreError};
use crate::metrics::Metrics;

/// Appends a feedback record with the next sequence number; returns the sequence.
const APPEND_LUA: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local rec = cjson.decode(ARGV[1])
rec['sequence'] = seq
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'r', cjson.encode(rec))
return seq
"#;

static APPEND: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(APPEND_LUA));

/// Feedback records kept in the stream (the oldest are trimmed past it).
const MAX_FEEDBACK: u64 = 1_000_000;
/// Usage records kept (the oldest are trimmed past it): at ~600 bytes each, ~3 GB at most.
const MAX_USAGE: u64 = 5_000_000;

/// A record waiting to be written: a decision (SET with a TTL) or a usage record (XADD).
enum Write {
    Decision { key: String, json: String },
    Usage { key: String, json: String },
}
/// Entries read per round trip.
const PAGE: usize = 5_000;

pub struct SharedRecords {
    store: Store,
    writes: mpsc::Sender<Write>,
    ttl_s: u64,
    metrics: Arc<Metrics>,
}

impl SharedRecords {
    /// Decision records live `ttl_s` in the store; at most `pending` wait to be written.
    pub fn new(store: Store, ttl_s: u64, pending: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(pending.max(1));
        let this = Arc::new(Self {
            store: store.clone(),
            writes: tx,
            ttl_s,
            metrics,
        });
        tokio::spawn(writer(store, rx, ttl_s));
        this
    }

    fn decision_key(&self, id: &str) -> String {
        self.store.key(&format!("decision:{id}"))
    }

    /// Queues a write; never blocks (a full queue drops and counts).
    fn queue(&self, w: Write) {
        if self.writes.try_send(w).is_err() {
            self.metrics.store_writes_dropped.inc();
        }
    }

    /// Whether the fleet knows decision `id`.
    pub async fn knows(&self, id: &str) -> Result<bool, StoreError> {
        let key = self.decision_key(id);
        self.store
            .run("decision_read", |mut c| async move {
                redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async::<bool>(&mut c)
                    .await
            })
            .await
    }

    /// Appends `r` to the fleet's feedback; returns its sequence once the store has it.
    pub async fn append_feedback(&self, r: &FeedbackRecord) -> Result<u64, StoreError> {
        let json = serde_json::to_string(r).map_err(|e| StoreError::Redis(e.to_string()))?;
        let mut inv = APPEND.prepare_invoke();
        inv.key(self.store.key("feedback:seq"))
            .key(self.store.key("feedback"))
            .arg(json)
            .arg(MAX_FEEDBACK);
        self.store
            .run("feedback_write", |mut c| async move {
                inv.invoke_async::<u64>(&mut c).await
            })
            .await
    }

    /// The fleet's feedback, oldest first.
    pub async fn feedback(&self) -> Result<Vec<FeedbackRecord>, StoreError> {
        self.read_stream("feedback", "-".into(), "+".into()).await
    }

    /// The fleet's usage records with `from_ms <= ts < to_ms` (by the store's clock).
    pub async fn usage(&self, from_ms: u64, to_ms: u64) -> Result<Vec<UsageRecord>, StoreError> {
        let end = format!("({}", to_ms.max(1));
        self.read_stream("usage", from_ms.to_string(), end).await
    }

    /// Every record of stream `name` between ids `start` and `end`, page by page.
    async fn read_stream<T: serde::de::DeserializeOwned>(
        &self,
        name: &'static str,
        mut start: String,
        end: String,
    ) -> Result<Vec<T>, StoreError> {
        let key = self.store.key(name);
        let mut out = Vec::new();
        loop {
            let (k, s, e) = (key.clone(), start.clone(), end.clone());
            let page: Vec<(String, Vec<(String, String)>)> = self
                .store
                .run("stream_read", |mut c| async move {
                    redis::cmd("XRANGE")
                        .arg(&k)
                        .arg(&s)
                        .arg(&e)
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let n = page.len();
            for (id, fields) in page {
                start = format!("({id}");
                out.extend(
                    fields
                        .iter()
                        .filter_map(|(_, v)| serde_json::from_str(v).ok()),
                );
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// The decision records of `ids` the store still holds.
    pub async fn decisions(&self, ids: &[String]) -> Result<Vec<DecisionRecord>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(PAGE) {
            let keys: Vec<String> = chunk.iter().map(|id| self.decision_key(id)).collect();
            let texts: Vec<Option<String>> = self
                .store
                .run("decision_read", |mut c| async move {
                    redis::cmd("MGET").arg(&keys).query_async(&mut c).await
                })
                .await?;
            out.extend(
                texts
                    .into_iter()
                    .flatten()
                    .filter_map(|t| serde_json::from_str(&t).ok()),
            );
        }
        Ok(out)
    }

    /// How long decision records stay in the store.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }
}

impl super::decisions::Sink for Arc<SharedRecords> {
    fn decision(&self, r: &DecisionRecord) {
        if let Ok(json) = serde_json::to_string(r) {
            let key = self.decision_key(&r.id);
            self.queue(Write::Decision { key, json });
        }
    }

    fn usage(&self, r: &UsageRecord) {
        if let Ok(json) = serde_json::to_string(r) {
            let key = self.store.key("usage");
            self.queue(Write::Usage { key, json });
        }
    }
}

/// The command that stores one record.
fn command(w: &Write, ttl_s: u64) -> (&'static str, redis::Cmd) {
    match w {
        Write::Decision { key, json } => {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(json).arg("EX").arg(ttl_s);
            ("decision_write", c)
        }
        Write::Usage { key, json } => {
            let mut c = redis::cmd("XADD");
            c.arg(key).arg("MAXLEN").arg("~").arg(MAX_USAGE);
            c.arg("*").arg("r").arg(json);
            ("usage_write", c)
        }
    }
}

/// Writes records in order, retrying while the store is unreachable.
async fn writer(store: Store, mut rx: mpsc::Receiver<Write>, ttl_s: u64) {
    while let Some(w) = rx.recv().await {
        let (op, cmd) = command(&w, ttl_s);
        let mut delay = Duration::from_millis(50);
        for tries in 1.. {
            let c2 = cmd.clone();
            let res = store
                .run(
                    op,
                    |mut c| async move { c2.query_async::<()>(&mut c).await },
                )
                .await;
            if res.is_ok() || (store.is_up() && tries >= 5) {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
