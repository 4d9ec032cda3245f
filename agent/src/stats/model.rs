//! What the stats domain answers: usage of containers and pods as read from their cgroups, writable layers and
//! network namespaces. Every measurement the host cannot provide is `None`, never zero.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Who a container is, for the attributes of its stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as it was asked for (the `image` label of the metrics).
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Who a pod is, for the attributes of its stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStats {
    pub info: ContainerInfo,
    pub cgroup: CgroupStats,
    pub writable_layer: Option<FsUsage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodStats {
    pub info: PodInfo,
    pub cgroup: CgroupStats,
    pub network: Option<NetworkUsage>,
    /// The pod's running containers.
    pub containers: Vec<ContainerStats>,
}

/// What one cgroup (and its descendants) uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu: Option<CpuUsage>,
    pub memory: Option<MemoryUsage>,
    pub swap: Option<SwapUsage>,
    pub process: Option<ProcessUsage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CpuUsage {
    /// Nanoseconds since the epoch.
    pub timestamp: i64,
    /// `usage_usec` of cpu.stat, in nanoseconds.
    pub usage_core_nanos: u64,
    /// Averaged between this sample and an earlier one; `None` until there is one (see [`super::cpu`]).
    pub usage_nano_cores: Option<u64>,
    pub user_nanos: Option<u64>,
    pub system_nanos: Option<u64>,
    /// CFS bandwidth figures, only with the cpu controller.
    pub throttling: Option<Throttling>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_nanos: u64,
}

/// Memory figures, only with the memory controller; each one may still be missing on its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryUsage {
    pub timestamp: i64,
    /// memory.current.
    pub usage_bytes: Option<u64>,
    /// usage minus inactive_file.
    pub working_set_bytes: Option<u64>,
    /// memory.max minus the working set, when memory.max is a limit.
    pub available_bytes: Option<u64>,
    /// `anon` of memory.stat.
    pub rss_bytes: Option<u64>,
    /// `file` of memory.stat.
    pub cache_bytes: Option<u64>,
    pub mapped_file_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// memory.max as a number, `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// `oom_kill` of memory.events.
    pub oom_kills: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwapUsage {
    pub timestamp: i64,
    /// memory.swap.current.
    pub usage_bytes: u64,
    /// memory.swap.max minus the usage, when memory.swap.max is a limit.
    pub available_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessUsage {
    pub timestamp: i64,
    /// Processes in the cgroup and below (cgroup.procs).
    pub processes: u64,
    /// Tasks (threads) by pids.current, only with the pids controller.
    pub threads: Option<u64>,
    /// pids.max as a number, `None` when unlimited or without the pids controller.
    pub threads_max: Option<u64>,
}

/// Usage of a writable layer, measured at `timestamp` (it may come from the cache).
#[derive(Debug, Clone, PartialEq)]
pub struct FsUsage {
    pub timestamp: i64,
    /// The file system holding the layer, as ImageFsInfo names it (`<root>/containers`).
    pub mountpoint: PathBuf,
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkUsage {
    pub timestamp: i64,
    /// The pod's interface (`eth0`), when it has one.
    pub default_interface: Option<InterfaceUsage>,
    /// Every other interface (`lo`, more CNI attachments).
    pub interfaces: Vec<InterfaceUsage>,
}

/// The counters of one interface (/proc/net/dev).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// A cAdvisor-style metric kubelet can take from the runtime (ListMetricDescriptors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
    pub label_keys: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One value of a described metric (ListPodSandboxMetrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    /// 0: gathered live; else when a cached value was measured (nanoseconds since the epoch).
    pub timestamp: i64,
    pub kind: MetricKind,
    /// In the order of the descriptor's label keys.
    pub label_values: Vec<String>,
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMetrics {
    pub pod_id: String,
    pub metrics: Vec<Metric>,
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMetrics {
    pub container_id: String,
    pub metrics: Vec<Metric>,
}
