//! The CRI v1 API: generated messages, the RuntimeService/ImageService server traits and clients.
//!
//! Nothing else lives here: crius' own types are in `agent/`, `sandbox/` and `cni/`.
#![deny(unsafe_code)]

pub use k8s_cri::v1;
pub use prost;
pub use tonic;
