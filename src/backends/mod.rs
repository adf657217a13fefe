//! Upstream backends: the shared HTTP client, and live per-backend state (circuit breaker,
//! concurrency limit, Retry-After cooldown, moving averages of TTFT) that feeds both the
//! proxy and `RouteDecision`'s health flag and latency estimate.
pub mod breaker;
pub mod openai;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
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
}

/// Breakers, concurrency slots and latency measurements of every catalog backend.
pub struct Upstreams {
    states: HashMap<String, BackendState>,
    metrics: Arc<Metrics>,
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
    admit: Admit,
    _permit: OwnedSemaphorePermit,
    finished: bool,
    upstreams: Arc<Upstreams>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A probe that ended without an outcome (client gone) must free the half-open slot.
        if !self.finished && self.admit == Admit::Probe {
            if let Some(s) = self.upstreams.states.get(&self.backend) {
                s.breaker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .release_probe();
            }
        }
    }
}

impl Upstreams {
    pub fn new(
        cfg: &Config,
        breaker: BreakerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let mut states = HashMap::new();
        for b in &cfg.backends {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_millis(b.connect_timeout_ms))
                .build()?;
            let s = BackendState {
                breaker: Mutex::new(Breaker::new(breaker)),
                slots: Arc::new(Semaphore::new(b.max_concurrency.max(1) as usize)),
                max_concurrency: b.max_concurrency.max(1),
                ttft_ms: Mutex::new(None),
                cooldown_until: Mutex::new(None),
                http,
            };
            states.insert(b.name.clone(), s);
        }
        Ok(Self { states, metrics })
    }

    /// The HTTP client for `name` (its own connect timeout and pool).
    pub fn client(&self, name: &str) -> Option<&reqwest::Client> {
        self.states.get(name).map(|s| &s.http)
    }

    /// Health and measured latency for ranking a RouteDecision: an open breaker or a
    /// Retry-After cooldown makes a backend unhealthy.
    pub fn health(&self, name: &str) -> Health {
        let now = Instant::now();
        match self.states.get(name) {
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
                .get(name)
                .and_then(|s| *s.ttft_ms.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }

    /// Breaker state of every backend, for error messages.
    pub fn states(&self) -> Vec<(String, &'static str)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .states
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
        let s = self.states.get(name).ok_or(Skip::Unknown)?;
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
        let Some(s) = self.states.get(&slot.backend) else {
            return;
        };
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
