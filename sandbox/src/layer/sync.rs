//! Flushing an unpacked layer to disk before the caller renames it into place.

use std::io;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::LayerError;

/// Makes everything unpacked under `dest` durable: `syncfs(2)` of the filesystem that holds it.
///
/// One filesystem flush rather than an fsync per file and directory: on ext4 every fsync is a journal commit, and
/// walking a 5,900-entry, 138 MB layer that way took 14 s where syncfs took 0.2 s. syncfs also flushes whatever
/// else is dirty on that filesystem, and reports writeback errors (Linux 5.8+). Call it on the temporary
/// directory, then rename it and fsync the directory that holds it.
pub fn sync_tree(dest: &Path) -> Result<(), LayerError> {
    let err = |source: io::Error| LayerError::Sync {
        path: dest.to_owned(),
        source,
    };
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dest, flags, Mode::empty()).map_err(|e| err(e.into()))?;
    rustix::fs::syncfs(&fd).map_err(|e| err(e.into()))
}
