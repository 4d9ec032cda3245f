//! Pod sandboxes: the domain behind RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
//! ListPodSandbox.

pub mod files;
pub mod record;
mod run;
pub mod spec;
mod teardown;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crius_sandbox::cgroup::{CgroupDriver, CgroupManager};
use tokio::sync::Mutex as AsyncMutex;

use self::record::{PodRecord, PodState};
use self::spec::{PodKey, PodSpec};
use crate::config::{Config, Driver};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::store::{CGROUPS, PODS, Store};

/// A filter for ListPodSandbox; all set parts must match.
#[derive(Debug, Default, Clone)]
pub struct PodFilter {
    pub id: Option<String>,
    pub state: Option<PodState>,
    pub labels: BTreeMap<String, String>,
}

type PodSlot = Arc<AsyncMutex<PodRecord>>;

/// The pod sandbox service.
pub struct Pods {
    config: Config,
    driver: CgroupDriver,
    store: Arc<Store>,
    cgroups: Option<CgroupManager>,
    network: Network,
    pods: Mutex<HashMap<String, PodSlot>>,
    /// The last saved copy of every record: Status and List read these without waiting for a busy pod.
    snapshots: Mutex<HashMap<String, PodRecord>>,
    /// Reserved names: taken before any work starts so two identical requests cannot both proceed.
    names: Mutex<HashMap<PodKey, String>>,
    /// Serializes creating and removing cgroup directories (a shared parent may be created by one pod while another
    /// removes it).
    cgroup_lock: AsyncMutex<()>,
}

impl Pods {
    pub fn new(config: Config, store: Arc<Store>, cgroups: Option<CgroupManager>) -> Pods {
        let driver = match config.cgroup.driver {
            Driver::Cgroupfs => CgroupDriver::Cgroupfs,
            Driver::Systemd => CgroupDriver::Systemd,
        };
        let network = Network::new(&config);
        Pods {
            config,
            driver,
            store,
            cgroups,
            network,
            pods: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            cgroup_lock: AsyncMutex::new(()),
        }
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Loads the records of a previous run: finished pods come back as they were, pods caught halfway through
    /// RunPodSandbox are undone.
    pub async fn recover(&self) -> Result<()> {
        let records: Vec<PodRecord> = self.store.list(PODS)?;
        for mut rec in records {
            if rec.state == PodState::Creating {
                tracing::warn!(pod = %rec.id, "undoing a RunPodSandbox interrupted by a restart");
                let undone = match self.teardown(&mut rec).await {
                    Ok(()) => self.remove_leftovers(&mut rec).await,
                    Err(e) => Err(e),
                };
                match undone {
                    Ok(()) => continue,
                    Err(e) => {
                        // One stubborn leftover must not keep crius from starting: keep the pod NotReady, Stop and
                        // Remove retry what is left.
                        tracing::error!(pod = %rec.id, error = %crate::error::chain(&e), "cannot undo interrupted pod; keeping it NotReady");
                        rec.state = PodState::NotReady;
                        self.save(&rec)?;
                    }
                }
            }
            lock(&self.names)
                .entry(rec.spec.key())
                .or_insert_with(|| rec.id.clone());
            lock(&self.snapshots).insert(rec.id.clone(), rec.clone());
            lock(&self.pods).insert(rec.id.clone(), Arc::new(AsyncMutex::new(rec)));
        }
        Ok(())
    }

    /// RunPodSandbox: returns the id once the pod is Ready; on failure everything done so far is undone.
    pub async fn run(self: &Arc<Self>, mut spec: PodSpec) -> Result<String> {
        spec.validate()?;
        let key = spec.key();
        let id = new_id();
        {
            let mut names = lock(&self.names);
            if let Some(existing) = names.get(&key) {
                return Err(Error::AlreadyExists {
                    kind: "pod sandbox",
                    name: key.to_string(),
                    id: existing.clone(),
                });
            }
            names.insert(key.clone(), id.clone());
        }
        // The work runs in its own task: a client that gives up (deadline, cancel) must not leave half a pod.
        let this = Arc::clone(self);
        let task_id = id.clone();
        // The name is released by the task itself when it undoes a failed creation, so a client that gave up
        // before the end does not leave the name reserved by a pod that no longer exists.
        let handle = tokio::spawn(async move { this.create(task_id, spec).await });
        match handle.await {
            Ok(r) => r.map(|()| id),
            Err(e) => Err(Error::sandbox("RunPodSandbox task", e)),
        }
    }

    /// StopPodSandbox: kills everything in the pod, releases its network. Unknown ids succeed.
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(slot) = self.find(id)? else {
            return Ok(());
        };
        let this = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let mut rec = slot.lock().await;
            if !this.is_current(&rec.id, &slot) {
                return Ok(()); // removed (or its creation undone) while we waited
            }
            this.teardown(&mut rec).await?;
            rec.state = PodState::NotReady;
            this.save(&rec)?;
            Ok(())
        });
        handle
            .await
            .map_err(|e| Error::sandbox("StopPodSandbox task", e))?
    }

    /// RemovePodSandbox: stops the pod if needed and removes every trace of it. Unknown ids succeed.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(slot) = self.find(id)? else {
            return Ok(());
        };
        let this = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let mut rec = slot.lock().await;
            if !this.is_current(&rec.id, &slot) {
                return Ok(()); // removed (or its creation undone) while we waited
            }
            this.teardown(&mut rec).await?;
            this.remove_leftovers(&mut rec).await?;
            lock(&this.pods).remove(&rec.id);
            this.release_name(&rec.spec.key(), &rec.id);
            Ok(())
        });
        handle
            .await
            .map_err(|e| Error::sandbox("RemovePodSandbox task", e))?
    }

    /// A copy of one pod's record (the last saved state; never waits for a busy pod).
    pub fn get(&self, id: &str) -> Result<PodRecord> {
        self.resolve(id)?
            .and_then(|full| lock(&self.snapshots).get(&full).cloned())
            .ok_or_else(|| Error::NotFound {
                kind: "pod sandbox",
                field: "pod_sandbox_id",
                id: id.to_owned(),
            })
    }

    /// Pods matching the filter (pods still being created are not listed).
    pub fn list(&self, filter: &PodFilter) -> Vec<PodRecord> {
        let mut out: Vec<PodRecord> = lock(&self.snapshots)
            .values()
            .filter(|rec| rec.state != PodState::Creating)
            .filter(|rec| {
                filter
                    .id
                    .as_ref()
                    .is_none_or(|want| rec.id.starts_with(want.as_str()))
            })
            .filter(|rec| filter.state.is_none_or(|s| s == rec.observed_state()))
            .filter(|rec| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| rec.spec.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// Persists a record (durable when this returns) and refreshes its snapshot.
    fn save(&self, rec: &PodRecord) -> Result<()> {
        self.store.put(PODS, &rec.id, rec)?;
        lock(&self.snapshots).insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    /// Whether `slot` is still the live slot of pod `id` (not removed while its lock was awaited).
    fn is_current(&self, id: &str, slot: &PodSlot) -> bool {
        lock(&self.pods)
            .get(id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// Frees a reserved name, if it is still reserved by this pod.
    fn release_name(&self, key: &PodKey, id: &str) {
        let mut names = lock(&self.names);
        if names.get(key).is_some_and(|held| held == id) {
            names.remove(key);
        }
    }

    /// Remembers cgroup directories crius created, so that whichever pod leaves last removes them.
    fn own_cgroups(&self, dirs: &[crius_sandbox::cgroup::CgroupPath]) -> Result<()> {
        for d in dirs {
            self.store.put(CGROUPS, &d.to_string(), &true)?;
        }
        Ok(())
    }

    /// Deletes a record and its snapshot.
    fn forget(&self, id: &str) -> Result<()> {
        self.store.delete(PODS, id)?;
        lock(&self.snapshots).remove(id);
        Ok(())
    }

    /// The slot of an exact id or a unique prefix of one.
    fn find(&self, id: &str) -> Result<Option<PodSlot>> {
        Ok(self
            .resolve(id)?
            .and_then(|full| lock(&self.pods).get(&full).cloned()))
    }

    /// The full id for an exact id or a unique prefix of one (what crictl users type).
    fn resolve(&self, id: &str) -> Result<Option<String>> {
        let pods = lock(&self.pods);
        resolve_id(pods.keys(), id, "pod_sandbox_id", "pod sandbox")
    }
}

/// The full id `id` names among `ids`: itself, or the one id it is a prefix of. Empty or ambiguous is
/// InvalidArgument naming `field`; no match is `None`.
pub fn resolve_id<'a>(
    ids: impl Iterator<Item = &'a String> + Clone,
    id: &str,
    field: &'static str,
    kind: &str,
) -> Result<Option<String>> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if ids.clone().any(|k| k == id) {
        return Ok(Some(id.to_owned()));
    }
    let mut matches = ids.filter(|k| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some(full), None) => Ok(Some(full.clone())),
        (Some(_), Some(_)) => Err(Error::invalid(
            field,
            format!("{id:?} is a prefix of more than one {kind} id"),
        )),
        (None, _) => Ok(None),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves them consistent (single inserts/removes), so poisoning is moot.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new 64-hex-digit id, as kubelet and crictl expect.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        // Never expected on Linux; fall back to time and pid entropy rather than failing the pod.
        tracing::warn!(error = %e, "cannot read /dev/urandom for a pod id");
        let t = now_nanos() as u128 ^ ((std::process::id() as u128) << 64);
        bytes[..16].copy_from_slice(&t.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}
