//! The in-memory ledger of a single process: the same rules as the shared one, under a
//! mutex. Windows slide: requests per minute keep the admission times of the last minute
//! (at most the limit), tokens per minute keep per-second sums of the last 60 seconds.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::calendar::Period;
use super::{
    add_field, micros, usage_parties, Ask, QuotaError, Reservation, Subject, UsageRow, Used,
};
use crate::records::now_ms as unix_ms;

/// Days of usage kept in memory.
const KEPT_DAYS: usize = 100;

#[derive(Default)]
struct Counters {
    requests: VecDeque<u64>,
    tokens: VecDeque<(u64, i64)>,
    day: (u32, i64),
    month: (u32, i64),
}

#[derive(Default)]
struct State {
    counters: HashMap<String, Counters>,
    /// Day (`YYYYMMDD`) → field → value.
    usage: std::collections::BTreeMap<u32, HashMap<String, i64>>,
}

#[derive(Default)]
pub(super) struct Local {
    state: Mutex<State>,
}

impl Local {
    pub(super) fn reserve(
        &self,
        subjects: Vec<Subject>,
        ask: &Ask,
    ) -> Result<Reservation, QuotaError> {
        let now_ms = unix_ms();
        let sec = now_ms / 1_000;
        let period = Period::at(sec);
        let usd = micros(ask.usd);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let limited = || subjects.iter().filter(|s| !s.limits.is_empty());
        for s in limited() {
            let c = st.counters.entry(s.id()).or_default();
            check(s, c, ask.tokens, usd, now_ms, &period)?;
        }
        for s in limited() {
            let c = st.counters.entry(s.id()).or_default();
            let l = &s.limits;
            if l.requests_per_minute.is_some() {
                c.requests.push_back(now_ms);
            }
            if l.tokens_per_minute.is_some() && ask.tokens > 0 {
                match c.tokens.back_mut() {
                    Some((s, t)) if *s == sec => *t += ask.tokens as i64,
                    _ => c.tokens.push_back((sec, ask.tokens as i64)),
                }
            }
            if l.usd_per_day.is_some() {
                c.day.1 += usd;
            }
            if l.usd_per_month.is_some() {
                c.month.1 += usd;
            }
        }
        Ok(Reservation {
            id: ask.id.clone(),
            subjects,
            tokens: ask.tokens,
            micro_usd: usd,
            sec,
            period,
        })
    }

    /// Corrects a reservation to `used` (or to nothing) and records usage.
    pub(super) fn settle(&self, r: Reservation, used: Option<&Used>) {
        let (tokens, usd) = used.map_or((0, 0), |u| (u.tokens as i64, micros(u.usd)));
        let dt = tokens - r.tokens as i64;
        let du = usd - r.micro_usd;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for s in r.subjects.iter().filter(|s| !s.limits.is_empty()) {
            let c = st.counters.entry(s.id()).or_default();
            if let Some(b) = c.tokens.iter_mut().find(|(s, _)| *s == r.sec) {
                b.1 += dt;
            }
            if c.day.0 == r.period.day {
                c.day.1 += du;
            }
            if c.month.0 == r.period.month {
                c.month.1 += du;
            }
        }
        let Some(used) = used else { return };
        let day = st.usage.entry(r.period.day).or_default();
        for (scope, name) in usage_parties(&r, used) {
            let f = |w: &str| format!("{}:{name}:{w}", scope.as_str());
            *day.entry(f("requests")).or_default() += 1;
            *day.entry(f("tokens")).or_default() += tokens;
            *day.entry(f("micro_usd")).or_default() += usd;
        }
        while st.usage.len() > KEPT_DAYS {
            st.usage.pop_first();
        }
    }

    pub(super) fn usage(&self, days: &[u32]) -> Vec<UsageRow> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows = Vec::new();
        for d in days {
            for (field, v) in st.usage.get(d).into_iter().flatten() {
                add_field(&mut rows, field, *v);
            }
        }
        rows
    }
}

/// Expires what left the windows, then checks `s`'s limits against the ask.
fn check(
    s: &Subject,
    c: &mut Counters,
    tokens: u64,
    usd: i64,
    now_ms: u64,
    p: &Period,
) -> Result<(), QuotaError> {
    let l = &s.limits;
    let exceeded = |limit, value: String, retry_after_s| QuotaError::Exceeded {
        scope: s.scope.as_str(),
        name: s.name.clone(),
        limit,
        value,
        retry_after_s,
    };
    while c.requests.front().is_some_and(|t| t + 60_000 <= now_ms) {
        c.requests.pop_front();
    }
    if let Some(rpm) = l.requests_per_minute {
        if c.requests.len() >= rpm as usize {
            let oldest = c.requests.front().copied().unwrap_or(now_ms);
            let wait = (oldest + 60_000).saturating_sub(now_ms);
            return Err(exceeded(
                "requests_per_minute",
                rpm.to_string(),
                wait.div_ceil(1_000),
            ));
        }
    }
    let sec = now_ms / 1_000;
    while c.tokens.front().is_some_and(|(t, _)| t + 60 <= sec) {
        c.tokens.pop_front();
    }
    if let (Some(tpm), true) = (l.tokens_per_minute, tokens > 0) {
        if tokens > tpm {
            return Err(QuotaError::TooLarge {
                scope: s.scope.as_str(),
                name: s.name.clone(),
                limit: "tokens_per_minute",
                value: tpm.to_string(),
                asked: tokens,
            });
        }
        let mut sum: i64 = c.tokens.iter().map(|(_, t)| *t).sum();
        if sum + tokens as i64 > tpm as i64 {
            let mut wait = 60;
            for (t, n) in &c.tokens {
                sum -= n;
                if sum + tokens as i64 <= tpm as i64 {
                    wait = (t + 60).saturating_sub(sec);
                    break;
                }
            }
            return Err(exceeded("tokens_per_minute", tpm.to_string(), wait));
        }
    }
    if c.day.0 != p.day {
        c.day = (p.day, 0);
    }
    if c.month.0 != p.month {
        c.month = (p.month, 0);
    }
    for (limit, cap, spent, left) in [
        ("usd_per_day", l.usd_per_day, c.day.1, p.day_left_s),
        ("usd_per_month", l.usd_per_month, c.month.1, p.month_left_s),
    ] {
        if let Some(cap) = cap {
            if spent + usd > micros(cap) {
                return Err(exceeded(limit, format!("{cap} USD"), left));
            }
        }
    }
    Ok(())
}
