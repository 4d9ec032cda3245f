//! The container's mounts: OCI mount options to mount(2) flags, and mount targets resolved inside the rootfs so a
//! symlink in the image can never redirect a mount onto the host (runc CVE-2021-30465).
//!
//! Every target is opened with `openat2(RESOLVE_IN_ROOT)` relative to the rootfs (creating what is missing, as
//! runc does), and the mount goes onto `/proc/self/fd/<fd>`: the kernel mounts on the very directory or file we
//! opened, whatever a concurrent rename does to the path.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use oci_spec::runtime::Mount;
use rustix::fs::{Mode, OFlags};

use super::InitError;
use crate::layer::resolve::{Root, clean};

/// What an OCI mount's `options` mean to mount(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself.
    pub flags: MsFlags,
    /// Flags cleared by an option (`rw`, `suid`, ...), so that a bind remount does not carry them.
    pub cleared: MsFlags,
    /// Propagation to set afterwards (`rprivate`, `rslave`, `rshared`, ...).
    pub propagation: MsFlags,
    /// Filesystem-specific options (`mode=755`, `size=65536k`, ...), comma-joined.
    pub data: String,
    pub bind: bool,
    pub recursive_readonly: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
            bind: false,
            recursive_readonly: false,
        }
    }
}

/// Parses OCI mount options the way runc does.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear, prop): (MsFlags, MsFlags, MsFlags) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    MsFlags::empty(),
                    MsFlags::empty(),
                )
            }
            "rro" => {
                o.recursive_readonly = true;
                (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty())
            }
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        o.flags = (o.flags | set) - clear;
        o.cleared = (o.cleared | clear) - set;
        o.propagation |= prop;
    }
    o.data = data.join(",");
    o
}

/// The rootfs, opened once; every mount target is resolved against it.
pub struct Rootfs {
    root: Root,
    path: PathBuf,
}

impl Rootfs {
    pub fn open(path: &Path) -> Result<Rootfs, InitError> {
        let root = Root::open(path).map_err(|e| InitError::io("open rootfs", path, e))?;
        Ok(Rootfs {
            root,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating it when missing) `dest` inside the rootfs: a directory, or an empty file when `file`.
    pub fn target(&self, dest: &Path, file: bool) -> Result<OwnedFd, InitError> {
        let err = |e: std::io::Error| InitError::io("resolve mount target", dest, e);
        let comps: Vec<OsString> = clean(dest.as_os_str().as_bytes()).map_err(|why| {
            InitError::BadSpec(format!("mount destination {}: {why}", dest.display()))
        })?;
        if !file {
            return self.root.dir_all(&comps).map_err(err);
        }
        let Some((name, parent)) = comps.split_last() else {
            return Err(InitError::BadSpec(format!(
                "a file cannot be mounted on the root ({})",
                dest.display()
            )));
        };
        let dir = self.root.dir_all(parent).map_err(err)?;
        // NOFOLLOW: an existing symlink at the last component is refused, not followed out of the rootfs.
        let flags = OFlags::CREATE | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => Ok(fd),
            // An existing directory where a file is bound: mount on it as a directory (the kernel refuses
            // file-on-dir with a clear ENOTDIR later if the source is a file).
            Err(rustix::io::Errno::ISDIR) => self.root.dir(&comps).map_err(err),
            Err(e) => Err(err(e.into())),
        }
    }
}

/// `/proc/self/fd/<n>`: the path mount(2) follows to the object the descriptor holds.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Applies one OCI mount inside the rootfs.
pub fn apply(rootfs: &Rootfs, m: &Mount) -> Result<(), InitError> {
    let options = m.options().clone().unwrap_or_default();
    let o = parse_options(&options);
    let kind = m.typ().clone().unwrap_or_default();
    let source = m.source().clone().unwrap_or_default();
    let dest = m.destination();
    let what = |op: &'static str| {
        move |e: nix::errno::Errno| InitError::Mount {
            op,
            target: dest.to_path_buf(),
            source: e,
        }
    };
    if o.bind || kind == "bind" {
        let meta = std::fs::metadata(&source)
            .map_err(|e| InitError::io("stat bind mount source", &source, e))?;
        let target = rootfs.target(dest, !meta.is_dir())?;
        let tpath = fd_path(&target);
        let rec = o.flags & MsFlags::MS_REC;
        mount(
            Some(&source),
            &tpath,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(what("bind mount"))?;
        // Our descriptor still names the directory under the new mount: open the mount itself.
        drop(target);
        let target = rootfs.target(dest, !meta.is_dir())?;
        let tpath = fd_path(&target);
        // A bind mount takes its flags only from a remount of the new mount point.
        let extra = o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            remount_bind(&tpath, extra, dest)?;
        }
        if !o.propagation.is_empty() {
            mount(
                None::<&str>,
                &tpath,
                None::<&str>,
                o.propagation,
                None::<&str>,
            )
            .map_err(what("set propagation"))?;
        }
        return Ok(());
    }
    let target = rootfs.target(dest, false)?;
    let tpath = fd_path(&target);
    let data = (!o.data.is_empty()).then_some(o.data.as_str());
    let src = if source.as_os_str().is_empty() {
        PathBuf::from(&kind)
    } else {
        source.clone()
    };
    match mount(Some(&src), &tpath, Some(kind.as_str()), o.flags, data) {
        Ok(()) => {}
        // sysfs in a network namespace we do not own, mqueue in an IPC namespace we joined, ...: fall back to a
        // read-only bind of the host's as runc does for sysfs.
        Err(nix::errno::Errno::EPERM | nix::errno::Errno::EBUSY) if kind == "sysfs" => {
            mount(
                Some("/sys"),
                &tpath,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(what("bind /sys"))?;
            remount_bind(&tpath, o.flags | MsFlags::MS_RDONLY, dest)?;
        }
        Err(e) => return Err(what("mount")(e)),
    }
    drop(target);
    if !o.propagation.is_empty() {
        let target = rootfs.target(dest, false)?;
        let tpath = fd_path(&target);
        mount(
            None::<&str>,
            &tpath,
            None::<&str>,
            o.propagation,
            None::<&str>,
        )
        .map_err(what("set propagation"))?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags` (MS_RDONLY, MS_NOSUID, ...), keeping the locked flags the kernel insists on.
pub fn remount_bind(target: &Path, flags: MsFlags, dest: &Path) -> Result<(), InitError> {
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match mount(
        None::<&str>,
        target,
        None::<&str>,
        base | flags,
        None::<&str>,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            // The source mount has locked flags (nodev, nosuid, noexec of the original): keep them.
            let st = nix::sys::statvfs::statvfs(target).map_err(|e| InitError::Mount {
                op: "statvfs",
                target: dest.to_path_buf(),
                source: e,
            })?;
            let locked = locked_flags(st.flags());
            mount(
                None::<&str>,
                target,
                None::<&str>,
                base | flags | locked,
                None::<&str>,
            )
            .map_err(|e| InitError::Mount {
                op: "remount",
                target: dest.to_path_buf(),
                source: e,
            })
        }
        Err(e) => Err(InitError::Mount {
            op: "remount",
            target: dest.to_path_buf(),
            source: e,
        }),
    }
}

fn locked_flags(f: nix::sys::statvfs::FsFlags) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let mut out = MsFlags::empty();
    for (from, to) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(from) {
            out |= to;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> MountOptions {
        parse_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        let o = opts(&["rbind", "ro", "rslave"]);
        assert!(o.bind);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
    }

    #[test]
    fn later_options_win() {
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
        assert_eq!(opts(&["rw", "ro"]).flags, MsFlags::MS_RDONLY);
        assert!(opts(&["rro"]).recursive_readonly);
    }
}
