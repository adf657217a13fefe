//! Upstream backends: the shared HTTP client, and live per-backend state (circuit breaker,
//! concurrency limit, Retry-After cooldown, moving averages of TTFT) that feeds both the
//! proxy and `RouteDecision`'s health flag and latency estimate.
pub mod breaker;
mod fleet;
pub mod openai;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::fleet::Store;
use crate::metrics::Metrics;
use crate::policy::Health;
use breaker::{Admit, Breaker, BreakerConfig, State};

struct BackendState {
    breaker: Mutex<Breaker>,
    slots: Arc<Semaphore>,
    max_concurrency: u32,
    /// Exponential moving average of time to first token, ms.
    ttft_ms: Mutex<Option<f64>>,
    cooldown_until: Mutex<Option<Instant>>,
    /// Its own pool, so its connect timeout is its own.
    http: reqwest::Client,
    connect_timeout_ms: u64,
    /// A state change not yet written to the fleet's record: the record must not undo it.
    unpublished: AtomicBool,
    /// How long a fleet probe lease lasts (the probe's own longest wait).
    probe_ttl: Duration,
}

type States = HashMap<String, Arc<BackendState>>;

/// Breakers, concurrency slots and latency measurements of every catalog backend. The map is
/// swapped whole when the catalog is reloaded; a backend whose connection settings did not
/// change keeps its state (breaker, measured latency) across the reload.
pub struct Upstreams {
    states: arc_swap::ArcSwap<States>,
    breaker: BreakerConfig,
    fleet: bool,
    metrics: Arc<Metrics>,
    /// In a fleet: breaker changes to write to the shared record.
    events: Option<tokio::sync::mpsc::Sender<fleet::Event>>,
}

/// Why a backend was skipped without a call.
#[derive(Debug, Clone)]
pub enum Skip {
    Open(State),
    Full(u32),
    CoolingDown(Duration),
    Unknown,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open(s) => write!(f, "circuit {}", s.as_str()),
            Self::Full(n) => write!(f, "at its concurrency limit ({n})"),
            Self::CoolingDown(d) => write!(
                f,
                "cooling down after 429 for {:.1} s more",
                d.as_secs_f64()
            ),
            Self::Unknown => write!(f, "not in the catalog"),
        }
    }
}

/// A granted call slot; give the outcome back with `Upstreams::finish`.
pub struct Slot {
    pub backend: String,
    /// The state that granted it (a reload may have replaced the backend's entry since).
    state: Arc<BackendState>,
    admit: Admit,
    _permit: OwnedSemaphorePermit,
    finished: bool,
    upstreams: Arc<Upstreams>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A probe that ended without an outcome (client gone) must free the half-open slot.
        if !self.finished && self.admit == Admit::Probe {
            let s = &self.state;
            s.breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .release_probe();
            self.upstreams
                .publish(&self.backend, s, fleet::Change::ProbeDropped);
        }
    }
}

impl Upstreams {
    /// With a `store`, breakers are shared with the fleet (a task keeps them in step, every
    /// `cfg.fleet.breaker_sync_ms`).
    pub fn new(
        cfg: &Config,
        breaker: BreakerConfig,
        metrics: Arc<Metrics>,
        store: Option<Store>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let states = build_states(cfg, &HashMap::new(), breaker, store.is_some())?;
        let (events, rx) = match store {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let this = Arc::new(Self {
            states: arc_swap::ArcSwap::from_pointee(states),
            breaker,
            fleet: store.is_some(),
            metrics,
            events,
        });
        if let (Some(store), Some(rx)) = (store, rx) {
            let every = Duration::from_millis(cfg.fleet.breaker_sync_ms);
            tokio::spawn(fleet::sync(Arc::downgrade(&this), store, rx, every));
        }
        Ok(this)
    }

    /// Queues a breaker change for the fleet's record (no-op in a single process).
    fn publish(&self, backend: &str, s: &BackendState, change: fleet::Change) {
        let Some(tx) = &self.events else { return };
        s.unpublished.store(true, Ordering::SeqCst);
        let ev = fleet::Event {
            backend: backend.to_string(),
            change,
        };
        if tx.try_send(ev).is_err() {
            // The sync task is behind; its next poll still brings the record here.
            s.unpublished.store(false, Ordering::SeqCst);
        }
    }

    /// Takes in a reloaded catalog: new backends get fresh state, removed ones go (calls in
    /// flight keep theirs until they finish), the others keep theirs unless their connection
    /// settings changed.
    pub fn update(&self, cfg: &Config) -> Result<(), reqwest::Error> {
        let old = self.states.load_full();
        let states = build_states(cfg, &old, self.breaker, self.fleet)?;
        self.states.store(Arc::new(states));
        Ok(())
    }

    /// The HTTP client for `name` (its own connect timeout and pool).
    pub fn client(&self, name: &str) -> Option<reqwest::Client> {
        self.states.load().get(name).map(|s| s.http.clone())
    }

    /// Health and measured latency for ranking a RouteDecision: an open breaker or a
    /// Retry-After cooldown makes a backend unhealthy.
    pub fn health(&self, name: &str) -> Health {
        let now = Instant::now();
        match self.states.load().get(name) {
            Some(s) => {
                let open = s
                    .breaker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .state(now)
                    == State::Open;
                let cooling = s
                    .cooldown_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|t| t > now);
                Health {
                    healthy: !open && !cooling,
                    latency_ms: *s.ttft_ms.lock().unwrap_or_else(|p| p.into_inner()),
                }
            }
            None => Health::default(),
        }
    }

    /// Measured latency only, every backend healthy: for ranking a completion, whose own
    /// slot check then skips (and names) each backend it cannot call.
    pub fn latency_only(&self, name: &str) -> Health {
        Health {
            healthy: true,
            latency_ms: self
                .states
                .load()
                .get(name)
                .and_then(|s| *s.ttft_ms.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }

    /// Breaker state of every backend, for error messages.
    pub fn states(&self) -> Vec<(String, &'static str)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .states
            .load()
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.breaker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .state(now)
                        .as_str(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Asks for a call slot on `name`: breaker, Retry-After cooldown and concurrency limit.
    pub fn acquire(self: &Arc<Self>, name: &str) -> Result<Slot, Skip> {
        let s = self.states.load().get(name).cloned().ok_or(Skip::Unknown)?;
        let now = Instant::now();
        if let Some(until) = *s.cooldown_until.lock().unwrap_or_else(|p| p.into_inner()) {
            if until > now {
                return Err(Skip::CoolingDown(until - now));
            }
        }
        let permit = s
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Skip::Full(s.max_concurrency))?;
        let (admit, changed) = s
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_acquire(now);
        if let Some(st) = changed {
            self.metrics
                .breaker_changes
                .with_label_values(&[name, st.as_str()])
                .inc();
        }
        let admit = admit.ok_or(Skip::Open(State::Open))?;
        Ok(Slot {
            backend: name.to_string(),
            state: s,
            admit,
            _permit: permit,
            finished: false,
            upstreams: self.clone(),
        })
    }

    /// Records the outcome of a call made through `slot`.
    pub fn finish(
        &self,
        mut slot: Slot,
        ok: bool,
        ttft: Option<Duration>,
        retry_after: Option<Duration>,
    ) {
        slot.finished = true;
        let s = slot.state.clone();
        let now = Instant::now();
        if let Some(st) = s
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(ok, now)
        {
            self.metrics
                .breaker_changes
                .with_label_values(&[slot.backend.as_str(), st.as_str()])
                .inc();
            tracing::info!(backend = %slot.backend, state = st.as_str(), "circuit breaker changed state");
            let change = match st {
                State::Open => Some(fleet::Change::Opened),
                State::Closed => Some(fleet::Change::Closed),
                State::HalfOpen => None,
            };
            if let Some(c) = change {
                self.publish(&slot.backend, &s, c);
            }
        }
        if let Some(d) = retry_after {
            *s.cooldown_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + d);
        }
        if let Some(t) = ttft {
            let ms = t.as_secs_f64() * 1e3;
            let mut e = s.ttft_ms.lock().unwrap_or_else(|p| p.into_inner());
            *e = Some(match *e {
                Some(prev) => 0.8 * prev + 0.2 * ms,
                None => ms,
            });
        }
    }
}

/// The state map for `cfg`'s backends, reusing `old` entries whose settings still match.
fn build_states(
    cfg: &Config,
    old: &States,
    breaker: BreakerConfig,
    fleet: bool,
) -> Result<States, reqwest::Error> {
    let mut states = HashMap::new();
    for b in &cfg.backends {
        let probe_ttl = Duration::from_millis(b.first_token_timeout_ms.saturating_mul(2))
            .max(Duration::from_secs(5));
        let max_concurrency = b.max_concurrency.max(1);
        if let Some(s) = old.get(&b.name).filter(|s| {
            s.max_concurrency == max_concurrency
                && s.probe_ttl == probe_ttl
                && s.connect_timeout_ms == b.connect_timeout_ms
        }) {
            states.insert(b.name.clone(), s.clone());
            continue;
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(b.connect_timeout_ms))
            .build()?;
        let s = BackendState {
            breaker: Mutex::new(if fleet {
                Breaker::fleet(breaker)
            } else {
                Breaker::new(breaker)
            }),
            slots: Arc::new(Semaphore::new(max_concurrency as usize)),
            max_concurrency,
            ttft_ms: Mutex::new(None),
            cooldown_until: Mutex::new(None),
            http,
            connect_timeout_ms: b.connect_timeout_ms,
            unpublished: AtomicBool::new(false),
            probe_ttl,
        };
        states.insert(b.name.clone(), Arc::new(s));
    }
    Ok(states)
}
