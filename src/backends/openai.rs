//! Client for OpenAI-compatible `/chat/completions` with `stream: true` (OpenAI, vLLM,
//! llama.cpp, Ollama, OpenRouter, …). SSE framing is parsed by `eventsource-stream`; each
//! `data:` payload is decoded here into deltas, a finish reason and usage.
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::config::Backend;

/// A chat request in OpenAI's shape (only the fields switchboard forwards).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// One decoded streaming event.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Delta(String),
    Finish(String),
    Usage {
        prompt_tokens: u32,
        completion_tokens: u32,
    },
}

/// Why an upstream call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("HTTP {status}: {body}")]
    Http {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("no first token within {0:?}")]
    FirstTokenTimeout(Duration),
    #[error("stream: {0}")]
    Stream(String),
    #[error("malformed SSE data: {0}")]
    Malformed(String),
    #[error("missing API key: environment variable {0} is not set")]
    MissingKey(String),
}

/// Whose fault a failed upstream call is, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself is bad (HTTP 400, 404, 413, 422): back to the caller with the
    /// upstream's reason, no failover (another backend would refuse it too), no breaker count.
    Caller,
    /// The backend is misconfigured (HTTP 401/403, a missing key, other 4xx): skip it, fail
    /// over, and count it against its breaker: it can serve nobody until an operator acts.
    Operator,
    /// The provider is failing (408, 429, 5xx, connect, timeouts, broken streams): fail over.
    Provider,
}

impl UpstreamError {
    pub fn fault(&self) -> Fault {
        match self {
            Self::Http { status, .. } => match status {
                400 | 404 | 413 | 422 => Fault::Caller,
                408 | 429 | 500.. => Fault::Provider,
                _ => Fault::Operator,
            },
            Self::MissingKey(_) => Fault::Operator,
            Self::Connect(_)
            | Self::FirstTokenTimeout(_)
            | Self::Stream(_)
            | Self::Malformed(_) => Fault::Provider,
        }
    }

    /// What the client is told: which failure, without internal URLs, key variable names,
    /// upstream bodies or echoed data (the full error goes to the log). A caller fault keeps
    /// the upstream's own message, since it says what to fix.
    pub fn public(&self) -> String {
        match self {
            Self::Connect(_) => "could not connect".into(),
            Self::Http { status, body, .. } if self.fault() == Fault::Caller => {
                format!("HTTP {status}: {}", upstream_message(body))
            }
            Self::Http { status, .. } => format!("HTTP {status}"),
            Self::FirstTokenTimeout(d) => format!(
                "no first token within {} ms (first_token_timeout_ms)",
                d.as_millis()
            ),
            Self::Stream(e) => format!("stream: {e}"),
            Self::Malformed(_) => "malformed SSE data".into(),
            Self::MissingKey(_) => "no API key configured for it".into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Http { status, .. } if *status == 429 => "http_429",
            Self::Http {
                status: 401 | 403, ..
            } => "http_auth",
            Self::Http { .. } if self.fault() == Fault::Caller => "http_rejected",
            Self::Http { .. } => "http",
            Self::FirstTokenTimeout(_) => "first_token_timeout",
            Self::Stream(_) => "stream",
            Self::Malformed(_) => "malformed",
            Self::MissingKey(_) => "missing_key",
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: DeltaJson,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct DeltaJson {
    content: Option<String>,
}

#[derive(Deserialize)]
struct UsageJson {
    prompt_tokens: u32,
    completion_tokens: u32,
}

/// The longest cooldown an upstream's `Retry-After` can put on a backend.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A `Retry-After` value: delay-seconds (fractions accepted) or an HTTP-date, capped at
/// `MAX_RETRY_AFTER`. `None` for anything else, negative or not finite: the header comes from
/// the upstream, and `Duration::from_secs_f64` panics on NaN.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Decodes one SSE `data:` payload into events (`[DONE]` gives none).
pub fn decode(data: &str) -> Result<Vec<ChatEvent>, UpstreamError> {
    if data.trim() == "[DONE]" {
        return Ok(Vec::new());
    }
    let c: Chunk = serde_json::from_str(data).map_err(|e| {
        UpstreamError::Malformed(format!(
            "{e}: {}",
            data.chars().take(80).collect::<String>()
        ))
    })?;
    let mut out = Vec::new();
    for ch in c.choices {
        if let Some(t) = ch.delta.content.filter(|t| !t.is_empty()) {
            out.push(ChatEvent::Delta(t));
        }
        if let Some(f) = ch.finish_reason {
            out.push(ChatEvent::Finish(f));
        }
    }
    if let Some(u) = c.usage {
        out.push(ChatEvent::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        });
    }
    Ok(out)
}

/// At most this much of an error response's body is read (its start names the reason).
const ERROR_BODY_BYTES: usize = 4096;

/// The start of an error response's body, read no further than `ERROR_BODY_BYTES`.
/// The `error.message` of an OpenAI-style error body, or the excerpt itself.
pub fn upstream_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
    });
    let text = msg.unwrap_or(body).trim();
    text.chars().take(ERROR_BODY_CHARS).collect()
}

/// Longest upstream message passed on to a client.
const ERROR_BODY_CHARS: usize = 200;

async fn error_excerpt(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c[..c.len().min(ERROR_BODY_BYTES - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Why an upstream body was cut off before SSE parsing.
#[derive(Debug)]
enum BodyError {
    Transport(String),
    LineTooLong(usize),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "{e}"),
            Self::LineTooLong(max) => write!(
                f,
                "an SSE line longer than {max} bytes (server.max_sse_line_bytes)"
            ),
        }
    }
}

/// The body, ended with an error once a line (the bytes since the last newline) is longer than
/// `max`: the SSE parser buffers a line whole, so an endless one would grow without bound.
fn bounded_lines<S, B>(body: S, max: usize) -> impl Stream<Item = Result<B, BodyError>>
where
    S: Stream<Item = Result<B, reqwest::Error>>,
    B: AsRef<[u8]>,
{
    body.scan((0usize, false), move |(open, cut), item| {
        if *cut {
            return futures_util::future::ready(None);
        }
        let out = match item {
            // The URL is internal: it stays out of what reaches a client.
            Err(e) => Err(BodyError::Transport(e.without_url().to_string())),
            Ok(chunk) => {
                let bytes = chunk.as_ref();
                *open = match bytes.iter().rposition(|&b| b == b'\n') {
                    Some(i) => bytes.len() - i - 1,
                    None => *open + bytes.len(),
                };
                if *open > max {
                    *cut = true;
                    Err(BodyError::LineTooLong(max))
                } else {
                    Ok(chunk)
                }
            }
        };
        futures_util::future::ready(Some(out))
    })
}

/// Opens a streaming completion on `b`. Errors before the response headers (connect, HTTP
/// status) come back here; later ones arrive as stream items.
pub async fn open_stream(
    http: &reqwest::Client,
    b: &Backend,
    req: &ChatRequest,
    max_line: usize,
) -> Result<
    impl Stream<Item = Result<ChatEvent, UpstreamError>> + Send + 'static + use<>,
    UpstreamError,
> {
    let mut body = serde_json::to_value(req).map_err(|e| UpstreamError::Stream(e.to_string()))?;
    body["model"] = b.model.clone().into();
    body["stream"] = true.into();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let url = format!("{}/chat/completions", b.base_url.trim_end_matches('/'));
    let mut trace = reqwest::header::HeaderMap::new();
    crate::telemetry::inject(&mut trace);
    let mut rb = http.post(url).json(&body).headers(trace);
    if let Some(var) = &b.api_key_env {
        let key = std::env::var(var).map_err(|_| UpstreamError::MissingKey(var.clone()))?;
        rb = rb.bearer_auth(key);
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let text = error_excerpt(resp).await;
        return Err(UpstreamError::Http {
            status: status.as_u16(),
            body: text,
            retry_after,
        });
    }
    Ok(sse_events(resp.bytes_stream(), max_line))
}

/// An upstream body as chat events: lines bounded by `max_line`, SSE framing, then `decode`.
pub fn sse_events<S, B>(
    body: S,
    max_line: usize,
) -> impl Stream<Item = Result<ChatEvent, UpstreamError>>
where
    S: Stream<Item = Result<B, reqwest::Error>>,
    B: AsRef<[u8]>,
{
    bounded_lines(body, max_line)
        .eventsource()
        .flat_map(|item| {
            let decoded: Vec<Result<ChatEvent, UpstreamError>> = match item {
                Ok(ev) => match decode(&ev.data) {
                    Ok(v) => v.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                },
                Err(e) => vec![Err(UpstreamError::Stream(e.to_string()))],
            };
            futures_util::stream::iter(decoded)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_parsed_capped_or_ignored_never_a_panic() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_000);
        let secs = |v: &str| parse_retry_after(v, now);
        assert_eq!(secs("2"), Some(Duration::from_secs(2)));
        assert_eq!(secs(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(secs("1e300"), Some(MAX_RETRY_AFTER));
        for hostile in ["NaN", "-5", "inf", "-inf", "", "soon", "1e999999"] {
            assert_eq!(secs(hostile), None, "{hostile:?}");
        }
        // `now` is 2015-10-21 07:20:00 GMT: 07:28 is capped, 07:20:10 is 10 s, a past date is now.
        assert_eq!(secs("Wed, 21 Oct 2015 07:28:00 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            secs("Wed, 21 Oct 2015 07:20:10 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(secs("Tue, 20 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    }

    #[test]
    fn decodes_deltas_finish_usage_and_done() {
        let d = decode(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(d, vec![ChatEvent::Delta("Hi".into())]);
        let f = decode(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(f, vec![ChatEvent::Finish("stop".into())]);
        let u = decode(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            vec![ChatEvent::Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            }]
        );
        assert!(decode("[DONE]").unwrap().is_empty());
        assert!(matches!(
            decode("{not json"),
            Err(UpstreamError::Malformed(_))
        ));
    }
}
