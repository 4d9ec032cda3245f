//! Images (issue 3): references, registries, the content store and the image service behind the CRI ImageService.
//!
//! - [`reference`]: Docker-style reference parsing and normalisation.
//! - [`registry`]: endpoints (mirrors, then upstream), TLS/plain HTTP, credentials, manifests and blob streams.
//! - [`content`]: `<root>/images`: verified downloads, layers unpacked by chain id, usage.
//! - [`service`]: [`Images`]: pull (single-flight, bounded parallel layers, progress timeout), list, status, remove.

pub mod content;
pub mod reference;
pub mod registry;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use reference::{Reference, ReferenceError};
pub use registry::Credentials;
pub use service::{ImageRecord, Images};

/// A shared cause: image errors are cloned to every caller of a single-flight pull.
pub type Shared = Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image {spec:?}")]
    BadReference {
        spec: String,
        #[source]
        source: ReferenceError,
    },
    /// Unknown repository, tag or digest; `message` is the registry's own words.
    #[error("image {reference} not found: {message}")]
    NotFound { reference: String, message: String },
    #[error("registry {host} requires authentication: {message}")]
    Unauthenticated { host: String, message: String },
    #[error("registry {host} denied access: {message}")]
    Denied { host: String, message: String },
    #[error("registry {host} is unreachable")]
    Unavailable {
        host: String,
        #[source]
        source: Shared,
    },
    #[error("registry {host} failed")]
    Registry {
        host: String,
        #[source]
        source: Shared,
    },
    #[error("invalid registry credentials: {0}")]
    BadAuth(String),
    #[error("invalid registry configuration: {0}")]
    BadConfig(String),
    #[error("invalid image: {0}")]
    BadImage(String),
    #[error("content does not match its digest {expected} (got {actual}); nothing was stored")]
    DigestMismatch { expected: String, actual: String },
    #[error("unpacking layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: Arc<crius_sandbox::layer::LayerError>,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("pull of {reference} made no progress for {after:?}")]
    Stalled { reference: String, after: Duration },
    #[error("pull of {reference} was cancelled")]
    Cancelled { reference: String },
    #[error("image metadata")]
    Store(#[source] Arc<crate::store::StoreError>),
}

impl From<crate::store::StoreError> for ImageError {
    fn from(e: crate::store::StoreError) -> Self {
        ImageError::Store(Arc::new(e))
    }
}
