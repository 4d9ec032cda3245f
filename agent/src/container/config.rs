//! What a container is asked to be, in crius' own terms (no protobuf types here): the CRI ContainerConfig fields
//! crius uses, validated as far as that is possible without the image or the host. Persisted as JSON with the
//! container record, so every type here is serde.

use std::collections::BTreeMap;

use crius_sandbox::cgroup::Resources;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pod::spec::NsMode;

/// The smallest memory limit crius accepts (6 MiB, Docker's `linuxMinMemory`): below it the container's init is
/// OOM-killed before it can exec. runc and containerd refuse nothing here, CRI-O refuses below 12 MiB.
pub const MIN_MEMORY_LIMIT: i64 = 6 << 20;
/// cgroup v1 CPU shares bounds (kubelet's MinShares and MaxShares).
pub const MIN_CPU_SHARES: i64 = 2;
pub const MAX_CPU_SHARES: i64 = 262_144;
/// CFS period bounds in µs (the kernel refuses others in `cpu.max`).
pub const CPU_PERIOD_RANGE: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
/// The smallest positive CFS quota in µs the kernel accepts.
pub const MIN_CPU_QUOTA: i64 = 1_000;
/// The largest CFS quota in µs the kernel accepts (its `max_cfs_runtime`, about 203 days).
pub const MAX_CPU_QUOTA: i64 = (1 << 44) - 1;
/// The largest uid/gid: 4294967295 is `(uid_t)-1`, which the kernel treats as "no change".
const MAX_ID: i64 = u32::MAX as i64 - 1;

/// A validated CreateContainer config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    pub image: ImageRef,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Absolute, or empty for the image's.
    pub working_dir: String,
    pub envs: Vec<EnvVar>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's log directory; empty means no log file.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// `None` when the request had no `linux.resources`.
    pub resources: Option<ContainerResources>,
    pub security: SecurityContext,
}

/// The image as the request named it (CRI `ImageSpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageRef {
    pub image: String,
    pub user_specified_image: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `rprivate`.
    #[default]
    Private,
    /// `rslave`: mounts made on the host under the source show up in the container.
    HostToContainer,
    /// `rshared`: and the other way round.
    Bidirectional,
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    /// Absolute and lexically clean (no `.`, `..`, `//` or trailing `/`).
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// Kept for ContainerStatus; these hosts have no SELinux, so there is nothing to relabel.
    pub selinux_relabel: bool,
    pub propagation: Propagation,
    /// Only with `readonly` and private propagation (the CRI's rule).
    pub recursive_read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    /// A non-empty subset of "rwm".
    pub permissions: String,
}

/// CRI `LinuxContainerResources`, in CRI units; 0 means "not specified" as in the CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerResources {
    pub cpu_period: i64,
    /// -1 means unlimited.
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    /// -1 means unlimited.
    pub memory_limit_in_bytes: i64,
    /// Memory plus swap (the cgroup v1 meaning); -1 means unlimited.
    pub memory_swap_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    pub unified: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageLimit {
    /// "2MB", "1GB", ...
    pub page_size: String,
    pub limit: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupsPolicy {
    /// The CRI groups plus the image's /etc/group memberships of the user.
    #[default]
    Merge,
    /// Only the CRI groups (and the primary gid).
    Strict,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// No filter: the CRI default when nothing is asked.
    #[default]
    Unconfined,
    RuntimeDefault,
    /// An absolute path on the node to a JSON profile.
    Localhost(String),
}

/// Capability changes, names normalized to `CAP_*` (or `ALL`) by [`crate::container::caps::normalize`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CapabilityChanges {
    pub add: Vec<String>,
    pub drop: Vec<String>,
    pub add_ambient: Vec<String>,
}

/// The container's namespace modes. Network and IPC are always the pod's (validated to be POD or NODE); the PID
/// namespace may be the pod's, the container's own, the node's or another container's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNamespaces {
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    /// The container whose PID namespace a TARGET container joins.
    pub target_id: String,
}

impl Default for ContainerNamespaces {
    fn default() -> Self {
        ContainerNamespaces {
            network: NsMode::Pod,
            pid: NsMode::Pod,
            ipc: NsMode::Pod,
            target_id: String::new(),
        }
    }
}

/// CRI `LinuxContainerSecurityContext`, minus what crius refuses (SELinux, AppArmor profiles, user namespaces).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityContext {
    pub privileged: bool,
    pub capabilities: CapabilityChanges,
    pub namespaces: ContainerNamespaces,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_username: Option<String>,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<u32>,
    pub supplemental_groups_policy: GroupsPolicy,
    pub no_new_privs: bool,
    /// Empty means crius' defaults (protobuf cannot tell an empty list from none).
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: SeccompProfile,
}

const SC: &str = "config.linux.security_context";

impl ContainerConfig {
    /// The checks that need neither the image nor the host. Field names are the protobuf paths.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::invalid("config.metadata.name", "must not be empty"));
        }
        if self.name.contains(['/', '\0', '\n']) || self.name.len() > 253 {
            return Err(Error::invalid(
                "config.metadata.name",
                format!(
                    "{:?} contains '/', NUL or a newline, or is too long",
                    self.name
                ),
            ));
        }
        if self.image.image.is_empty() {
            return Err(Error::invalid("config.image.image", "must not be empty"));
        }
        for (field, list) in [
            ("config.command", &self.command),
            ("config.args", &self.args),
        ] {
            for (i, a) in list.iter().enumerate() {
                if a.contains('\0') {
                    return Err(Error::invalid(
                        format!("{field}[{i}]"),
                        "contains a NUL byte",
                    ));
                }
            }
        }
        if !self.working_dir.is_empty() {
            if !self.working_dir.starts_with('/') {
                return Err(Error::invalid(
                    "config.working_dir",
                    format!("{:?} is not an absolute path", self.working_dir),
                ));
            }
            if self.working_dir.contains('\0') {
                return Err(Error::invalid("config.working_dir", "contains a NUL byte"));
            }
        }
        for (i, e) in self.envs.iter().enumerate() {
            if e.key.is_empty() || e.key.contains(['=', '\0']) {
                return Err(Error::invalid(
                    format!("config.envs[{i}].key"),
                    format!("{:?} is empty or contains '=' or NUL", e.key),
                ));
            }
            if e.value.contains('\0') {
                return Err(Error::invalid(
                    format!("config.envs[{i}].value"),
                    "contains a NUL byte",
                ));
            }
        }
        self.validate_mounts()?;
        self.validate_devices()?;
        validate_log_path(&self.log_path)?;
        if let Some(r) = &self.resources {
            r.validate("config.linux.resources")?;
        }
        self.security.validate()
    }

    fn validate_mounts(&self) -> Result<()> {
        for (i, m) in self.mounts.iter().enumerate() {
            let field = |f: &str| format!("config.mounts[{i}].{f}");
            check_container_path(&m.container_path)
                .map_err(|r| Error::invalid(field("container_path"), r))?;
            if m.host_path.is_empty() {
                return Err(Error::invalid(field("host_path"), "must not be empty"));
            }
            if !m.host_path.starts_with('/') || m.host_path.contains('\0') {
                return Err(Error::invalid(
                    field("host_path"),
                    format!("{:?} is not an absolute path", m.host_path),
                ));
            }
            if m.recursive_read_only && !m.readonly {
                return Err(Error::invalid(
                    field("recursive_read_only"),
                    "a recursive read-only mount must also set readonly",
                ));
            }
            if m.recursive_read_only && m.propagation != Propagation::Private {
                return Err(Error::invalid(
                    field("recursive_read_only"),
                    "a recursive read-only mount needs PROPAGATION_PRIVATE",
                ));
            }
            // Two mounts onto one path are allowed, as with containerd: the later one is mounted over the earlier.
        }
        Ok(())
    }

    fn validate_devices(&self) -> Result<()> {
        for (i, d) in self.devices.iter().enumerate() {
            let field = |f: &str| format!("config.devices[{i}].{f}");
            check_container_path(&d.container_path)
                .map_err(|r| Error::invalid(field("container_path"), r))?;
            if !d.host_path.starts_with('/') || d.host_path.contains('\0') {
                return Err(Error::invalid(
                    field("host_path"),
                    format!("{:?} is not an absolute path", d.host_path),
                ));
            }
            let ok = !d.permissions.is_empty()
                && d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
            if !ok {
                return Err(Error::invalid(
                    field("permissions"),
                    format!("{:?} is not a combination of r, w and m", d.permissions),
                ));
            }
        }
        Ok(())
    }

    /// The container's cgroup limits (empty when the request had none).
    pub fn cgroup_resources(&self) -> Resources {
        self.resources
            .as_ref()
            .map(ContainerResources::to_cgroup)
            .unwrap_or_default()
    }
}

impl SecurityContext {
    fn validate(&self) -> Result<()> {
        if self.run_as_group.is_some()
            && self.run_as_user.is_none()
            && self.run_as_username.is_none()
        {
            // CRI: "run_as_group should only be specified when run_as_user or run_as_username is specified;
            // otherwise, the runtime MUST error."
            return Err(Error::invalid(
                format!("{SC}.run_as_group"),
                "is only allowed together with run_as_user or run_as_username",
            ));
        }
        if self.run_as_user.is_some() && self.run_as_username.is_some() {
            return Err(Error::invalid(
                format!("{SC}.run_as_username"),
                "only one of run_as_user and run_as_username may be set",
            ));
        }
        if let Some(name) = &self.run_as_username
            && (name.is_empty() || name.contains([':', '\0', '\n']))
        {
            return Err(Error::invalid(
                format!("{SC}.run_as_username"),
                format!("{name:?} is not a user name"),
            ));
        }
        for (field, list) in [
            ("masked_paths", &self.masked_paths),
            ("readonly_paths", &self.readonly_paths),
        ] {
            for (i, p) in list.iter().enumerate() {
                if !p.starts_with('/') || p.contains('\0') {
                    return Err(Error::invalid(
                        format!("{SC}.{field}[{i}]"),
                        format!("{p:?} is not an absolute path"),
                    ));
                }
            }
        }
        if let SeccompProfile::Localhost(path) = &self.seccomp
            && (!path.starts_with('/') || path.contains('\0'))
        {
            return Err(Error::invalid(
                format!("{SC}.seccomp.localhost_ref"),
                format!("{path:?} is not an absolute path"),
            ));
        }
        let ns = &self.namespaces;
        for (field, mode) in [("network", ns.network), ("ipc", ns.ipc)] {
            if !matches!(mode, NsMode::Pod | NsMode::Node) {
                return Err(Error::invalid(
                    format!("{SC}.namespace_options.{field}"),
                    "a container's network and IPC namespaces can only be POD or NODE (its pod's or the node's)",
                ));
            }
        }
        if ns.pid == NsMode::Target && ns.target_id.is_empty() {
            return Err(Error::invalid(
                format!("{SC}.namespace_options.target_id"),
                "must name a container when pid is TARGET",
            ));
        }
        Ok(())
    }
}

impl ContainerResources {
    /// Refuses negative or absurd values; `prefix` is the protobuf path of the message
    /// ("config.linux.resources" for CreateContainer, "linux" for UpdateContainerResources).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad =
            |field: &str, reason: String| Err(Error::invalid(format!("{prefix}.{field}"), reason));
        if self.cpu_period != 0 && !CPU_PERIOD_RANGE.contains(&self.cpu_period) {
            return bad(
                "cpu_period",
                format!(
                    "{} is outside {}..={} µs",
                    self.cpu_period,
                    CPU_PERIOD_RANGE.start(),
                    CPU_PERIOD_RANGE.end()
                ),
            );
        }
        match self.cpu_quota {
            0 | -1 => {}
            q if q < -1 => {
                return bad(
                    "cpu_quota",
                    format!("{q} is negative (only -1, unlimited, is allowed)"),
                );
            }
            q if q < MIN_CPU_QUOTA => {
                return bad(
                    "cpu_quota",
                    format!("{q} is below the kernel's minimum of {MIN_CPU_QUOTA} µs"),
                );
            }
            q if q > MAX_CPU_QUOTA => {
                return bad(
                    "cpu_quota",
                    format!("{q} µs is more than the kernel allows"),
                );
            }
            _ => {}
        }
        if self.cpu_shares != 0 && !(MIN_CPU_SHARES..=MAX_CPU_SHARES).contains(&self.cpu_shares) {
            return bad(
                "cpu_shares",
                format!(
                    "{} is outside {MIN_CPU_SHARES}..={MAX_CPU_SHARES}",
                    self.cpu_shares
                ),
            );
        }
        match self.memory_limit_in_bytes {
            0 | -1 => {}
            m if m < 0 => {
                return bad(
                    "memory_limit_in_bytes",
                    format!("{m} is negative (only -1, unlimited, is allowed)"),
                );
            }
            m if m < MIN_MEMORY_LIMIT => {
                return bad(
                    "memory_limit_in_bytes",
                    format!("{m} bytes is below the minimum of {MIN_MEMORY_LIMIT} (6 MiB)"),
                );
            }
            _ => {}
        }
        match self.memory_swap_limit_in_bytes {
            0 | -1 => {}
            s if s < 0 => {
                return bad(
                    "memory_swap_limit_in_bytes",
                    format!("{s} is negative (only -1, unlimited, is allowed)"),
                );
            }
            s => match self.memory_limit_in_bytes {
                m if m > 0 && s < m => {
                    return bad(
                        "memory_swap_limit_in_bytes",
                        format!(
                            "{s} is smaller than memory_limit_in_bytes {m} (it counts memory plus swap)"
                        ),
                    );
                }
                m if m > 0 => {}
                _ => {
                    return bad(
                        "memory_swap_limit_in_bytes",
                        "a memory plus swap limit needs a memory limit".to_owned(),
                    );
                }
            },
        }
        if !(-1000..=1000).contains(&self.oom_score_adj) {
            return bad(
                "oom_score_adj",
                format!("{} is outside -1000..=1000", self.oom_score_adj),
            );
        }
        for (field, list) in [
            ("cpuset_cpus", &self.cpuset_cpus),
            ("cpuset_mems", &self.cpuset_mems),
        ] {
            if !list.is_empty() {
                check_cpu_list(list).map_err(|r| Error::invalid(format!("{prefix}.{field}"), r))?;
            }
        }
        for (i, h) in self.hugepage_limits.iter().enumerate() {
            if !valid_page_size(&h.page_size) {
                return bad(
                    &format!("hugepage_limits[{i}].page_size"),
                    format!(
                        "{:?} is not a page size like \"2MB\" or \"1GB\"",
                        h.page_size
                    ),
                );
            }
        }
        for (key, value) in &self.unified {
            check_unified(key, value)
                .map_err(|r| Error::invalid(format!("{prefix}.unified[{key:?}]"), r))?;
        }
        Ok(())
    }

    /// The cgroup limits these resources ask for (CRI "0 = unset" becomes `None`).
    pub fn to_cgroup(&self) -> Resources {
        Resources {
            cpu_period: (self.cpu_period > 0).then_some(self.cpu_period as u64),
            cpu_quota: (self.cpu_quota != 0).then_some(self.cpu_quota),
            cpu_shares: (self.cpu_shares > 0).then_some(self.cpu_shares as u64),
            memory_limit: (self.memory_limit_in_bytes != 0).then_some(self.memory_limit_in_bytes),
            memory_swap_limit: (self.memory_swap_limit_in_bytes != 0)
                .then_some(self.memory_swap_limit_in_bytes),
            cpuset_cpus: (!self.cpuset_cpus.is_empty()).then(|| self.cpuset_cpus.clone()),
            cpuset_mems: (!self.cpuset_mems.is_empty()).then(|| self.cpuset_mems.clone()),
            pids_limit: None,
            hugepage_limits: self
                .hugepage_limits
                .iter()
                .map(|h| (h.page_size.clone(), h.limit))
                .collect(),
            unified: self.unified.clone(),
        }
    }
}

/// A container path must be absolute, lexically clean and not the root itself.
fn check_container_path(p: &str) -> std::result::Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if clean_path(p).as_deref() != Some(p) {
        return Err(format!(
            "{p:?} is not a clean path (no \".\", \"..\", \"//\" or trailing \"/\")"
        ));
    }
    if p == "/" {
        return Err("must not be the container's root".into());
    }
    Ok(())
}

/// An absolute container path as kubelet may send it ("/data/", "/a//b") made clean; anything else (relative,
/// with `..`) is left for the validation to refuse.
pub fn normalize_container_path(p: &str) -> String {
    if p.starts_with('/')
        && let Some(clean) = clean_path(p)
    {
        return clean;
    }
    p.to_owned()
}

/// `p` without `.` components, repeated or trailing slashes; `None` when it has a `..` component.
pub fn clean_path(p: &str) -> Option<String> {
    let mut out = String::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => return None,
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// CRI: log_path is relative to the pod's log directory. It must stay inside it: relative, no `.` or `..`
/// components, no empty components. Empty means "no log".
pub fn validate_log_path(p: &str) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    let reason = if p.starts_with('/') {
        Some("must be relative to the pod's log directory, not absolute".to_owned())
    } else if p.contains(['\0', '\n']) {
        Some("contains NUL or a newline".to_owned())
    } else if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        Some("must not have empty, \".\" or \"..\" components".to_owned())
    } else {
        None
    };
    match reason {
        Some(r) => Err(Error::invalid("config.log_path", format!("{p:?}: {r}"))),
        None => Ok(()),
    }
}

/// A cpuset list: "0-3,5,7-8", ascending ranges.
fn check_cpu_list(list: &str) -> std::result::Result<(), String> {
    let bad = || format!("{list:?} is not a list like \"0-3,5\"");
    for part in list.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse::<u32>().ok()
            }
        };
        match (num(lo), num(hi)) {
            (Some(a), Some(b)) if a <= b => {}
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// digits then KB, MB or GB (the kernel's hugetlb file names).
fn valid_page_size(size: &str) -> bool {
    ["KB", "MB", "GB"]
        .iter()
        .find_map(|unit| size.strip_suffix(unit))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A cgroup v2 interface file crius may write for the request: `<controller>.<file>`, one name, none of the files
/// crius manages itself.
fn check_unified(key: &str, value: &str) -> std::result::Result<(), String> {
    const RESERVED: &[&str] = &[
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.subtree_control",
        "cgroup.kill",
        "cgroup.type",
        "cgroup.freeze",
    ];
    let shaped = !key.contains(['/', '\0', '\n'])
        && !key.contains("..")
        && key
            .split_once('.')
            .is_some_and(|(c, f)| !c.is_empty() && !f.is_empty());
    if !shaped {
        return Err("a key must be one interface file name like \"memory.high\"".into());
    }
    if RESERVED.contains(&key) {
        return Err("this file is managed by crius".into());
    }
    if value.contains('\0') {
        return Err("the value contains a NUL byte".into());
    }
    Ok(())
}

/// An id from the CRI (int64) as a uid/gid.
pub fn id_from(v: i64, field: impl Into<String>) -> Result<u32> {
    if (0..=MAX_ID).contains(&v) {
        Ok(v as u32)
    } else {
        Err(Error::invalid(
            field,
            format!("{v} is not a valid id (0..={MAX_ID})"),
        ))
    }
}

#[cfg(test)]
mod tests;
