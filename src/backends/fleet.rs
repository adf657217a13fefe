//! Breakers shared by a fleet. The record in the store is one key per open backend holding
//! the Unix time its cooldown ends, and one probe lease per backend (`SET NX` with a TTL):
//! a replica whose breaker opens writes the record; every replica polls the records (one
//! `MGET`) and opens, or closes, its local copy to match; after the cooldown, only the
//! replica that wins the lease sends the half-open probe, and its outcome closes or reopens
//! the record for all. Requests only ever read the local copy, so the store is off the hot
//! path; while it is unreachable each replica's breakers work alone, as in a single process.
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::breaker::State;
use super::Upstreams;
use crate::fleet::Store;
use crate::records::now_ms as unix_ms;

/// What happened to a local breaker that the record must learn.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    Opened,
    Closed,
    /// The probe ended without an outcome (its client left): free the lease.
    ProbeDropped,
}

#[derive(Debug)]
pub(super) struct Event {
    pub backend: String,
    pub change: Change,
}

/// Takes the probe lease only while the record still holds the opening this replica saw:
/// a probe that already failed elsewhere has replaced it, and must not be followed by a
/// second one from a replica that read the record just before.
const LEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"#;

static LEASE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(LEASE_LUA));

/// The record outlives the cooldown by this much; an abandoned one then expires.
const RECORD_GRACE: Duration = Duration::from_secs(60);

/// Writes local changes as they come and polls the record every `every`, until the
/// upstreams are dropped.
pub(super) async fn sync(
    up: Weak<Upstreams>,
    store: Store,
    mut rx: mpsc::Receiver<Event>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            ev = rx.recv() => {
                let (Some(ev), Some(u)) = (ev, up.upgrade()) else { return };
                write(&u, &store, ev).await;
            }
            _ = tick.tick() => {
                let Some(u) = up.upgrade() else { return };
                poll(&u, &store).await;
            }
        }
    }
}

async fn write(u: &Upstreams, store: &Store, ev: Event) {
    let Some(s) = u.states.load().get(&ev.backend).cloned() else {
        return;
    };
    let record = store.key(&format!("breaker:{}", ev.backend));
    let lease = store.key(&format!("probe:{}", ev.backend));
    let mut pipe = redis::pipe();
    match ev.change {
        Change::Opened => {
            let cooldown = s
                .breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cooldown();
            let until = unix_ms() + cooldown.as_millis() as u64;
            let ttl = (cooldown + RECORD_GRACE).as_millis() as u64;
            pipe.cmd("SET").arg(&record).arg(until).arg("PX").arg(ttl);
            pipe.del(&lease);
        }
        Change::Closed => {
            pipe.del(&record).del(&lease);
        }
        Change::ProbeDropped => {
            pipe.del(&lease);
        }
    }
    let res = store
        .run("breaker_write", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await;
    if let Err(e) = res {
        tracing::warn!(backend = %ev.backend, error = %e, "breaker change not shared with the fleet");
    }
    s.unpublished.store(false, Ordering::SeqCst);
}

/// Brings every local breaker in line with the record, then asks for probe leases.
async fn poll(u: &Upstreams, store: &Store) {
    let states = u.states.load_full();
    let names: Vec<&String> = states.keys().collect();
    let keys: Vec<String> = names
        .iter()
        .map(|n| store.key(&format!("breaker:{n}")))
        .collect();
    let res = store
        .run("breaker_poll", |mut c| async move {
            redis::cmd("MGET")
                .arg(&keys)
                .query_async::<Vec<Option<u64>>>(&mut c)
                .await
        })
        .await;
    let Ok(records) = res else {
        // No record to follow: each replica probes for itself, as a single process does.
        for s in states.values() {
            let mut b = s.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if b.wants_probe(Instant::now()) {
                b.grant_probe();
            }
        }
        return;
    };
    let mut want = Vec::new();
    for (name, record) in names.into_iter().zip(records) {
        let Some(s) = states.get(name) else {
            continue;
        };
        if s.unpublished.load(Ordering::SeqCst) {
            continue;
        }
        let now = Instant::now();
        let mut b = s.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let change = match record {
            Some(until_ms) => b.open_until(instant_of(until_ms, now), now),
            None => b.fleet_closed(),
        };
        if let Some(st) = change.filter(|st| *st != State::HalfOpen) {
            u.metrics
                .breaker_changes
                .with_label_values(&[name.as_str(), st.as_str()])
                .inc();
            tracing::info!(backend = %name, state = st.as_str(), "circuit breaker follows the fleet");
        }
        if let (true, Some(seen)) = (b.wants_probe(now), record) {
            want.push((name.clone(), seen, s.probe_ttl));
        }
    }
    for (name, seen, ttl) in want {
        lease(u, store, &name, seen, ttl).await;
    }
}

/// Tries to take the fleet's probe lease for `name`; the winner's breaker may probe.
async fn lease(u: &Upstreams, store: &Store, name: &str, seen: u64, ttl: Duration) {
    let mut inv = LEASE.prepare_invoke();
    inv.key(store.key(&format!("breaker:{name}")))
        .key(store.key(&format!("probe:{name}")))
        .arg(seen)
        .arg(store.replica())
        .arg(ttl.as_millis() as u64);
    let won = store
        .run("breaker_lease", |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await;
    if let (Ok(1), Some(s)) = (won, u.states.load().get(name)) {
        tracing::info!(backend = %name, "this replica sends the fleet's half-open probe");
        s.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .grant_probe();
    }
}

/// A Unix time in ms as an `Instant`, relative to `now`.
fn instant_of(unix: u64, now: Instant) -> Instant {
    let now_ms = unix_ms();
    if unix >= now_ms {
        now + Duration::from_millis(unix - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - unix))
            .unwrap_or(now)
    }
}
