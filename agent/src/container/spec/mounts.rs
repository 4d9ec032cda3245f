//! The container's mounts (the defaults every container gets, the pod's files, the CRI mounts) and its devices.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Mount};

use super::{Host, SpecInputs};
use crate::container::config::{ContainerConfig, Propagation};
use crate::error::{Error, Result};
use crate::pod::spec::NsMode;

/// The mounts, parents before children, and the rootfs propagation they need.
#[derive(Debug)]
pub(super) struct MountPlan {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: &'static str,
}

fn mount(destination: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_owned()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m
}

/// The mounts every container gets, in order, before the CRI's:
/// /proc, /dev, /dev/pts, /dev/mqueue, /sys, /sys/fs/cgroup (read-only unless privileged), /dev/shm (the pod's),
/// and /etc/hostname, /etc/resolv.conf, /etc/hosts bind-mounted from the pod's directory, read-only when the
/// rootfs is (containerd does the same: its sandbox files follow `readonly_rootfs`).
fn defaults(inputs: &SpecInputs) -> Vec<Mount> {
    let sc = &inputs.config.security;
    let sys_mode = if sc.privileged { "rw" } else { "ro" };
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup2",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ];
    let shm_bind = ["rbind", "nosuid", "nodev", "noexec", "rw"];
    out.push(match inputs.sandbox.shm {
        Some(shm) => mount("/dev/shm", "bind", shm, &shm_bind),
        // A pod in the host's IPC namespace shares the host's /dev/shm, as with containerd.
        None if inputs.sandbox.pod.namespaces.ipc == NsMode::Node => {
            mount("/dev/shm", "bind", "/dev/shm", &shm_bind)
        }
        None => mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    });
    let file_mode = if sc.readonly_rootfs { "ro" } else { "rw" };
    for (dest, file) in [
        ("/etc/hostname", "hostname"),
        ("/etc/resolv.conf", "resolv.conf"),
        ("/etc/hosts", "hosts"),
    ] {
        out.push(mount(
            dest,
            "bind",
            inputs.sandbox.pod_dir.join(file),
            &["rbind", "rprivate", file_mode],
        ));
    }
    out
}

/// All mounts. A CRI mount onto a default's destination replaces it (kubelet mounts /etc/hosts and
/// /dev/termination-log this way), a CRI mount of /dev replaces every default under /dev; then a stable sort by
/// depth puts every parent before its children (containerd's `orderedMounts`).
pub(super) fn mounts(inputs: &SpecInputs, host: &dyn Host) -> Result<MountPlan> {
    let config = inputs.config;
    let mut cri = Vec::with_capacity(config.mounts.len());
    let mut propagation = "rslave";
    let mut mountinfo: Option<String> = None;
    for (i, m) in config.mounts.iter().enumerate() {
        let field = |f: &str| format!("config.mounts[{i}].{f}");
        // The CRI: "If the hostpath is a symbolic link, runtimes should follow the symlink and mount the real
        // destination"; a missing one is an error.
        let source = std::fs::canonicalize(&m.host_path).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                format!("{:?} does not exist on the host", m.host_path)
            } else {
                format!("{:?}: {e}", m.host_path)
            };
            Error::invalid(field("host_path"), why)
        })?;
        let prop = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => {
                propagation = "rshared";
                "rshared"
            }
        };
        if m.propagation != Propagation::Private {
            if mountinfo.is_none() {
                mountinfo = host
                    .mountinfo()
                    .map_err(|e| tracing::warn!(error = %e, "cannot read mountinfo; mount propagation not checked"))
                    .ok();
            }
            if let Some(info) = &mountinfo {
                check_propagation(info, &source, m.propagation).map_err(|why| {
                    Error::FailedPrecondition(format!("{}: {why}", field("propagation")))
                })?;
            }
        }
        let access = match (m.readonly, m.recursive_read_only) {
            (true, true) => "rro",
            (true, false) => "ro",
            // Refused by the config's validation.
            (false, _) => "rw",
        };
        cri.push(mount(
            &m.container_path,
            "bind",
            source,
            &["rbind", prop, access],
        ));
    }
    // selinux_relabel is ignored: these hosts have no SELinux (containerd ignores ENOTSUP from the relabel too).
    let replaces_dev = config.mounts.iter().any(|m| m.container_path == "/dev");
    let mut all: Vec<Mount> = defaults(inputs)
        .into_iter()
        .filter(|d| {
            let dest = d.destination();
            let replaced = config
                .mounts
                .iter()
                .any(|m| Path::new(&m.container_path) == dest);
            let under_dev = replaces_dev && dest.starts_with("/dev");
            !replaced && !under_dev
        })
        .collect();
    all.extend(cri);
    all.sort_by_key(|m| m.destination().components().count());
    Ok(MountPlan {
        mounts: all,
        rootfs_propagation: propagation,
    })
}

/// Whether the host mount holding `source` lets the asked propagation work: bidirectional needs a shared mount,
/// host-to-container a shared or slave one (containerd's `ensureShared` / `ensureSharedOrSlave`).
pub(super) fn check_propagation(
    mountinfo: &str,
    source: &Path,
    wanted: Propagation,
) -> std::result::Result<(), String> {
    let Some((point, optional)) = mount_of(mountinfo, source) else {
        return Ok(());
    };
    let shared = optional.iter().any(|o| o.starts_with("shared:"));
    let slave = optional.iter().any(|o| o.starts_with("master:"));
    match wanted {
        Propagation::Bidirectional if !shared => Err(format!(
            "PROPAGATION_BIDIRECTIONAL needs {} to be on a shared mount, but {} is not shared (mount --make-rshared)",
            source.display(),
            point
        )),
        Propagation::HostToContainer if !shared && !slave => Err(format!(
            "PROPAGATION_HOST_TO_CONTAINER needs {} to be on a shared or slave mount, but {} is private",
            source.display(),
            point
        )),
        _ => Ok(()),
    }
}

/// The mount point (of /proc/self/mountinfo) that holds `path`, and its optional fields. The deepest mount point
/// that is a prefix of `path` wins; of several on the same point, the last (topmost).
fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, Vec<String>)> {
    let mut best: Option<(usize, String, Vec<String>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if sep < 6 {
            continue;
        }
        let point = unescape(fields[4]);
        if !path.starts_with(&point) {
            continue;
        }
        let depth = Path::new(&point).components().count();
        if best.as_ref().is_none_or(|(d, _, _)| depth >= *d) {
            let optional = fields[6..sep].iter().map(|s| (*s).to_owned()).collect();
            best = Some((depth, point, optional));
        }
    }
    best.map(|(_, p, o)| (p, o))
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |b: u8| u32::from(b - b'0');
            let v = digit(bytes[i + 1]) * 64 + digit(bytes[i + 2]) * 8 + digit(bytes[i + 3]);
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The CRI devices and the device cgroup rules. Privileged: nothing listed and every device allowed (the executor
/// makes the host's devices available, as the CRI asks for privileged containers). Otherwise: deny everything, then
/// allow each CRI device with its permissions (containerd's spec starts with the same deny-all rule; the default
/// /dev nodes — null, zero, full, random, urandom, tty — are the executor's to create and allow, as runc does).
pub(super) fn devices(
    config: &ContainerConfig,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(config.security.privileged);
    rule.set_typ(None);
    rule.set_access(Some("rwm".to_owned()));
    if config.security.privileged {
        return Ok((Vec::new(), vec![rule]));
    }
    let mut devices = Vec::with_capacity(config.devices.len());
    let mut rules = vec![rule];
    for (i, d) in config.devices.iter().enumerate() {
        let field = format!("config.devices[{i}].host_path");
        // Follows symlinks (/dev/disk/by-id/... are links), as containerd does.
        let meta = std::fs::metadata(&d.host_path).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                format!("{:?} does not exist on the host", d.host_path)
            } else {
                format!("{:?}: {e}", d.host_path)
            };
            Error::invalid(field.clone(), why)
        })?;
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(Error::invalid(
                field,
                format!("{:?} is not a character or block device", d.host_path),
            ));
        };
        let rdev = meta.rdev();
        let (major, minor) = (
            nix::sys::stat::major(rdev) as i64,
            nix::sys::stat::minor(rdev) as i64,
        );
        let mut dev = LinuxDevice::default();
        dev.set_path(PathBuf::from(&d.container_path));
        dev.set_typ(typ);
        dev.set_major(major);
        dev.set_minor(minor);
        dev.set_file_mode(Some(meta.mode() & 0o777));
        dev.set_uid(Some(meta.uid()));
        dev.set_gid(Some(meta.gid()));
        devices.push(dev);
        let mut allow = LinuxDeviceCgroup::default();
        allow.set_allow(true);
        allow.set_typ(Some(typ));
        allow.set_major(Some(major));
        allow.set_minor(Some(minor));
        allow.set_access(Some(d.permissions.clone()));
        rules.push(allow);
    }
    Ok((devices, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 22 8:2 / /srv rw,relatime - ext4 /dev/sda2 rw
31 30 8:3 / /srv/slave rw,relatime master:7 - ext4 /dev/sda3 rw
32 22 8:4 / /with\\040space rw,relatime - ext4 /dev/sda4 rw
";

    #[test]
    fn finds_the_mount_of_a_path() {
        assert_eq!(mount_of(MOUNTINFO, Path::new("/var/lib/x")).unwrap().0, "/");
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/srv/data")).unwrap().0,
            "/srv"
        );
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/srv/slave/x")).unwrap().0,
            "/srv/slave"
        );
        assert_eq!(mount_of(MOUNTINFO, Path::new("/srvx")).unwrap().0, "/");
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/with space/a")).unwrap().0,
            "/with space"
        );
    }

    #[test]
    fn propagation_needs_the_right_host_mount() {
        let ok = |p: &str, w| check_propagation(MOUNTINFO, Path::new(p), w);
        ok("/var/lib/x", Propagation::Bidirectional).unwrap();
        ok("/var/lib/x", Propagation::HostToContainer).unwrap();
        assert!(
            ok("/srv/data", Propagation::Bidirectional)
                .unwrap_err()
                .contains("not shared")
        );
        assert!(ok("/srv/data", Propagation::HostToContainer).is_err());
        ok("/srv/slave/x", Propagation::HostToContainer).unwrap();
        assert!(ok("/srv/slave/x", Propagation::Bidirectional).is_err());
        ok("/srv/data", Propagation::Private).unwrap();
    }
}
