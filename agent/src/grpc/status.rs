//! The one place where domain errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::{Error, chain};
use crate::image::ImageError;

/// Maps a domain error to a status; the message is the whole error chain, once.
pub fn to_status(err: &Error) -> Status {
    let code = match err {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::NotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unimplemented(_) => Code::Unimplemented,
        // An external program (a CNI plugin) failed: not our bug, not the caller's; the message names the plugin.
        Error::Network { .. } => Code::Unknown,
        Error::Sandbox { .. } => Code::Unknown,
        Error::Timeout { .. } => Code::DeadlineExceeded,
        Error::Store(_) => Code::Internal,
        Error::Image(e) => match e {
            ImageError::BadReference { .. } | ImageError::BadAuth(_) => Code::InvalidArgument,
            ImageError::NotFound { .. } => Code::NotFound,
            ImageError::Unauthenticated { .. } => Code::Unauthenticated,
            ImageError::Denied { .. } => Code::PermissionDenied,
            ImageError::Unavailable { .. } => Code::Unavailable,
            ImageError::Stalled { .. } => Code::DeadlineExceeded,
            ImageError::Cancelled { .. } => Code::Cancelled,
            ImageError::BadConfig(_) => Code::FailedPrecondition,
            // The registry served something wrong or broken: not our bug, not the caller's.
            ImageError::Registry { .. }
            | ImageError::BadImage(_)
            | ImageError::DigestMismatch { .. }
            | ImageError::Layer { .. }
            | ImageError::Io { .. } => Code::Unknown,
            ImageError::Store(_) => Code::Internal,
        },
    };
    Status::new(code, chain(err))
}
