//! OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the matching
//! HTTP status, from every error the engine and the proxy can return.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::embed::EmbedError;
use crate::engine::RouteError;
use crate::policy::PolicyError;
use crate::proxy::ProxyError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
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

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .code("invalid_api_key")
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
        (self.status, Json(self.body())).into_response()
    }
}

/// gRPC field names → the facade's: routing preferences travel in the `switchboard` body field.
fn param(field: &str) -> String {
    match field.strip_prefix("preferences.") {
        Some(rest) => format!("switchboard.{rest}"),
        None => field.to_string(),
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let msg = e.to_string();
        match e {
            RouteError::InvalidArgument { field, message } => {
                let status = if message.contains("bytes, over the limit") {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                Self {
                    status,
                    ..Self::invalid(param(&field), message)
                }
            }
            RouteError::Embed { field, source } => match source {
                EmbedError::EmptyInput => Self::invalid(field, source),
                EmbedError::InputTooLong { .. } => Self {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..Self::invalid(field, source)
                },
                EmbedError::Overloaded { .. } => {
                    Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", msg)
                        .code("overloaded")
                }
                EmbedError::Shutdown => {
                    Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg)
                        .code("shutting_down")
                }
                _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", msg),
            },
            RouteError::Classify(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", msg)
            }
            RouteError::Policy(PolicyError::UnknownPolicy(_)) => Self::invalid("policy", msg),
            RouteError::Policy(PolicyError::NoneQualifies(_)) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", msg)
                    .code("no_backend_qualifies")
            }
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        let msg = e.to_string();
        match e {
            ProxyError::Route(r) => r.into(),
            ProxyError::InvalidArgument { field, message } => Self::invalid(field, message),
            ProxyError::AllFailed(_) | ProxyError::NoneAvailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg)
                    .code("no_backend_available")
            }
            ProxyError::MidStream { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "server_error", msg).code("upstream_failed")
            }
        }
    }
}
