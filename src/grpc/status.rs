//! The gRPC status table: one function over `ErrorKind`. Every error a gRPC handler returns
//! goes through it, so the same failure gets the same code on every RPC.
use tonic::{Code, Status};

use crate::error::{Error, ErrorKind};

/// The gRPC code for each kind of error.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::TooLarge => Code::InvalidArgument,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Overloaded => Code::ResourceExhausted,
        ErrorKind::Unavailable | ErrorKind::UpstreamFailed => Code::Unavailable,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
    }
}

/// Any layer's error as a gRPC status.
pub trait IntoStatus {
    fn status(self) -> Status;
}

impl<E: Into<Error>> IntoStatus for E {
    fn status(self) -> Status {
        let e: Error = self.into();
        let mut s = Status::new(code(e.kind), e.message);
        if let Some(secs) = e.retry_after_s {
            s.metadata_mut().insert("retry-after", secs.into());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_load_is_resource_exhausted_and_oversized_input_is_invalid() {
        let s = Error::field(ErrorKind::InvalidArgument, "prompt", "empty").status();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "prompt: empty")
        );
        assert_eq!(code(ErrorKind::Overloaded), Code::ResourceExhausted);
        assert_eq!(code(ErrorKind::TooLarge), Code::InvalidArgument);
        assert_eq!(code(ErrorKind::ResourceExhausted), Code::ResourceExhausted);
        assert_eq!(code(ErrorKind::UpstreamFailed), Code::Unavailable);
    }
}
