//! Unpacking one OCI image layer (a tar stream, possibly gzip or zstd compressed) into a directory that becomes an
//! overlayfs lowerdir, without ever reading or writing outside that directory.
//!
//! # How paths are resolved
//! The destination is opened once; every directory an entry goes into is opened relative to that descriptor with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so symlinks met on the way resolve *inside* the layer as if
//! it were `/`. The entry itself is then created with `*at` calls on that directory descriptor that never follow
//! its last component (`O_NOFOLLOW | O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `mknodat`, `symlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`). Lexical checks on names come first but are not what keeps the layer inside.
//!
//! # Decisions, case by case
//! | input | outcome |
//! | --- | --- |
//! | absolute name `/etc/evil` | neutralised: the leading `/` is stripped (as containerd and tar do), `etc/evil` in the layer |
//! | `..` climbing above the root (`../../evil`, `a/../../evil`) | rejected, [`LayerError::Escape`] (moby does the same; legitimate tars never do it) |
//! | `a/../b` staying inside | normalised to `b` |
//! | write through a symlink in a parent path (`link -> /`, then `link/etc/evil`) | neutralised: the symlink resolves inside the layer (`etc/evil` in the layer), missing directories created there; a parent that resolves to nothing creatable is an [`LayerError::Io`] |
//! | symlink entry pointing anywhere | stored verbatim; it is only ever followed inside a root |
//! | hardlink to `/etc/passwd` or `../outside` | the target is resolved inside the layer: it links `etc/passwd` of the layer if an earlier entry made it, otherwise [`LayerError::Io`] (no such file); `..` above the root in a target is [`LayerError::Escape`] |
//! | an entry over an existing one | the old one is removed (recursively for a directory, never following symlinks) and the new one created, except a directory over a directory, which is kept and gets the new metadata; a symlink replaced by a directory is thus a real directory |
//! | whiteout `.wh.<name>` | char device 0:0 `<name>` in the same directory, replacing what this layer had there |
//! | whiteout `.wh..`, `.wh...`, `.wh.` (naming `.`/`..`/nothing) | rejected, [`LayerError::Escape`] |
//! | `.wh.`-prefixed name used as a directory (`a/.wh.../x`) | rejected, [`LayerError::BadEntry`] (a whiteout has no children) |
//! | `.wh..wh..opq` | `trusted.overlay.opaque=y` on its directory |
//! | other `.wh..wh.*` (AUFS bookkeeping) | skipped, as containerd does |
//! | device nodes | created inside the layer like any entry (which devices a container may open is the device cgroup's job) |
//! | xattrs | `user.*`, `trusted.*` and `security.capability` are set; `trusted.overlay.*` and `user.overlay.*` (a layer forging whiteouts or redirects) and all others are dropped |
//! | the root entry `./` | its mode, owner, xattrs and mtime apply to `dest`; any other type there is rejected |
//!
//! Modes keep setuid/setgid/sticky (set after the chown, which clears them); capabilities are set after the chown
//! too. Directory mtimes are set once every entry is written. After the end-of-archive marker the rest of the
//! stream is read and discarded, so a caller hashing the compressed stream sees all of it and gzip's trailer is
//! checked.
//!
//! The destination must be an empty directory; the caller unpacks into a temporary one, calls [`sync_tree`], then
//! renames. An error leaves a partial tree in `dest` for the caller to remove.

mod entry;
pub(crate) mod resolve;
mod sync;

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub use self::sync::sync_tree;

/// How a layer stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of the stream (gzip `1f 8b`, zstd `28 b5 2f fd`); anything else
    /// is taken as a plain tar.
    pub fn detect(first_bytes: &[u8]) -> Compression {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Tar entries applied (PAX global headers not counted), whiteouts and opaque markers included.
    pub entries: u64,
    /// Whiteouts created plus directories marked opaque.
    pub whiteouts: u64,
}

/// How to apply entry metadata.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// chown entries to the uid/gid in the tar (needs CAP_CHOWN; true when running as root).
    pub same_owner: bool,
    /// Set the allowed xattrs from PAX `SCHILY.xattr.*` records.
    pub xattrs: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            same_owner: true,
            xattrs: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("opening the layer destination {path}")]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the layer destination {0} is not empty")]
    DestNotEmpty(PathBuf),
    #[error("reading the layer stream")]
    Read(#[source] io::Error),
    #[error("layer entry {path:?} escapes the layer root: {reason}")]
    Escape { path: String, reason: &'static str },
    #[error("layer entry {path:?} is invalid: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("layer entry {path:?}: {op}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("syncing the unpacked layer {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Unpacks one layer (a tar stream, compressed as `compression` says) into `dest`, an empty directory. Never reads
/// or writes outside `dest`; see the module docs for what happens to hostile entries.
pub fn unpack(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    match compression {
        Compression::None => unpack_tar(reader, dest, opts),
        Compression::Gzip => unpack_tar(flate2::read::MultiGzDecoder::new(reader), dest, opts),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(reader).map_err(LayerError::Read)?;
            unpack_tar(decoder, dest, opts)
        }
    }
}

/// [`unpack`] with the compression detected from the stream's first bytes.
pub fn unpack_detect(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let compression = Compression::detect(reader.fill_buf().map_err(LayerError::Read)?);
    unpack(reader, compression, dest, opts)
}

fn unpack_tar<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let root = resolve::Root::open(dest).map_err(|source| LayerError::Dest {
        path: dest.to_owned(),
        source,
    })?;
    if !root.is_empty().map_err(|source| LayerError::Dest {
        path: dest.to_owned(),
        source,
    })? {
        return Err(LayerError::DestNotEmpty(dest.to_owned()));
    }
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = entry::Unpacker::new(root, opts);
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        unpacker.apply(&mut entry)?;
    }
    let stats = unpacker.finish()?;
    // Drain what follows the end-of-archive marker (padding, compression trailer).
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(LayerError::Read)?;
    tracing::debug!(dest = %dest.display(), ?stats, "layer unpacked");
    Ok(stats)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn detect_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/\0\0\0"), Compression::None);
        assert_eq!(Compression::detect(&[0x1f]), Compression::None);
        assert_eq!(Compression::detect(&[]), Compression::None);
    }

    #[test]
    fn errors_name_the_entry_and_reason() {
        let e = LayerError::Escape {
            path: "../../evil".into(),
            reason: "a '..' component climbs above the layer root",
        };
        assert_eq!(
            e.to_string(),
            "layer entry \"../../evil\" escapes the layer root: a '..' component climbs above the layer root"
        );
    }
}
