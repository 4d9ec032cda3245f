//! Which sysctls a pod may set, and where they live under `/proc/sys`.
//!
//! A pod may only set sysctls that the kernel isolates per namespace, because crius writes them from inside
//! the pod's namespaces and anything else would change the whole node. This is the rule runc and kubelet
//! apply:
//!
//! | sysctl | isolated by | refused when |
//! |---|---|---|
//! | `kernel.shm*`, `kernel.msg*`, `kernel.sem*` (the names in the kernel's `ipc/ipc_sysctl.c`) | IPC namespace | `host_ipc` |
//! | `fs.mqueue.*` (the names in `ipc/mq_sysctl.c`) | IPC namespace | `host_ipc` |
//! | `net.*` | network namespace | `host_network` |
//! | `kernel.hostname`, `kernel.domainname` | UTS namespace | `host_network` (a host-network pod shares the host's UTS namespace, as with containerd) |
//!
//! Some `net.*` entries are registered only in the initial network namespace: they are host-wide even though
//! they sit under `net.` (`net.core.rmem_max`, `net.ipv4.tcp_mem`, `net.netfilter.nf_conntrack_max`, ...).
//! [`HOST_ONLY_NET`] lists them. It was derived from the kernel itself: the writable files of `/proc/sys/net`
//! on the host minus those writable inside a fresh `unshare -n` (Linux 6.18), ignoring per-interface
//! directories. A name missing from that list on another kernel is still harmless: inside a pod's network
//! namespace such a file does not exist (or is read-only), so the write fails instead of reaching the host;
//! the list only turns that late failure into an early, clear one.
//!
//! Keys use `.` as separator (`net.ipv4.ip_forward`) or `/` (`net/ipv4/conf/eth0.100/rp_filter`), decided by
//! the first separator in the key, as sysctl(8) and kubelet do: in a dotted key a `/` stands for a literal
//! `.` inside a component (`net.ipv4.conf.eth0/100.rp_filter`), in a slashed key dots are literal.
//!
//! Values: crius writes a value with a single `write(2)` to the one `/proc/sys` file the key names, never
//! through sysctl(8) or a `key=value` file. Spaces and tabs are passed to the kernel, which parses them for
//! that one file (vectors such as `net.ipv4.tcp_rmem = "4096 87380 6291456"` need the spaces). `+` and `=` are
//! refused: no namespaced sysctl takes them and they are the shape of a smuggled second sysctl
//! (CVE-2022-0811, `1+kernel.core_pattern=...`). Also refused are `\0` (the kernel stops at it and
//! would silently apply a truncated value) and every other ASCII control character except tab, notably `\n`
//! and `\r` (the kernel treats a newline as the end of a string value and drops the rest; a value with a
//! line break is a mistake or an attempt to inject a second line into something that logs or stores it).
//! Values longer than a page are refused: the kernel never reads more than one page for a sysctl write.

use std::path::PathBuf;

use thiserror::Error;

/// The longest value accepted: the kernel reads at most one page (minus the terminator) per sysctl write.
pub const MAX_VALUE_LEN: usize = 4095;

/// Which of the pod's namespaces are the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SysctlNamespaces {
    /// The pod uses the host network namespace (and therefore the host UTS namespace).
    pub host_network: bool,
    /// The pod uses the host IPC namespace.
    pub host_ipc: bool,
}

/// The namespace a sysctl is isolated by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    /// IPC namespace: System V IPC limits and POSIX message queues.
    Ipc,
    /// Network namespace.
    Net,
    /// UTS namespace: host and domain name.
    Uts,
}

impl std::fmt::Display for SysctlNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ipc => "ipc",
            Self::Net => "network",
            Self::Uts => "uts",
        })
    }
}

/// Why a sysctl was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SysctlError {
    #[error("sysctl name {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("value {value:?} of sysctl {key} is invalid: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("sysctl {key} is not namespaced: {reason}")]
    NotNamespaced { key: String, reason: &'static str },
    #[error(
        "sysctl {key} is isolated by the {namespace} namespace, which this pod shares with the host"
    )]
    HostNamespace {
        key: String,
        namespace: SysctlNamespace,
    },
}

/// System V IPC sysctls of `ipc/ipc_sysctl.c`, all per IPC namespace.
const IPC_KERNEL: &[&str] = &[
    "shmmax",
    "shmall",
    "shmmni",
    "shm_rmid_forced",
    "shm_next_id",
    "msgmax",
    "msgmni",
    "msgmnb",
    "msg_next_id",
    "auto_msgmni",
    "sem",
    "sem_next_id",
];

/// POSIX message queue sysctls of `ipc/mq_sysctl.c`, all per IPC namespace.
const IPC_MQUEUE: &[&str] = &[
    "queues_max",
    "msg_max",
    "msgsize_max",
    "msg_default",
    "msgsize_default",
];

/// `net.*` sysctls that exist only in the initial network namespace (host-wide), as dotted names; a trailing
/// `.*` covers a whole directory. See the module documentation for how the list was made.
pub const HOST_ONLY_NET: &[&str] = &[
    "net.core.bpf_jit_enable",
    "net.core.bpf_jit_harden",
    "net.core.bpf_jit_kallsyms",
    "net.core.bpf_jit_limit",
    "net.core.busy_poll",
    "net.core.busy_read",
    "net.core.default_qdisc",
    "net.core.dev_weight",
    "net.core.dev_weight_rx_bias",
    "net.core.dev_weight_tx_bias",
    "net.core.devconf_inherit_init_net",
    "net.core.fb_tunnels_only_for_init_net",
    "net.core.flow_limit_cpu_bitmap",
    "net.core.flow_limit_table_len",
    "net.core.gro_normal_batch",
    "net.core.high_order_alloc_disable",
    "net.core.max_skb_frags",
    "net.core.mem_pcpu_rsv",
    "net.core.message_burst",
    "net.core.message_cost",
    "net.core.netdev_budget",
    "net.core.netdev_budget_usecs",
    "net.core.netdev_max_backlog",
    "net.core.netdev_tstamp_prequeue",
    "net.core.netdev_unregister_timeout_secs",
    "net.core.rmem_default",
    "net.core.rmem_max",
    "net.core.rps_sock_flow_entries",
    "net.core.skb_defer_max",
    "net.core.warnings",
    "net.core.wmem_default",
    "net.core.wmem_max",
    "net.ipv4.cipso_cache_bucket_size",
    "net.ipv4.cipso_cache_enable",
    "net.ipv4.cipso_rbm_optfmt",
    "net.ipv4.cipso_rbm_strictvalid",
    "net.ipv4.fib_sync_mem",
    "net.ipv4.inet_peer_maxttl",
    "net.ipv4.inet_peer_minttl",
    "net.ipv4.inet_peer_threshold",
    "net.ipv4.ipfrag_secret_interval",
    "net.ipv4.neigh.default.*",
    "net.ipv4.route.error_burst",
    "net.ipv4.route.error_cost",
    "net.ipv4.route.gc_elasticity",
    "net.ipv4.route.gc_interval",
    "net.ipv4.route.gc_min_interval",
    "net.ipv4.route.gc_min_interval_ms",
    "net.ipv4.route.gc_thresh",
    "net.ipv4.route.gc_timeout",
    "net.ipv4.route.max_size",
    "net.ipv4.route.redirect_load",
    "net.ipv4.route.redirect_number",
    "net.ipv4.route.redirect_silence",
    "net.ipv4.tcp_allowed_congestion_control",
    "net.ipv4.tcp_low_latency",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_mem",
    "net.ipv4.udp_mem",
    "net.ipv6.calipso_cache_bucket_size",
    "net.ipv6.calipso_cache_enable",
    "net.ipv6.ip6frag_secret_interval",
    "net.ipv6.mld_max_msf",
    "net.ipv6.mld_qrv",
    "net.ipv6.neigh.default.*",
    "net.netfilter.nf_conntrack_buckets",
    "net.netfilter.nf_conntrack_expect_max",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_log_all_netns",
    "net.nf_conntrack_max",
];

const NOT_NAMESPACED: &str = "only sysctls isolated by a pod namespace may be set (kernel.shm*, kernel.msg*, \
     kernel.sem*, fs.mqueue.*, net.*, kernel.hostname, kernel.domainname); this one would change the whole node";

/// Checks that a pod may set sysctl `key` to `value` given which namespaces it shares with the host.
pub fn validate(key: &str, value: &str, ns: SysctlNamespaces) -> Result<(), SysctlError> {
    let namespace = namespace_of(key)?;
    let host = match namespace {
        SysctlNamespace::Ipc => ns.host_ipc,
        SysctlNamespace::Net | SysctlNamespace::Uts => ns.host_network,
    };
    if host {
        return Err(SysctlError::HostNamespace {
            key: key.to_string(),
            namespace,
        });
    }
    validate_value(key, value)
}

/// The namespace that isolates `key`, or why it may not be set for a pod at all.
pub fn namespace_of(key: &str) -> Result<SysctlNamespace, SysctlError> {
    let parts = components(key)?;
    let not_namespaced = |reason| {
        Err(SysctlError::NotNamespaced {
            key: key.to_string(),
            reason,
        })
    };
    let names: Vec<&str> = parts.iter().map(String::as_str).collect();
    match names.as_slice() {
        ["kernel", "hostname" | "domainname"] => Ok(SysctlNamespace::Uts),
        ["kernel", name] if IPC_KERNEL.contains(name) => Ok(SysctlNamespace::Ipc),
        ["fs", "mqueue", name] if IPC_MQUEUE.contains(name) => Ok(SysctlNamespace::Ipc),
        ["net", _, ..] if is_host_only_net(&names) => {
            not_namespaced("it exists only in the host's network namespace and is host-wide")
        }
        ["net", _, ..] => Ok(SysctlNamespace::Net),
        _ => not_namespaced(NOT_NAMESPACED),
    }
}

fn is_host_only_net(names: &[&str]) -> bool {
    HOST_ONLY_NET.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.split('.').collect();
        match pattern.split_last() {
            Some((&"*", dir)) => names.len() > dir.len() && names[..dir.len()] == *dir,
            _ => names == pattern.as_slice(),
        }
    })
}

/// The file under `/proc/sys` that `key` names: `net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`,
/// `net/ipv4/conf/eth0.100/rp_filter` → `/proc/sys/net/ipv4/conf/eth0.100/rp_filter`. Does not validate;
/// call [`validate`] first (an invalid key yields a path that [`validate`] would have refused).
pub fn proc_path(key: &str) -> PathBuf {
    let mut path = PathBuf::from("/proc/sys");
    for part in split(key) {
        path.push(part);
    }
    path
}

/// Splits a key at its separator, turning the other separator into a literal `.` (see the module docs).
fn split(key: &str) -> Vec<String> {
    let slashed = key
        .find(['.', '/'])
        .is_some_and(|i| key.as_bytes()[i] == b'/');
    if slashed {
        key.split('/').map(str::to_string).collect()
    } else {
        key.split('.').map(|part| part.replace('/', ".")).collect()
    }
}

/// The components of a valid key, e.g. `["net", "ipv4", "conf", "eth0.100", "rp_filter"]`.
pub fn components(key: &str) -> Result<Vec<String>, SysctlError> {
    let invalid = |reason| {
        Err(SysctlError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("it is empty");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
    {
        return invalid("only letters, digits, '_', '-', '.' and '/' are allowed");
    }
    let parts = split(key);
    if parts.iter().any(String::is_empty) {
        return invalid("it has an empty component");
    }
    if parts.iter().any(|p| p == "." || p == "..") {
        return invalid("it has a '.' or '..' component");
    }
    if parts.len() < 2 {
        return invalid("it names a directory, not a setting");
    }
    Ok(parts)
}

fn validate_value(key: &str, value: &str) -> Result<(), SysctlError> {
    let invalid = |reason| {
        Err(SysctlError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        })
    };
    if value.len() > MAX_VALUE_LEN {
        return invalid("it is longer than a page (the most the kernel reads)");
    }
    if value.contains('\0') {
        return invalid("it contains a NUL byte");
    }
    if value.contains(['\n', '\r']) {
        return invalid("it contains a line break");
    }
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return invalid("it contains a control character");
    }
    // `k=v+k2=v2` is how CRI-O once passed several sysctls in one argument (CVE-2022-0811): a value carrying
    // '+' or '=' is an attempt to smuggle a second sysctl. crius passes each one separately, but no namespaced
    // sysctl takes such a value, so refusing it costs nothing and stops the trick at the door for every consumer.
    if value.contains(['+', '=']) {
        return invalid("it contains '+' or '=' (a second sysctl smuggled into the value)");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const POD: SysctlNamespaces = SysctlNamespaces {
        host_network: false,
        host_ipc: false,
    };
    const HOST_NET: SysctlNamespaces = SysctlNamespaces {
        host_network: true,
        host_ipc: false,
    };
    const HOST_IPC: SysctlNamespaces = SysctlNamespaces {
        host_network: false,
        host_ipc: true,
    };

    #[test]
    fn ipc_sysctls_need_a_pod_ipc_namespace() {
        for key in [
            "kernel.shmmax",
            "kernel.shm_rmid_forced",
            "kernel.msgmnb",
            "kernel.sem",
            "fs.mqueue.msg_max",
        ] {
            assert_eq!(validate(key, "1", POD), Ok(()), "{key}");
            assert_eq!(validate(key, "1", HOST_NET), Ok(()), "{key}");
            assert_eq!(
                validate(key, "1", HOST_IPC),
                Err(SysctlError::HostNamespace {
                    key: key.to_string(),
                    namespace: SysctlNamespace::Ipc
                }),
                "{key}"
            );
        }
        assert_eq!(validate("kernel.sem", "250 32000 32 128", POD), Ok(()));
    }

    #[test]
    fn net_sysctls_need_a_pod_network_namespace() {
        for key in [
            "net.ipv4.ip_forward",
            "net.ipv4.ip_local_port_range",
            "net.core.somaxconn",
            "net.ipv4.route.min_pmtu",
        ] {
            assert_eq!(validate(key, "1", POD), Ok(()), "{key}");
            assert_eq!(validate(key, "1", HOST_IPC), Ok(()), "{key}");
            assert!(
                matches!(
                    validate(key, "1", HOST_NET),
                    Err(SysctlError::HostNamespace { .. })
                ),
                "{key}"
            );
        }
    }

    #[test]
    fn uts_sysctls_follow_the_network_namespace() {
        assert_eq!(validate("kernel.hostname", "web-0", POD), Ok(()));
        assert_eq!(validate("kernel.domainname", "example", HOST_IPC), Ok(()));
        assert_eq!(
            validate("kernel.hostname", "x", HOST_NET),
            Err(SysctlError::HostNamespace {
                key: "kernel.hostname".into(),
                namespace: SysctlNamespace::Uts
            })
        );
    }

    #[test]
    fn host_only_net_sysctls_are_refused() {
        for key in [
            "net.core.rmem_max",
            "net.core.wmem_max",
            "net.ipv4.tcp_mem",
            "net.ipv4.route.gc_thresh",
            "net.ipv4.neigh.default.gc_thresh1",
            "net.netfilter.nf_conntrack_max",
            "net.nf_conntrack_max",
            "net/core/rmem_max",
        ] {
            let err = validate(key, "1", POD).unwrap_err();
            assert!(
                matches!(err, SysctlError::NotNamespaced { .. }),
                "{key}: {err:?}"
            );
            assert!(
                err.to_string().contains("host's network namespace"),
                "{err}"
            );
        }
        // The directory pattern covers only entries below it, and per-interface neighbour settings are per netns.
        assert_eq!(
            validate("net.ipv4.neigh.eth0.gc_stale_time", "60", POD),
            Ok(())
        );
    }

    #[test]
    fn host_wide_sysctls_are_refused() {
        for key in [
            "kernel.core_pattern",
            "vm.swappiness",
            "fs.file-max",
            "kernel.shm",
            "kernel.msgfoo",
            "fs.mqueue",
        ] {
            let err = validate(key, "1", POD).unwrap_err();
            assert!(
                matches!(err, SysctlError::NotNamespaced { .. })
                    || matches!(err, SysctlError::InvalidKey { .. })
            );
            assert!(err.to_string().contains(key), "{err}");
        }
        assert!(
            validate("vm.overcommit_memory", "1", POD)
                .unwrap_err()
                .to_string()
                .contains("whole node")
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        for key in [
            "",
            "net",
            "net..ipv4.ip_forward",
            ".net.ipv4",
            "net.ipv4.",
            "net/ipv4/../../kernel/core_pattern",
            "net/ipv4//x",
            "net.ipv4.conf.eth0 .rp_filter",
            "net.ipv4.ip_forward\n",
            "net.ipv4.x\0",
            "net.ipv4.conf./.rp_filter",
        ] {
            assert!(
                matches!(validate(key, "1", POD), Err(SysctlError::InvalidKey { .. })),
                "{key:?}"
            );
        }
    }

    #[test]
    fn values_reject_control_characters_and_smuggled_sysctls() {
        let key = "net.ipv4.tcp_rmem";
        assert_eq!(validate(key, "4096 87380 6291456", POD), Ok(()));
        assert_eq!(validate(key, "4096\t87380\t6291456", POD), Ok(()));
        assert_eq!(validate("kernel.hostname", "", POD), Ok(()));
        for value in [
            "1\nnet.core.rmem_max=1",
            "1\r",
            "1\0",
            "1\x1b[0m",
            "1+kernel.core_pattern=|/x",
            "1=2",
        ] {
            assert!(
                matches!(
                    validate(key, value, POD),
                    Err(SysctlError::InvalidValue { .. })
                ),
                "{value:?}"
            );
        }
        assert!(matches!(
            validate(key, &"1".repeat(MAX_VALUE_LEN + 1), POD),
            Err(SysctlError::InvalidValue { .. })
        ));
        assert_eq!(validate(key, &"1".repeat(MAX_VALUE_LEN), POD), Ok(()));
    }

    #[test]
    fn proc_path_accepts_both_separators() {
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            proc_path("net/ipv4/ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            proc_path("net/ipv4/conf/eno2.100/rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eno2.100/rp_filter")
        );
        assert_eq!(
            proc_path("net.ipv4.conf.eno2/100.rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eno2.100/rp_filter")
        );
        assert_eq!(
            components("net.ipv4.conf.eno2/100.rp_filter").unwrap()[3],
            "eno2.100"
        );
    }

    #[test]
    fn slashed_keys_are_classified_like_dotted_ones() {
        assert_eq!(namespace_of("kernel/shmmax"), Ok(SysctlNamespace::Ipc));
        assert_eq!(
            namespace_of("fs/mqueue/queues_max"),
            Ok(SysctlNamespace::Ipc)
        );
        assert_eq!(
            namespace_of("net/ipv4/conf/eno2.100/rp_filter"),
            Ok(SysctlNamespace::Net)
        );
        assert!(matches!(
            namespace_of("kernel/core_pattern"),
            Err(SysctlError::NotNamespaced { .. })
        ));
    }
}
