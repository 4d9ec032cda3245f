//! Stats helpers for the end-to-end tests: the stats and metrics RPCs as panicking wrappers (or `Result`s where a
//! test checks the error), and small accessors over the CRI messages.

use std::collections::HashMap;
use std::path::Path;

use crius_proto::v1;
use tonic::Status;

use crate::instance::Crius;

impl Crius {
    pub async fn container_stats(&self, id: &str) -> Result<v1::ContainerStats, Status> {
        let r = self
            .runtime()
            .container_stats(v1::ContainerStatsRequest {
                container_id: id.into(),
            })
            .await?
            .into_inner();
        Ok(r.stats.expect("ContainerStats without stats"))
    }

    /// ListContainerStats; panics on an error.
    pub async fn list_container_stats(
        &self,
        filter: Option<v1::ContainerStatsFilter>,
    ) -> Vec<v1::ContainerStats> {
        self.runtime()
            .list_container_stats(v1::ListContainerStatsRequest { filter })
            .await
            .unwrap_or_else(|e| panic!("ListContainerStats: {e}"))
            .into_inner()
            .stats
    }

    pub async fn pod_stats(&self, id: &str) -> Result<v1::PodSandboxStats, Status> {
        let r = self
            .runtime()
            .pod_sandbox_stats(v1::PodSandboxStatsRequest {
                pod_sandbox_id: id.into(),
            })
            .await?
            .into_inner();
        Ok(r.stats.expect("PodSandboxStats without stats"))
    }

    /// ListPodSandboxStats; panics on an error.
    pub async fn list_pod_stats(
        &self,
        filter: Option<v1::PodSandboxStatsFilter>,
    ) -> Vec<v1::PodSandboxStats> {
        self.runtime()
            .list_pod_sandbox_stats(v1::ListPodSandboxStatsRequest { filter })
            .await
            .unwrap_or_else(|e| panic!("ListPodSandboxStats: {e}"))
            .into_inner()
            .stats
    }

    /// ListMetricDescriptors by name; panics on an error.
    pub async fn metric_descriptors(&self) -> HashMap<String, v1::MetricDescriptor> {
        self.runtime()
            .list_metric_descriptors(v1::ListMetricDescriptorsRequest {})
            .await
            .unwrap_or_else(|e| panic!("ListMetricDescriptors: {e}"))
            .into_inner()
            .descriptors
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect()
    }

    /// ListPodSandboxMetrics; panics on an error.
    pub async fn pod_metrics(&self) -> Vec<v1::PodSandboxMetrics> {
        self.runtime()
            .list_pod_sandbox_metrics(v1::ListPodSandboxMetricsRequest {})
            .await
            .unwrap_or_else(|e| panic!("ListPodSandboxMetrics: {e}"))
            .into_inner()
            .pod_metrics
    }
}

/// The value of an optional CRI counter.
pub fn value(v: &Option<v1::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|v| v.value)
}

/// The id a stats message is about.
pub fn container_id(s: &v1::ContainerStats) -> &str {
    s.attributes.as_ref().map(|a| a.id.as_str()).unwrap_or("")
}

/// The id a pod stats message is about.
pub fn pod_id(s: &v1::PodSandboxStats) -> &str {
    s.attributes.as_ref().map(|a| a.id.as_str()).unwrap_or("")
}

/// `usage_core_nano_seconds` of a container's stats (panics when absent: CPU usage is in every cgroup v2).
pub fn cpu_ns(s: &v1::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| value(&c.usage_core_nano_seconds))
        .unwrap_or_else(|| panic!("no CPU usage in {s:?}"))
}

/// Whether the cgroup2 tree at `mount` lets child cgroups use `controller` (its root's subtree_control).
pub fn controller_enabled(mount: &Path, controller: &str) -> bool {
    std::fs::read_to_string(mount.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

/// One interface of a pod's network stats (the default one or another), by name.
pub fn interface<'a>(n: &'a v1::NetworkUsage, name: &str) -> Option<&'a v1::NetworkInterfaceUsage> {
    n.default_interface
        .iter()
        .chain(&n.interfaces)
        .find(|i| i.name == name)
}
