//! Test support for the layer unpacker: tar layers built byte by byte (the `tar` crate's path setters refuse the
//! hostile names these tests need), and a scratch tree whose every byte outside the layer is checked afterwards.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

/// One tar entry, written raw.
#[derive(Clone)]
pub struct E {
    name: Vec<u8>,
    kind: EntryType,
    link: Vec<u8>,
    data: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    dev: (u32, u32),
    pax: Vec<(String, Vec<u8>)>,
}

impl E {
    fn new(name: &str, kind: EntryType, mode: u32) -> Self {
        E {
            name: name.as_bytes().to_vec(),
            kind,
            link: Vec::new(),
            data: Vec::new(),
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
    pub fn file(name: &str, data: &[u8]) -> Self {
        E {
            data: data.to_vec(),
            ..E::new(name, EntryType::Regular, 0o644)
        }
    }
    pub fn dir(name: &str) -> Self {
        E::new(name, EntryType::Directory, 0o755)
    }
    pub fn symlink(name: &str, target: &str) -> Self {
        E {
            link: target.as_bytes().to_vec(),
            ..E::new(name, EntryType::Symlink, 0o777)
        }
    }
    pub fn hardlink(name: &str, target: &str) -> Self {
        E {
            link: target.as_bytes().to_vec(),
            ..E::new(name, EntryType::Link, 0o644)
        }
    }
    pub fn char_dev(name: &str, major: u32, minor: u32) -> Self {
        E {
            dev: (major, minor),
            ..E::new(name, EntryType::Char, 0o666)
        }
    }
    pub fn block_dev(name: &str, major: u32, minor: u32) -> Self {
        E {
            dev: (major, minor),
            ..E::new(name, EntryType::Block, 0o660)
        }
    }
    pub fn fifo(name: &str) -> Self {
        E::new(name, EntryType::Fifo, 0o644)
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
    pub fn pax(mut self, key: &str, value: &[u8]) -> Self {
        self.pax.push((key.to_owned(), value.to_vec()));
        self
    }
    pub fn xattr(self, name: &str, value: &[u8]) -> Self {
        self.pax(&format!("SCHILY.xattr.{name}"), value)
    }
}

/// One PAX record: "<len> <key>=<value>\n", where len counts the whole record including its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn header(name: &[u8], kind: EntryType, size: u64) -> Header {
    assert!(
        name.len() <= 100,
        "fixture names fit the 100-byte ustar field"
    );
    let mut h = Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h
}

/// Builds a layer tar from entries.
pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.pax.is_empty() {
            let records: Vec<u8> = e.pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut h = header(
                b"PaxHeaders/entry",
                EntryType::XHeader,
                records.len() as u64,
            );
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, records.as_slice()).unwrap();
        }
        let mut h = header(&e.name, e.kind, e.data.len() as u64);
        if !e.link.is_empty() {
            h.set_link_name_literal(&e.link).unwrap();
        }
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// `<tmp>/root/layer` (empty, the unpack destination), `<tmp>/root/sentinel` and `<tmp>/outside` with known files.
pub struct Scratch {
    pub tmp: tempfile::TempDir,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("crius-layer-{}-{test}-", std::process::id()))
            .tempdir()
            .unwrap();
        let t = tmp.path();
        fs::create_dir_all(t.join("root/layer")).unwrap();
        fs::create_dir_all(t.join("root/sentinel/sub")).unwrap();
        fs::write(t.join("root/sentinel/s.txt"), "sentinel\n").unwrap();
        fs::write(t.join("root/sentinel/sub/deep.txt"), "deep\n").unwrap();
        fs::create_dir_all(t.join("outside/dir")).unwrap();
        fs::write(t.join("outside/secret"), "secret\n").unwrap();
        fs::write(t.join("outside/dir/f"), "f\n").unwrap();
        std::os::unix::fs::symlink("../outside/secret", t.join("root/sentinel/to-secret")).unwrap();
        Scratch { tmp }
    }

    pub fn layer(&self) -> PathBuf {
        self.tmp.path().join("root/layer")
    }

    pub fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// Everything outside the layer: the scratch tree minus `root/layer`, and the host paths a hostile layer aims at.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(self.tmp.path(), &self.layer(), &mut out);
        for p in [
            "/etc/evil",
            "/evil",
            "/dev/evil",
            "/tmp/evil",
            "/etc/passwd",
            "/etc",
            "/dev",
        ] {
            out.insert(PathBuf::from(p), describe(Path::new(p)));
        }
        out
    }
}

fn describe(p: &Path) -> String {
    let Ok(m) = fs::symlink_metadata(p) else {
        return "absent".to_owned();
    };
    let ft = m.file_type();
    let what = if ft.is_symlink() {
        format!("symlink -> {}", fs::read_link(p).unwrap().display())
    } else if ft.is_file() {
        format!("file {:?}", String::from_utf8_lossy(&fs::read(p).unwrap()))
    } else if ft.is_dir() {
        "dir".to_owned()
    } else if ft.is_char_device() || ft.is_block_device() {
        format!("dev {}", m.rdev())
    } else {
        "other".to_owned()
    };
    // Dates and link counts catch writes and hardlinks; /dev and /etc change on their own, so only their
    // existence and mode are compared.
    if p == Path::new("/dev") || p == Path::new("/etc") {
        return format!("{what} mode={:o}", m.mode());
    }
    format!(
        "{what} mode={:o} uid={} gid={} nlink={} mtime={}.{} ino={}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    )
}

fn walk(p: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    if p == skip {
        return;
    }
    out.insert(p.to_owned(), describe(p));
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            walk(&e.unwrap().path(), skip, out);
        }
    }
}

/// Asserts nothing outside the layer changed, naming every difference.
pub fn assert_untouched(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) {
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            Some(w) if w == v => {}
            Some(w) => diffs.push(format!("changed {}: {v} => {w}", k.display())),
            None => diffs.push(format!("removed {}", k.display())),
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        diffs.push(format!("added {}: {}", k.display(), after[k]));
    }
    assert!(
        diffs.is_empty(),
        "a layer touched things outside its directory:\n{}",
        diffs.join("\n")
    );
}
