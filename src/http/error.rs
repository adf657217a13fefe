//! OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the matching
//! HTTP status. Every error from below arrives as `crate::error::Error` and goes through one
//! table; the constructors here are for what only HTTP can get wrong (body, URL, model name).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{Error, ErrorKind};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Sent as `Retry-After` (seconds).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    /// 400 naming the offending request parameter.
    pub fn invalid(param: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let param = param.into();
        Self {
            message: format!("{param}: {message}"),
            param: Some(param),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "")
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "model: {model:?} does not exist; use \"auto\", \"auto:<policy>\" or a backend \
                     name (GET /v1/models lists them)"
                ),
            )
            .code("model_not_found")
        }
    }

    /// The JSON body (also sent as an SSE `data:` line when a stream fails mid-way).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// gRPC field names → the facade's: routing preferences travel in the `switchboard` body field.
fn param(field: &str) -> String {
    match field.strip_prefix("preferences.") {
        Some(rest) => format!("switchboard.{rest}"),
        None => field.to_string(),
    }
}

/// The HTTP table: status, OpenAI error type and default code for each kind of error.
pub fn table(kind: ErrorKind) -> (StatusCode, &'static str, Option<&'static str>) {
    const INVALID: &str = "invalid_request_error";
    match kind {
        ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, INVALID, None),
        ErrorKind::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID,
            Some("request_too_large"),
        ),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, INVALID, Some("invalid_api_key")),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, INVALID, Some("permission_denied")),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, INVALID, None),
        // A request no backend can take as asked: the caller's to change, not a retry.
        ErrorKind::FailedPrecondition => (StatusCode::BAD_REQUEST, INVALID, None),
        ErrorKind::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", None),
        ErrorKind::Overloaded => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("overloaded"),
        ),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
        ErrorKind::UpstreamFailed => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("upstream_failed"),
        ),
        // nginx's "client closed request": nobody reads it, but logs and metrics do.
        ErrorKind::Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            INVALID,
            None,
        ),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, kind, code) = table(e.kind);
        let param = e.field.as_deref().map(param);
        // The message names the field as the caller spelled it.
        let message = match (&e.field, &param) {
            (Some(f), Some(p)) if f != p => e.message.replacen(f.as_str(), p, 1),
            _ => e.message,
        };
        Self {
            status,
            message,
            kind,
            param,
            code: e.reason.or(code),
            retry_after_s: e.retry_after_s,
        }
    }
}
