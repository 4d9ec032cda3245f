//! The cAdvisor-style metrics kubelet can take from the runtime (ListMetricDescriptors, ListPodSandboxMetrics),
//! named and labelled as cAdvisor and CRI-O do: `id`, `name`, `image` on every metric (kubelet appends
//! `namespace`, `pod`, `container`), plus `cpu`, `interface` or `failure_type`/`scope` where cAdvisor has them.
//! Container metrics come from the container's cgroup and writable layer; network metrics are the pod's (its
//! namespace), labelled with the pod id, name `POD` and an empty image.
//!
//! Only metrics this host can fill are described: the memory ones need the memory controller, threads the pids
//! controller, CFS throttling the cpu controller (decided once at startup: the CRI wants the list static).
//! Values are `UInt64Value`s, so seconds are whole seconds (as containerd and CRI-O report them).

use super::model::{
    ContainerStats, Descriptor, InterfaceUsage, Metric, MetricKind, PodMetrics, PodStats,
};

const BASE: [&str; 3] = ["id", "name", "image"];

/// What a metric family needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Controller(&'static str),
}

/// (name, kind, help, extra label keys, needs)
type Spec = (
    &'static str,
    MetricKind,
    &'static str,
    &'static [&'static str],
    Needs,
);

const CPU: Needs = Needs::Controller("cpu");
const MEMORY: Needs = Needs::Controller("memory");
const PIDS: Needs = Needs::Controller("pids");
const ALWAYS: Needs = Needs::Nothing;
const C: MetricKind = MetricKind::Counter;
const G: MetricKind = MetricKind::Gauge;
const IF: &[&str] = &["interface"];

#[rustfmt::skip]
const SPECS: &[Spec] = &[
    ("container_cpu_usage_seconds_total", C, "Cumulative cpu time consumed in seconds.", &["cpu"], ALWAYS),
    ("container_cpu_user_seconds_total", C, "Cumulative user cpu time consumed in seconds.", &[], ALWAYS),
    ("container_cpu_system_seconds_total", C, "Cumulative system cpu time consumed in seconds.", &[], ALWAYS),
    ("container_cpu_cfs_periods_total", C, "Number of elapsed enforcement period intervals.", &[], CPU),
    ("container_cpu_cfs_throttled_periods_total", C, "Number of throttled period intervals.", &[], CPU),
    ("container_cpu_cfs_throttled_seconds_total", C, "Total time duration the container has been throttled.", &[], CPU),
    ("container_memory_usage_bytes", G, "Current memory usage in bytes, including all memory regardless of when it was accessed.", &[], MEMORY),
    ("container_memory_working_set_bytes", G, "Current working set in bytes.", &[], MEMORY),
    ("container_memory_rss", G, "Size of RSS in bytes.", &[], MEMORY),
    ("container_memory_cache", G, "Number of bytes of page cache memory.", &[], MEMORY),
    ("container_memory_mapped_file", G, "Size of memory mapped files in bytes.", &[], MEMORY),
    ("container_memory_swap", G, "Container swap usage in bytes.", &[], MEMORY),
    ("container_memory_failures_total", C, "Cumulative count of memory allocation failures.", &["failure_type", "scope"], MEMORY),
    ("container_oom_events_total", C, "Count of out of memory events observed for the container.", &[], MEMORY),
    ("container_spec_memory_limit_bytes", G, "Memory limit for the container in bytes (0: unlimited).", &[], MEMORY),
    ("container_fs_usage_bytes", G, "Number of bytes that are consumed by the container's writable layer.", &[], ALWAYS),
    ("container_processes", G, "Number of processes running inside the container.", &[], ALWAYS),
    ("container_threads", G, "Number of threads running inside the container.", &[], PIDS),
    ("container_threads_max", G, "Maximum number of threads allowed inside the container, infinity if value is zero.", &[], PIDS),
    ("container_network_receive_bytes_total", C, "Cumulative count of bytes received.", IF, ALWAYS),
    ("container_network_receive_packets_total", C, "Cumulative count of packets received.", IF, ALWAYS),
    ("container_network_receive_packets_dropped_total", C, "Cumulative count of packets dropped while receiving.", IF, ALWAYS),
    ("container_network_receive_errors_total", C, "Cumulative count of errors encountered while receiving.", IF, ALWAYS),
    ("container_network_transmit_bytes_total", C, "Cumulative count of bytes transmitted.", IF, ALWAYS),
    ("container_network_transmit_packets_total", C, "Cumulative count of packets transmitted.", IF, ALWAYS),
    ("container_network_transmit_packets_dropped_total", C, "Cumulative count of packets dropped while transmitting.", IF, ALWAYS),
    ("container_network_transmit_errors_total", C, "Cumulative count of errors encountered while transmitting.", IF, ALWAYS),
];

/// The metrics this host can fill, given the cgroup v2 controllers its pods' cgroups can use.
pub fn descriptors(controllers: &[String]) -> Vec<Descriptor> {
    SPECS
        .iter()
        .filter(|(.., needs)| match needs {
            Needs::Nothing => true,
            Needs::Controller(c) => controllers.iter().any(|have| have == c),
        })
        .map(|&(name, kind, help, extra, _)| Descriptor {
            name,
            kind,
            help,
            label_keys: BASE.iter().chain(extra.iter()).copied().collect(),
        })
        .collect()
}

/// Collects metrics, dropping any the descriptors do not name (kubelet ignores those anyway).
struct Out<'a> {
    described: &'a [Descriptor],
    base: Vec<String>,
    metrics: Vec<Metric>,
}

impl Out<'_> {
    /// A value gathered live, with the base labels.
    fn push(&mut self, name: &'static str, value: Option<u64>) {
        self.push_with(name, value, &[], 0);
    }

    /// A value with labels after the base ones, measured at `timestamp` (0: live).
    fn push_with(
        &mut self,
        name: &'static str,
        value: Option<u64>,
        extra: &[&str],
        timestamp: i64,
    ) {
        let Some(value) = value else { return };
        let Some(d) = self.described.iter().find(|d| d.name == name) else {
            return;
        };
        let mut label_values = self.base.clone();
        label_values.extend(extra.iter().map(|s| s.to_string()));
        self.metrics.push(Metric {
            name,
            timestamp,
            kind: d.kind,
            label_values,
            value,
        });
    }
}

const NS_PER_S: u64 = 1_000_000_000;

/// The metrics of one container (gathered live: timestamp 0, but the cached writable layer's).
pub fn container_metrics(described: &[Descriptor], s: &ContainerStats) -> Vec<Metric> {
    let mut o = Out {
        described,
        base: vec![s.info.id.clone(), s.info.name.clone(), s.info.image.clone()],
        metrics: Vec::new(),
    };
    let secs = |ns: u64| ns / NS_PER_S;
    if let Some(cpu) = &s.cgroup.cpu {
        let total = Some(secs(cpu.usage_core_nanos));
        o.push_with("container_cpu_usage_seconds_total", total, &["total"], 0);
        o.push("container_cpu_user_seconds_total", cpu.user_nanos.map(secs));
        o.push(
            "container_cpu_system_seconds_total",
            cpu.system_nanos.map(secs),
        );
        if let Some(t) = &cpu.throttling {
            o.push("container_cpu_cfs_periods_total", Some(t.periods));
            o.push(
                "container_cpu_cfs_throttled_periods_total",
                Some(t.throttled_periods),
            );
            let throttled = Some(secs(t.throttled_nanos));
            o.push("container_cpu_cfs_throttled_seconds_total", throttled);
        }
    }
    if let Some(m) = &s.cgroup.memory {
        o.push("container_memory_usage_bytes", m.usage_bytes);
        o.push("container_memory_working_set_bytes", m.working_set_bytes);
        o.push("container_memory_rss", m.rss_bytes);
        o.push("container_memory_cache", m.cache_bytes);
        o.push("container_memory_mapped_file", m.mapped_file_bytes);
        let failures = "container_memory_failures_total";
        o.push_with(failures, m.page_faults, &["pgfault", "container"], 0);
        o.push_with(
            failures,
            m.major_page_faults,
            &["pgmajfault", "container"],
            0,
        );
        o.push("container_oom_events_total", m.oom_kills);
        let limit = Some(m.limit_bytes.unwrap_or(0));
        o.push("container_spec_memory_limit_bytes", limit);
    }
    if let Some(swap) = &s.cgroup.swap {
        o.push("container_memory_swap", Some(swap.usage_bytes));
    }
    if let Some(fs) = &s.writable_layer {
        o.push_with(
            "container_fs_usage_bytes",
            Some(fs.bytes),
            &[],
            fs.timestamp,
        );
    }
    if let Some(p) = &s.cgroup.process {
        o.push("container_processes", Some(p.processes));
        o.push("container_threads", p.threads);
        if p.threads.is_some() {
            o.push("container_threads_max", Some(p.threads_max.unwrap_or(0)));
        }
    }
    o.metrics
}

fn interface_metrics(o: &mut Out<'_>, i: &InterfaceUsage) {
    let l = [i.name.as_str()];
    let mut push = |name, v| o.push_with(name, Some(v), &l, 0);
    push("container_network_receive_bytes_total", i.rx_bytes);
    push("container_network_receive_packets_total", i.rx_packets);
    push(
        "container_network_receive_packets_dropped_total",
        i.rx_dropped,
    );
    push("container_network_receive_errors_total", i.rx_errors);
    push("container_network_transmit_bytes_total", i.tx_bytes);
    push("container_network_transmit_packets_total", i.tx_packets);
    push(
        "container_network_transmit_packets_dropped_total",
        i.tx_dropped,
    );
    push("container_network_transmit_errors_total", i.tx_errors);
}

/// A pod's metrics: its network (every interface), and each of its containers'.
pub fn pod_metrics(described: &[Descriptor], s: &PodStats) -> PodMetrics {
    let mut o = Out {
        described,
        base: vec![s.info.id.clone(), "POD".into(), String::new()],
        metrics: Vec::new(),
    };
    if let Some(n) = &s.network {
        for i in n.default_interface.iter().chain(&n.interfaces) {
            interface_metrics(&mut o, i);
        }
    }
    PodMetrics {
        pod_id: s.info.id.clone(),
        metrics: o.metrics,
        containers: s
            .containers
            .iter()
            .map(|c| super::model::ContainerMetrics {
                container_id: c.info.id.clone(),
                metrics: container_metrics(described, c),
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::model::*;
    use super::*;

    fn names(d: &[Descriptor]) -> Vec<&str> {
        d.iter().map(|d| d.name).collect()
    }

    #[test]
    fn descriptors_follow_the_controllers() {
        let hybrid = descriptors(&[]);
        let n = names(&hybrid);
        assert!(n.contains(&"container_cpu_usage_seconds_total"));
        assert!(n.contains(&"container_network_receive_bytes_total"));
        assert!(n.contains(&"container_processes"));
        assert!(!n.iter().any(|n| n.starts_with("container_memory")));
        assert!(!n.contains(&"container_threads"));
        assert!(!n.contains(&"container_cpu_cfs_periods_total"));
        let full = descriptors(&["cpu", "memory", "pids"].map(String::from));
        assert_eq!(full.len(), SPECS.len());
        let cpu = full
            .iter()
            .find(|d| d.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.label_keys, ["id", "name", "image", "cpu"]);
        let mut unique = names(&full);
        unique.dedup();
        assert_eq!(unique.len(), full.len());
    }

    fn stats(memory: Option<MemoryUsage>) -> ContainerStats {
        ContainerStats {
            info: ContainerInfo {
                id: "c1".into(),
                pod_id: "p1".into(),
                name: "web".into(),
                attempt: 0,
                image: "busybox:1".into(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            cgroup: CgroupStats {
                cpu: Some(CpuUsage {
                    timestamp: 1,
                    usage_core_nanos: 2_700_000_000,
                    usage_nano_cores: None,
                    user_nanos: Some(2_000_000_000),
                    system_nanos: Some(700_000_000),
                    throttling: None,
                }),
                memory,
                swap: None,
                process: Some(ProcessUsage {
                    timestamp: 1,
                    processes: 3,
                    threads: None,
                    threads_max: None,
                }),
            },
            writable_layer: Some(FsUsage {
                timestamp: 99,
                mountpoint: "/c".into(),
                bytes: 4096,
                inodes: 2,
            }),
        }
    }

    #[test]
    fn container_metrics_carry_labels_in_descriptor_order() {
        let d = descriptors(&[]);
        let m = container_metrics(&d, &stats(None));
        let cpu = m
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.label_values, ["c1", "web", "busybox:1", "total"]);
        assert_eq!(
            (cpu.value, cpu.kind, cpu.timestamp),
            (2, MetricKind::Counter, 0)
        );
        let fs = m
            .iter()
            .find(|m| m.name == "container_fs_usage_bytes")
            .unwrap();
        assert_eq!(
            (fs.value, fs.timestamp, fs.kind),
            (4096, 99, MetricKind::Gauge)
        );
        for metric in &m {
            let desc = d.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(
                desc.label_keys.len(),
                metric.label_values.len(),
                "{metric:?}"
            );
        }
        assert!(!m.iter().any(|m| m.name.starts_with("container_memory")));
    }

    #[test]
    fn memory_metrics_only_where_described_and_present() {
        let mem = MemoryUsage {
            timestamp: 1,
            usage_bytes: Some(100),
            working_set_bytes: Some(60),
            page_faults: Some(5),
            ..Default::default()
        };
        // A host without the memory controller describes none: none are sent even if figures existed.
        assert!(
            !container_metrics(&descriptors(&[]), &stats(Some(mem.clone())))
                .iter()
                .any(|m| m.name.starts_with("container_memory"))
        );
        let d = descriptors(&["memory".to_string()]);
        let m = container_metrics(&d, &stats(Some(mem)));
        let get = |n: &str| m.iter().filter(|m| m.name == n).collect::<Vec<_>>();
        assert_eq!(get("container_memory_working_set_bytes")[0].value, 60);
        assert!(
            get("container_memory_rss").is_empty(),
            "absent stays absent"
        );
        let faults = get("container_memory_failures_total");
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].label_values[3..], ["pgfault", "container"]);
        assert_eq!(get("container_spec_memory_limit_bytes")[0].value, 0);
    }

    #[test]
    fn pod_metrics_are_network_per_interface() {
        let d = descriptors(&[]);
        let iface = |name: &str, rx| InterfaceUsage {
            name: name.into(),
            rx_bytes: rx,
            ..Default::default()
        };
        let pod = PodStats {
            info: PodInfo {
                id: "p1".into(),
                name: "web".into(),
                namespace: "ns".into(),
                uid: "u".into(),
                attempt: 0,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            cgroup: CgroupStats::default(),
            network: Some(NetworkUsage {
                timestamp: 1,
                default_interface: Some(iface("eth0", 10)),
                interfaces: vec![iface("lo", 20)],
            }),
            containers: vec![stats(None)],
        };
        let m = pod_metrics(&d, &pod);
        let rx: Vec<_> = m
            .metrics
            .iter()
            .filter(|m| m.name == "container_network_receive_bytes_total")
            .map(|m| (m.label_values.clone(), m.value))
            .collect();
        assert_eq!(
            rx,
            [
                (
                    vec!["p1".into(), "POD".into(), String::new(), "eth0".into()],
                    10
                ),
                (
                    vec!["p1".into(), "POD".into(), String::new(), "lo".into()],
                    20
                )
            ]
        );
        assert_eq!(m.containers.len(), 1);
        assert_eq!(m.containers[0].container_id, "c1");
    }
}
