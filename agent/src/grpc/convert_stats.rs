//! Stats and metrics as CRI messages, and the stats filters as domain filters. An absent figure stays an unset
//! optional field: the CRI reads `None` as "not available", a zero as a measurement.

use std::collections::{BTreeMap, HashMap};

use crius_proto::v1;

use crate::stats::model::{
    CgroupStats, ContainerInfo, ContainerStats, CpuUsage, Descriptor, FsUsage, InterfaceUsage,
    MemoryUsage, Metric, MetricKind, NetworkUsage, PodInfo, PodMetrics, PodStats, ProcessUsage,
    SwapUsage,
};
use crate::stats::{ContainerStatsFilter, PodStatsFilter};

fn value(v: u64) -> Option<v1::UInt64Value> {
    Some(v1::UInt64Value { value: v })
}

fn maybe(v: Option<u64>) -> Option<v1::UInt64Value> {
    v.map(|value| v1::UInt64Value { value })
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn container_filter(f: Option<v1::ContainerStatsFilter>) -> ContainerStatsFilter {
    let Some(f) = f else {
        return ContainerStatsFilter::default();
    };
    ContainerStatsFilter {
        id: non_empty(f.id),
        pod_id: non_empty(f.pod_sandbox_id),
        labels: f.label_selector.into_iter().collect(),
    }
}

pub fn pod_filter(f: Option<v1::PodSandboxStatsFilter>) -> PodStatsFilter {
    let Some(f) = f else {
        return PodStatsFilter::default();
    };
    PodStatsFilter {
        id: non_empty(f.id),
        labels: f.label_selector.into_iter().collect(),
    }
}

fn container_attributes(i: &ContainerInfo) -> v1::ContainerAttributes {
    v1::ContainerAttributes {
        id: i.id.clone(),
        metadata: Some(v1::ContainerMetadata {
            name: i.name.clone(),
            attempt: i.attempt,
        }),
        labels: map(&i.labels),
        annotations: map(&i.annotations),
    }
}

fn pod_attributes(i: &PodInfo) -> v1::PodSandboxAttributes {
    v1::PodSandboxAttributes {
        id: i.id.clone(),
        metadata: Some(v1::PodSandboxMetadata {
            name: i.name.clone(),
            uid: i.uid.clone(),
            namespace: i.namespace.clone(),
            attempt: i.attempt,
        }),
        labels: map(&i.labels),
        annotations: map(&i.annotations),
    }
}

fn cpu(c: &CpuUsage) -> v1::CpuUsage {
    v1::CpuUsage {
        timestamp: c.timestamp,
        usage_core_nano_seconds: value(c.usage_core_nanos),
        usage_nano_cores: maybe(c.usage_nano_cores),
    }
}

fn memory(m: &MemoryUsage) -> v1::MemoryUsage {
    v1::MemoryUsage {
        timestamp: m.timestamp,
        working_set_bytes: maybe(m.working_set_bytes),
        available_bytes: maybe(m.available_bytes),
        usage_bytes: maybe(m.usage_bytes),
        rss_bytes: maybe(m.rss_bytes),
        page_faults: maybe(m.page_faults),
        major_page_faults: maybe(m.major_page_faults),
    }
}

fn swap(s: &SwapUsage) -> v1::SwapUsage {
    v1::SwapUsage {
        timestamp: s.timestamp,
        swap_available_bytes: maybe(s.available_bytes),
        swap_usage_bytes: value(s.usage_bytes),
    }
}

fn fs(f: &FsUsage) -> v1::FilesystemUsage {
    v1::FilesystemUsage {
        timestamp: f.timestamp,
        fs_id: Some(v1::FilesystemIdentifier {
            mountpoint: f.mountpoint.display().to_string(),
        }),
        used_bytes: value(f.bytes),
        inodes_used: value(f.inodes),
    }
}

fn process(p: &ProcessUsage) -> v1::ProcessUsage {
    v1::ProcessUsage {
        timestamp: p.timestamp,
        process_count: value(p.processes),
    }
}

fn interface(i: &InterfaceUsage) -> v1::NetworkInterfaceUsage {
    v1::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    }
}

fn network(n: &NetworkUsage) -> v1::NetworkUsage {
    v1::NetworkUsage {
        timestamp: n.timestamp,
        default_interface: n.default_interface.as_ref().map(interface),
        interfaces: n.interfaces.iter().map(interface).collect(),
    }
}

pub fn container_stats(s: &ContainerStats) -> v1::ContainerStats {
    let CgroupStats {
        cpu: c,
        memory: m,
        swap: sw,
        ..
    } = &s.cgroup;
    v1::ContainerStats {
        attributes: Some(container_attributes(&s.info)),
        cpu: c.as_ref().map(cpu),
        memory: m.as_ref().map(memory),
        writable_layer: s.writable_layer.as_ref().map(fs),
        swap: sw.as_ref().map(swap),
    }
}

pub fn pod_stats(s: &PodStats) -> v1::PodSandboxStats {
    v1::PodSandboxStats {
        attributes: Some(pod_attributes(&s.info)),
        linux: Some(v1::LinuxPodSandboxStats {
            cpu: s.cgroup.cpu.as_ref().map(cpu),
            memory: s.cgroup.memory.as_ref().map(memory),
            network: s.network.as_ref().map(network),
            process: s.cgroup.process.as_ref().map(process),
            containers: s.containers.iter().map(container_stats).collect(),
        }),
        windows: None,
    }
}

pub fn descriptor(d: &Descriptor) -> v1::MetricDescriptor {
    v1::MetricDescriptor {
        name: d.name.to_string(),
        help: d.help.to_string(),
        label_keys: d.label_keys.iter().map(|k| k.to_string()).collect(),
    }
}

fn metric(m: &Metric) -> v1::Metric {
    v1::Metric {
        name: m.name.to_string(),
        timestamp: m.timestamp,
        metric_type: match m.kind {
            MetricKind::Counter => v1::MetricType::Counter,
            MetricKind::Gauge => v1::MetricType::Gauge,
        } as i32,
        label_values: m.label_values.clone(),
        value: value(m.value),
    }
}

pub fn pod_metrics(p: &PodMetrics) -> v1::PodSandboxMetrics {
    v1::PodSandboxMetrics {
        pod_sandbox_id: p.pod_id.clone(),
        metrics: p.metrics.iter().map(metric).collect(),
        container_metrics: p
            .containers
            .iter()
            .map(|c| v1::ContainerMetrics {
                container_id: c.container_id.clone(),
                metrics: c.metrics.iter().map(metric).collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn absent_figures_stay_unset() {
        let s = ContainerStats {
            info: ContainerInfo {
                id: "c".into(),
                pod_id: "p".into(),
                name: "n".into(),
                attempt: 2,
                image: "i".into(),
                labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
                annotations: BTreeMap::new(),
            },
            cgroup: CgroupStats {
                cpu: Some(CpuUsage {
                    timestamp: 5,
                    usage_core_nanos: 0,
                    usage_nano_cores: None,
                    user_nanos: None,
                    system_nanos: None,
                    throttling: None,
                }),
                memory: Some(MemoryUsage {
                    timestamp: 5,
                    usage_bytes: Some(10),
                    ..Default::default()
                }),
                swap: None,
                process: None,
            },
            writable_layer: None,
        };
        let out = container_stats(&s);
        let c = out.cpu.unwrap();
        // A measured zero is a zero; an unmeasured average is unset.
        assert_eq!(
            c.usage_core_nano_seconds,
            Some(v1::UInt64Value { value: 0 })
        );
        assert_eq!(c.usage_nano_cores, None);
        let m = out.memory.unwrap();
        assert_eq!(m.usage_bytes.unwrap().value, 10);
        assert_eq!(
            (m.working_set_bytes, m.available_bytes, m.rss_bytes),
            (None, None, None)
        );
        assert!(out.swap.is_none() && out.writable_layer.is_none());
        let a = out.attributes.unwrap();
        assert_eq!(a.metadata.unwrap().attempt, 2);
        assert_eq!(a.labels["a"], "b");
    }

    #[test]
    fn filters() {
        assert!(container_filter(None).id.is_none());
        let f = container_filter(Some(v1::ContainerStatsFilter {
            id: String::new(),
            pod_sandbox_id: "ab".into(),
            label_selector: [("k".to_string(), "v".to_string())].into_iter().collect(),
        }));
        assert_eq!((f.id, f.pod_id.as_deref()), (None, Some("ab")));
        assert_eq!(f.labels["k"], "v");
        let f = pod_filter(Some(v1::PodSandboxStatsFilter {
            id: "x".into(),
            label_selector: HashMap::new(),
        }));
        assert_eq!(f.id.as_deref(), Some("x"));
    }
}
