//! Range checks on every number in the config: a NaN, an infinity, a zero timeout or a size
//! whose double overflows is refused at load, naming its TOML path, instead of disabling a
//! check or poisoning a score at run time.
use super::{AdminConfig, Config, ServerConfig, TransportConfig};

type Bad = (String, String);

/// Largest accepted size limit: the transports allow twice a limit plus headroom.
const MAX_BYTES: u64 = 1 << 30;

fn finite_in(path: String, v: f64, lo: f64, hi: f64) -> Result<(), Bad> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err((
            path,
            format!("must be a finite number in [{lo}, {hi}], found {v}"),
        ))
    }
}

fn positive(path: String, v: u64, max: u64) -> Result<(), Bad> {
    if (1..=max).contains(&v) {
        Ok(())
    } else {
        Err((path, format!("must be in [1, {max}], found {v}")))
    }
}

fn server(s: &ServerConfig) -> Result<(), Bad> {
    if let Some(t) = s.abstain_threshold {
        finite_in("server.abstain_threshold".into(), t.into(), 0.0, 1.0)?;
    }
    finite_in(
        "server.untrained_language_share".into(),
        s.untrained_language_share,
        0.0,
        1.0,
    )?;
    positive(
        "server.max_prompt_bytes".into(),
        s.max_prompt_bytes as u64,
        MAX_BYTES,
    )?;
    positive("server.max_messages".into(), s.max_messages as u64, 1 << 20)?;
    positive("server.max_attempts".into(), s.max_attempts as u64, 100)?;
    positive(
        "server.breaker_failures".into(),
        s.breaker_failures.into(),
        1 << 20,
    )?;
    positive(
        "server.breaker_cooldown_ms".into(),
        s.breaker_cooldown_ms,
        86_400_000,
    )?;
    let max_line = s.max_sse_line_bytes as u64;
    positive("server.max_sse_line_bytes".into(), max_line, MAX_BYTES)?;
    let max_text = s.max_completion_bytes as u64;
    positive("server.max_completion_bytes".into(), max_text, MAX_BYTES)?;
    if s.config_watch_ms != 0 {
        positive(
            "server.config_watch_ms".into(),
            s.config_watch_ms,
            86_400_000,
        )?;
    }
    positive(
        "server.budget_max_tokens".into(),
        s.budget_max_tokens.into(),
        1 << 24,
    )?;
    positive(
        "server.shutdown_grace_ms".into(),
        s.shutdown_grace_ms,
        3_600_000,
    )
}

fn admin(a: &AdminConfig) -> Result<(), Bad> {
    finite_in("admin.gate_margin".into(), a.gate_margin, 0.0, 1.0)?;
    finite_in(
        "admin.feedback_weight".into(),
        a.feedback_weight.into(),
        0.0,
        1e6,
    )?;
    positive(
        "admin.decision_file_bytes".into(),
        a.decision_file_bytes,
        MAX_BYTES,
    )?;
    positive(
        "admin.decision_files".into(),
        a.decision_files as u64,
        10_000,
    )?;
    positive("admin.kept_versions".into(), a.kept_versions as u64, 1_000)?;
    positive(
        "admin.max_inline_bytes".into(),
        a.max_inline_bytes as u64,
        MAX_BYTES,
    )?;
    positive(
        "admin.watch_interval_ms".into(),
        a.watch_interval_ms,
        86_400_000,
    )
}

fn transport(t: &TransportConfig) -> Result<(), Bad> {
    let p = |k: &str| format!("transport.{k}");
    for (k, v, max) in [
        (
            "http_header_read_timeout_ms",
            t.http_header_read_timeout_ms,
            3_600_000,
        ),
        (
            "http_body_read_timeout_ms",
            t.http_body_read_timeout_ms,
            3_600_000,
        ),
        (
            "http_max_connections",
            t.http_max_connections as u64,
            1 << 20,
        ),
        (
            "grpc_max_concurrent_streams",
            t.grpc_max_concurrent_streams.into(),
            1 << 20,
        ),
        (
            "grpc_keepalive_interval_ms",
            t.grpc_keepalive_interval_ms,
            86_400_000,
        ),
        (
            "grpc_keepalive_timeout_ms",
            t.grpc_keepalive_timeout_ms,
            3_600_000,
        ),
        (
            "grpc_default_timeout_ms",
            t.grpc_default_timeout_ms,
            86_400_000,
        ),
        (
            "grpc_max_connection_age_ms",
            t.grpc_max_connection_age_ms,
            7 * 86_400_000,
        ),
        (
            "grpc_max_connection_age_grace_ms",
            t.grpc_max_connection_age_grace_ms,
            86_400_000,
        ),
    ] {
        positive(p(k), v, max)?;
    }
    Ok(())
}

/// Every number outside the backends' prices and qualities (checked with their entries).
pub(super) fn check(c: &Config) -> Result<(), Bad> {
    server(&c.server)?;
    admin(&c.admin)?;
    transport(&c.transport)?;
    c.fleet.check()?;
    for (i, b) in c.backends.iter().enumerate() {
        let p = |k: &str| format!("backends[{i}].{k}");
        positive(
            p("first_token_timeout_ms"),
            b.first_token_timeout_ms,
            3_600_000,
        )?;
        positive(p("idle_timeout_ms"), b.idle_timeout_ms, 3_600_000)?;
        positive(p("total_timeout_ms"), b.total_timeout_ms, 86_400_000)?;
        positive(p("connect_timeout_ms"), b.connect_timeout_ms, 600_000)?;
        positive(p("context_window"), b.context_window.into(), 1 << 30)?;
    }
    for (name, pol) in &c.policies {
        let p = format!("policies.{name}");
        finite_in(format!("{p}.min_quality"), pol.min_quality, 0.0, 1.0)?;
        finite_in(
            format!("{p}.complexity_slope"),
            pol.complexity_slope,
            -1.0,
            1.0,
        )?;
        let mut rules: Vec<(String, &super::Rule)> = (pol.rules.iter().enumerate())
            .map(|(j, r)| (format!("{p}.rules[{j}]"), r))
            .collect();
        for (i, v) in pol.variants.iter().enumerate() {
            finite_in(format!("{p}.variants[{i}].percent"), v.percent, 0.0, 100.0)?;
            let arm = v.rules.iter().enumerate();
            rules.extend(arm.map(|(j, r)| (format!("{p}.variants[{i}].rules[{j}]"), r)));
        }
        for (at, r) in rules {
            finite_in(format!("{at}.boost"), r.boost, -10.0, 10.0)?;
        }
    }
    Ok(())
}
