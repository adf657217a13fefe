//! Entry points for the fuzz targets (`fuzz/`, run with `cargo fuzz`) and for their smoke
//! test in the ordinary suite. Each takes arbitrary bytes, as a client, an upstream or a config
//! author could send them, and must return without panicking; where the input is accepted the
//! result is checked against the invariants the rest of the service relies on.
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use futures_util::{FutureExt, StreamExt};

use crate::backends::openai::{self, ChatEvent, MAX_RETRY_AFTER};
use crate::classify::spell::SpellFixer;
use crate::config::Config;
use crate::http::wire;

/// The bundled config, parsed once (the request parser resolves `model` against it).
fn bundled() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| Config::read(None).unwrap_or_else(|e| panic!("bundled config: {e}")))
}

/// Splits at the first NUL: (before, after); no NUL gives (empty, all).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[], data),
    }
}

const PREF_HEADERS: [&str; 5] = [
    "x-switchboard-trade-off",
    "x-switchboard-max-cost-usd",
    "x-switchboard-max-latency-ms",
    "x-switchboard-policy",
    "x-switchboard-request-key",
];

/// `POST /v1/chat/completions`: the routing headers (bytes before a NUL, one value for each)
/// and the JSON body, parsed and turned into a completion, whose parameters are then checked.
pub fn openai_request(data: &[u8]) {
    let (head, body) = split(data);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(head) {
        for name in PREF_HEADERS {
            headers.insert(HeaderName::from_static(name), v.clone());
        }
    }
    let Ok(req) = wire::parse::<wire::ChatRequest>(body) else {
        return;
    };
    let Ok(input) = wire::to_input(req, &headers, bundled()) else {
        return;
    };
    if input.params.validate(200_000).is_ok() {
        for v in [input.params.temperature, input.params.top_p]
            .into_iter()
            .flatten()
        {
            assert!(v.is_finite(), "a non-finite parameter passed validation");
        }
    }
    for v in [
        input.route.prefs.max_cost_usd,
        input.route.prefs.max_latency_ms,
    ] {
        assert!(v.is_none_or(f64::is_finite), "a non-finite header passed");
    }
}

/// An upstream's SSE body, cut into chunks of a size the first byte picks, through the line
/// bound, the SSE parser and the chunk decoder.
pub fn sse(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = 1 + first as usize % 64;
    let chunks: Vec<Result<Vec<u8>, reqwest::Error>> =
        rest.chunks(step).map(|c| Ok(c.to_vec())).collect();
    let events = openai::sse_events(futures_util::stream::iter(chunks), 512);
    let all = events
        .collect::<Vec<_>>()
        .now_or_never()
        .unwrap_or_else(|| panic!("a ready body must decode without waiting"));
    for e in all {
        if let Ok(ChatEvent::Usage {
            prompt_tokens,
            completion_tokens,
        }) = e
        {
            let _ = prompt_tokens.saturating_add(completion_tokens);
        }
    }
}

/// A config file: parsed, then validated against the bundled classifier's labels.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text, "fuzz.toml") else {
        return;
    };
    let b = bundled_labels();
    let _ = cfg.validate(&b.0, &b.1);
}

fn bundled_labels() -> &'static (Vec<String>, Vec<String>) {
    static LABELS: OnceLock<(Vec<String>, Vec<String>)> = OnceLock::new();
    LABELS.get_or_init(|| {
        let text = include_str!("../models/classifier/classifier.json");
        let meta: crate::classify::ClassifierMeta =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("bundled classifier.json: {e}"));
        (meta.intent_labels, meta.domain_labels)
    })
}

/// An API-keys file.
pub fn api_keys_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::auth::ApiKeys::parse(text, "keys.toml");
    }
}

/// An inline heads artifact (safetensors with classifier.json in its metadata), as
/// `SwapClassifier` receives it.
pub fn inline_heads(data: &[u8]) {
    let _ = crate::live::registry::inline_classifier(data);
}

/// A `Retry-After` value: `None` or a delay no longer than the cap.
pub fn retry_after(data: &[u8]) {
    let v = String::from_utf8_lossy(data);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Some(d) = openai::parse_retry_after(&v, now) {
        assert!(d <= MAX_RETRY_AFTER, "{v:?} gave {d:?}");
    }
}

/// Typo repair: a lexicon (bytes before a NUL) and a text to repair with it. A repair
/// replaces words, so the text keeps its length within the longest word.
pub fn typo_repair(data: &[u8]) {
    let (lex, text) = split(data);
    let (Ok(lex), Ok(text)) = (std::str::from_utf8(lex), std::str::from_utf8(text)) else {
        return;
    };
    let fixed = SpellFixer::from_lexicon(lex).fix(text);
    let grew = fixed.len().saturating_sub(text.len());
    assert!(
        grew <= text.len() + lex.len(),
        "repair grew {text:?} to {fixed:?}"
    );
}

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by the name its `fuzz/fuzz_targets/*.rs` file and corpus folder carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("openai_request", openai_request),
    ("sse", sse),
    ("config_toml", config_toml),
    ("api_keys_toml", api_keys_toml),
    ("inline_heads", inline_heads),
    ("retry_after", retry_after),
    ("typo_repair", typo_repair),
];
