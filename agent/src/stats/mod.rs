//! Stats: the domain behind ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
//! ListMetricDescriptors and ListPodSandboxMetrics.
//!
//! Everything is read when asked, from the records' last saved state (no monitor round trip): the cgroup v2 files
//! of each container's and pod's cgroup ([`cgroup`]), the writable layer behind a cache ([`disk`]), each pod's
//! /proc/net/dev read inside its network namespace ([`net`], the kernel part in `crius_sandbox::ns`), and
//! `usage_nano_cores` between two samples ([`cpu`]). What the host cannot provide is absent, never zero. The
//! reading runs on a blocking thread; stale writable layers are walked again in the background.

mod cadvisor;
mod cgroup;
mod collect;
mod cpu;
mod disk;
pub mod model;
mod net;
mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::collect::{Collected, Collector, ContainerSource, PodSource};
use self::model::{ContainerInfo, ContainerStats, Descriptor, PodInfo, PodMetrics, PodStats};
use self::source::RealFs;
use crate::container::record::{ContainerRecord, ContainerState};
use crate::container::service::Containers;
use crate::error::{Error, Result};
use crate::pod::record::{PodRecord, PodState};
use crate::pod::{PodFilter, Pods, resolve_id};

/// Why a figure could not be read; the collector logs it and reports the figure as absent.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected content in {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("cannot read the network devices of namespace {}", netns.display())]
    Net {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// ListContainerStats' filter; all set parts must match.
#[derive(Debug, Default, Clone)]
pub struct ContainerStatsFilter {
    /// A full id or a unique prefix.
    pub id: Option<String>,
    /// A full pod id or a unique prefix.
    pub pod_id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// ListPodSandboxStats' filter; all set parts must match.
#[derive(Debug, Default, Clone)]
pub struct PodStatsFilter {
    pub id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

pub struct Stats {
    pods: Arc<Pods>,
    containers: Arc<Containers>,
    core: Arc<Collector>,
    descriptors: Vec<Descriptor>,
}

impl Stats {
    /// Stats of the host: writable layers under `<root>/containers`, metrics described for `controllers` (the
    /// cgroup v2 controllers pod cgroups can use).
    pub fn new(
        pods: Arc<Pods>,
        containers: Arc<Containers>,
        root: &Path,
        controllers: &[String],
    ) -> Stats {
        let core = Collector::new(Box::new(RealFs), root.join("containers"));
        Stats {
            pods,
            containers,
            core: Arc::new(core),
            descriptors: cadvisor::descriptors(controllers),
        }
    }

    /// ContainerStats: any container that exists, whatever its state.
    pub async fn container(&self, id: &str) -> Result<ContainerStats> {
        let records: Vec<ContainerRecord> =
            self.snapshot().into_iter().flat_map(|(_, c)| c).collect();
        let not_found = || Error::NotFound {
            kind: "container",
            field: "container_id",
            id: id.to_string(),
        };
        let full = resolve_id(
            records.iter().map(|r| &r.id),
            id,
            "container_id",
            "container",
        )?
        .ok_or_else(not_found)?;
        let rec = records
            .iter()
            .find(|r| r.id == full)
            .ok_or_else(not_found)?;
        let mut out = self.collect_containers(vec![container_source(rec)]).await?;
        out.pop().ok_or_else(not_found)
    }

    /// ListContainerStats: the running containers matching the filter (an id matching none: none).
    pub async fn list_containers(&self, f: &ContainerStatsFilter) -> Result<Vec<ContainerStats>> {
        let snapshot = self.snapshot();
        let pod = Wanted::resolve(
            &f.pod_id,
            snapshot.iter().map(|(p, _)| &p.id),
            "filter.pod_sandbox_id",
            "pod sandbox",
        )?;
        let records: Vec<ContainerRecord> = snapshot
            .into_iter()
            .filter(|(p, _)| pod.admits(&p.id))
            .flat_map(|(_, c)| c)
            .collect();
        let id = Wanted::resolve(
            &f.id,
            records.iter().map(|r| &r.id),
            "filter.id",
            "container",
        )?;
        let chosen = records
            .iter()
            .filter(|r| r.state == ContainerState::Running && id.admits(&r.id))
            .filter(|r| labels_match(&f.labels, &r.config.labels))
            .map(container_source)
            .collect();
        self.collect_containers(chosen).await
    }

    /// PodSandboxStats: any pod that exists (a pod that is not ready has no network stats).
    pub async fn pod(&self, id: &str) -> Result<PodStats> {
        let pod = self.pods.get(id)?;
        let containers = self.containers.snapshot_of_pod(&pod.id);
        let mut out = self
            .collect_pods(vec![pod_source(&pod, &containers)])
            .await?;
        out.pop().ok_or_else(|| Error::NotFound {
            kind: "pod sandbox",
            field: "pod_sandbox_id",
            id: id.to_string(),
        })
    }

    /// ListPodSandboxStats: the ready pods matching the filter, with their running containers.
    pub async fn list_pods(&self, f: &PodStatsFilter) -> Result<Vec<PodStats>> {
        let sources = self.ready_pods(f)?;
        self.collect_pods(sources).await
    }

    /// ListMetricDescriptors: fixed at startup.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// ListPodSandboxMetrics: every ready pod's network and its running containers' metrics.
    pub async fn pod_metrics(&self) -> Result<Vec<PodMetrics>> {
        let sources = self.ready_pods(&PodStatsFilter::default())?;
        let pods = self.collect_pods(sources).await?;
        Ok(pods
            .iter()
            .map(|p| cadvisor::pod_metrics(&self.descriptors, p))
            .collect())
    }

    /// Every listed pod (not those being created) with its containers, as last saved.
    fn snapshot(&self) -> Vec<(PodRecord, Vec<ContainerRecord>)> {
        self.pods
            .list(&PodFilter::default())
            .into_iter()
            .map(|pod| {
                let containers = self.containers.snapshot_of_pod(&pod.id);
                (pod, containers)
            })
            .collect()
    }

    fn ready_pods(&self, f: &PodStatsFilter) -> Result<Vec<PodSource>> {
        let snapshot = self.snapshot();
        let id = Wanted::resolve(
            &f.id,
            snapshot.iter().map(|(p, _)| &p.id),
            "filter.id",
            "pod sandbox",
        )?;
        Ok(snapshot
            .iter()
            .filter(|(p, _)| id.admits(&p.id) && labels_match(&f.labels, &p.spec.labels))
            .filter(|(p, _)| p.observed_state() == PodState::Ready)
            .map(|(p, c)| pod_source(p, c))
            .collect())
    }

    async fn collect_containers(
        &self,
        sources: Vec<ContainerSource>,
    ) -> Result<Vec<ContainerStats>> {
        let core = self.core.clone();
        let out = tokio::task::spawn_blocking(move || core.containers(&sources))
            .await
            .map_err(|e| Error::sandbox("collect container stats", e))?;
        Ok(self.refresh_in_background(out))
    }

    async fn collect_pods(&self, sources: Vec<PodSource>) -> Result<Vec<PodStats>> {
        let core = self.core.clone();
        let out = tokio::task::spawn_blocking(move || core.pods(&sources))
            .await
            .map_err(|e| Error::sandbox("collect pod sandbox stats", e))?;
        Ok(self.refresh_in_background(out))
    }

    /// Schedules the walk of stale writable layers and returns the stats.
    fn refresh_in_background<T>(&self, out: Collected<T>) -> T {
        if !out.stale_layers.is_empty() {
            let core = self.core.clone();
            let dirs = out.stale_layers;
            tokio::task::spawn_blocking(move || core.refresh_layers(&dirs));
        }
        out.stats
    }
}

/// An id filter resolved against the ids that exist.
enum Wanted {
    Any,
    One(String),
    /// The filter names no existing id: nothing matches.
    Nothing,
}

impl Wanted {
    /// A full id or unique prefix; ambiguous is InvalidArgument naming `field`.
    fn resolve<'a>(
        want: &Option<String>,
        ids: impl Iterator<Item = &'a String> + Clone,
        field: &'static str,
        kind: &str,
    ) -> Result<Wanted> {
        let Some(want) = want else {
            return Ok(Wanted::Any);
        };
        Ok(match resolve_id(ids, want, field, kind)? {
            Some(full) => Wanted::One(full),
            None => Wanted::Nothing,
        })
    }

    fn admits(&self, id: &str) -> bool {
        match self {
            Wanted::Any => true,
            Wanted::One(want) => want == id,
            Wanted::Nothing => false,
        }
    }
}

fn labels_match(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn container_info(rec: &ContainerRecord) -> ContainerInfo {
    ContainerInfo {
        id: rec.id.clone(),
        pod_id: rec.pod_id.clone(),
        name: rec.config.name.clone(),
        attempt: rec.config.attempt,
        image: rec.config.image.image.clone(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
    }
}

fn container_source(rec: &ContainerRecord) -> ContainerSource {
    ContainerSource {
        info: container_info(rec),
        cgroup_dir: rec.cgroup_abs.clone(),
        upper_dir: rec.bundle.join("upper"),
    }
}

/// A pod with its running containers; the network namespace only while the pod is ready (it is unbound on Stop).
fn pod_source(rec: &PodRecord, containers: &[ContainerRecord]) -> PodSource {
    let ready = rec.observed_state() == PodState::Ready;
    PodSource {
        info: PodInfo {
            id: rec.id.clone(),
            name: rec.spec.name.clone(),
            namespace: rec.spec.namespace.clone(),
            uid: rec.spec.uid.clone(),
            attempt: rec.spec.attempt,
            labels: rec.spec.labels.clone(),
            annotations: rec.spec.annotations.clone(),
        },
        cgroup_dir: rec.cgroup.as_ref().map(|c| c.pod_abs.clone()),
        netns: if ready { rec.netns().cloned() } else { None },
        containers: containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(container_source)
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn id_filters_take_full_ids_and_unique_prefixes() {
        let ids: Vec<String> = ["abc1", "abd2", "ff"].map(String::from).to_vec();
        let resolve = |w: Option<&str>| {
            Wanted::resolve(&w.map(String::from), ids.iter(), "filter.id", "container")
        };
        assert!(resolve(None).unwrap().admits("anything"));
        let one = resolve(Some("abd")).unwrap();
        assert!(one.admits("abd2") && !one.admits("abc1"));
        assert!(resolve(Some("ff")).unwrap().admits("ff"));
        let none = resolve(Some("0000")).unwrap();
        assert!(ids.iter().all(|i| !none.admits(i)));
        let e = resolve(Some("ab")).err().unwrap();
        assert!(
            matches!(e, Error::InvalidArgument { ref field, .. } if field == "filter.id"),
            "{e}"
        );
    }

    #[test]
    fn label_selectors_are_anded() {
        let have: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into_iter()
            .collect();
        let want = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(labels_match(&want(&[]), &have));
        assert!(labels_match(
            &want(&[("app", "web"), ("tier", "front")]),
            &have
        ));
        assert!(!labels_match(
            &want(&[("app", "web"), ("tier", "back")]),
            &have
        ));
        assert!(!labels_match(&want(&[("zone", "a")]), &have));
    }
}
