//! Mounts the agent makes on the host (tmpfs for a pod's /dev/shm), mountinfo lookups, and
//! crash-safe file writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// Errors from mounting and file writes.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount tmpfs on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{path} is already a {fstype} mount point, not tmpfs")]
    AlreadyMounted { path: PathBuf, fstype: String },
    #[error("unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{path} has no parent directory or file name")]
    BadPath { path: PathBuf },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Parses mountinfo: `id parent maj:min root mount_point options [optional...] - fstype source super`.
pub(crate) fn parse_mountinfo(content: &str) -> Vec<MountInfo> {
    use std::os::unix::ffi::OsStringExt;
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            let options = fields.next()?;
            let mut rest = fields.skip_while(|f| *f != "-");
            rest.next()?;
            let fstype = rest.next()?;
            Some(MountInfo {
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(mount_point))),
                fstype: fstype.to_string(),
                options: options.to_string(),
            })
        })
        .collect()
}

/// The topmost mount at exactly `path` (canonicalised when it exists), if any.
pub(crate) fn find_mount(path: &Path) -> Option<MountInfo> {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let content = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&content)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// Whether `path` is a mount point, according to /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    find_mount(path).is_some()
}

/// Mounts a tmpfs of `size_bytes` with root mode `mode` on `target` (created if missing),
/// nosuid,nodev,noexec. An existing tmpfs mount there counts as done (crash recovery).
pub fn mount_tmpfs(target: &Path, size_bytes: u64, mode: u32) -> Result<(), MountError> {
    fs::create_dir_all(target).map_err(|source| MountError::CreateDir {
        path: target.to_path_buf(),
        source,
    })?;
    if let Some(m) = find_mount(target) {
        if m.fstype == "tmpfs" {
            tracing::debug!(path = %target.display(), "tmpfs already mounted");
            return Ok(());
        }
        return Err(MountError::AlreadyMounted {
            path: target.to_path_buf(),
            fstype: m.fstype,
        });
    }
    let data = format!("size={size_bytes},mode={:o}", mode & 0o7777);
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|source| MountError::Mount {
        path: target.to_path_buf(),
        source,
    })
}

/// Lazily unmounts everything stacked on `target`. Not mounted or missing is fine.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    detach_all(target).map_err(|source| MountError::Unmount {
        path: target.to_path_buf(),
        source,
    })
}

/// umount2(MNT_DETACH) until nothing is mounted at `target`; EINVAL (not a mount point)
/// and ENOENT end the loop successfully.
pub(crate) fn detach_all(target: &Path) -> Result<(), Errno> {
    // A bound keeps a pathological stack (or a kernel surprise) from looping forever.
    for _ in 0..64 {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            // Without CAP_SYS_ADMIN every umount2 fails; nothing mounted is still success.
            Err(Errno::EPERM) if !is_mountpoint(target) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EBUSY)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file:
/// write a temporary file in the same directory, fsync it, rename it over `path`, fsync the
/// directory.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), MountError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(MountError::BadPath {
            path: path.to_path_buf(),
        });
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let err = |source| MountError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the creation mode; set exactly what was asked.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
99 25 0:50 / /run/with\\040space\\134x rw,nosuid,nodev,noexec master:3 shared:7 - tmpfs tmpfs rw,size=1024k
100 25 0:51 / /run/no-optional rw - nsfs nsfs rw
";

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, Path::new("/proc"));
        assert_eq!(m[0].fstype, "proc");
        assert_eq!(m[2].mount_point, Path::new("/run/with space\\x"));
        assert_eq!(m[2].fstype, "tmpfs");
        assert_eq!(m[2].options, "rw,nosuid,nodev,noexec");
        assert_eq!(m[3].fstype, "nsfs");
    }

    #[test]
    fn parse_mountinfo_skips_garbage() {
        assert!(parse_mountinfo("short line\n\n1 2 3 4 /x rw no-separator\n").is_empty());
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\b"), b"a\\b");
        assert_eq!(unescape("\\011\\012"), b"\t\n");
        assert_eq!(unescape("end\\04"), b"end\\04");
    }

    #[test]
    fn root_and_proc_are_mountpoints_tmp_subdir_is_not() {
        assert!(is_mountpoint(Path::new("/")));
        assert!(is_mountpoint(Path::new("/proc")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(d.path()));
        assert!(!is_mountpoint(&d.path().join("missing")));
    }

    #[test]
    fn write_file_atomic_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        write_file_atomic(&p, b"first\n", 0o600).unwrap();
        write_file_atomic(&p, b"second\n", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from("hosts")],
            "no temporary file left behind"
        );
    }

    #[test]
    fn write_file_atomic_into_missing_dir_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let err = write_file_atomic(&d.path().join("nope/file"), b"x", 0o644).unwrap_err();
        assert!(matches!(err, MountError::Write { .. }), "{err:?}");
    }
}
