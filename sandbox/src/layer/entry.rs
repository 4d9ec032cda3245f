//! Applying one tar entry to the layer directory.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, makedev,
};
use rustix::io::Errno;
use tar::EntryType;

use super::resolve::{Root, clean, remove_all_at};
use super::{LayerError, UnpackOptions, UnpackStats};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`); containerd skips them too.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Whether an xattr from a layer may be set: `user.*`, `trusted.*` except overlayfs' own (a layer must not forge
/// whiteouts, redirects or metacopy), and file capabilities.
pub(super) fn xattr_allowed(name: &str) -> bool {
    (name.starts_with("user.") && !name.starts_with("user.overlay."))
        || (name.starts_with("trusted.") && !name.starts_with("trusted.overlay."))
        || name == "security.capability"
}

const COPY_BUF: usize = 256 * 1024;

/// Copies an entry's content; a failed read is the stream's fault, a failed write the destination's.
fn copy(
    from: &mut impl Read,
    to: &mut File,
    buf: &mut [u8],
    path: &str,
) -> Result<u64, LayerError> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LayerError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(|source| LayerError::Io {
            path: path.to_owned(),
            op: "writing the file",
            source,
        })?;
        total += n as u64;
    }
}

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Parses a PAX time (`1700000000.5`) into a timespec; `None` when malformed.
pub(super) fn parse_pax_time(v: &str) -> Option<Timespec> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut tv_nsec: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        tv_nsec *= 10;
    }
    if tv_sec < 0 && tv_nsec > 0 {
        // -1.5 means 1.5 s before the epoch.
        return Some(Timespec {
            tv_sec: tv_sec - 1,
            tv_nsec: 1_000_000_000 - tv_nsec,
        });
    }
    Some(Timespec { tv_sec, tv_nsec })
}

/// The unpacker's state across entries.
pub(super) struct Unpacker<'o> {
    root: Root,
    opts: &'o UnpackOptions,
    pub(super) stats: UnpackStats,
    /// Directories whose mtime is set after everything else (creating entries inside changes it).
    dir_times: Vec<(Vec<OsString>, Timespec)>,
    /// Reused for file contents (bigger than io::copy's 8 KiB: fewer syscalls on large layers).
    buf: Vec<u8>,
}

impl<'o> Unpacker<'o> {
    pub(super) fn new(root: Root, opts: &'o UnpackOptions) -> Self {
        Self {
            root,
            opts,
            stats: UnpackStats::default(),
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUF],
        }
    }

    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        self.stats.entries += 1;
        let bad = |reason: &str| LayerError::BadEntry {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let io = |op: &'static str| {
            let path = path.clone();
            move |source: io::Error| LayerError::Io { path, op, source }
        };
        let comps = clean(&entry.path_bytes()).map_err(|reason| LayerError::Escape {
            path: path.clone(),
            reason,
        })?;
        let meta = self.meta(entry, &path)?;

        let Some((name, parents)) = comps.split_last() else {
            // "./" describes the layer root itself: only its metadata applies.
            if !kind.is_dir() {
                return Err(bad("only a directory may describe the layer root"));
            }
            let fd = self.root.dir(&[]).map_err(io("opening the layer root"))?;
            self.set_meta_fd(fd.as_fd(), &meta)
                .map_err(io("setting metadata"))?;
            self.dir_times.push((comps, meta.mtime));
            return Ok(());
        };
        if comps[0].as_bytes().starts_with(AUFS_META_PREFIX) && comps.len() > 1 {
            // Contents of an AUFS metadata directory at the root (`.wh..wh.plnk/...`).
            tracing::debug!(entry = path, "aufs metadata entry skipped");
            return Ok(());
        }
        if parents
            .iter()
            .any(|p| p.as_bytes().starts_with(WHITEOUT_PREFIX))
        {
            return Err(bad("a whiteout name is used as a directory"));
        }
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parents, name_bytes, &path);
        }
        let dir = self
            .root
            .dir_all(parents)
            .map_err(io("opening the parent directory"))?;

        // What is there already: tar semantics say the new entry replaces it, except a directory over a directory.
        let existing = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(io("inspecting the existing entry")(e.into())),
        };
        let keep_dir = kind.is_dir() && existing == Some(FileType::Directory);
        if existing.is_some() && !keep_dir {
            remove_all_at(dir.as_fd(), name).map_err(io("replacing the existing entry"))?;
        }

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o600))
                    .map_err(|e| io("creating the file")(e.into()))?;
                let mut file = File::from(fd);
                self.stats.bytes += copy(entry, &mut file, &mut self.buf, &path)?;
                self.set_meta_fd(file.as_fd(), &meta)
                    .map_err(io("setting metadata"))?;
            }
            EntryType::Directory => {
                if !keep_dir {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| io("creating the directory")(e.into()))?;
                }
                let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&dir, name, flags, Mode::empty())
                    .map_err(|e| io("opening the directory")(e.into()))?;
                self.set_meta_fd(fd.as_fd(), &meta)
                    .map_err(io("setting metadata"))?;
                self.dir_times.push((comps.clone(), meta.mtime));
            }
            EntryType::Symlink => {
                // The target is stored as written: it is only ever followed inside a root (ours or the container's).
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symlink without a target"))?;
                if target.is_empty() {
                    return Err(bad("symlink without a target"));
                }
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name)
                    .map_err(|e| io("creating the symlink")(e.into()))?;
                // No mode: symlinks have none.
                self.chown_at(&dir, name, &meta)
                    .map_err(io("changing the owner"))?;
                self.xattrs_at(&dir, name, &meta)
                    .map_err(io("setting xattrs"))?;
                self.times_at(&dir, name, meta.mtime)
                    .map_err(io("setting the mtime"))?;
            }
            EntryType::Link => self.hardlink(entry, &dir, name, &path)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, makedev(0, 0)),
                    _ => {
                        let major = entry.header().device_major().ok().flatten();
                        let minor = entry.header().device_minor().ok().flatten();
                        let (Some(major), Some(minor)) = (major, minor) else {
                            return Err(bad("device without valid major/minor numbers"));
                        };
                        let ft = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, makedev(major, minor))
                    }
                };
                rustix::fs::mknodat(&dir, name, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| io("creating the special file")(e.into()))?;
                self.set_meta_at(&dir, name, &meta)
                    .map_err(io("setting metadata"))?;
            }
            _ => return Err(bad(&format!("unsupported entry type {:?}", kind))),
        }
        Ok(())
    }

    /// Reads mode, owner, mtime and the allowed xattrs of an entry.
    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, path: &str) -> Result<Meta, LayerError> {
        let bad = |reason: String| LayerError::BadEntry {
            path: path.to_owned(),
            reason,
        };
        let h = entry.header();
        let mode = h.mode().map_err(|e| bad(format!("bad mode field: {e}")))? & 0o7777;
        // PAX uid/gid records were already folded into the header by the tar crate.
        let id = |v: io::Result<u64>, what: &str| -> Result<u32, LayerError> {
            let v = v.map_err(|e| bad(format!("bad {what} field: {e}")))?;
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| bad(format!("{what} {v} out of range")))
        };
        let uid = id(h.uid(), "uid")?;
        let gid = id(h.gid(), "gid")?;
        let secs = h
            .mtime()
            .map_err(|e| bad(format!("bad mtime field: {e}")))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| bad(format!("bad pax header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| bad(format!("bad pax record: {e}")))?;
                let Ok(key) = ext.key() else { continue };
                if key == "mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    if xattr_allowed(name) {
                        xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    } else {
                        tracing::debug!(
                            entry = path,
                            xattr = name,
                            "layer xattr not allowed, skipped"
                        );
                    }
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Owner, then mode (a chown clears setuid/setgid), then xattrs (a chown clears file capabilities), then times.
    fn set_meta_fd(&self, fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
        if self.opts.same_owner {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
        if self.opts.xattrs {
            for (name, value) in &meta.xattrs {
                rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())?;
            }
        }
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rustix::fs::futimens(fd, &times)?;
        Ok(())
    }

    /// The same for a special file, which must not be opened: by name in `dir`, never following it.
    fn set_meta_at(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        self.chown_at(dir, name, meta)?;
        // Linux chmod cannot refuse to follow; `name` was just created by mknodat, so it is no symlink.
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
        self.xattrs_at(dir, name, meta)?;
        self.times_at(dir, name, meta.mtime)
    }

    /// xattrs on an entry that is not opened (symlink, device, fifo), by name in `dir`, not following it.
    ///
    /// The directory is reached through its /proc magic link (exactly the one we hold): fsetxattr needs a real fd,
    /// and opening a device node may have side effects. The kernel refuses user.* on anything but regular files
    /// and directories, so those are skipped here.
    fn xattrs_at(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        if !self.opts.xattrs {
            return Ok(());
        }
        let mut p = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
        p.push(name);
        for (xname, value) in &meta.xattrs {
            if xname.starts_with("user.") {
                tracing::debug!(
                    xattr = xname.as_str(),
                    "user xattr on a special file or symlink skipped"
                );
                continue;
            }
            rustix::fs::lsetxattr(p.as_os_str(), xname.as_str(), value, XattrFlags::empty())?;
        }
        Ok(())
    }

    fn chown_at(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        if self.opts.same_owner {
            let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
            rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    fn times_at(&self, dir: &OwnedFd, name: &OsStr, mtime: Timespec) -> io::Result<()> {
        let times = Timestamps {
            last_access: mtime,
            last_modification: mtime,
        };
        Ok(rustix::fs::utimensat(
            dir,
            name,
            &times,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// A hardlink to an entry already in the layer: the target is resolved inside the root like any path, and its
    /// last component is not followed (a link to a symlink links the symlink, as tar does).
    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &OsStr,
        path: &str,
    ) -> Result<(), LayerError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| LayerError::BadEntry {
                path: path.to_owned(),
                reason: "hardlink without a target".to_owned(),
            })?;
        let comps = clean(&target).map_err(|_| LayerError::Escape {
            path: path.to_owned(),
            reason: "the hardlink target climbs above the layer root",
        })?;
        let Some((tname, tparents)) = comps.split_last() else {
            return Err(LayerError::BadEntry {
                path: path.to_owned(),
                reason: "hardlink to the layer root".to_owned(),
            });
        };
        let io = |op: &'static str| {
            move |source: io::Error| LayerError::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        let tdir = self
            .root
            .dir(tparents)
            .map_err(io("resolving the hardlink target"))?;
        rustix::fs::linkat(&tdir, tname, dir, name, AtFlags::empty())
            .map_err(|e| io("creating the hardlink")(e.into()))?;
        Ok(())
    }

    /// `.wh.<name>` becomes an overlayfs whiteout (char device 0:0) `<name>`; `.wh..wh..opq` marks the directory
    /// opaque.
    fn whiteout(
        &mut self,
        parents: &[OsString],
        name: &[u8],
        path: &str,
    ) -> Result<(), LayerError> {
        let io = |op: &'static str| {
            move |source: io::Error| LayerError::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        if name == OPAQUE_MARKER {
            let dir = self
                .root
                .dir_all(parents)
                .map_err(io("opening the opaque directory"))?;
            rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| io("marking the directory opaque")(e.into()))?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if name.starts_with(AUFS_META_PREFIX) {
            tracing::debug!(entry = path, "aufs metadata entry skipped");
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(LayerError::Escape {
                path: path.to_owned(),
                reason: "the whiteout names no entry of its directory",
            });
        }
        let target = OsStr::from_bytes(target);
        let dir = self
            .root
            .dir_all(parents)
            .map_err(io("opening the parent directory"))?;
        match remove_all_at(dir.as_fd(), target) {
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            other => other.map_err(io("replacing the existing entry"))?,
        }
        rustix::fs::mknodat(
            &dir,
            target,
            FileType::CharacterDevice,
            Mode::empty(),
            makedev(0, 0),
        )
        .map_err(|e| io("creating the whiteout")(e.into()))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// Sets the recorded directory mtimes, now that nothing more is created inside them.
    pub(super) fn finish(self) -> Result<UnpackStats, LayerError> {
        for (comps, mtime) in &self.dir_times {
            let shown = || {
                comps
                    .iter()
                    .map(|c| c.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let io = |source: io::Error| LayerError::Io {
                path: shown(),
                op: "setting the directory mtime",
                source,
            };
            let times = Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            };
            let Some((name, parents)) = comps.split_last() else {
                rustix::fs::futimens(self.root.fd(), &times).map_err(|e| io(e.into()))?;
                continue;
            };
            // A later entry may have replaced the directory; then its mtime is that entry's business.
            let Ok(dir) = self.root.dir(parents) else {
                continue;
            };
            match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                _ => continue,
            }
            rustix::fs::utimensat(&dir, name.as_os_str(), &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io(e.into()))?;
        }
        Ok(self.stats)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn xattr_filter() {
        assert!(xattr_allowed("user.foo"));
        assert!(xattr_allowed("trusted.bar"));
        assert!(xattr_allowed("security.capability"));
        assert!(!xattr_allowed("trusted.overlay.opaque"));
        assert!(!xattr_allowed("trusted.overlay.redirect"));
        assert!(!xattr_allowed("user.overlay.opaque"));
        assert!(!xattr_allowed("security.selinux"));
        assert!(!xattr_allowed("system.posix_acl_access"));
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time("1700000000.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 250_000_000));
        let t = parse_pax_time("12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        let t = parse_pax_time("-1.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 500_000_000));
        assert!(parse_pax_time("x").is_none());
        assert!(parse_pax_time("1.2x").is_none());
    }
}
