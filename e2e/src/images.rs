//! Test images built in the tests from Debian's `busybox-static` (`/bin/busybox`), pushed to a [`Registry`].
//!
//! ```no_run
//! use crius_e2e::images::{Compression, ImageBuilder, LayerBuilder};
//! use crius_e2e::registry::Registry;
//! let registry = Registry::start();
//! let base = LayerBuilder::busybox().build(Compression::Gzip);
//! let top = LayerBuilder::new().whiteout("etc/motd").opaque("var/cache").build(Compression::Zstd);
//! let image = ImageBuilder::new().layer(base).layer(top).user("1000:1000").cmd(&["sleep", "3600"]).build();
//! let digest = image.push(&registry, "busybox", "latest").unwrap();
//! // pull "127.0.0.1:<port>/busybox:latest"; image.id() is the config digest crius must report
//! ```
//!
//! Layers are deterministic (fixed mtimes, gzip without a timestamp): building the same layer twice gives the
//! same digest, so images built separately share layers in the registry as they would in real life. Entry
//! paths are written into the tar headers byte for byte, unchecked, so malicious layers (`../x`, `/etc/x`,
//! symlinks out of the root, ...) can be made with [`LayerBuilder::entry`] too.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value, json};

use crate::registry::sha256_digest;

/// The busybox binary put into images (Debian package `busybox-static`); `CRIUS_TEST_BUSYBOX` overrides it.
pub const BUSYBOX: &str = "/bin/busybox";
/// Applets [`LayerBuilder::busybox`] links into `/bin`.
pub const DEFAULT_APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "env", "false", "grep", "head", "hostname", "id", "kill", "ls",
    "mkdir", "mount", "nc", "printf", "ps", "pwd", "rm", "sed", "sleep", "stat", "tail", "test",
    "touch", "true", "wc", "whoami",
];
/// The mtime of every entry (2023-11-14), so layers are reproducible.
pub const MTIME: u64 = 1_700_000_000;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Every manifest type above, for an Accept header.
pub const ALL_MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest / index.
    Oci,
    /// Docker schema 2 manifest / manifest list.
    Docker,
}

impl Compression {
    /// The layer media type in a manifest of `format` (Docker has no zstd type: the OCI one is used).
    pub fn media_type(self, format: Format) -> &'static str {
        match (format, self) {
            (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (_, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (Format::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
        }
    }
}

/// Bytes with their digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The OCI descriptor of this blob.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

/// A built layer: the (maybe compressed) blob and the digest of the uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub compression: Compression,
    /// The compressed bytes; `blob.media_type` is the OCI type (re-typed for Docker manifests on use).
    pub blob: Blob,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

/// What a tar entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// A hard link to an earlier entry (path as written in the tar).
    Hardlink(String),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

/// One tar entry, written as given: `path` is not checked or cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Extended attributes (written as PAX `SCHILY.xattr.<name>` records).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// An entry owned by root with the usual mode for its kind (0755 dirs, 0644 files, 0777 symlinks).
    pub fn new(path: &str, kind: EntryKind) -> Entry {
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink(_) => 0o777,
            _ => 0o644,
        };
        Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            xattrs: Vec::new(),
        }
    }
}

/// A user line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl User {
    pub fn new(name: &str, uid: u32, gid: u32) -> User {
        let home = if uid == 0 {
            "/root".to_string()
        } else {
            format!("/home/{name}")
        };
        User {
            name: name.to_string(),
            uid,
            gid,
            home,
        }
    }
}

/// A line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

impl Group {
    pub fn new(name: &str, gid: u32, members: &[&str]) -> Group {
        Group {
            name: name.to_string(),
            gid,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }
}

/// Builds one layer, entry by entry, in order.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    /// A base layer: `/bin/busybox` from this machine plus [`DEFAULT_APPLETS`] as symlinks to it, `/etc` with
    /// `passwd` and `group` (root and nobody), `/tmp` (1777), `/root`, `/var`. Panics if busybox is missing.
    pub fn busybox() -> LayerBuilder {
        LayerBuilder::busybox_with(DEFAULT_APPLETS)
    }

    /// [`LayerBuilder::busybox`] with these applets.
    pub fn busybox_with(applets: &[&str]) -> LayerBuilder {
        let path = std::env::var_os("CRIUS_TEST_BUSYBOX")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(BUSYBOX));
        let binary = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e} (install Debian's busybox-static package)",
                path.display()
            )
        });
        let mut layer = LayerBuilder::new()
            .dir("bin")
            .executable("bin/busybox", binary);
        for applet in applets {
            layer = layer.symlink(&format!("bin/{applet}"), "busybox");
        }
        layer
            .dir("etc")
            .users(
                &[User::new("root", 0, 0), User::new("nobody", 65534, 65534)],
                &[
                    Group::new("root", 0, &[]),
                    Group::new("nogroup", 65534, &[]),
                ],
            )
            .dir("root")
            .mode(0o700)
            .dir("tmp")
            .mode(0o1777)
            .dir("var")
    }

    /// Appends an entry exactly as given (for malicious layers too).
    pub fn entry(mut self, entry: Entry) -> LayerBuilder {
        self.entries.push(entry);
        self
    }

    pub fn dir(self, path: &str) -> LayerBuilder {
        self.entry(Entry::new(path, EntryKind::Dir))
    }

    /// A regular file, mode 0644.
    pub fn file(self, path: &str, contents: impl Into<Vec<u8>>) -> LayerBuilder {
        self.entry(Entry::new(path, EntryKind::File(contents.into())))
    }

    /// A regular file, mode 0755.
    pub fn executable(self, path: &str, contents: impl Into<Vec<u8>>) -> LayerBuilder {
        self.file(path, contents).mode(0o755)
    }

    pub fn symlink(self, path: &str, target: &str) -> LayerBuilder {
        self.entry(Entry::new(path, EntryKind::Symlink(target.to_string())))
    }

    pub fn hardlink(self, path: &str, target: &str) -> LayerBuilder {
        self.entry(Entry::new(path, EntryKind::Hardlink(target.to_string())))
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> LayerBuilder {
        self.entry(Entry::new(path, EntryKind::CharDevice(major, minor)))
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32) -> LayerBuilder {
        self.entry(Entry::new(path, EntryKind::BlockDevice(major, minor)))
    }

    pub fn fifo(self, path: &str) -> LayerBuilder {
        self.entry(Entry::new(path, EntryKind::Fifo))
    }

    /// An overlay whiteout: deletes `path` of the layers below (`a/b` is written as `a/.wh.b`).
    pub fn whiteout(self, path: &str) -> LayerBuilder {
        let name = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&name, Vec::new())
    }

    /// Makes `dir` opaque: the layers below contribute nothing under it (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> LayerBuilder {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            Vec::new(),
        )
    }

    /// `etc/passwd` and `etc/group` with these entries.
    pub fn users(self, users: &[User], groups: &[Group]) -> LayerBuilder {
        let passwd: String = users
            .iter()
            .map(|u| {
                format!(
                    "{}:x:{}:{}:{}:{}:/bin/sh\n",
                    u.name, u.uid, u.gid, u.name, u.home
                )
            })
            .collect();
        let group: String = groups
            .iter()
            .map(|g| format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")))
            .collect();
        self.file("etc/passwd", passwd).file("etc/group", group)
    }

    /// Sets the mode (permission and setuid/setgid/sticky bits) of the last entry.
    pub fn mode(mut self, mode: u32) -> LayerBuilder {
        if let Some(last) = self.entries.last_mut() {
            last.mode = mode;
        }
        self
    }

    /// Sets the owner of the last entry.
    pub fn owner(mut self, uid: u64, gid: u64) -> LayerBuilder {
        if let Some(last) = self.entries.last_mut() {
            last.uid = uid;
            last.gid = gid;
        }
        self
    }

    /// Adds an extended attribute to the last entry.
    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> LayerBuilder {
        if let Some(last) = self.entries.last_mut() {
            last.xattrs.push((name.to_string(), value.into()));
        }
        self
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            write_entry(&mut out, entry);
        }
        // End of archive: two zero blocks.
        out.extend_from_slice(&[0; 1024]);
        out
    }

    pub fn build(&self, compression: Compression) -> Layer {
        let tar = self.tar();
        let bytes = compress(&tar, compression);
        Layer {
            compression,
            blob: Blob::new(compression.media_type(Format::Oci), bytes),
            diff_id: sha256_digest(&tar),
            tar,
        }
    }
}

/// Compresses `data` (gzip without a timestamp; zstd level 3).
pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut encoder = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::default());
            let written = encoder.write_all(data).and_then(|()| encoder.finish());
            written.unwrap_or_else(|e| panic!("gzip into memory: {e}"))
        }
        Compression::Zstd => {
            zstd::encode_all(data, 3).unwrap_or_else(|e| panic!("zstd into memory: {e}"))
        }
    }
}

/// Decompresses a layer blob.
pub fn decompress(data: &[u8], compression: Compression) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(data),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .context("gunzip")?;
        }
        Compression::Zstd => out = zstd::decode_all(data).context("unzstd")?,
    }
    Ok(out)
}

const BLOCK: usize = 512;

/// Writes one entry (with its PAX xattr record and GNU long-name records when needed) as raw 512-byte blocks.
fn write_entry(out: &mut Vec<u8>, entry: &Entry) {
    if !entry.xattrs.is_empty() {
        let mut records = Vec::new();
        for (name, value) in &entry.xattrs {
            records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
        }
        write_block(out, b"././@PaxHeader", b'x', &records);
    }
    let link: Option<&str> = match &entry.kind {
        EntryKind::Symlink(target) | EntryKind::Hardlink(target) => Some(target),
        _ => None,
    };
    if entry.path.len() > 100 {
        let mut name = entry.path.as_bytes().to_vec();
        name.push(0);
        write_block(out, b"././@LongLink", b'L', &name);
    }
    if let Some(link) = link.filter(|l| l.len() > 100) {
        let mut name = link.as_bytes().to_vec();
        name.push(0);
        write_block(out, b"././@LongLink", b'K', &name);
    }
    let (kind, data, device): (u8, &[u8], Option<(u32, u32)>) = match &entry.kind {
        EntryKind::Dir => (b'5', &[], None),
        EntryKind::File(contents) => (b'0', contents, None),
        EntryKind::Symlink(_) => (b'2', &[], None),
        EntryKind::Hardlink(_) => (b'1', &[], None),
        EntryKind::CharDevice(major, minor) => (b'3', &[], Some((*major, *minor))),
        EntryKind::BlockDevice(major, minor) => (b'4', &[], Some((*major, *minor))),
        EntryKind::Fifo => (b'6', &[], None),
    };
    let mut header = header(
        entry.path.as_bytes(),
        kind,
        data.len() as u64,
        entry.mode,
        (entry.uid, entry.gid),
    );
    put(&mut header[136..148], &octal(entry.mtime, 11));
    if let Some(link) = link {
        put(&mut header[157..257], link.as_bytes());
    }
    if let Some((major, minor)) = device {
        put(&mut header[329..337], &octal(u64::from(major), 7));
        put(&mut header[337..345], &octal(u64::from(minor), 7));
    }
    finish_header(&mut header);
    out.extend_from_slice(&header);
    pad_data(out, data);
}

/// An extension record (PAX `x`, GNU long name `L` or long link `K`) and its data.
fn write_block(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8]) {
    let mut block = header(name, kind, data.len() as u64, 0o644, (0, 0));
    put(&mut block[136..148], &octal(MTIME, 11));
    finish_header(&mut block);
    out.extend_from_slice(&block);
    pad_data(out, data);
}

/// A GNU-format header block (magic `ustar  \0`) with the name truncated to 100 bytes (long names come in an
/// `L` record before it).
fn header(name: &[u8], kind: u8, size: u64, mode: u32, (uid, gid): (u64, u64)) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put(&mut h[0..100], &name[..name.len().min(100)]);
    put(&mut h[100..108], &octal(u64::from(mode), 7));
    put(&mut h[108..116], &octal(uid, 7));
    put(&mut h[116..124], &octal(gid, 7));
    put(&mut h[124..136], &octal(size, 11));
    h[156] = kind;
    put(&mut h[257..265], b"ustar  \0");
    put(&mut h[265..269], b"root");
    put(&mut h[297..301], b"root");
    h
}

fn finish_header(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put(&mut h[148..156], &octal(sum, 6));
    h[154] = 0;
    h[155] = b' ';
}

fn pad_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rest = data.len() % BLOCK;
    if rest != 0 {
        out.extend(std::iter::repeat_n(0, BLOCK - rest));
    }
}

fn put(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// `value` as `width` octal digits followed by NUL.
fn octal(value: u64, width: usize) -> Vec<u8> {
    let mut s = format!("{value:0width$o}").into_bytes();
    s.push(0);
    s
}

/// One PAX record: `<len> <key>=<value>\n`, where `<len>` counts the whole record including itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

mod manifest;

pub use manifest::{Image, ImageBuilder, Index, Platform};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("a", b"b"), b"6 a=b\n");
        let long = pax_record("SCHILY.xattr.user.k", &[b'v'; 80]);
        let len: usize = std::str::from_utf8(&long[..3]).unwrap().parse().unwrap();
        assert_eq!(len, long.len());
    }

    #[test]
    fn tar_reads_back_with_the_tar_crate() {
        let long = format!("d/{}", "n".repeat(150));
        let tar = LayerBuilder::new()
            .dir("d")
            .file("d/f", "hello")
            .mode(0o4755)
            .owner(1000, 1001)
            .xattr("user.k", "v")
            .symlink("d/s", "/etc/passwd")
            .hardlink("d/h", "d/f")
            .char_device("d/c", 1, 3)
            .fifo("d/p")
            .file(&long, "x")
            .file("../escape", "x")
            .whiteout("d/gone")
            .opaque("d/")
            .tar();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let header = entry.header().clone();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            let xattrs: Vec<(String, Vec<u8>)> = entry
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|e| e.unwrap())
                .map(|e| (e.key().unwrap().to_string(), e.value_bytes().to_vec()))
                .collect();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            seen.push((path, header, link, xattrs, data));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "d",
                "d/f",
                "d/s",
                "d/h",
                "d/c",
                "d/p",
                long.as_str(),
                "../escape",
                "d/.wh.gone",
                "d/.wh..wh..opq"
            ]
        );
        let f = &seen[1];
        assert_eq!(f.1.mode().unwrap(), 0o4755);
        assert_eq!((f.1.uid().unwrap(), f.1.gid().unwrap()), (1000, 1001));
        assert_eq!(f.1.mtime().unwrap(), MTIME);
        assert_eq!(f.3, [("SCHILY.xattr.user.k".to_string(), b"v".to_vec())]);
        assert_eq!(f.4, b"hello");
        assert_eq!(seen[2].1.entry_type(), tar::EntryType::Symlink);
        assert_eq!(seen[2].2.as_deref(), Some("/etc/passwd"));
        assert_eq!(seen[3].1.entry_type(), tar::EntryType::Link);
        assert_eq!(seen[4].1.entry_type(), tar::EntryType::Char);
        assert_eq!(
            (
                seen[4].1.device_major().unwrap(),
                seen[4].1.device_minor().unwrap()
            ),
            (Some(1), Some(3))
        );
        assert_eq!(seen[5].1.entry_type(), tar::EntryType::Fifo);
        assert_eq!(seen[6].4, b"x");
    }

    #[test]
    fn layers_are_reproducible_and_compressions_round_trip() {
        let layer = LayerBuilder::new().file("a", vec![7u8; 5000]);
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let a = layer.build(compression);
            let b = layer.build(compression);
            assert_eq!(a.blob.digest, b.blob.digest, "{compression:?}");
            assert_eq!(decompress(&a.blob.bytes, compression).unwrap(), a.tar);
            assert_eq!(sha256_digest(&a.tar), a.diff_id);
        }
        assert_ne!(
            layer.build(Compression::Gzip).blob.digest,
            layer.build(Compression::Zstd).blob.digest
        );
        assert_eq!(
            layer.build(Compression::None).blob.digest,
            layer.build(Compression::None).diff_id
        );
    }
}
