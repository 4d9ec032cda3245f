//! /dev inside the container (the default nodes, the OCI `linux.devices`, the usual symlinks) and the masked and
//! read-only paths. Runs in the container's mount namespace, before pivot_root, with the rootfs at `rootfs`.

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::InitError;
use super::mounts::{Rootfs, fd_path, remount_bind};

/// The nodes every container gets (runc's and containerd's list), as (path, major, minor, mode).
const DEFAULT_NODES: &[(&str, u64, u64, u32)] = &[
    ("/dev/null", 1, 3, 0o666),
    ("/dev/zero", 1, 5, 0o666),
    ("/dev/full", 1, 7, 0o666),
    ("/dev/random", 1, 8, 0o666),
    ("/dev/urandom", 1, 9, 0o666),
    ("/dev/tty", 5, 0, 0o666),
];

const SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("/proc/kcore", "/dev/core"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// Creates the default nodes, the spec's devices and the symlinks under the rootfs' /dev (a tmpfs by then).
pub fn populate(rootfs: &Rootfs, devices: &[LinuxDevice]) -> Result<(), InitError> {
    for (path, major, minor, mode) in DEFAULT_NODES {
        make_node(
            rootfs,
            Path::new(path),
            SFlag::S_IFCHR,
            *major,
            *minor,
            *mode,
        )?;
    }
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(InitError::BadSpec(format!(
                    "device {} has type 'a', which is only meaningful in cgroup rules",
                    d.path().display()
                )));
            }
        };
        let mode = d.file_mode().unwrap_or(0o666);
        make_node(
            rootfs,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            mode,
        )?;
        if let (Some(uid), Some(gid)) = (d.uid(), d.gid()) {
            let fd = rootfs.target(d.path(), true)?;
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| InitError::io("chown device", d.path(), e.into()))?;
        }
    }
    for (target, link) in SYMLINKS {
        let at = rootfs.path().join(link.trim_start_matches('/'));
        // The rootfs' /dev is our fresh tmpfs: nothing in it can be a symlink planted by the image.
        match std::os::unix::fs::symlink(target, &at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(InitError::io("symlink", &at, e)),
        }
    }
    Ok(())
}

fn make_node(
    rootfs: &Rootfs,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
) -> Result<(), InitError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    if !rel.starts_with("dev") {
        return Err(InitError::BadSpec(format!(
            "device {} is not under /dev",
            path.display()
        )));
    }
    let parent = rel.parent().unwrap_or(Path::new("dev"));
    let dir = rootfs.target(&Path::new("/").join(parent), false)?;
    let name = rel
        .file_name()
        .ok_or_else(|| InitError::BadSpec(format!("device path {}", path.display())))?;
    let at = fd_path(&dir).join(name);
    match mknod(
        &at,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => {
            return Err(InitError::Mount {
                op: "mknod",
                target: path.to_path_buf(),
                source: e,
            });
        }
    }
    // mknod is subject to the umask; the spec's mode is what the container must see.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &at,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| InitError::Mount {
        op: "chmod",
        target: path.to_path_buf(),
        source: e,
    })
}

/// Hides `paths` (OCI maskedPaths): /dev/null over a file, an empty read-only tmpfs over a directory. A path
/// that does not exist needs no mask.
pub fn mask(rootfs: &Rootfs, paths: &[String]) -> Result<(), InitError> {
    for p in paths {
        let host = rootfs.path().join(p.trim_start_matches('/'));
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let target = rootfs.target(Path::new(p), !meta.is_dir())?;
        let tpath = fd_path(&target);
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &tpath,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            let null = rootfs.path().join("dev/null");
            mount(
                Some(&null),
                &tpath,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(|e| InitError::Mount {
            op: "mask",
            target: p.into(),
            source: e,
        })?;
    }
    Ok(())
}

/// Makes `paths` (OCI readonlyPaths) read-only bind mounts of themselves.
pub fn readonly(rootfs: &Rootfs, paths: &[String]) -> Result<(), InitError> {
    for p in paths {
        let host = rootfs.path().join(p.trim_start_matches('/'));
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let target = rootfs.target(Path::new(p), !meta.is_dir())?;
        let tpath = fd_path(&target);
        mount(
            Some(&tpath),
            &tpath,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| InitError::Mount {
            op: "bind read-only path",
            target: p.into(),
            source: e,
        })?;
        // Remount the new mount, not the directory our first descriptor names under it.
        drop(target);
        let target = rootfs.target(Path::new(p), !meta.is_dir())?;
        let tpath = fd_path(&target);
        remount_bind(
            &tpath,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Path::new(p),
        )?;
    }
    Ok(())
}
