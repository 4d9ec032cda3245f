//! Images (issue 3): references, and next the pull pipeline, the content-addressed store and the ImageService.

pub mod reference;

#[allow(unused_imports)] // used by the pull pipeline and the ImageService, next
pub use reference::{Reference, ReferenceError};
