//! Linux capabilities: the names crius knows, containerd's default set, and the sets a container ends up with
//! from the CRI add/drop lists.

use std::collections::BTreeSet;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::config::CapabilityChanges;

/// Every capability this build knows, with its bit number (capabilities(7)); `/proc/<pid>/status` masks use these.
const KNOWN: &[(&str, u8, Capability)] = &[
    ("CAP_CHOWN", 0, Capability::Chown),
    ("CAP_DAC_OVERRIDE", 1, Capability::DacOverride),
    ("CAP_DAC_READ_SEARCH", 2, Capability::DacReadSearch),
    ("CAP_FOWNER", 3, Capability::Fowner),
    ("CAP_FSETID", 4, Capability::Fsetid),
    ("CAP_KILL", 5, Capability::Kill),
    ("CAP_SETGID", 6, Capability::Setgid),
    ("CAP_SETUID", 7, Capability::Setuid),
    ("CAP_SETPCAP", 8, Capability::Setpcap),
    ("CAP_LINUX_IMMUTABLE", 9, Capability::LinuxImmutable),
    ("CAP_NET_BIND_SERVICE", 10, Capability::NetBindService),
    ("CAP_NET_BROADCAST", 11, Capability::NetBroadcast),
    ("CAP_NET_ADMIN", 12, Capability::NetAdmin),
    ("CAP_NET_RAW", 13, Capability::NetRaw),
    ("CAP_IPC_LOCK", 14, Capability::IpcLock),
    ("CAP_IPC_OWNER", 15, Capability::IpcOwner),
    ("CAP_SYS_MODULE", 16, Capability::SysModule),
    ("CAP_SYS_RAWIO", 17, Capability::SysRawio),
    ("CAP_SYS_CHROOT", 18, Capability::SysChroot),
    ("CAP_SYS_PTRACE", 19, Capability::SysPtrace),
    ("CAP_SYS_PACCT", 20, Capability::SysPacct),
    ("CAP_SYS_ADMIN", 21, Capability::SysAdmin),
    ("CAP_SYS_BOOT", 22, Capability::SysBoot),
    ("CAP_SYS_NICE", 23, Capability::SysNice),
    ("CAP_SYS_RESOURCE", 24, Capability::SysResource),
    ("CAP_SYS_TIME", 25, Capability::SysTime),
    ("CAP_SYS_TTY_CONFIG", 26, Capability::SysTtyConfig),
    ("CAP_MKNOD", 27, Capability::Mknod),
    ("CAP_LEASE", 28, Capability::Lease),
    ("CAP_AUDIT_WRITE", 29, Capability::AuditWrite),
    ("CAP_AUDIT_CONTROL", 30, Capability::AuditControl),
    ("CAP_SETFCAP", 31, Capability::Setfcap),
    ("CAP_MAC_OVERRIDE", 32, Capability::MacOverride),
    ("CAP_MAC_ADMIN", 33, Capability::MacAdmin),
    ("CAP_SYSLOG", 34, Capability::Syslog),
    ("CAP_WAKE_ALARM", 35, Capability::WakeAlarm),
    ("CAP_BLOCK_SUSPEND", 36, Capability::BlockSuspend),
    ("CAP_AUDIT_READ", 37, Capability::AuditRead),
    ("CAP_PERFMON", 38, Capability::Perfmon),
    ("CAP_BPF", 39, Capability::Bpf),
    ("CAP_CHECKPOINT_RESTORE", 40, Capability::CheckpointRestore),
];

/// containerd's default set for non-privileged containers (the same as Docker's).
pub const DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// "ALL", as the CRI lists write it.
pub const ALL: &str = "ALL";

/// A CRI capability name (`NET_ADMIN`, `cap_net_admin`, `CAP_NET_ADMIN`) as `CAP_NET_ADMIN`, "ALL" as `ALL`;
/// `None` for a name this build does not know.
pub fn normalize(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == ALL {
        return Some(ALL);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    KNOWN
        .iter()
        .find(|(n, _, _)| n.strip_prefix("CAP_") == Some(bare))
        .map(|(n, _, _)| *n)
}

/// Every known capability name, in bit order.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().map(|(n, _, _)| *n)
}

/// The known capabilities present in a `/proc/<pid>/status` hex mask (`CapBnd:\t000001ffffffffff`).
pub fn from_mask(mask: u64) -> BTreeSet<&'static str> {
    KNOWN
        .iter()
        .filter(|(_, bit, _)| mask & (1u64 << bit) != 0)
        .map(|(n, _, _)| *n)
        .collect()
}

/// The agent's own bounding set, from /proc/self/status: what the container init (forked from the agent's
/// monitor) can still hand out. `None` when it cannot be read.
pub fn host_bounding() -> Option<BTreeSet<&'static str>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok().map(from_mask)
}

/// The capability sets of a container process, as `CAP_*` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Bounding, effective and permitted (always equal here).
    pub main: BTreeSet<&'static str>,
    pub ambient: BTreeSet<&'static str>,
}

impl CapSets {
    /// The sets for a container. `available` is what "ALL" means: the known capabilities the agent itself holds
    /// (containerd uses its own current set the same way).
    ///
    /// Privileged: every available capability; the CRI lists are ignored (the CRI: with privileged, capabilities
    /// "MAY have no effect"; containerd ignores them).
    ///
    /// Otherwise containerd's order (`WithCapabilities`): start from [`DEFAULT`]; "ALL" in add gives every
    /// capability, then "ALL" in drop removes every one; then the named adds (including the ambient ones), then
    /// the named drops, so a drop always wins over an add of the same name. The ambient set is the ambient adds
    /// that survived the drops (the CRI: "Dropping a capability will drop it from all sets").
    ///
    /// Names must be normalized already ([`normalize`]).
    pub fn compute(
        changes: &CapabilityChanges,
        privileged: bool,
        available: &BTreeSet<&'static str>,
    ) -> CapSets {
        if privileged {
            return CapSets {
                main: available.clone(),
                ambient: BTreeSet::new(),
            };
        }
        let known = |n: &String| normalize(n).filter(|&c| c != ALL);
        let mut main: BTreeSet<&'static str> = DEFAULT.iter().copied().collect();
        if changes.add.iter().any(|c| c == ALL) {
            main = available.clone();
        }
        if changes.drop.iter().any(|c| c == ALL) {
            main.clear();
        }
        main.extend(changes.add.iter().filter_map(known));
        main.extend(changes.add_ambient.iter().filter_map(known));
        let dropped: BTreeSet<&'static str> = changes.drop.iter().filter_map(known).collect();
        main.retain(|c| !dropped.contains(c));
        let ambient = changes
            .add_ambient
            .iter()
            .filter_map(known)
            .filter(|c| !dropped.contains(c))
            .collect();
        CapSets { main, ambient }
    }

    /// The names in `main`, sorted, for the seccomp profile builders.
    pub fn effective_names(&self) -> Vec<String> {
        self.main.iter().map(|c| (*c).to_owned()).collect()
    }

    /// The OCI capabilities. Inheritable is always empty (runc CVE-2022-29162: a non-empty inheritable set lets
    /// file capabilities of an exec'd program raise privileges); the ambient list is kept as asked, though a
    /// kernel raises an ambient capability only when it is also inheritable.
    pub fn to_oci(&self) -> LinuxCapabilities {
        let set = |names: &BTreeSet<&'static str>| -> Capabilities {
            names.iter().filter_map(|n| oci(n)).collect()
        };
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some(set(&self.main)));
        caps.set_effective(Some(set(&self.main)));
        caps.set_permitted(Some(set(&self.main)));
        caps.set_inheritable(Some(Capabilities::new()));
        caps.set_ambient(Some(set(&self.ambient)));
        caps
    }
}

fn oci(name: &str) -> Option<Capability> {
    KNOWN
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn changes(add: &[&str], drop: &[&str], ambient: &[&str]) -> CapabilityChanges {
        CapabilityChanges {
            add: names(add),
            drop: names(drop),
            add_ambient: names(ambient),
        }
    }

    fn everything() -> BTreeSet<&'static str> {
        all_names().collect()
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("NET_ADMIN"), Some("CAP_NET_ADMIN"));
        assert_eq!(normalize("cap_net_admin"), Some("CAP_NET_ADMIN"));
        assert_eq!(normalize("CAP_SYS_ADMIN"), Some("CAP_SYS_ADMIN"));
        assert_eq!(normalize("all"), Some(ALL));
        assert_eq!(normalize("NET_ADMINX"), None);
        assert_eq!(normalize("CAP_"), None);
        assert_eq!(all_names().count(), 41);
        // Every table entry maps to the OCI type with the same serialized name.
        for (name, _, cap) in KNOWN {
            assert_eq!(serde_json::to_value(cap).unwrap(), serde_json::json!(name));
        }
    }

    #[test]
    fn masks() {
        let set = from_mask(0x01ff_ffff_ffff & !(1 << 24));
        assert_eq!(set.len(), 40);
        assert!(!set.contains("CAP_SYS_RESOURCE"));
        assert!(from_mask(1).contains("CAP_CHOWN"));
        assert!(host_bounding().is_some());
    }

    #[test]
    fn default_set() {
        let s = CapSets::compute(&CapabilityChanges::default(), false, &everything());
        assert_eq!(s.main, DEFAULT.iter().copied().collect());
        assert!(s.ambient.is_empty());
    }

    #[test]
    fn add_and_drop() {
        let s = CapSets::compute(
            &changes(&["CAP_NET_ADMIN", "SYS_TIME"], &["CAP_CHOWN", "MKNOD"], &[]),
            false,
            &everything(),
        );
        assert!(s.main.contains("CAP_NET_ADMIN") && s.main.contains("CAP_SYS_TIME"));
        assert!(!s.main.contains("CAP_CHOWN") && !s.main.contains("CAP_MKNOD"));
        assert!(s.main.contains("CAP_KILL"));
        // A drop wins over an add of the same capability.
        let s = CapSets::compute(
            &changes(&["NET_ADMIN"], &["NET_ADMIN"], &[]),
            false,
            &everything(),
        );
        assert!(!s.main.contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn all_in_add_and_drop() {
        let available: BTreeSet<_> = everything()
            .into_iter()
            .filter(|c| *c != "CAP_SYS_RESOURCE")
            .collect();
        let s = CapSets::compute(&changes(&["ALL"], &["CHOWN"], &[]), false, &available);
        assert_eq!(s.main.len(), 39);
        assert!(!s.main.contains("CAP_CHOWN") && !s.main.contains("CAP_SYS_RESOURCE"));
        // Drop ALL then the named adds: only those.
        let s = CapSets::compute(
            &changes(&["NET_BIND_SERVICE"], &["ALL"], &[]),
            false,
            &available,
        );
        assert_eq!(s.main, ["CAP_NET_BIND_SERVICE"].into_iter().collect());
        // Add ALL and drop ALL: drop ALL comes second, nothing is left.
        let s = CapSets::compute(&changes(&["ALL"], &["ALL"], &[]), false, &available);
        assert!(s.main.is_empty());
    }

    #[test]
    fn ambient() {
        let s = CapSets::compute(
            &changes(&[], &["ALL"], &["NET_BIND_SERVICE", "NET_RAW"]),
            false,
            &everything(),
        );
        assert_eq!(
            s.ambient,
            ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]
                .into_iter()
                .collect()
        );
        assert_eq!(s.main, s.ambient);
        let s = CapSets::compute(
            &changes(&[], &["NET_RAW"], &["NET_RAW"]),
            false,
            &everything(),
        );
        assert!(s.ambient.is_empty() && !s.main.contains("CAP_NET_RAW"));
        let oci = s.to_oci();
        assert!(oci.inheritable().as_ref().unwrap().is_empty());
    }

    #[test]
    fn privileged_gets_everything_available() {
        let available: BTreeSet<_> = ["CAP_CHOWN", "CAP_SYS_ADMIN"].into_iter().collect();
        let s = CapSets::compute(&changes(&[], &["ALL"], &["NET_RAW"]), true, &available);
        assert_eq!(s.main, available);
        assert!(s.ambient.is_empty());
        let oci = s.to_oci();
        assert_eq!(oci.bounding().as_ref().unwrap().len(), 2);
        assert!(
            oci.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        assert_eq!(oci.effective(), oci.permitted());
        assert!(oci.inheritable().as_ref().unwrap().is_empty());
    }
}
