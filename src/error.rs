//! One error vocabulary. Every layer's error type converts into `Error` exactly once (in that
//! layer's own module); gRPC's status table and HTTP's status + OpenAI body table are each one
//! function over `ErrorKind`, and the errors metric is labelled by it. Nothing downstream
//! decides anything from message text.
use std::fmt;

/// What went wrong, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed; `field` names the part at fault.
    InvalidArgument,
    /// A request field is over a size limit; the message names the limit. The caller must
    /// send less (gRPC INVALID_ARGUMENT, HTTP 413).
    TooLarge,
    /// A limit on what the service holds or spends was reached (an artifact upload over
    /// `admin.max_inline_bytes`, later quotas); the message names the limit.
    ResourceExhausted,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    /// Valid, but not possible in the current state (no backend qualifies, a swap's gate).
    FailedPrecondition,
    /// Shed at once because a bounded queue is full; retry later.
    Overloaded,
    /// No backend could serve it, or the service is stopping.
    Unavailable,
    /// A backend failed after part of the answer reached the caller.
    UpstreamFailed,
    /// The caller went away.
    Cancelled,
    Internal,
}

impl ErrorKind {
    /// The label of the errors metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::TooLarge => "too_large",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::FailedPrecondition => "failed_precondition",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::UpstreamFailed => "upstream_failed",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }
}

/// An error as a transport reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    /// The request field at fault (`preferences.trade_off`, `messages[2].role`), if one is.
    pub field: Option<String>,
    /// The whole message, field included, as the caller sees it.
    pub message: String,
    /// A stable, machine-readable reason beside the kind (`no_backend_qualifies`,
    /// `shutting_down`); HTTP sends it as the OpenAI error `code`.
    pub reason: Option<&'static str>,
    /// Seconds the caller should wait before retrying (HTTP `Retry-After`, gRPC
    /// `retry-after` metadata), when the service knows.
    pub retry_after_s: Option<u64>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            field: None,
            message: message.into(),
            reason: None,
            retry_after_s: None,
        }
    }

    /// An error about one request field; the message is prefixed with the field's name.
    pub fn field(kind: ErrorKind, field: impl Into<String>, message: impl fmt::Display) -> Self {
        let field = field.into();
        Self {
            kind,
            message: format!("{field}: {message}"),
            field: Some(field),
            reason: None,
            retry_after_s: None,
        }
    }

    pub fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_names_the_field_in_its_message() {
        let e = Error::field(
            ErrorKind::InvalidArgument,
            "preferences.trade_off",
            "must be in [0, 1]",
        );
        assert_eq!(e.message, "preferences.trade_off: must be in [0, 1]");
        assert_eq!(e.field.as_deref(), Some("preferences.trade_off"));
        assert_eq!(e.kind.label(), "invalid_argument");
    }
}
