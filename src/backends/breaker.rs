//! A per-backend circuit breaker: closed → open after consecutive failures or a high error rate
//! over a recent window → half-open (one probe) after a cooldown → closed on a good probe.
//! Pure state with the clock passed in, so tests drive it without sleeping.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    /// Open when at least `min_samples` of the last `window` outcomes are known and the
    /// failure share reaches `error_rate`.
    pub window: usize,
    pub min_samples: usize,
    pub error_rate: f64,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            window: 20,
            min_samples: 10,
            error_rate: 0.5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// Breaker state for one backend.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    failures: u32,
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    /// In a fleet one replica probes: a half-open breaker admits its probe only with a lease
    /// the fleet granted (`grant_probe`). `None` = single process, no lease needed.
    lease: Option<bool>,
}

/// What `try_acquire` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Normal,
    Probe,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: State::Closed,
            failures: 0,
            recent: VecDeque::new(),
            opened_at: None,
            probe_in_flight: false,
            lease: None,
        }
    }

    pub fn cooldown(&self) -> Duration {
        self.cfg.cooldown
    }

    /// A breaker whose half-open probe needs the fleet's lease.
    pub fn fleet(cfg: BreakerConfig) -> Self {
        Self {
            lease: Some(false),
            ..Self::new(cfg)
        }
    }

    /// Whether it waits for a probe lease: half-open, no probe running, none granted.
    pub fn wants_probe(&self, now: Instant) -> bool {
        self.lease == Some(false) && !self.probe_in_flight && self.state(now) == State::HalfOpen
    }

    /// Lets this replica send the next probe.
    pub fn grant_probe(&mut self) {
        if self.lease.is_some() {
            self.lease = Some(true);
        }
    }

    /// Another replica opened it until `until`: open here as well (a later time wins).
    /// Returns the state change, if any.
    pub fn open_until(&mut self, until: Instant, now: Instant) -> Option<State> {
        let opened = until.checked_sub(self.cfg.cooldown).unwrap_or(now);
        let before = self.state(now);
        if self.probe_in_flight || self.opened_at.is_some_and(|t| t >= opened) {
            return None;
        }
        self.state = State::Open;
        self.opened_at = Some(opened);
        self.failures = 0;
        (self.state(now) != before).then(|| self.state(now))
    }

    /// The fleet's record says closed (a probe elsewhere succeeded): close here too, unless
    /// this replica's own probe is running. Returns the state change, if any.
    pub fn fleet_closed(&mut self) -> Option<State> {
        if self.state == State::Closed || self.probe_in_flight {
            return None;
        }
        self.close();
        Some(State::Closed)
    }

    /// The state as of `now` (an open breaker past its cooldown reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        match (self.state, self.opened_at) {
            (State::Open, Some(t)) if now.duration_since(t) >= self.cfg.cooldown => State::HalfOpen,
            (s, _) => s,
        }
    }

    /// Whether a request may go to this backend now. Returns the state change, if any.
    pub fn try_acquire(&mut self, now: Instant) -> (Option<Admit>, Option<State>) {
        match self.state(now) {
            State::Closed => (Some(Admit::Normal), None),
            State::Open => (None, None),
            State::HalfOpen if self.probe_in_flight => (None, None),
            State::HalfOpen if self.lease == Some(false) => (None, None),
            State::HalfOpen => {
                if self.lease.is_some() {
                    self.lease = Some(false);
                }
                let changed = (self.state != State::HalfOpen).then_some(State::HalfOpen);
                self.state = State::HalfOpen;
                self.probe_in_flight = true;
                (Some(Admit::Probe), changed)
            }
        }
    }

    /// Records an outcome; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<State> {
        let before = self.state;
        self.recent.push_back(ok);
        while self.recent.len() > self.cfg.window {
            self.recent.pop_front();
        }
        if self.state == State::HalfOpen {
            self.probe_in_flight = false;
            if ok {
                self.close();
            } else {
                self.open(now);
            }
        } else if ok {
            self.failures = 0;
        } else {
            self.failures += 1;
            let fails = self.recent.iter().filter(|x| !**x).count();
            let rate_trip = self.recent.len() >= self.cfg.min_samples
                && fails as f64 / self.recent.len() as f64 >= self.cfg.error_rate;
            if self.failures >= self.cfg.consecutive_failures || rate_trip {
                self.open(now);
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// Releases a probe slot that ended without an outcome (cancelled).
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.opened_at = Some(now);
        self.failures = 0;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
        self.recent.clear();
        self.opened_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            window: 10,
            min_samples: 6,
            error_rate: 0.5,
            cooldown: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), Some(State::Open));
        assert_eq!(b.try_acquire(t0 + Duration::from_secs(1)).0, None);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(b.state(later), State::HalfOpen);
        assert_eq!(
            b.try_acquire(later),
            (Some(Admit::Probe), Some(State::HalfOpen))
        );
        // Only one probe at a time.
        assert_eq!(b.try_acquire(later).0, None);
        assert_eq!(b.record(true, later), Some(State::Closed));
        assert_eq!(b.try_acquire(later).0, Some(Admit::Normal));
    }

    #[test]
    fn a_fleet_breaker_probes_only_with_a_lease_and_follows_the_fleet() {
        let t0 = Instant::now();
        let mut b = Breaker::fleet(cfg());
        let until = t0 + Duration::from_secs(5);
        assert_eq!(b.open_until(until, t0), Some(State::Open));
        assert_eq!(b.try_acquire(t0).0, None);
        let later = t0 + Duration::from_secs(6);
        assert!(b.wants_probe(later));
        assert_eq!(b.try_acquire(later).0, None, "no lease, no probe");
        b.grant_probe();
        assert_eq!(b.try_acquire(later).0, Some(Admit::Probe));
        assert!(!b.wants_probe(later));
        assert_eq!(b.record(false, later), Some(State::Open));
        // An older record never rewinds a newer local opening.
        assert_eq!(b.open_until(until, later), None);
        assert_eq!(b.fleet_closed(), Some(State::Closed));
        assert_eq!(b.try_acquire(later).0, Some(Admit::Normal));
    }

    #[test]
    fn failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(6);
        b.try_acquire(later);
        assert_eq!(b.record(false, later), Some(State::Open));
        assert_eq!(b.state(later + Duration::from_secs(1)), State::Open);
    }

    #[test]
    fn error_rate_window_opens_without_a_streak() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        let mut opened = false;
        for i in 0..10 {
            opened |= b.record(i % 2 == 0, t0) == Some(State::Open);
        }
        assert!(
            opened,
            "50% failures over the window should open the breaker"
        );
    }
}
