//! Path handling that cannot leave the layer root.
//!
//! Two layers of defence. First, entry names are split lexically into plain components ([`clean`]): a leading `/`
//! is stripped, `.` dropped, and `..` that would climb above the root is refused. Second, and this is the one that
//! matters, every directory that an entry is created in is opened by `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` relative to a descriptor of the root ([`Root::dir`]), so a symlink met on the way
//! (absolute or full of `..`) is resolved as if the root were `/`. The last component is then created, inspected or
//! removed with `*at` calls relative to that descriptor that never follow it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Mode of directories the layer did not list but that its entries need (what tar and containerd use).
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Splits a tar entry name into the plain components of a path below the root.
///
/// Empty and `.` components are dropped, leading `/` are stripped (as containerd does for absolute names), `a/..`
/// cancels out. `Err` when a `..` would climb above the root. An empty result names the root itself.
pub(crate) fn clean(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    let mut out: Vec<OsString> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("a '..' component climbs above the layer root");
                }
            }
            name => out.push(OsStr::from_bytes(name).to_owned()),
        }
    }
    Ok(out)
}

/// Joins plain components with `/` (for `openat2`, which resolves them inside the root).
fn join(comps: &[OsString]) -> OsString {
    let mut out = OsString::new();
    for (i, comp) in comps.iter().enumerate() {
        if i > 0 {
            out.push("/");
        }
        out.push(comp);
    }
    out
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC
}

/// A descriptor of the layer root; every path the unpacker touches is resolved against it.
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `dest` (the caller's own path, trusted) as the root.
    pub(crate) fn open(dest: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(dest, dir_flags(), Mode::empty())?;
        Ok(Self { fd })
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True when the root has no entries.
    pub(super) fn is_empty(&self) -> io::Result<bool> {
        for entry in Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Opens the directory named by `comps`, every symlink on the way resolved inside the root.
    pub(crate) fn dir(&self, comps: &[OsString]) -> io::Result<OwnedFd> {
        if comps.is_empty() {
            return Ok(rustix::fs::openat(
                &self.fd,
                ".",
                dir_flags(),
                Mode::empty(),
            )?);
        }
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        Ok(rustix::fs::openat2(
            &self.fd,
            join(comps),
            dir_flags(),
            Mode::empty(),
            how,
        )?)
    }

    /// Like [`Root::dir`], creating missing directories (mode 0755) the way `mkdir -p` would, inside the root.
    ///
    /// A component that exists but cannot be opened as a directory (a file, or a symlink whose in-root target is
    /// missing or not a directory) is an error: the entry has nowhere safe to go.
    pub(crate) fn dir_all(&self, comps: &[OsString]) -> io::Result<OwnedFd> {
        match self.dir(comps) {
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            other => return other,
        }
        let mut cur = self.dir(&[])?;
        for i in 0..comps.len() {
            match self.dir(&comps[..=i]) {
                Ok(fd) => cur = fd,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    // `cur` is the in-root resolution of comps[..i]; the new directory goes right there.
                    rustix::fs::mkdirat(&cur, &comps[i], Mode::from_raw_mode(IMPLICIT_DIR_MODE))?;
                    let fd = rustix::fs::openat(
                        &cur,
                        &comps[i],
                        dir_flags() | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(IMPLICIT_DIR_MODE))?;
                    cur = fd;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(cur)
    }
}

/// Removes `name` in `dir`, recursively if it is a directory, never following a symlink.
pub(super) fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = rustix::fs::openat(dir, name, dir_flags() | OFlags::NOFOLLOW, Mode::empty())?;
    let mut names = Vec::new();
    for entry in Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    for n in names {
        remove_all_at(sub.as_fd(), &n)?;
    }
    drop(sub);
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(raw: &str) -> Result<Vec<String>, &'static str> {
        clean(raw.as_bytes()).map(|v| v.iter().map(|s| s.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn clean_strips_root_and_dots() {
        assert_eq!(c("/etc/evil").unwrap(), ["etc", "evil"]);
        assert_eq!(c("./a//b/./c/").unwrap(), ["a", "b", "c"]);
        assert_eq!(c("a/b/../c").unwrap(), ["a", "c"]);
        assert!(c("./").unwrap().is_empty());
        assert!(c("/").unwrap().is_empty());
    }

    #[test]
    fn clean_refuses_climbing_above_the_root() {
        assert!(c("../../evil").is_err());
        assert!(c("a/../../evil").is_err());
        assert!(c("/../evil").is_err());
        assert!(c("..").is_err());
    }

    #[test]
    fn join_uses_slashes() {
        let comps = clean(b"a/b/c").unwrap();
        assert_eq!(join(&comps), OsString::from("a/b/c"));
    }
}
