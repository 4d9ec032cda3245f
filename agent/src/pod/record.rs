//! The persisted record of a pod sandbox: its spec and how far its creation got, so that any step can be undone
//! after a crash.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crius_sandbox::cgroup::{CgroupPath, CreatedCgroup};
use serde::{Deserialize, Serialize};

use super::spec::PodSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// RunPodSandbox is in progress (or crashed midway: undone at the next start).
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PauseRecord {
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupRecord {
    pub pod: CgroupPath,
    pub sandbox: CgroupPath,
    pub pod_abs: PathBuf,
    pub sandbox_abs: PathBuf,
    /// Only these directories are removed again (kubelet may own the pod cgroup).
    pub created: CreatedCgroup,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The network config list in use (its exact JSON is also in the CNI cache).
    pub list: crius_cni::NetworkConfigList,
    pub origin: String,
    /// The final ADD result, once ADD succeeded.
    pub result: Option<serde_json::Value>,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub spec: PodSpec,
    pub state: PodState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub pod_dir: PathBuf,
    pub pause: Option<PauseRecord>,
    /// Bind-mounted namespaces by kind ("net", "ipc", "uts", "pid").
    pub namespaces: BTreeMap<String, PathBuf>,
    pub shm: Option<PathBuf>,
    pub cgroup: Option<CgroupRecord>,
    /// Set before CNI ADD runs, so a crash after it still leads to a DEL.
    pub network: Option<NetworkRecord>,
    pub unenforced: Vec<String>,
    pub oom_score_adj: String,
}

impl PodRecord {
    pub fn netns(&self) -> Option<&PathBuf> {
        self.namespaces.get("net")
    }

    pub fn ips(&self) -> &[IpAddr] {
        self.network
            .as_ref()
            .map(|n| n.ips.as_slice())
            .unwrap_or(&[])
    }

    /// Whether the pause process recorded is still the one running.
    pub fn pause_alive(&self) -> bool {
        self.pause
            .is_some_and(|p| crius_sandbox::process::is_alive(p.pid, p.start_time))
    }

    /// The state a client sees: a Ready pod whose pause died is NotReady.
    pub fn observed_state(&self) -> PodState {
        match self.state {
            PodState::Ready if !self.pause_alive() => PodState::NotReady,
            s => s,
        }
    }
}
