//! The container lifecycle: CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, ReopenContainerLog, driven through the pod's monitor. Records are committed before each RPC
//! returns; the state of a running container is the monitor's, refreshed when asked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crius_sandbox::cgroup::{self, CgroupDriver, CgroupManager, CreatedCgroup};
use crius_sandbox::monitor::{Request, Response, Status};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::broadcast;

use super::config::ContainerConfig;
use super::events::{self, ContainerEvent, EventKind};
use super::monitor::MonitorHandle;
use super::record::{ContainerRecord, ContainerState, UserIds};
use super::spec::{self, SandboxView, SpecInputs};
use super::user::LayerUsers;
use crate::config::{Config, Driver, monitor_binary};
use crate::error::{Error, Result};
use crate::image::Images;
use crate::pod::record::PodState;
use crate::pod::{Pods, now_nanos};
use crate::store::{CONTAINERS, Store};

/// How long a killed container may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A filter for ListContainers; all set parts must match.
#[derive(Debug, Default, Clone)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub pod_id: Option<String>,
    pub state: Option<ContainerState>,
    pub labels: BTreeMap<String, String>,
}

type NameKey = (String, String, u32);

pub struct Containers {
    config: Config,
    driver: CgroupDriver,
    store: Arc<Store>,
    cgroups: Option<CgroupManager>,
    pods: Arc<Pods>,
    images: Arc<Images>,
    records: Mutex<HashMap<String, ContainerRecord>>,
    names: Mutex<HashMap<NameKey, String>>,
    /// One lifecycle operation per container at a time.
    busy: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    events: broadcast::Sender<ContainerEvent>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Containers {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        cgroups: Option<CgroupManager>,
        pods: Arc<Pods>,
        images: Arc<Images>,
    ) -> Containers {
        let driver = match config.cgroup.driver {
            Driver::Cgroupfs => CgroupDriver::Cgroupfs,
            Driver::Systemd => CgroupDriver::Systemd,
        };
        Containers {
            config,
            driver,
            store,
            cgroups,
            pods,
            images,
            records: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            events: events::channel(),
        }
    }

    pub(super) fn events(&self) -> &broadcast::Sender<ContainerEvent> {
        &self.events
    }

    /// The records of a pod's containers as last seen (no monitor round trip), for event payloads.
    pub fn snapshot_of_pod(&self, pod_id: &str) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> = lock(&self.records)
            .values()
            .filter(|r| r.pod_id == pod_id && r.state != ContainerState::Creating)
            .cloned()
            .collect();
        v.sort_by_key(|r| r.created_at);
        v
    }

    /// Loads the records of a previous run; a CreateContainer cut short by a crash is undone.
    pub async fn recover(&self) -> Result<()> {
        for rec in self.store.list::<ContainerRecord>(CONTAINERS)? {
            if rec.state == ContainerState::Creating {
                tracing::warn!(container = %rec.id, "undoing a CreateContainer interrupted by a restart");
                self.destroy(&rec).await?;
                continue;
            }
            lock(&self.names).insert(name_key(&rec.pod_id, &rec.config), rec.id.clone());
            lock(&self.records).insert(rec.id.clone(), rec);
        }
        Ok(())
    }

    /// Commits the record; a state change publishes its event (after the commit, so a subscriber that acts on it
    /// finds the new state).
    fn save(&self, rec: &ContainerRecord) -> Result<()> {
        self.store.put(CONTAINERS, &rec.id, rec)?;
        let before = lock(&self.records)
            .insert(rec.id.clone(), rec.clone())
            .map(|r| r.state);
        if let Some(kind) = events::transition(before, rec.state) {
            let _ = self.events.send(events::event(rec, kind));
        }
        Ok(())
    }

    fn slot(&self, id: &str) -> Arc<AsyncMutex<()>> {
        lock(&self.busy).entry(id.to_string()).or_default().clone()
    }

    /// The full id for `id` (a full id or a unique prefix).
    fn resolve(&self, id: &str) -> Result<Option<String>> {
        let records = lock(&self.records);
        crate::pod::resolve_id(records.keys(), id, "container_id", "container")
    }

    fn get_record(&self, id: &str) -> Result<ContainerRecord> {
        let full = self.resolve(id)?.ok_or_else(|| Error::NotFound {
            kind: "container",
            field: "container_id",
            id: id.to_string(),
        })?;
        lock(&self.records)
            .get(&full)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "container",
                field: "container_id",
                id: id.to_string(),
            })
    }

    /// CreateContainer: the container is Created (its init waits for StartContainer) when this returns.
    pub async fn create(&self, pod_id: &str, config: ContainerConfig) -> Result<String> {
        let pod = self.pods.get(pod_id)?;
        if pod.observed_state() != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let image = self
            .images
            .status(&config.image.image)?
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                field: "config.image.image",
                id: config.image.image.clone(),
            })?;
        let key = name_key(&pod.id, &config);
        let id = crate::pod::new_id();
        {
            let mut names = lock(&self.names);
            if let Some(existing) = names.get(&key) {
                return Err(Error::AlreadyExists {
                    kind: "container",
                    name: format!(
                        "{} (attempt {}) in pod {}",
                        config.name, config.attempt, pod.id
                    ),
                    id: existing.clone(),
                });
            }
            names.insert(key.clone(), id.clone());
        }
        let bundle = self.config.root.join("containers").join(&id);
        let log_path = (!pod.spec.log_directory.is_empty() && !config.log_path.is_empty())
            .then(|| Path::new(&pod.spec.log_directory).join(&config.log_path));
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config,
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            chain_ids: image.chain_ids.clone(),
            state: ContainerState::Creating,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            bundle: bundle.clone(),
            pod_dir: pod.pod_dir.clone(),
            cgroup: None,
            cgroup_abs: None,
            cgroup_created: CreatedCgroup::default(),
            log_path,
            stop_signal: spec::stop_signal(&image)
                .and_then(|s| signal_number(&s))
                .unwrap_or(libc::SIGTERM),
            user: None,
        };
        // Recorded before anything is made: a crash from here on is undone at the next start.
        self.save(&rec)?;
        let slot = self.slot(&id);
        let _busy = slot.lock().await;
        match self.create_steps(&mut rec, &pod, &image).await {
            Ok(()) => {
                rec.state = ContainerState::Created;
                self.save(&rec)?;
                tracing::info!(container = %id, pod = %rec.pod_id, pid = rec.pid, "container created");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %crate::error::chain(&e), "container creation failed; undoing");
                if let Err(undo) = self.destroy(&rec).await {
                    tracing::error!(container = %id, error = %crate::error::chain(&undo), "undo of a failed create is incomplete");
                }
                Err(e)
            }
        }
    }

    async fn create_steps(
        &self,
        rec: &mut ContainerRecord,
        pod: &crate::pod::record::PodRecord,
        image: &crate::image::ImageRecord,
    ) -> Result<()> {
        let io = |op: String| move |e: std::io::Error| Error::sandbox(op, e);
        for d in ["rootfs", "upper", "work"] {
            let p = rec.bundle.join(d);
            std::fs::create_dir_all(&p).map_err(io(format!("create {}", p.display())))?;
        }
        // The container's cgroup: a child of the pod's, next to the sandbox's.
        let mut cgroup_path = String::new();
        if let (Some(cg), Some(pod_cg)) = (&self.cgroups, &pod.cgroup) {
            let path = cgroup::sandbox_child(self.driver, &pod_cg.pod, &rec.id);
            rec.cgroup = Some(path.clone());
            rec.cgroup_abs = Some(cg.absolute(&path));
            self.save(rec)?;
            let created = cg
                .create(&path)
                .map_err(|e| Error::sandbox(format!("create container cgroup {path}"), e))?;
            rec.cgroup_created = created;
            self.save(rec)?;
            let resources = spec::resources(&rec.config);
            let unenforced = cg
                .apply(&path, &resources)
                .map_err(|e| Error::invalid("config.linux.resources", crate::error::chain(&e)))?;
            if !unenforced.is_empty() {
                tracing::info!(container = %rec.id, limits = ?unenforced.iter().map(|u| &u.limit).collect::<Vec<_>>(), "limits not enforceable on this host");
            }
            cgroup_path = path.as_str().to_string();
        }
        let layers: Vec<PathBuf> = image
            .chain_ids
            .iter()
            .rev()
            .map(|c| self.images.layer_dir(c))
            .collect();
        let users = LayerUsers::new(layers.clone());
        let target_pid = match rec.config.security.namespaces.target_id.as_str() {
            "" => None,
            target => Some(self.get_record(target)?.pid),
        };
        let rootfs = rec.bundle.join("rootfs");
        let spec = spec::build(&SpecInputs {
            id: &rec.id,
            config: &rec.config,
            image,
            sandbox: SandboxView {
                pod_id: &pod.id,
                pod: &pod.spec,
                namespaces: &pod.namespaces,
                pod_dir: &pod.pod_dir,
                shm: pod.shm.as_deref(),
                target_pid,
            },
            rootfs: &rootfs,
            cgroup_path: &cgroup_path,
            users: &users,
        })?;
        rec.user = spec.process().as_ref().map(|p| UserIds {
            uid: p.user().uid(),
            gid: p.user().gid(),
            supplemental_groups: p.user().additional_gids().clone().unwrap_or_default(),
        });
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::sandbox("serialize the OCI spec", e))?;
        crius_sandbox::mount::write_file_atomic(&rec.bundle.join("config.json"), &json, 0o600)
            .map_err(|e| Error::sandbox("write config.json", e))?;
        if rec.log_path.is_some() {
            log_parent_beneath(Path::new(&pod.spec.log_directory), &rec.config.log_path)?;
        }
        let monitor = MonitorHandle::new(&pod.pod_dir);
        monitor.ensure_running(&monitor_binary()).await?;
        let reply = monitor
            .expect_ok(
                &Request::Create {
                    id: rec.id.clone(),
                    bundle: rec.bundle.clone(),
                    rootfs: crius_sandbox::container::Rootfs {
                        lower: layers,
                        upper: rec.bundle.join("upper"),
                        work: rec.bundle.join("work"),
                    },
                    cgroup_dir: rec.cgroup_abs.clone(),
                    log_path: rec.log_path.clone(),
                    stdin: rec.config.stdin,
                    stdin_once: rec.config.stdin_once,
                    tty: rec.config.tty,
                },
                "create the container",
            )
            .await?;
        if let Response::Created { pid } = reply {
            rec.pid = pid;
        }
        Ok(())
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<()> {
        let mut rec = self.get_record(id)?;
        let slot = self.slot(&rec.id);
        let _busy = slot.lock().await;
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                rec.id, rec.state
            )));
        }
        let monitor = MonitorHandle::new(&rec.pod_dir);
        match monitor.call(&Request::Start { id: rec.id.clone() }).await? {
            Response::Error { message } => {
                rec.state = ContainerState::Exited;
                rec.started_at = now_nanos();
                rec.finished_at = rec.started_at;
                rec.exit_code = 128;
                rec.reason = "StartError".into();
                rec.message = message.clone();
                self.refresh_one(&mut rec).await;
                self.save(&rec)?;
                Err(Error::sandbox(
                    format!("start container {}", rec.id),
                    message,
                ))
            }
            _ => {
                rec.state = ContainerState::Running;
                rec.started_at = now_nanos();
                self.save(&rec)?;
                tracing::info!(container = %rec.id, "container started");
                Ok(())
            }
        }
    }

    /// StopContainer: the stop signal, then after `timeout` SIGKILL of the whole cgroup. Unknown ids succeed.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let rec = match self.get_record(id) {
            Ok(r) => r,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let slot = self.slot(&rec.id);
        let _busy = slot.lock().await;
        self.stop_locked(&rec.id, timeout).await
    }

    async fn stop_locked(&self, id: &str, timeout: Duration) -> Result<()> {
        let mut rec = self.get_record(id)?;
        self.refresh_one(&mut rec).await;
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            self.save(&rec)?;
            return Ok(());
        }
        let monitor = MonitorHandle::new(&rec.pod_dir);
        if rec.state == ContainerState::Running && !timeout.is_zero() {
            let _ = monitor
                .call(&Request::Signal {
                    id: rec.id.clone(),
                    signal: rec.stop_signal,
                })
                .await;
            if self.wait_exit(&mut rec, timeout).await {
                return self.save(&rec);
            }
        }
        // The whole cgroup: the init and everything it (or an exec) started.
        if let (Some(cg), Some(path)) = (&self.cgroups, &rec.cgroup) {
            cg.kill(path)
                .map_err(|e| Error::sandbox(format!("kill cgroup {path}"), e))?;
        }
        let _ = monitor
            .call(&Request::Signal {
                id: rec.id.clone(),
                signal: libc::SIGKILL,
            })
            .await;
        if !self.wait_exit(&mut rec, KILL_WAIT).await {
            return Err(Error::Timeout {
                op: "StopContainer (after SIGKILL)",
                after: KILL_WAIT,
            });
        }
        self.save(&rec)
    }

    /// Polls the monitor until the container has exited or `timeout` passed.
    async fn wait_exit(&self, rec: &mut ContainerRecord, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh_one(rec).await;
            if rec.state == ContainerState::Exited {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// RemoveContainer: kills it if it runs, then removes its cgroup, bundle and record. Unknown ids succeed.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let rec = match self.get_record(id) {
            Ok(r) => r,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let slot = self.slot(&rec.id);
        let _busy = slot.lock().await;
        self.stop_locked(&rec.id, Duration::ZERO).await?;
        let rec = self.get_record(&rec.id)?;
        self.destroy(&rec).await?;
        lock(&self.busy).remove(&rec.id);
        tracing::info!(container = %rec.id, "container removed");
        Ok(())
    }

    /// Removes every part of a container that exists, then its record and name. Idempotent.
    async fn destroy(&self, rec: &ContainerRecord) -> Result<()> {
        let monitor = MonitorHandle::new(&rec.pod_dir);
        if monitor.socket().exists() {
            let _ = monitor.call(&Request::Forget { id: rec.id.clone() }).await;
        }
        if let (Some(cg), Some(path)) = (&self.cgroups, &rec.cgroup) {
            let _ = cg.kill(path);
            if !rec.cgroup_created.dirs.is_empty() || cg.exists(path) {
                cg.remove_tree(path, KILL_WAIT)
                    .map_err(|e| Error::sandbox(format!("remove container cgroup {path}"), e))?;
            }
        }
        match std::fs::remove_dir_all(&rec.bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::sandbox(
                    format!("remove {}", rec.bundle.display()),
                    e,
                ));
            }
        }
        self.store.delete(CONTAINERS, &rec.id)?;
        if let Some(gone) = lock(&self.records).remove(&rec.id)
            && gone.state != ContainerState::Creating
        {
            let _ = self.events.send(events::event(&gone, EventKind::Deleted));
        }
        let key = name_key(&rec.pod_id, &rec.config);
        let mut names = lock(&self.names);
        if names.get(&key) == Some(&rec.id) {
            names.remove(&key);
        }
        Ok(())
    }

    /// Updates `rec` from its monitor (or, with the monitor gone, from its exit file).
    async fn refresh_one(&self, rec: &mut ContainerRecord) {
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            return;
        }
        let states = monitor_states(&rec.pod_dir).await;
        self.apply_states(rec, &states);
    }

    /// Brings every created or running container up to date with one monitor request per pod (not one per
    /// container), saving those whose state changed. Used by ListContainers and the exit watcher.
    pub(super) async fn refresh_live(&self) {
        let live: Vec<ContainerRecord> = lock(&self.records)
            .values()
            .filter(|r| matches!(r.state, ContainerState::Created | ContainerState::Running))
            .cloned()
            .collect();
        let mut by_pod: HashMap<PathBuf, Vec<ContainerRecord>> = HashMap::new();
        for rec in live {
            by_pod.entry(rec.pod_dir.clone()).or_default().push(rec);
        }
        for (pod_dir, recs) in by_pod {
            let states = monitor_states(&pod_dir).await;
            for mut rec in recs {
                // A container in the middle of a lifecycle call is that call's to update.
                let slot = self.slot(&rec.id);
                let Ok(_busy) = slot.try_lock() else {
                    continue;
                };
                let Ok(fresh) = self.get_record(&rec.id) else {
                    continue;
                };
                rec = fresh;
                let before = rec.state;
                self.apply_states(&mut rec, &states);
                if rec.state != before
                    && let Err(e) = self.save(&rec)
                {
                    tracing::warn!(container = %rec.id, error = %crate::error::chain(&e), "cannot record an exit");
                }
            }
        }
    }

    /// Updates `rec` from its monitor's answer (empty: no monitor), or from its exit file.
    fn apply_states(
        &self,
        rec: &mut ContainerRecord,
        states: &[crius_sandbox::monitor::ContainerState],
    ) {
        let exit = match states.iter().find(|c| c.id == rec.id) {
            Some(c) if c.status == Status::Exited => c.exit,
            Some(_) => return,
            // Not known to a live monitor, or no monitor: the durable exit record is the truth.
            None => std::fs::read(
                rec.pod_dir
                    .join(crius_sandbox::monitor::EXITS)
                    .join(&rec.id),
            )
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        };
        rec.state = ContainerState::Exited;
        match exit {
            Some(e) => {
                rec.exit_code = e.exit_code;
                rec.finished_at = e.finished_at;
            }
            None => {
                rec.exit_code = 255;
                rec.finished_at = now_nanos();
                rec.message = "the pod monitor is gone and recorded no exit".into();
            }
        }
        let oom = match (&self.cgroups, &rec.cgroup) {
            (Some(cg), Some(path)) => cg.oom_kills(path).ok().flatten().unwrap_or(0) > 0,
            _ => false,
        };
        if rec.reason.is_empty() {
            rec.reason = if oom {
                "OOMKilled".into()
            } else if rec.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
        }
    }

    /// The record, refreshed from the monitor.
    pub async fn status(&self, id: &str) -> Result<ContainerRecord> {
        let rec = self.get_record(id)?;
        // While a lifecycle call runs on it, the record is that call's to update: report it as it stands.
        let slot = self.slot(&rec.id);
        let Ok(_busy) = slot.try_lock() else {
            return Ok(rec);
        };
        let mut rec = self.get_record(&rec.id)?;
        let before = rec.state;
        self.refresh_one(&mut rec).await;
        if rec.state != before {
            self.save(&rec)?;
        }
        Ok(rec)
    }

    /// ListContainers.
    pub async fn list(&self, filter: &ContainerFilter) -> Result<Vec<ContainerRecord>> {
        self.refresh_live().await;
        let records: Vec<ContainerRecord> = lock(&self.records).values().cloned().collect();
        let mut out = Vec::new();
        for rec in records {
            if rec.state == ContainerState::Creating {
                continue;
            }
            if let Some(f) = &filter.id
                && !rec.id.starts_with(f.as_str())
            {
                continue;
            }
            if let Some(p) = &filter.pod_id
                && !rec.pod_id.starts_with(p.as_str())
            {
                continue;
            }
            if filter.state.is_some_and(|s| s != rec.state) {
                continue;
            }
            if !filter
                .labels
                .iter()
                .all(|(k, v)| rec.config.labels.get(k) == Some(v))
            {
                continue;
            }
            out.push(rec);
        }
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }

    /// UpdateContainerResources: the limits are written to the container's cgroup now, then recorded.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: super::config::ContainerResources,
    ) -> Result<()> {
        let mut rec = self.status(id).await?;
        let slot = self.slot(&rec.id);
        let _busy = slot.lock().await;
        if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}: only a created or running container can be updated",
                rec.id, rec.state
            )));
        }
        if let (Some(cg), Some(path)) = (&self.cgroups, &rec.cgroup) {
            let unenforced = cg
                .apply(path, &resources.to_cgroup())
                .map_err(|e| Error::invalid("linux", crate::error::chain(&e)))?;
            if !unenforced.is_empty() {
                tracing::info!(container = %rec.id, limits = ?unenforced.iter().map(|u| &u.limit).collect::<Vec<_>>(), "limits not enforceable on this host");
            }
        }
        rec.config.resources = Some(resources);
        self.save(&rec)?;
        tracing::info!(container = %rec.id, "resources updated");
        Ok(())
    }

    /// ReopenContainerLog: only for a running container.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        MonitorHandle::new(&rec.pod_dir)
            .expect_ok(&Request::ReopenLog { id: rec.id.clone() }, "reopen the log")
            .await?;
        Ok(())
    }

    /// For StopPodSandbox: every container of the pod is killed (the CRI wants them forcibly terminated), then the
    /// monitor goes.
    pub async fn stop_pod(&self, pod_id: &str, pod_dir: &Path) -> Result<()> {
        for id in self.ids_of(pod_id) {
            let slot = self.slot(&id);
            let _busy = slot.lock().await;
            self.stop_locked(&id, Duration::ZERO).await?;
        }
        let monitor = MonitorHandle::new(pod_dir);
        if monitor.socket().exists() {
            let _ = monitor.call(&Request::Shutdown).await;
            let _ = std::fs::remove_file(monitor.socket());
        }
        Ok(())
    }

    /// Starts the pod's monitor (RunPodSandbox) unless it already runs.
    pub async fn start_monitor(&self, pod_dir: &Path) -> Result<()> {
        MonitorHandle::new(pod_dir)
            .ensure_running(&monitor_binary())
            .await
    }

    /// For RemovePodSandbox: every container of the pod is removed.
    pub async fn remove_pod(&self, pod_id: &str, pod_dir: &Path) -> Result<()> {
        self.stop_pod(pod_id, pod_dir).await?;
        for id in self.ids_of(pod_id) {
            self.remove(&id).await?;
        }
        Ok(())
    }

    fn ids_of(&self, pod_id: &str) -> Vec<String> {
        lock(&self.records)
            .values()
            .filter(|r| r.pod_id == pod_id)
            .map(|r| r.id.clone())
            .collect()
    }
}

/// Creates the directories of `log_path` (relative, validated) below the pod's log directory, refusing any
/// that is a symbolic link: the log file must land in the pod's log directory, not wherever a link points
/// (the monitor opens the file itself with O_NOFOLLOW).
fn log_parent_beneath(log_dir: &Path, log_path: &str) -> Result<()> {
    let mut dir = log_dir.to_path_buf();
    let comps: Vec<&str> = log_path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for comp in comps.iter().take(comps.len().saturating_sub(1)) {
        dir.push(comp);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::invalid(
                    "config.log_path",
                    format!("{} is a symbolic link", dir.display()),
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::invalid(
                    "config.log_path",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::sandbox(format!("create {}", dir.display()), e)),
            },
            Err(e) => return Err(Error::sandbox(format!("inspect {}", dir.display()), e)),
        }
    }
    Ok(())
}

/// The states a pod's monitor reports; empty when it does not answer.
async fn monitor_states(pod_dir: &Path) -> Vec<crius_sandbox::monitor::ContainerState> {
    match MonitorHandle::new(pod_dir).call(&Request::State).await {
        Ok(Response::State { containers }) => containers,
        _ => Vec::new(),
    }
}

fn name_key(pod_id: &str, config: &ContainerConfig) -> NameKey {
    (pod_id.to_string(), config.name.clone(), config.attempt)
}

/// "SIGTERM", "TERM" or "15" as a signal number.
fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_dirs_are_made_beneath_and_symlinks_refused() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        log_parent_beneath(t.path(), "c/0.log").unwrap();
        assert!(t.path().join("c").is_dir());
        std::os::unix::fs::symlink(outside.path(), t.path().join("linked")).unwrap();
        let e = log_parent_beneath(t.path(), "linked/0.log").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = log_parent_beneath(t.path(), "linked/deeper/0.log").unwrap_err();
        assert!(e.to_string().contains("log_path"), "{e}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        log_parent_beneath(t.path(), "top.log").unwrap();
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(signal_number("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("term"), Some(libc::SIGTERM));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("0"), None);
        assert_eq!(signal_number("SIGNOPE"), None);
    }
}
