//! A CRI endpoint the benchmark did not start (`crius-bench cri --endpoint NAME=unix:///PATH`): any runtime
//! already running here, driven over its socket and nothing else. The benchmark pulls the workload image into
//! it (the local registry's busybox unless `--image` names another) and gives its pods what kubelet with the
//! cgroupfs driver would: an absolute `cgroup_parent` below `/crius-bench-<pid>-<name>`, which the benchmark
//! creates in every hierarchy and removes afterwards (so that runc never nests container cgroups in its own
//! cgroup), a log directory in a temp dir, and the namespace `crius-bench-<pid>`. The endpoint's network is its
//! own: no bridge is made for it. Its per-pod processes are not known; with `--pid` its daemon's memory and
//! descriptors are measured.

use std::path::PathBuf;

use anyhow::{Context, bail};
use crius_proto::v1::{PodSandbox, PodSandboxConfig, VersionRequest};
use tonic::transport::Channel;

use super::runtimes::{kubelet_pod_config, listed_pods, pods_cgroup_leaks};
use super::{Shared, host, pull};
use crate::{client, procfs};

/// What `--endpoint` (and `--pid`, `--image`) said about one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Its column in the report.
    pub name: String,
    pub socket: PathBuf,
    /// The daemon's pid, to measure its memory and descriptors.
    pub pid: Option<i32>,
    /// The workload image (busybox with `sleep`) as it can pull it; the local registry's when `None`.
    pub image: Option<String>,
}

impl EndpointSpec {
    /// `[NAME=]unix:///PATH` or `[NAME=]/PATH`; NAME (letters, digits, `-`) defaults to `endpoint<n>`.
    pub fn parse(arg: &str, n: usize) -> anyhow::Result<EndpointSpec> {
        let (name, address) = match arg.split_once('=') {
            Some((name, address)) => (name.to_string(), address),
            None => (format!("endpoint{n}"), arg),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("endpoint name {name:?}: letters, digits and '-' only");
        }
        let path = address.strip_prefix("unix://").unwrap_or(address);
        if !path.starts_with('/') {
            bail!("endpoint {arg:?}: not unix:///PATH");
        }
        Ok(EndpointSpec {
            name,
            socket: PathBuf::from(path),
            pid: None,
            image: None,
        })
    }

    /// Gives each endpoint its `--pid [NAME=]PID`: a named one to that endpoint, a bare one to the only one.
    pub fn assign_pids(specs: &mut [EndpointSpec], pids: &[String]) -> anyhow::Result<()> {
        for arg in pids {
            let (name, pid) = match arg.split_once('=') {
                Some((name, pid)) => (Some(name), pid),
                None => (None, arg.as_str()),
            };
            let pid: i32 = pid
                .parse()
                .with_context(|| format!("--pid {arg:?}: not a pid"))?;
            let target = match name {
                Some(name) => specs.iter_mut().find(|s| s.name == name),
                None if specs.len() == 1 => specs.first_mut(),
                None => bail!("--pid {arg}: say which endpoint (NAME=PID)"),
            };
            target
                .with_context(|| format!("--pid {arg}: no such endpoint"))?
                .pid = Some(pid);
        }
        Ok(())
    }
}

/// A connected endpoint and what was made for its pods.
pub(crate) struct Endpoint {
    pub(super) spec: EndpointSpec,
    channel: Channel,
    image: String,
    pods_cg: host::CgroupDirs,
    namespace: String,
    logs: tempfile::TempDir,
}

impl Endpoint {
    /// Connects, checks that it answers Version, makes the pods' cgroup parent and pulls the image.
    pub(super) async fn connect(shared: &Shared, spec: &EndpointSpec) -> anyhow::Result<Endpoint> {
        if let Some(pid) = spec.pid
            && !procfs::is_alive(pid)
        {
            bail!("endpoint {}: no process {pid}", spec.name);
        }
        let channel = client::connect(&spec.socket)
            .await
            .with_context(|| format!("cannot connect to {}", spec.socket.display()))?;
        client::runtime(channel.clone())
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .with_context(|| format!("{} does not answer Version", spec.socket.display()))?;
        let pid = std::process::id();
        let all: Vec<&host::Hierarchy> = shared.hierarchies.iter().collect();
        let pods_cg = host::CgroupDirs::create(&all, &format!("crius-bench-{pid}-{}", spec.name))?;
        let logs = tempfile::Builder::new()
            .prefix("crius-bench-logs-")
            .tempdir()?;
        let image = spec.image.clone().unwrap_or_else(|| shared.image.clone());
        pull(channel.clone(), &image).await?;
        Ok(Endpoint {
            spec: spec.clone(),
            channel,
            image,
            pods_cg,
            namespace: format!("crius-bench-{pid}"),
            logs,
        })
    }

    pub(super) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(super) fn image(&self) -> &str {
        &self.image
    }

    /// The parent of its pods' cgroups (`/crius-bench-<pid>-<name>`).
    pub(super) fn cgroup_parent(&self) -> &str {
        &self.pods_cg.path
    }

    pub(super) fn pod_config(&self, name: &str, uid: &str) -> PodSandboxConfig {
        kubelet_pod_config(
            name,
            &self.namespace,
            uid,
            &self.logs.path().join(uid),
            &format!("{}/pod{uid}", self.pods_cg.path),
        )
    }

    /// What it left once every pod of ours was removed: pods of our namespace still listed, what is left in the
    /// cgroups made for it ([`pods_cgroup_leaks`]); then those cgroups are removed. (Removing a pod
    /// removes its containers, and the endpoint may run other pods: only ours are looked at.)
    pub(super) async fn finish(mut self, recorded: &[i32]) -> Vec<String> {
        let mut rt = client::runtime(self.channel.clone());
        let namespace = &self.namespace;
        let ours = |p: &PodSandbox| {
            p.metadata
                .as_ref()
                .is_some_and(|m| &m.namespace == namespace)
        };
        let mut leaks = listed_pods(&mut rt, ours).await;
        crate::bench::containerd::reap(recorded);
        leaks.extend(pods_cgroup_leaks(&self.pods_cg));
        for d in self.pods_cg.remove() {
            leaks.push(format!("cannot remove cgroup {}", d.display()));
        }
        leaks
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_named_and_get_their_pids() {
        let mut specs = vec![
            EndpointSpec::parse("crius=unix:///run/crius/crius.sock", 1).unwrap(),
            EndpointSpec::parse("/run/containerd/containerd.sock", 2).unwrap(),
        ];
        assert_eq!(specs[0].name, "crius");
        assert_eq!(specs[0].socket, PathBuf::from("/run/crius/crius.sock"));
        assert_eq!(specs[1].name, "endpoint2");
        EndpointSpec::assign_pids(&mut specs, &["crius=42".into()]).unwrap();
        assert_eq!(specs[0].pid, Some(42));
        assert_eq!(specs[1].pid, None);
        assert!(EndpointSpec::assign_pids(&mut specs, &["7".into()]).is_err());
        assert!(EndpointSpec::assign_pids(&mut specs[..1], &["7".into()]).is_ok());
        assert_eq!(specs[0].pid, Some(7));
        assert!(EndpointSpec::parse("x=tcp://1.2.3.4:5", 1).is_err());
        assert!(EndpointSpec::parse("a/b=/x.sock", 1).is_err());
    }
}
