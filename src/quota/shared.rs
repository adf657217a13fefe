//! The fleet's ledger in Redis. Reserving is one Lua script (one round trip) that checks
//! every subject's limits and, only if all pass, charges all of them: atomic across replicas,
//! so N replicas admit a key's limit once, not N times. Time for the minute windows is the
//! store's own clock (`TIME`), so replicas' clocks cannot skew them. Settlements and usage go
//! through a bounded queue that retries while the store is unreachable; each carries an id
//! the store remembers, so a retried write is applied once.
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;

use super::calendar::Period;
use super::{
    add_field, micros, usage_parties, Ask, QuotaError, Reservation, Subject, UsageRow, Used,
};
use crate::config::{fleet::OnOutage, FleetConfig};
use crate::fleet::Store;
use crate::metrics::Metrics;
use crate::records::now_ms as unix_ms;
use std::sync::Arc;

/// KEYS: per subject its requests zset, tokens hash, day and month spend. ARGV: count, id,
/// tokens, micro-USD, then per subject its four limits (-1 = none). Returns {1, second} or
/// {0, subject index, limit code, wait ms}.
const RESERVE_LUA: &str = r#"
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, id = tonumber(ARGV[1]), ARGV[2]
local tok, usd = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 0, n - 1 do
  local rpm, tpm = tonumber(ARGV[5 + i * 4]), tonumber(ARGV[6 + i * 4])
  local dcap, mcap = tonumber(ARGV[7 + i * 4]), tonumber(ARGV[8 + i * 4])
  local kr, kt, kd, km = KEYS[i * 4 + 1], KEYS[i * 4 + 2], KEYS[i * 4 + 3], KEYS[i * 4 + 4]
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', kr, '-inf', now - 60000)
    if redis.call('ZCARD', kr) >= rpm then
      local oldest = redis.call('ZRANGE', kr, 0, 0, 'WITHSCORES')
      return {0, i, 1, 60000 - (now - tonumber(oldest[2]))}
    end
  end
  if tpm >= 0 and tok > 0 then
    if tok > tpm then return {0, i, 5, 0} end
    local h = redis.call('HGETALL', kt)
    local sum, live = 0, {}
    for j = 1, #h, 2 do
      local s, v = tonumber(h[j]), tonumber(h[j + 1])
      if s + 60 <= sec then redis.call('HDEL', kt, h[j]) else
        sum = sum + v
        table.insert(live, {s, v})
      end
    end
    if sum + tok > tpm then
      table.sort(live, function(a, b) return a[1] < b[1] end)
      local wait = 60
      for _, b in ipairs(live) do
        sum = sum - b[2]
        if sum + tok <= tpm then wait = b[1] + 60 - sec break end
      end
      return {0, i, 2, wait * 1000}
    end
  end
  if dcap >= 0 and tonumber(redis.call('GET', kd) or '0') + usd > dcap then return {0, i, 3, 0} end
  if mcap >= 0 and tonumber(redis.call('GET', km) or '0') + usd > mcap then return {0, i, 4, 0} end
end
for i = 0, n - 1 do
  local rpm, tpm = tonumber(ARGV[5 + i * 4]), tonumber(ARGV[6 + i * 4])
  local dcap, mcap = tonumber(ARGV[7 + i * 4]), tonumber(ARGV[8 + i * 4])
  local kr, kt, kd, km = KEYS[i * 4 + 1], KEYS[i * 4 + 2], KEYS[i * 4 + 3], KEYS[i * 4 + 4]
  if rpm >= 0 then
    redis.call('ZADD', kr, now, id)
    redis.call('PEXPIRE', kr, 61000)
  end
  if tpm >= 0 and tok > 0 then
    redis.call('HINCRBY', kt, sec, tok)
    redis.call('EXPIRE', kt, 120)
  end
  if dcap >= 0 then redis.call('INCRBY', kd, usd) redis.call('EXPIRE', kd, 259200) end
  if mcap >= 0 then redis.call('INCRBY', km, usd) redis.call('EXPIRE', km, 3456000) end
end
return {1, sec}
"#;

/// KEYS[1] remembers the settlement (applied once); ARGV is a list of operations on the
/// other keys: `h key-index field delta ttl` (HINCRBY) or `i key-index delta ttl` (INCRBY).
const SETTLE_LUA: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
local i = 1
while i <= #ARGV do
  local k = KEYS[tonumber(ARGV[i + 1])]
  if ARGV[i] == 'h' then
    redis.call('HINCRBY', k, ARGV[i + 2], ARGV[i + 3])
    redis.call('EXPIRE', k, ARGV[i + 4])
    i = i + 5
  else
    redis.call('INCRBY', k, ARGV[i + 2])
    redis.call('EXPIRE', k, ARGV[i + 3])
    i = i + 4
  end
end
return 1
"#;

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE_LUA));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));

const TOKENS_TTL_S: u64 = 120;
const DAY_TTL_S: u64 = 3 * 86_400;
const MONTH_TTL_S: u64 = 40 * 86_400;
const USAGE_TTL_S: u64 = 100 * 86_400;

/// One settlement: the keys it touches and its operations.
#[derive(Default, Clone)]
struct Ops {
    keys: Vec<String>,
    args: Vec<String>,
}

impl Ops {
    fn key(&mut self, k: String) -> String {
        let i = match self.keys.iter().position(|x| *x == k) {
            Some(i) => i,
            None => {
                self.keys.push(k);
                self.keys.len() - 1
            }
        };
        (i + 1).to_string()
    }

    fn hincr(&mut self, key: String, field: &str, delta: i64, ttl: u64) {
        let k = self.key(key);
        self.args.extend([
            "h".into(),
            k,
            field.into(),
            delta.to_string(),
            ttl.to_string(),
        ]);
    }

    fn incr(&mut self, key: String, delta: i64, ttl: u64) {
        let k = self.key(key);
        self.args
            .extend(["i".into(), k, delta.to_string(), ttl.to_string()]);
    }
}

pub(super) struct Shared {
    store: Store,
    rates_open: bool,
    budgets_open: bool,
    writes: mpsc::Sender<Ops>,
    metrics: Arc<Metrics>,
}

impl Shared {
    pub(super) fn new(store: Store, cfg: &FleetConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(cfg.max_pending_writes.max(1));
        tokio::spawn(writer(store.clone(), rx, metrics.clone()));
        Self {
            store,
            rates_open: cfg.rate_limits_on_outage == OnOutage::Open,
            budgets_open: cfg.budgets_on_outage == OnOutage::Open,
            writes: tx,
            metrics,
        }
    }

    fn keys(&self, s: &Subject, p: &Period) -> [String; 4] {
        let id = s.id();
        [
            self.store.key(&format!("rpm:{id}")),
            self.store.key(&format!("tpm:{id}")),
            self.store.key(&format!("usd:d{}:{id}", p.day)),
            self.store.key(&format!("usd:m{}:{id}", p.month)),
        ]
    }

    pub(super) async fn reserve(
        &self,
        subjects: Vec<Subject>,
        ask: &Ask,
    ) -> Result<Reservation, QuotaError> {
        let period = Period::now();
        let usd = micros(ask.usd);
        let mut r = Reservation {
            id: ask.id.clone(),
            subjects,
            tokens: ask.tokens,
            micro_usd: usd,
            sec: unix_ms() / 1_000,
            period,
        };
        let limited: Vec<Subject> = r
            .subjects
            .iter()
            .filter(|s| !s.limits.is_empty())
            .cloned()
            .collect();
        if limited.is_empty() {
            return Ok(r);
        }
        let mut inv = RESERVE.prepare_invoke();
        inv.arg(limited.len()).arg(&ask.id).arg(ask.tokens).arg(usd);
        for s in &limited {
            for k in self.keys(s, &period) {
                inv.key(k);
            }
            let l = &s.limits;
            inv.arg(l.requests_per_minute.map_or(-1, i64::from));
            inv.arg(l.tokens_per_minute.map_or(-1, |t| t as i64));
            inv.arg(l.usd_per_day.map_or(-1, micros));
            inv.arg(l.usd_per_month.map_or(-1, micros));
        }
        let res = self
            .store
            .run("quota_reserve", |mut c| async move {
                inv.invoke_async::<Vec<i64>>(&mut c).await
            })
            .await;
        match res {
            Ok(v) if v.first() == Some(&1) => {
                r.sec = v.get(1).copied().unwrap_or(0).max(0) as u64;
                Ok(r)
            }
            Ok(v) => Err(refusal(&limited, &v, ask.tokens, &period)),
            Err(e) => self.outage(r, &e.to_string()),
        }
    }

    /// The configured answer while the store is unreachable: refuse, or admit with nothing
    /// reserved (the settlement then charges the whole usage once the store is back).
    fn outage(&self, mut r: Reservation, why: &str) -> Result<Reservation, QuotaError> {
        let budgets = r.subjects.iter().any(|s| s.limits.has_budget());
        let rates = r.subjects.iter().any(|s| {
            s.limits.requests_per_minute.is_some() || s.limits.tokens_per_minute.is_some()
        });
        let (what, setting) = if budgets && !self.budgets_open {
            ("spend budgets", "budgets_on_outage")
        } else if rates && !self.rates_open {
            ("rate limits", "rate_limits_on_outage")
        } else {
            r.tokens = 0;
            r.micro_usd = 0;
            return Ok(r);
        };
        Err(QuotaError::Unavailable(format!(
            "{what} cannot be checked ({why}); fleet.{setting} is \"closed\""
        )))
    }

    pub(super) fn settle(&self, r: Reservation, used: Option<&Used>) {
        let (tokens, usd) = used.map_or((0, 0), |u| (u.tokens as i64, micros(u.usd)));
        let (dt, du) = (tokens - r.tokens as i64, usd - r.micro_usd);
        let mut ops = Ops::default();
        ops.key(self.store.key(&format!("settled:{}", r.id)));
        for s in &r.subjects {
            let [_, kt, kd, km] = self.keys(s, &r.period);
            let l = &s.limits;
            if l.tokens_per_minute.is_some() && dt != 0 {
                ops.hincr(kt, &r.sec.to_string(), dt, TOKENS_TTL_S);
            }
            if l.usd_per_day.is_some() && du != 0 {
                ops.incr(kd, du, DAY_TTL_S);
            }
            if l.usd_per_month.is_some() && du != 0 {
                ops.incr(km, du, MONTH_TTL_S);
            }
        }
        if let Some(used) = used {
            let day = self.store.key(&format!("usage:{}", r.period.day));
            for (scope, name) in usage_parties(&r, used) {
                let f = |w: &str| format!("{}:{name}:{w}", scope.as_str());
                ops.hincr(day.clone(), &f("requests"), 1, USAGE_TTL_S);
                ops.hincr(day.clone(), &f("tokens"), tokens, USAGE_TTL_S);
                ops.hincr(day.clone(), &f("micro_usd"), usd, USAGE_TTL_S);
            }
        }
        if ops.args.is_empty() {
            return;
        }
        if self.writes.try_send(ops).is_err() {
            self.metrics.store_writes_dropped.inc();
        }
    }

    pub(super) async fn usage(&self, days: &[u32]) -> Result<Vec<UsageRow>, QuotaError> {
        let mut pipe = redis::pipe();
        for d in days {
            pipe.hgetall(self.store.key(&format!("usage:{d}")));
        }
        let maps: Vec<Vec<(String, i64)>> = self
            .store
            .run("usage_read", |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await
            .map_err(|e| QuotaError::Unavailable(format!("usage cannot be read: {e}")))?;
        let mut rows = Vec::new();
        for (field, v) in maps.iter().flatten() {
            add_field(&mut rows, field, *v);
        }
        Ok(rows)
    }
}

/// The error for a refusal the script returned.
fn refusal(subjects: &[Subject], v: &[i64], asked: u64, p: &Period) -> QuotaError {
    let s = usize::try_from(v.get(1).copied().unwrap_or(0))
        .ok()
        .and_then(|i| subjects.get(i))
        .or(subjects.first());
    let Some(s) = s else {
        return QuotaError::Unavailable("the quota script answered without a subject".into());
    };
    let l = &s.limits;
    let wait_ms = v.get(3).copied().unwrap_or(0).max(0) as u64;
    let (limit, value, retry) = match v.get(2).copied().unwrap_or(0) {
        1 => (
            "requests_per_minute",
            fmt_opt(l.requests_per_minute),
            wait_ms.div_ceil(1_000),
        ),
        2 => (
            "tokens_per_minute",
            fmt_opt(l.tokens_per_minute),
            wait_ms.div_ceil(1_000),
        ),
        3 => ("usd_per_day", usd(l.usd_per_day), p.day_left_s),
        4 => ("usd_per_month", usd(l.usd_per_month), p.month_left_s),
        _ => {
            return QuotaError::TooLarge {
                scope: s.scope.as_str(),
                name: s.name.clone(),
                limit: "tokens_per_minute",
                value: fmt_opt(l.tokens_per_minute),
                asked,
            }
        }
    };
    QuotaError::Exceeded {
        scope: s.scope.as_str(),
        name: s.name.clone(),
        limit,
        value,
        retry_after_s: retry,
    }
}

fn fmt_opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn usd(v: Option<f64>) -> String {
    v.map(|x| format!("{x} USD")).unwrap_or_default()
}

/// Applies settlements in order, retrying each until the store takes it.
async fn writer(store: Store, mut rx: mpsc::Receiver<Ops>, metrics: Arc<Metrics>) {
    while let Some(ops) = rx.recv().await {
        let mut delay = Duration::from_millis(50);
        for tries in 1.. {
            let o = ops.clone();
            let res = store
                .run("usage_write", |mut c| async move {
                    let mut inv = SETTLE.prepare_invoke();
                    for k in &o.keys {
                        inv.key(k);
                    }
                    for a in &o.args {
                        inv.arg(a);
                    }
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
            if res.is_ok() {
                break;
            }
            // An outage waits for the store; an error the store itself returns would repeat.
            if store.is_up() && tries >= 5 {
                metrics.store_writes_dropped.inc();
                tracing::error!(error = ?res.err(), "usage write refused by the shared store; dropped");
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
