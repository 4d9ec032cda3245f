//! Pod-sandbox helpers on [`Crius`]: request builders and RPC wrappers that remember pause pids.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crius_proto::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatus, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::Status;

use crate::config::Driver;
use crate::instance::Crius;

/// The namespace every pod of the harness is created in.
pub const NAMESPACE: &str = "e2e";

/// PodSandboxStatus(verbose) with its `info["info"]` parsed.
#[derive(Debug, Clone)]
pub struct PodStatus {
    pub status: PodSandboxStatus,
    /// `info["info"]` as JSON, `Null` when absent or not JSON.
    pub info: serde_json::Value,
    /// The raw info map.
    pub raw_info: HashMap<String, String>,
}

impl PodStatus {
    /// The pause pid from the verbose info.
    pub fn pid(&self) -> Option<i32> {
        self.info
            .get("pid")?
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
    }

    /// The pod's primary IP ("" when none).
    pub fn ip(&self) -> &str {
        self.status
            .network
            .as_ref()
            .map(|n| n.ip.as_str())
            .unwrap_or("")
    }

    pub fn is_ready(&self) -> bool {
        self.status.state == PodSandboxState::SandboxReady as i32
    }

    /// A string field of the verbose info.
    pub fn info_str(&self, key: &str) -> Option<&str> {
        self.info.get(key)?.as_str()
    }
}

/// Namespace options with the given modes.
pub fn namespaces(
    network: NamespaceMode,
    pid: NamespaceMode,
    ipc: NamespaceMode,
) -> NamespaceOption {
    NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        ..Default::default()
    }
}

impl Crius {
    /// A fresh unique pod uid (hex, no dashes, so it also fits systemd slice names).
    pub fn new_uid(&self) -> String {
        let n = self.uids.fetch_add(1, Ordering::Relaxed);
        format!("{:x}{:03x}{:04x}", std::process::id(), self.serial, n)
    }

    /// The cgroup_parent kubelet would pass for a pod with `uid`, under this instance's parent:
    /// `<parent>/pod<uid>` (cgroupfs) or `<parent stem>-pod<uid>.slice` (systemd).
    pub fn pod_cgroup_parent(&self, uid: &str) -> String {
        match self.driver {
            Driver::Cgroupfs => format!("{}/pod{uid}", self.cgroup_parent),
            Driver::Systemd => {
                let stem = self.cgroup_parent.trim_end_matches(".slice");
                format!("{stem}-pod{uid}.slice")
            }
        }
    }

    /// The absolute directory of [`Crius::pod_cgroup_parent`] on the cgroup2 mount.
    pub fn pod_cgroup_dir(&self, uid: &str) -> PathBuf {
        match self.driver {
            Driver::Cgroupfs => self.cgroup_dir().join(format!("pod{uid}")),
            Driver::Systemd => self.cgroup_dir().join(self.pod_cgroup_parent(uid)),
        }
    }

    /// A pod config as kubelet would send it: metadata (`name`, namespace "e2e", a unique uid, attempt 0),
    /// hostname = `name`, a log directory in the instance's dir, `linux.cgroup_parent` under the instance's
    /// parent, namespaces network POD, pid CONTAINER, ipc POD.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let uid = self.new_uid();
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: NAMESPACE.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self.paths.log_dir.join(&uid).to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.pod_cgroup_parent(&uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(
                        NamespaceMode::Pod,
                        NamespaceMode::Container,
                        NamespaceMode::Pod,
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox (runtime handler ""), then a verbose status to remember the pause pid. Returns the id.
    pub async fn run_pod(&self, config: PodSandboxConfig) -> Result<String, Status> {
        let id = self
            .runtime()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        self.pod_status(&id).await?;
        Ok(id)
    }

    /// PodSandboxStatus(verbose = true); remembers the pause pid for the leak check.
    pub async fn pod_status(&self, id: &str) -> Result<PodStatus, Status> {
        let resp = self
            .runtime()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info = resp
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let status = PodStatus {
            status: resp
                .status
                .ok_or_else(|| Status::internal("e2e: PodSandboxStatus without a status"))?,
            info,
            raw_info: resp.info,
        };
        if let Some(pid) = status.pid().filter(|&p| p > 0) {
            self.track_pause_pid(pid);
        }
        Ok(status)
    }

    pub async fn stop_pod(&self, id: &str) -> Result<(), Status> {
        self.runtime()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await?;
        Ok(())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<(), Status> {
        self.runtime()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Stop then Remove, as kubelet does; panics on an error.
    pub async fn stop_and_remove(&self, id: &str) {
        self.stop_pod(id)
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
        self.remove_pod(id)
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
    }

    pub async fn list_pods(
        &self,
        filter: Option<PodSandboxFilter>,
    ) -> Result<Vec<PodSandbox>, Status> {
        Ok(self
            .runtime()
            .list_pod_sandbox(ListPodSandboxRequest { filter })
            .await?
            .into_inner()
            .items)
    }

    /// `<state>/<kind>/<id>` for kind `netns`, `ipcns`, `utsns`, `pidns`.
    pub fn ns_file(&self, kind: &str, id: &str) -> PathBuf {
        self.paths.state.join(kind).join(id)
    }

    /// `<state>/pods/<id>`.
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.paths.state.join("pods").join(id)
    }
}

/// Runs `f` on a new thread that has joined the network namespace at `netns` (the rest of the process stays
/// where it is). Sockets created by `f` belong to that namespace.
pub fn spawn_in_netns<T, F>(netns: &Path, f: F) -> std::thread::JoinHandle<anyhow::Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held. For state that
/// changes asynchronously (a process noticed dead), never to paper over a flaky result.
pub async fn wait_until(timeout: std::time::Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
