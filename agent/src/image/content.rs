//! The content store under `<root>/images`: verified blob downloads, unpacked layers by chain id, usage.
//!
//! ```text
//! <root>/images/layers/<chain id hex>/   one unpacked layer (its own diff only), ready as an overlayfs lowerdir
//! <root>/images/tmp/                     downloads and unpacks in progress; emptied at startup
//! ```
//! A layer appears under `layers/` only complete: it is unpacked into `tmp/`, synced, then renamed.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crius_sandbox::layer::{self, Compression, UnpackOptions};
use sha2::{Digest, Sha256};

use super::ImageError;
use super::reference::validate_digest;

/// Paths of the content store.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Paths {
    pub fn new(images_root: PathBuf) -> Paths {
        Paths { root: images_root }
    }
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// The directory of a layer, by chain id (`sha256:<hex>`).
    pub fn layer(&self, chain_id: &str) -> PathBuf {
        self.layers().join(hex_of(chain_id))
    }
    /// A fresh, unique path under tmp/.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp()
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Creates the directories; empties tmp/ (leftovers of a crash).
    pub fn prepare(&self) -> Result<(), ImageError> {
        let tmp = self.tmp();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|source| ImageError::Io {
                op: "clear the image temp directory",
                path: tmp.clone(),
                source: source.into(),
            })?;
        }
        for dir in [self.layers(), tmp] {
            std::fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
                op: "create the image directory",
                path: dir,
                source: source.into(),
            })?;
        }
        Ok(())
    }
}

/// The hex part of a digest.
pub fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `bytes` against `digest` (sha256 only).
pub fn verify_bytes(digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    check_sha256(digest)?;
    let actual = format!("sha256:{}", sha256_hex(bytes));
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            expected: digest.into(),
            actual,
        });
    }
    Ok(())
}

/// Only well-formed sha256 digests are fetched or used as names.
pub fn check_sha256(digest: &str) -> Result<(), ImageError> {
    validate_digest(digest).map_err(|p| ImageError::BadImage(format!("digest {digest:?}: {p}")))?;
    if !digest.starts_with("sha256:") {
        return Err(ImageError::BadImage(format!(
            "digest {digest:?}: only sha256 is supported"
        )));
    }
    Ok(())
}

/// Chain ids per the OCI image spec: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let id = match out.last() {
            None => d.clone(),
            Some(parent) => format!("sha256:{}", sha256_hex(format!("{parent} {d}").as_bytes())),
        };
        out.push(id);
    }
    out
}

/// A file being written while its sha256 is computed.
pub struct HashingFile {
    file: std::fs::File,
    hasher: Sha256,
    pub len: u64,
    pub path: PathBuf,
}

impl HashingFile {
    pub fn create(path: PathBuf) -> Result<HashingFile, ImageError> {
        let file = std::fs::File::create(&path).map_err(|source| ImageError::Io {
            op: "create a download file",
            path: path.clone(),
            source: source.into(),
        })?;
        Ok(HashingFile {
            file,
            hasher: Sha256::new(),
            len: 0,
            path,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        self.file.write_all(chunk).map_err(|source| ImageError::Io {
            op: "write a download file",
            path: self.path.clone(),
            source: source.into(),
        })
    }

    /// Checks the digest; on a mismatch the file is removed.
    pub fn finish(self, digest: &str) -> Result<PathBuf, ImageError> {
        let actual = format!("sha256:{}", to_hex(&self.hasher.finalize()));
        if actual != digest {
            let _ = std::fs::remove_file(&self.path);
            return Err(ImageError::DigestMismatch {
                expected: digest.into(),
                actual,
            });
        }
        Ok(self.path)
    }
}

/// A reader that hashes and counts what passes through (the uncompressed tar: diff id and size).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// What unpacking one layer gave.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// Size of the uncompressed tar.
    pub size: u64,
}

/// Unpacks the verified blob at `blob` into `layers/<chain id>`: into a temp dir, checks the diff id, syncs, renames.
/// Blocking. The blob file is removed in every case; a failure leaves nothing behind.
pub fn unpack_layer(
    paths: &Paths,
    blob: &Path,
    media_type: &str,
    diff_id: &str,
    chain_id: &str,
) -> Result<Unpacked, ImageError> {
    let result = unpack_inner(paths, blob, media_type, diff_id, chain_id);
    let _ = std::fs::remove_file(blob);
    result
}

fn unpack_inner(
    paths: &Paths,
    blob: &Path,
    media_type: &str,
    diff_id: &str,
    chain_id: &str,
) -> Result<Unpacked, ImageError> {
    let file = std::fs::File::open(blob).map_err(|source| ImageError::Io {
        op: "open a downloaded layer",
        path: blob.to_owned(),
        source: source.into(),
    })?;
    let mut reader = io::BufReader::with_capacity(256 * 1024, file);
    let first = io::BufRead::fill_buf(&mut reader).map_err(|source| ImageError::Io {
        op: "read a downloaded layer",
        path: blob.to_owned(),
        source: source.into(),
    })?;
    // The media type says the compression; the magic bytes decide when it is vague (Docker's "tar.gzip", etc.).
    let compression = if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
        Compression::Zstd
    } else {
        Compression::detect(first)
    };
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(
            |source| ImageError::Io {
                op: "start zstd decompression",
                path: blob.to_owned(),
                source: source.into(),
            },
        )?),
    };
    let mut hashing = HashingReader {
        inner: decoded,
        hasher: Sha256::new(),
        len: 0,
    };
    let tmp = paths.tmp_path("layer");
    std::fs::create_dir(&tmp).map_err(|source| ImageError::Io {
        op: "create a layer temp directory",
        path: tmp.clone(),
        source: source.into(),
    })?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    layer::unpack(
        &mut hashing,
        Compression::None,
        &tmp,
        &UnpackOptions::default(),
    )
    .map_err(|source| ImageError::Layer {
        digest: diff_id.into(),
        source: source.into(),
    })?;
    // The tar reader stops at the end-of-archive marker; the diff id covers the padding after it too.
    io::copy(&mut hashing, &mut io::sink()).map_err(|source| ImageError::Io {
        op: "read a downloaded layer",
        path: blob.to_owned(),
        source: source.into(),
    })?;
    let actual = format!("sha256:{}", to_hex(&hashing.hasher.finalize()));
    if actual != diff_id {
        return Err(ImageError::DigestMismatch {
            expected: diff_id.into(),
            actual,
        });
    }
    layer::sync_tree(&tmp).map_err(|source| ImageError::Layer {
        digest: diff_id.into(),
        source: source.into(),
    })?;
    let dest = paths.layer(chain_id);
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => {}
        // Another pull finished the same layer first: keep theirs.
        Err(e) if dest.exists() => {
            tracing::debug!(chain_id, error = %e, "layer already present");
        }
        Err(source) => {
            return Err(ImageError::Io {
                op: "move the unpacked layer in place",
                path: dest,
                source: source.into(),
            });
        }
    }
    sync_dir(&paths.layers());
    drop(guard);
    Ok(Unpacked { size: hashing.len })
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removes a path (recursively) when dropped, unless it is gone already.
pub struct RemoveOnDrop(pub Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Removes an unpacked layer (overlay whiteouts and read-only dirs included).
pub fn remove_layer(paths: &Paths, chain_id: &str) -> Result<(), ImageError> {
    let dir = paths.layer(chain_id);
    // Rename first so a crash mid-delete never leaves a half layer under its chain id.
    let doomed = paths.tmp_path("removing");
    match std::fs::rename(&dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ImageError::Io {
                op: "remove a layer",
                path: dir,
                source: source.into(),
            });
        }
    }
    std::fs::remove_dir_all(&doomed).map_err(|source| ImageError::Io {
        op: "remove a layer",
        path: doomed,
        source: source.into(),
    })
}

/// Bytes (allocated) and inodes used under `dir`; a missing dir uses nothing.
pub fn usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![dir.to_owned()];
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            bytes += meta.blocks() * 512;
            inodes += 1;
        }
        if !meta.is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            stack.push(e.path());
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(
            ids[1],
            format!("sha256:{}", sha256_hex(format!("{a} {b}").as_bytes()))
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn verify_rejects_mismatch_and_bad_digests() {
        let d = format!("sha256:{}", sha256_hex(b"hello"));
        verify_bytes(&d, b"hello").unwrap();
        assert!(matches!(
            verify_bytes(&d, b"hellO"),
            Err(ImageError::DigestMismatch { .. })
        ));
        assert!(verify_bytes("sha256:../../etc", b"x").is_err());
    }

    #[test]
    fn layer_unpacks_verified_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("images"));
        paths.prepare().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let diff_id = format!("sha256:{}", sha256_hex(&tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();

        let blob = paths.tmp_path("blob");
        std::fs::write(&blob, &gz).unwrap();
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = unpack_layer(&paths, &blob, "x+gzip", &wrong, &wrong).unwrap_err();
        assert!(
            matches!(err, ImageError::DigestMismatch { .. }),
            "{}",
            crate::error::chain(&err)
        );
        assert!(!paths.layer(&wrong).exists());
        assert_eq!(std::fs::read_dir(paths.tmp()).unwrap().count(), 0);

        std::fs::write(&blob, &gz).unwrap();
        let u = unpack_layer(&paths, &blob, "x+gzip", &diff_id, &diff_id).unwrap();
        assert_eq!(u.size, tar.len() as u64);
        assert_eq!(
            std::fs::read(paths.layer(&diff_id).join("hello.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(std::fs::read_dir(paths.tmp()).unwrap().count(), 0);
        remove_layer(&paths, &diff_id).unwrap();
        assert!(!paths.layer(&diff_id).exists());
        remove_layer(&paths, &diff_id).unwrap();
        assert_eq!(std::fs::read_dir(paths.tmp()).unwrap().count(), 0);
    }
}
