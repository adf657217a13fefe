//! Ranking of backends: a pure function of (classification, catalog, live health, request
//! preferences). No I/O, no clocks, no randomness beyond the sticky A/B hash.
//!
//! Score of a qualifying backend: `Q_eff − λ·cost_term + boost`, where
//! `Q_eff = Q + σ((Q − need)/0.02)` rewards meeting the quality the prompt needs
//! (`need = min_quality + slope × complexity`), `cost_term = 0.25·log10(1 + cost in µUSD)`,
//! and `λ = (1 − t)/t` for the trade-off `t`. Because `Q_eff` is increasing in `Q` and the
//! trade-off only scales the cost term, raising `t` never lowers the top choice's quality and
//! lowering it never raises the top choice's cost (proof in the README; property-tested).
use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::classify::Prediction;
use crate::config::{Backend, Config, Match, Policy, Rule};

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct Preferences {
    pub trade_off: Option<f64>,
    pub max_cost_usd: Option<f64>,
    pub max_latency_ms: Option<f64>,
    pub required_capabilities: Vec<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub expected_output_tokens: u32,
    /// The completion's `max_tokens`: a backend's context window must hold the prompt and
    /// this many output tokens (cost is still estimated on `expected_output_tokens`).
    pub max_output_tokens: Option<u32>,
    /// ISO 639-3 the backend must serve ("auto": the detected language; empty: none).
    pub required_language: String,
}

/// A backend's health as ranking sees it (from the breakers and latency measurements).
#[derive(Debug, Clone, Copy)]
pub struct Health {
    pub healthy: bool,
    pub latency_ms: Option<f64>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: true,
            latency_ms: None,
        }
    }
}

/// Everything the policy looks at for one request.
pub struct RouteInput<'a> {
    pub prediction: &'a Prediction,
    pub prompt_tokens: u32,
    pub prefs: &'a Preferences,
    pub metadata: &'a HashMap<String, String>,
    pub request_key: &'a str,
}

#[derive(Debug, Clone)]
pub struct Ranked {
    pub name: String,
    pub model: String,
    pub provider: String,
    pub score: f64,
    pub quality: f64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub healthy: bool,
    pub pinned: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub ranked: Vec<Ranked>,
    pub policy: String,
    pub variant: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy {0:?}")]
    UnknownPolicy(String),
    #[error("no backend meets the request's constraints: {}", .0.iter().map(|(b, r)| format!("{b}: {r}")).collect::<Vec<_>>().join("; "))]
    NoneQualifies(Vec<(String, String)>),
}

/// Estimated USD cost of a request on `b`.
pub fn cost_usd(b: &Backend, prompt_tokens: u32, output_tokens: u32) -> f64 {
    (prompt_tokens as f64 * b.input_price_per_mtok + output_tokens as f64 * b.output_price_per_mtok)
        / 1e6
}

/// Quality of `b` for this prompt: the domain's score when the backend has one, else the intent's.
pub fn quality(b: &Backend, p: &Prediction) -> (f64, &'static str) {
    quality_for(b, &p.intent, &p.domain)
}

/// `quality` by label: the domain's score when the backend has one, else the intent's, else
/// its default.
pub fn quality_for(b: &Backend, intent: &str, domain: &str) -> (f64, &'static str) {
    if let Some(q) = b.domain_quality.get(domain) {
        return (*q, "domain");
    }
    match b.quality.get(intent) {
        Some(q) => (*q, "intent"),
        None => (b.quality.get("default").copied().unwrap_or(0.0), "default"),
    }
}

/// Quality a prompt of this complexity needs under `pol`.
pub fn needed_quality(pol: &Policy, complexity: f64) -> f64 {
    pol.min_quality + pol.complexity_slope * complexity.clamp(0.0, 1.0)
}

fn effective_quality(q: f64, need: f64) -> f64 {
    q + 1.0 / (1.0 + (-(q - need) / 0.02).exp())
}

fn cost_term(cost: f64) -> f64 {
    0.25 * (1.0 + cost * 1e6).log10()
}

/// The cost weight for trade-off `t`; capped so a subnormal `t` cannot make it infinite (an
/// infinite weight times a zero cost is NaN, which would sort first).
fn lambda(t: f64) -> f64 {
    if t <= 0.0 {
        1e9
    } else {
        ((1.0 - t) / t).min(1e9)
    }
}

/// Sticky A/B arm for `key`: the same key always lands in the same arm of a policy.
pub fn variant_for<'a>(
    policy_name: &str,
    pol: &'a Policy,
    key: &str,
) -> Option<&'a crate::config::Variant> {
    if pol.variants.is_empty() {
        return None;
    }
    let h = Sha256::digest(format!("{policy_name}:{key}").as_bytes());
    let x = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let point = (x % 1_000_000) as f64 / 10_000.0;
    let mut acc = 0.0;
    for v in &pol.variants {
        acc += v.percent;
        if point < acc {
            return Some(v);
        }
    }
    pol.variants.last()
}

fn matches(m: &Match, p: &Prediction, meta: &HashMap<String, String>) -> bool {
    m.intent.as_ref().is_none_or(|i| *i == p.intent)
        && m.domain.as_ref().is_none_or(|d| *d == p.domain)
        && m.language.as_ref().is_none_or(|l| *l == p.language.code)
        && m.tenant
            .as_ref()
            .is_none_or(|t| meta.get("tenant") == Some(t))
        && m.metadata.iter().all(|(k, v)| meta.get(k) == Some(v))
}

fn describe(m: &Match) -> String {
    let mut parts = Vec::new();
    if let Some(i) = &m.intent {
        parts.push(format!("intent = {i}"));
    }
    if let Some(d) = &m.domain {
        parts.push(format!("domain = {d}"));
    }
    if let Some(l) = &m.language {
        parts.push(format!("language = {l}"));
    }
    if let Some(t) = &m.tenant {
        parts.push(format!("tenant = {t}"));
    }
    for (k, v) in &m.metadata {
        parts.push(format!("{k} = {v}"));
    }
    parts.join(", ")
}

/// The language a request requires: the one it names, or with "auto" the detected one (none
/// when nothing was detected).
fn required_language<'a>(prefs: &'a Preferences, p: &'a Prediction) -> Option<&'a str> {
    match prefs.required_language.as_str() {
        "" => None,
        "auto" => Some(p.language.code.as_str()).filter(|c| !c.is_empty()),
        code => Some(code),
    }
}

/// Why `b` breaks a hard constraint, if it does.
fn violation(
    b: &Backend,
    input: &RouteInput<'_>,
    cost: f64,
    latency: f64,
    live: Health,
) -> Option<String> {
    let prefs = input.prefs;
    if !prefs.allow.is_empty() && !prefs.allow.contains(&b.name) {
        return Some("not in allow_backends".into());
    }
    if prefs.deny.contains(&b.name) {
        return Some("in deny_backends".into());
    }
    if let Some(c) = prefs
        .required_capabilities
        .iter()
        .find(|c| !b.capabilities.contains(c))
    {
        return Some(format!("lacks capability {c}"));
    }
    if let Some(lang) = required_language(prefs, input.prediction) {
        if !b.languages.is_empty() && !b.languages.iter().any(|l| l == lang) {
            return Some(format!("lacks language {lang}"));
        }
    }
    let output = prefs
        .expected_output_tokens
        .max(prefs.max_output_tokens.unwrap_or(0));
    let needed = input.prompt_tokens as u64 + output as u64;
    if needed > b.context_window as u64 {
        return Some(format!(
            "context window {} < {needed} tokens",
            b.context_window
        ));
    }
    if let Some(max) = prefs.max_cost_usd {
        if cost > max {
            return Some(format!(
                "estimated cost ${cost:.6} > max_cost_usd ${max:.6}"
            ));
        }
    }
    if let Some(max) = prefs.max_latency_ms {
        if latency > max {
            return Some(format!("latency {latency:.0} ms > max_latency_ms {max:.0}"));
        }
    }
    if !live.healthy {
        return Some("unhealthy (circuit open)".into());
    }
    None
}

/// What scoring a backend needs besides the backend itself.
struct ScoreCtx<'a> {
    input: &'a RouteInput<'a>,
    pol: &'a Policy,
    rules: &'a [&'a Rule],
    need: f64,
    trade_off: f64,
}

/// Score and reasons of one qualifying backend (see the module doc for the formula).
fn score(b: &Backend, c: &ScoreCtx<'_>, cost: f64, latency: f64, healthy: bool) -> Ranked {
    let (p, need) = (c.input.prediction, c.need);
    let (q, basis) = quality(b, p);
    let label = if basis == "domain" {
        &p.domain
    } else {
        &p.intent
    };
    let mut reasons = vec![
        format!(
            "{basis} {label} quality {q:.2} {} {need:.2} needed for complexity {:.2}",
            if q >= need { "≥" } else { "<" },
            p.complexity
        ),
        format!(
            "estimated cost ${cost:.6} ({} prompt + {} output tokens)",
            c.input.prompt_tokens, c.input.prefs.expected_output_tokens
        ),
    ];
    let mut score = effective_quality(q, need) - lambda(c.trade_off) * cost_term(cost);
    let mut pinned = false;
    for r in c
        .rules
        .iter()
        .filter(|r| r.backend == b.name && matches(&r.when, p, c.input.metadata))
    {
        if r.pin {
            pinned = true;
            reasons.insert(0, format!("pinned by rule: {}", describe(&r.when)));
        }
        if r.boost != 0.0 {
            score += r.boost;
            reasons.push(format!(
                "boost {:+.2} by rule: {}",
                r.boost,
                describe(&r.when)
            ));
        }
    }
    if p.abstained && b.name == c.pol.default_backend {
        pinned = true;
        let why = match p.untrained_language_share {
            Some(share) => format!(
                "language {} is {:.2}% of its training data",
                p.language.code,
                share * 100.0
            ),
            None => format!("confidence {:.2}", p.confidence),
        };
        reasons.insert(0, format!("policy default: classifier abstained ({why})"));
    }
    Ranked {
        name: b.name.clone(),
        model: b.model.clone(),
        provider: b.provider.clone(),
        score,
        quality: q,
        cost_usd: cost,
        latency_ms: latency,
        healthy,
        pinned,
        reasons,
    }
}

/// Ranks the catalog's backends for one request.
pub fn rank(
    cfg: &Config,
    policy_name: &str,
    input: &RouteInput<'_>,
    live: &(dyn Fn(&str) -> Health + Sync),
) -> Result<Decision, PolicyError> {
    let name = if policy_name.is_empty() {
        cfg.default_policy.as_str()
    } else {
        policy_name
    };
    let pol = cfg
        .policies
        .get(name)
        .ok_or_else(|| PolicyError::UnknownPolicy(name.to_string()))?;
    let variant = variant_for(name, pol, input.request_key);
    let rules: Vec<&Rule> = pol
        .rules
        .iter()
        .chain(variant.iter().flat_map(|v| v.rules.iter()))
        .collect();
    let p = input.prediction;
    let t = input.prefs.trade_off.unwrap_or(pol.trade_off);
    let need = needed_quality(pol, p.complexity as f64);
    let out_tokens = input.prefs.expected_output_tokens;
    let mut ranked = Vec::new();
    let mut excluded = Vec::new();
    for b in &cfg.backends {
        let l = live(&b.name);
        let cost = cost_usd(b, input.prompt_tokens, out_tokens);
        let latency = l.latency_ms.unwrap_or(b.latency_ms);
        if let Some(why) = violation(b, input, cost, latency, l) {
            excluded.push((b.name.clone(), why));
            continue;
        }
        let ctx = ScoreCtx {
            input,
            pol,
            rules: &rules,
            need,
            trade_off: t,
        };
        ranked.push(score(b, &ctx, cost, latency, l.healthy));
    }
    if ranked.is_empty() {
        return Err(PolicyError::NoneQualifies(excluded));
    }
    ranked.sort_by(|a, b| {
        b.pinned
            .cmp(&a.pinned)
            .then(b.score.total_cmp(&a.score))
            .then(a.name.cmp(&b.name))
    });
    Ok(Decision {
        ranked,
        policy: name.to_string(),
        variant: variant
            .map(|v| v.name.clone())
            .unwrap_or_else(|| "default".into()),
    })
}
