//! The classifier across a fleet. The active classifier is a pointer in the shared store,
//! `{generation, version, sha256, uri}`, with a history; artifacts live content-addressed in
//! an object store. A swap or rollback on any replica validates as a single process does,
//! uploads, and writes the next generation with compare-and-swap on the one it read. Every
//! replica learns of it by pub/sub and by polling (a lost message only delays it), fetches
//! and verifies the artifact, validates it, swaps, and records its acknowledgement; it only
//! ever moves to a higher generation. One that cannot load a generation keeps serving what it
//! has and reports why.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::registry::{Registry, Source, SwapError, SwapOptions, SwapReport};
use crate::fleet::artifacts::{Artifacts, Fetched};
use crate::fleet::Store;
use crate::records::now_ms;

/// The active classifier of the fleet (one entry of its history).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pointer {
    pub generation: u64,
    pub version: String,
    pub sha256: String,
    pub uri: String,
    /// The evaluation gate was overridden when it was made active; replicas honour that.
    #[serde(default)]
    pub force: bool,
    pub at_ms: u64,
    pub by: String,
}

/// What one replica runs, as it reported it.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ReplicaState {
    pub replica: String,
    pub generation: u64,
    pub version: String,
    pub since_ms: u64,
    /// Why the active generation could not be loaded (empty when it runs it).
    pub error: String,
    pub seen_ms: u64,
}

/// Writes `ARGV[2]` as the active pointer if the active generation is `ARGV[1]`, appends it
/// to the history and announces it; returns -1, or the generation that won instead.
const CAS_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
local gen = 0
if cur then gen = tonumber(cjson.decode(cur)['generation']) end
if gen ~= tonumber(ARGV[1]) then return gen end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, 199)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return -1
"#;

static CAS: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CAS_LUA));

/// A generation that failed here is retried after this long.
const RETRY_FAILED: Duration = Duration::from_secs(10);

pub struct Rollout {
    store: Store,
    artifacts: Artifacts,
    registry: Arc<Registry>,
    applied: AtomicU64,
    apply_lock: tokio::sync::Mutex<()>,
    state: Mutex<ReplicaState>,
    failed: Mutex<Option<(u64, Instant)>>,
    synced: watch::Sender<bool>,
    wake: Notify,
    poll: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> SwapError {
    SwapError::Unavailable(format!("the fleet's shared store: {e}"))
}

impl Rollout {
    pub fn new(
        store: Store,
        artifacts: Artifacts,
        registry: Arc<Registry>,
        poll: Duration,
    ) -> Arc<Self> {
        let live = registry.live();
        let state = ReplicaState {
            replica: store.replica().to_string(),
            version: live.version().to_string(),
            since_ms: now_ms(),
            ..Default::default()
        };
        Arc::new(Self {
            store,
            artifacts,
            registry,
            applied: AtomicU64::new(0),
            apply_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(state),
            failed: Mutex::new(None),
            synced: watch::channel(false).0,
            wake: Notify::new(),
            poll,
        })
    }

    /// True once this replica runs the active generation (or gave up waiting at start).
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    fn key(&self, k: &str) -> String {
        self.store.key(&format!("classifier:{k}"))
    }

    /// The active pointer; `None` before the first fleet swap.
    pub async fn active(&self) -> Result<Option<Pointer>, SwapError> {
        let key = self.key("active");
        let text: Option<String> = self
            .store
            .run("classifier_read", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await
            .map_err(unavailable)?;
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| SwapError::Internal(format!("the active pointer is unreadable: {e}"))),
        }
    }

    async fn history(&self) -> Result<Vec<Pointer>, SwapError> {
        let key = self.key("history");
        let items: Vec<String> = self
            .store
            .run("classifier_read", |mut c| async move {
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(items
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect())
    }

    /// Every replica's last report.
    pub async fn replicas(&self) -> Result<Vec<ReplicaState>, SwapError> {
        let key = self.key("replicas");
        let items: Vec<(String, String)> = self
            .store
            .run("classifier_read", |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await
            .map_err(unavailable)?;
        let mut v: Vec<ReplicaState> = items
            .iter()
            .filter_map(|(_, t)| serde_json::from_str(t).ok())
            .collect();
        v.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(v)
    }

    /// Writes `p` if the active generation is still `expected`.
    async fn cas(&self, expected: u64, p: &Pointer) -> Result<(), SwapError> {
        let text = serde_json::to_string(p).map_err(|e| SwapError::Internal(e.to_string()))?;
        let mut inv = CAS.prepare_invoke();
        inv.key(self.key("active"))
            .key(self.key("history"))
            .arg(expected)
            .arg(text)
            .arg(self.key("events"))
            .arg(p.generation);
        let won: i64 = self
            .store
            .run("classifier_write", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(unavailable)?;
        if won >= 0 {
            return Err(SwapError::Rejected(format!(
                "another swap made generation {won} active first (expected {expected}); retry"
            )));
        }
        Ok(())
    }

    fn pointer(&self, generation: u64, version: &str, sha: String, force: bool) -> Pointer {
        Pointer {
            generation,
            version: version.to_string(),
            uri: self.artifacts.uri(&sha),
            sha256: sha,
            force,
            at_ms: now_ms(),
            by: self.store.replica().to_string(),
        }
    }

    /// A swap for the whole fleet: validate here, upload, commit the next generation, and
    /// run it here before answering; the others follow.
    pub async fn swap(&self, src: Source, opt: SwapOptions) -> Result<SwapReport, SwapError> {
        let cur = self.active().await?;
        let check = SwapOptions {
            dry_run: true,
            ..opt.clone()
        };
        let mut report = self.registry.swap(dup(&src), check).await?;
        if opt.dry_run {
            return Ok(report);
        }
        report.messages.retain(|m| !m.starts_with("dry run:"));
        let mut expected = cur.as_ref().map_or(0, |p| p.generation);
        if cur.is_none() {
            // The first fleet swap records what runs now, so a rollback can return to it.
            if let Some(base) = self.base_pointer().await? {
                self.cas(0, &base).await?;
                expected = base.generation;
            }
        }
        let sha = match &src {
            Source::Path(d) => self.artifacts.put_dir(d).await,
            Source::Inline(b) => self.artifacts.put_inline(b.clone()).await,
        }
        .map_err(|e| SwapError::Unavailable(e.to_string()))?;
        let p = self.pointer(expected + 1, &report.version, sha, opt.force);
        self.cas(expected, &p).await?;
        self.apply(&p).await?;
        report.swapped = true;
        report.messages.push(format!(
            "fleet: generation {} is {}",
            p.generation, p.version
        ));
        Ok(report)
    }

    /// The live classifier as generation 1, when it was loaded from a folder.
    async fn base_pointer(&self) -> Result<Option<Pointer>, SwapError> {
        let live = self.registry.live();
        let dir = PathBuf::from(&live.source);
        if !dir.join(crate::classify::META_FILE).is_file() {
            return Ok(None);
        }
        let sha = self
            .artifacts
            .put_dir(&dir)
            .await
            .map_err(|e| SwapError::Unavailable(e.to_string()))?;
        Ok(Some(self.pointer(1, live.version(), sha, false)))
    }

    /// Back to `version` (or the version before the active one) for the whole fleet: a new
    /// generation pointing at an older artifact, so it works after every replica restarted.
    pub async fn rollback(&self, version: &str) -> Result<SwapReport, SwapError> {
        let cur = self.active().await?.ok_or_else(|| {
            SwapError::NotFound("version: the fleet has no earlier generation".into())
        })?;
        let history = self.history().await?;
        let target = history
            .iter()
            .find(|p| {
                if version.is_empty() {
                    p.version != cur.version
                } else {
                    p.version == version
                }
            })
            .ok_or_else(|| {
                let known: Vec<&str> = history.iter().map(|p| p.version.as_str()).collect();
                SwapError::NotFound(format!(
                    "version: {version:?} is not in the fleet's history {known:?}"
                ))
            })?;
        let p = self.pointer(
            cur.generation + 1,
            &target.version,
            target.sha256.clone(),
            target.force,
        );
        self.cas(cur.generation, &p).await?;
        self.apply(&p).await?;
        Ok(SwapReport {
            swapped: true,
            previous: cur.version.clone(),
            version: p.version.clone(),
            messages: vec![format!(
                "fleet: generation {} rolls back {} → {}",
                p.generation, cur.version, p.version
            )],
            metrics: Default::default(),
        })
    }

    /// Runs generation `p` here, if it is newer than what runs.
    async fn apply(&self, p: &Pointer) -> Result<(), SwapError> {
        let _one = self.apply_lock.lock().await;
        if p.generation <= self.applied.load(Ordering::SeqCst) {
            return Ok(());
        }
        let result = self.load(p).await;
        self.registry.observe("fleet_apply", &result);
        let error = match &result {
            Ok(_) => {
                self.applied.store(p.generation, Ordering::SeqCst);
                String::new()
            }
            Err(e) => {
                *self.failed.lock().unwrap_or_else(|x| x.into_inner()) =
                    Some((p.generation, Instant::now()));
                tracing::warn!(generation = p.generation, version = %p.version, error = %e,
                    "cannot run the fleet's classifier generation; serving the current one");
                e.to_string()
            }
        };
        self.report(Some(p), error).await;
        result.map(|_| ())
    }

    async fn load(&self, p: &Pointer) -> Result<SwapReport, SwapError> {
        if self.registry.live().version() == p.version {
            return Ok(SwapReport::default());
        }
        let src = match self.artifacts.fetch(&p.sha256).await {
            Ok(Fetched::Dir(d)) => Source::Path(d),
            Ok(Fetched::Inline(b)) => Source::Inline(b),
            Err(e) => return Err(SwapError::Invalid(e.to_string())),
        };
        let opt = SwapOptions {
            skip_gate: true,
            ..Default::default()
        };
        self.registry.swap(src, opt).await
    }

    /// Records this replica's state in the store (best effort).
    async fn report(&self, p: Option<&Pointer>, error: String) {
        let text = {
            let mut s = self.state.lock().unwrap_or_else(|x| x.into_inner());
            if let (Some(p), true) = (p, error.is_empty()) {
                if s.generation != p.generation {
                    s.since_ms = now_ms();
                }
                s.generation = p.generation;
            }
            s.version = self.registry.live().version().to_string();
            s.error = error;
            s.seen_ms = now_ms();
            serde_json::to_string(&*s).unwrap_or_default()
        };
        let (key, field) = (self.key("replicas"), self.store.replica().to_string());
        let _ = self
            .store
            .run("classifier_report", |mut c| async move {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&field)
                    .arg(&text)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }

    /// Follows the active generation until the process ends: pub/sub wakes it, polling
    /// backs pub/sub up.
    pub async fn follow(self: Arc<Self>, startup_timeout: Duration) {
        tokio::spawn(listen(Arc::downgrade(&self)));
        let started = Instant::now();
        loop {
            self.sync_once(started, startup_timeout).await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    async fn sync_once(&self, started: Instant, startup_timeout: Duration) {
        let active = match self.active().await {
            Ok(a) => a,
            Err(e) => {
                if !*self.synced.borrow() && started.elapsed() >= startup_timeout {
                    tracing::warn!(error = %e, "the fleet's store is unreachable; starting with the local classifier");
                    self.synced.send_replace(true);
                }
                return;
            }
        };
        let Some(p) = active else {
            self.synced.send_replace(true);
            self.report(None, String::new()).await;
            return;
        };
        let backing_off = self
            .failed
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .is_some_and(|(g, t)| g == p.generation && t.elapsed() < RETRY_FAILED);
        if p.generation > self.applied.load(Ordering::SeqCst) && !backing_off {
            let _ = self.apply(&p).await;
        } else {
            self.report(Some(&p), self.state_error(p.generation)).await;
        }
        let caught_up = self.applied.load(Ordering::SeqCst) >= p.generation;
        if caught_up || started.elapsed() >= startup_timeout {
            self.synced.send_replace(true);
        }
    }

    fn state_error(&self, generation: u64) -> String {
        if self.applied.load(Ordering::SeqCst) >= generation {
            return String::new();
        }
        self.state
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .error
            .clone()
    }
}

/// Wakes the follower on every announcement; reconnects (with backoff) when the pub/sub
/// connection is lost, and wakes it then too, since a message may have been missed.
async fn listen(r: std::sync::Weak<Rollout>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(this) = r.upgrade() else { return };
        let channel = this.key("events");
        let store = this.store.clone();
        drop(this);
        if let Ok(mut ps) = store.pubsub().await {
            if ps.subscribe(&channel).await.is_ok() {
                delay = Duration::from_millis(100);
                let mut msgs = ps.on_message();
                while msgs.next().await.is_some() {
                    match r.upgrade() {
                        Some(this) => this.wake.notify_one(),
                        None => return,
                    }
                }
                tracing::info!("classifier announcements: pub/sub connection lost; reconnecting");
            }
        }
        if let Some(this) = r.upgrade() {
            this.wake.notify_one();
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A second handle on the same candidate (validation consumes one).
fn dup(src: &Source) -> Source {
    match src {
        Source::Path(p) => Source::Path(p.clone()),
        Source::Inline(b) => Source::Inline(b.clone()),
    }
}
