//! The one place where domain errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::{Error, chain};

/// Maps a domain error to a status; the message is the whole error chain, once.
pub fn to_status(err: &Error) -> Status {
    let code = match err {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::NotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unimplemented(_) => Code::Unimplemented,
        // An external program (a CNI plugin) failed: not our bug, not the caller's; the message names the plugin.
        Error::Network { .. } => Code::Unknown,
        Error::Sandbox { .. } => Code::Unknown,
        Error::Timeout { .. } => Code::DeadlineExceeded,
        Error::Store(_) => Code::Internal,
    };
    Status::new(code, chain(err))
}
