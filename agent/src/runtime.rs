//! The runtime: configuration, state store, cgroup manager and the domain services, built once at startup.

use std::path::PathBuf;
use std::sync::Arc;

use crius_proto::v1;
use crius_sandbox::cgroup::CgroupManager;

use crate::config::Config;
use crate::container::service::Containers;
use crate::error::{Error, Result};
use crate::image::Images;
use crate::image::service::PullSettings;
use crate::pod::Pods;
use crate::readiness;
use crate::store::Store;

/// The runtime handlers RunPodSandbox accepts: the default ("") and two names for it that RuntimeClasses use.
pub const RUNTIME_HANDLERS: [&str; 3] = ["", "crius", "runc"];

/// Limits crius can set, by the cgroup v2 controller that enforces them.
pub const LIMIT_CONTROLLERS: [&str; 6] = ["cpu", "cpuset", "memory", "pids", "hugetlb", "io"];

pub struct Runtime {
    pub config: Config,
    pub pods: Arc<Pods>,
    pub containers: Arc<Containers>,
    pub images: Arc<Images>,
    pub stats: crate::stats::Stats,
    /// What the cgroup tree allows, said once at startup and in Status.
    pub cgroup_report: CgroupReport,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CgroupReport {
    pub mount: Option<PathBuf>,
    pub usable_controllers: Vec<String>,
    pub unenforceable: Vec<String>,
    pub problem: Option<String>,
}

impl CgroupReport {
    pub fn of(cg: &std::result::Result<CgroupManager, String>) -> CgroupReport {
        match cg {
            Ok(m) => {
                let usable = m.usable_controllers();
                let unenforceable = LIMIT_CONTROLLERS
                    .iter()
                    .filter(|c| !usable.iter().any(|u| u == *c))
                    .map(|c| c.to_string())
                    .collect();
                CgroupReport {
                    mount: Some(m.root().to_owned()),
                    usable_controllers: usable,
                    unenforceable,
                    problem: None,
                }
            }
            Err(e) => CgroupReport {
                mount: None,
                usable_controllers: Vec::new(),
                unenforceable: LIMIT_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
                problem: Some(e.clone()),
            },
        }
    }
}

/// The cgroup v2 manager for this config: the configured mount, or detection.
pub fn cgroup_manager(config: &Config) -> std::result::Result<CgroupManager, String> {
    let m = if config.cgroup.mount.as_os_str().is_empty() {
        CgroupManager::detect()
    } else {
        CgroupManager::with_root(config.cgroup.mount.clone())
    };
    m.map_err(|e| crate::error::chain(&e))
}

impl Runtime {
    pub async fn new(config: Config) -> Result<Runtime> {
        std::fs::create_dir_all(&config.root)
            .map_err(|e| Error::sandbox(format!("create {}", config.root.display()), e))?;
        let store = Arc::new(Store::open(&config.root)?);
        let cg = cgroup_manager(&config);
        let cgroup_report = CgroupReport::of(&cg);
        match &cgroup_report.problem {
            Some(p) => {
                tracing::warn!(problem = %p, "no cgroup v2 hierarchy: pods run without cgroups")
            }
            None if !cgroup_report.unenforceable.is_empty() => tracing::warn!(
                mount = ?cgroup_report.mount,
                usable = ?cgroup_report.usable_controllers,
                "cgroup v2 controllers missing: {} limits cannot be enforced on this host",
                cgroup_report.unenforceable.join(", ")
            ),
            None => tracing::info!(mount = ?cgroup_report.mount, "cgroup v2 with all controllers"),
        }
        let images = {
            let (root, store) = (config.root.join("images"), store.clone());
            let settings = PullSettings {
                registries: config.registries.clone(),
                progress_timeout: config.image_pull_progress_timeout.0,
                max_concurrent_downloads: config.max_concurrent_downloads,
            };
            let images = tokio::task::spawn_blocking(move || Images::open(root, store, settings))
                .await
                .map_err(|e| Error::sandbox("open the image store", e))??;
            Arc::new(images)
        };
        let container_cgroups = cgroup_manager(&config).ok();
        let pods = Arc::new(Pods::new(config.clone(), store.clone(), cg.ok()));
        pods.recover().await?;
        let containers = Arc::new(Containers::new(
            config.clone(),
            store,
            container_cgroups,
            pods.clone(),
            images.clone(),
        ));
        containers.recover().await?;
        tokio::spawn(containers.clone().watch_exits());
        let stats = crate::stats::Stats::new(
            pods.clone(),
            containers.clone(),
            &config.root,
            &cgroup_report.usable_controllers,
        );
        Ok(Runtime {
            config,
            pods,
            containers,
            images,
            stats,
            cgroup_report,
        })
    }

    /// RunPodSandbox: the pod, then its monitor, so that the pod's first CreateContainer costs no more than
    /// the others. A pod whose monitor cannot start is removed again.
    pub async fn run_pod(&self, spec: crate::pod::spec::PodSpec) -> Result<String> {
        let id = self.pods.run(spec).await?;
        let started = match self.pods.get(&id) {
            Ok(pod) => self.containers.start_monitor(&pod.pod_dir).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            if let Err(cleanup) = self.remove_pod(&id).await {
                tracing::warn!(pod = %id, error = %cleanup, "cannot remove the pod whose monitor failed");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// StopPodSandbox: the containers are killed (and their exits recorded) before the pod's own teardown.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        match self.pods.get(id) {
            Ok(pod) => {
                self.containers.stop_pod(&pod.id, &pod.pod_dir).await?;
                self.pods.stop(&pod.id).await
            }
            // Whatever the pod service says about an unknown or malformed id stands.
            Err(_) => self.pods.stop(id).await,
        }
    }

    /// RemovePodSandbox: the containers go first.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        match self.pods.get(id) {
            Ok(pod) => {
                self.containers.remove_pod(&pod.id, &pod.pod_dir).await?;
                self.pods.remove(&pod.id).await
            }
            Err(_) => self.pods.remove(id).await,
        }
    }

    /// Status: each condition that is false says why (and is logged when it changes); verbose adds the details.
    pub fn status(&self, verbose: bool) -> v1::StatusResponse {
        let runtime = readiness::runtime(&self.config);
        let (network, network_detail) = readiness::network(self.pods.network());
        readiness::log_changes(&[&runtime, &network]);
        let condition = |c: readiness::Condition| v1::RuntimeCondition {
            r#type: c.kind.into(),
            status: c.ready,
            reason: c.reason,
            message: c.message,
        };
        let info = if verbose {
            let info = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "root": self.config.root,
                "state": self.config.state,
                "cgroupDriver": self.config.cgroup.driver,
                "cgroup": self.cgroup_report,
                "runtime": if runtime.ready { "ready".to_owned() } else { runtime.message.clone() },
                "network": network_detail,
                "cniPluginDirs": self.config.network.plugin_dirs,
                "config": self.config,
            });
            [("info".to_owned(), info.to_string())]
                .into_iter()
                .collect()
        } else {
            Default::default()
        };
        // What crius implements, truthfully: supplemental_groups_policy (Strict and Merge, ContainerStatus.user).
        // Not yet: user namespaces (refused at CreateContainer) and recursive read-only mounts (the remount is
        // not recursive), so both stay false and kubelet does not ask for them.
        let features = v1::RuntimeHandlerFeatures {
            recursive_read_only_mounts: false,
            user_namespaces: false,
        };
        v1::StatusResponse {
            status: Some(v1::RuntimeStatus {
                conditions: vec![condition(runtime), condition(network)],
            }),
            info,
            runtime_handlers: RUNTIME_HANDLERS
                .iter()
                .map(|name| v1::RuntimeHandler {
                    name: (*name).into(),
                    features: Some(features),
                })
                .collect(),
            features: Some(v1::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }
    }
}
