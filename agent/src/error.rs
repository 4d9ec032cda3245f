//! The domain's error type. The gRPC layer maps it to a status in one exhaustive match (grpc/status.rs).

use std::time::Duration;

use crate::image::ImageError;
use crate::store::StoreError;

/// A boxed cause from a lower layer (sandbox, cni, io) kept for the error chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` is the protobuf path of the offending field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// An unknown id; `field` is the request field that carried it.
    #[error("{kind} not found: {field} {id:?} matches none")]
    NotFound {
        kind: &'static str,
        field: &'static str,
        id: String,
    },
    #[error("{kind} {name} already exists as {id}")]
    AlreadyExists {
        kind: &'static str,
        name: String,
        id: String,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bounded resource (outstanding streaming URLs) is used up; retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0} is not implemented by crius yet")]
    Unimplemented(&'static str),
    /// A CNI plugin (an external program) failed.
    #[error("pod network {op} failed for sandbox {pod}")]
    Network {
        op: &'static str,
        pod: String,
        #[source]
        source: crius_cni::CniError,
    },
    /// A kernel-level step (namespaces, pause, mounts, cgroups) failed.
    #[error("{op} failed")]
    Sandbox {
        op: String,
        #[source]
        source: Cause,
    },
    #[error("{op} did not finish within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Pulling, storing or finding an image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn sandbox(op: impl Into<String>, source: impl Into<Cause>) -> Error {
        Error::Sandbox {
            op: op.into(),
            source: source.into(),
        }
    }
}

/// The whole chain of an error on one line: "outer: cause: root cause".
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
