//! The OpenAI chat-completions request as JSON, and its translation into the proxy's input.
//! Unknown fields are ignored (SDKs send many); fields that would change the answer and that
//! the proxy cannot honour (`n > 1`, `tools`) are refused rather than dropped.
use std::collections::HashMap;

use axum::http::HeaderMap;
use serde::Deserialize;

use super::error::ApiError;
use crate::config::Config;
use crate::engine::RouteRequest;
use crate::policy::Preferences;
use crate::proxy::{CompleteInput, GenParams};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

/// Routing preferences in the extra body field `switchboard` (the SDKs' `extra_body`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingPrefs {
    pub trade_off: Option<f64>,
    pub max_cost_usd: Option<f64>,
    pub max_latency_ms: Option<f64>,
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    #[serde(default)]
    pub allow_backends: Vec<String>,
    #[serde(default)]
    pub deny_backends: Vec<String>,
    pub expected_output_tokens: Option<u32>,
    /// ISO 639-3, or "auto" for the detected language.
    #[serde(default)]
    pub required_language: String,
    pub policy: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    pub request_key: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub response_format: Option<ResponseFormat>,
    pub n: Option<u32>,
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    pub user: Option<String>,
    #[serde(default)]
    pub switchboard: Option<RoutingPrefs>,
}

/// Parses a JSON body; a type error names the JSON path of the offending field.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." { "body".into() } else { path };
        ApiError::invalid(param, redact(&e.into_inner().to_string()))
    })
}

/// serde quotes the offending value (`invalid type: string "…", expected …`): for a message
/// field that is the prompt, which must not reach the logs. The value's type is kept.
pub fn redact(msg: &str) -> String {
    const MARK: &str = "string \"";
    let Some(start) = msg.find(MARK) else {
        return msg.to_string();
    };
    let rest = &msg[start + MARK.len()..];
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => {
                let tail = redact(&rest[i + 1..]);
                return format!("{}a string{tail}", &msg[..start]);
            }
            _ => escaped = false,
        }
    }
    format!("{}a string", &msg[..start])
}

/// What `model` asks for.
pub enum Target {
    Policy(String),
    Pinned(String),
}

pub fn target(model: &str, config: &Config) -> Result<Target, ApiError> {
    match model {
        "" | "auto" => Ok(Target::Policy(String::new())),
        m => {
            if let Some(p) = m.strip_prefix("auto:") {
                if config.policies.contains_key(p) {
                    return Ok(Target::Policy(p.to_string()));
                }
            } else if config.backends.iter().any(|b| b.name == m) {
                return Ok(Target::Pinned(m.to_string()));
            }
            Err(ApiError::model_not_found(m))
        }
    }
}

fn text(i: usize, c: Option<Content>) -> Result<String, ApiError> {
    match c {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::new();
            for (j, p) in parts.into_iter().enumerate() {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => out.push(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}]"),
                            format!("only text parts are supported, found {kind:?}"),
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
    }
}

/// Preferences from `x-switchboard-*` headers; the body's `switchboard` field wins over them.
fn header_prefs(h: &HeaderMap) -> Result<RoutingPrefs, ApiError> {
    fn num(h: &HeaderMap, name: &str) -> Result<Option<f64>, ApiError> {
        let Some(v) = h.get(name) else {
            return Ok(None);
        };
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("header {name}"), "must be a finite number"))
    }
    let s = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.to_string())
    };
    Ok(RoutingPrefs {
        trade_off: num(h, "x-switchboard-trade-off")?,
        max_cost_usd: num(h, "x-switchboard-max-cost-usd")?,
        max_latency_ms: num(h, "x-switchboard-max-latency-ms")?,
        policy: s("x-switchboard-policy"),
        request_key: s("x-switchboard-request-key"),
        ..Default::default()
    })
}

fn merge(body: Option<RoutingPrefs>, head: RoutingPrefs) -> RoutingPrefs {
    let Some(b) = body else { return head };
    RoutingPrefs {
        trade_off: b.trade_off.or(head.trade_off),
        max_cost_usd: b.max_cost_usd.or(head.max_cost_usd),
        max_latency_ms: b.max_latency_ms.or(head.max_latency_ms),
        policy: b.policy.or(head.policy),
        request_key: b.request_key.or(head.request_key),
        ..b
    }
}

/// Request → proxy input (validation of content, sizes and preferences is the engine's).
pub fn to_input(
    r: ChatRequest,
    headers: &HeaderMap,
    config: &Config,
) -> Result<CompleteInput, ApiError> {
    if r.n.unwrap_or(1) != 1 {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    if r.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid("tools", "tool calling is not supported"));
    }
    let target = target(r.model.as_deref().unwrap_or("auto"), config)?;
    let prefs = merge(r.switchboard, header_prefs(headers)?);
    let mut messages = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.into_iter().enumerate() {
        // OpenAI's newer name for the system role.
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role
        };
        messages.push((role, text(i, m.content)?));
    }
    let (policy, pinned) = match target {
        Target::Policy(p) => (prefs.policy.clone().unwrap_or(p), None),
        Target::Pinned(b) => (String::new(), Some(b)),
    };
    let json = match r.response_format {
        None => false,
        Some(f) if f.kind == "text" => false,
        Some(f) if f.kind == "json_object" => true,
        Some(f) => {
            return Err(ApiError::invalid(
                "response_format.type",
                format!("{:?} is not supported (text, json_object)", f.kind),
            ))
        }
    };
    Ok(CompleteInput {
        route: RouteRequest {
            messages,
            prompt: String::new(),
            prefs: Preferences {
                trade_off: prefs.trade_off,
                max_cost_usd: prefs.max_cost_usd,
                max_latency_ms: prefs.max_latency_ms,
                required_capabilities: prefs.required_capabilities,
                allow: prefs.allow_backends,
                deny: prefs.deny_backends,
                expected_output_tokens: prefs.expected_output_tokens.unwrap_or(256),
                max_output_tokens: None,
                required_language: prefs.required_language,
            },
            top_k: 0,
            policy,
            metadata: prefs.metadata,
            request_key: prefs.request_key.or(r.user).unwrap_or_default(),
        },
        params: GenParams {
            max_tokens: r.max_completion_tokens.or(r.max_tokens),
            temperature: r.temperature,
            top_p: r.top_p,
            stop: match r.stop {
                None => vec![],
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            seed: r.seed,
            json,
        },
        pinned,
    })
}
