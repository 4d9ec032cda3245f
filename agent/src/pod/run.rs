//! RunPodSandbox, step by step. Each step records its progress before it acts, so that a failure (or a crash)
//! leaves a record from which `teardown` undoes exactly what was done.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use crius_sandbox::cgroup::{self, CreatedCgroup};
use crius_sandbox::ns::NsKind;
use crius_sandbox::pause::{PauseProcess, PauseSpec};
use crius_sandbox::process::{OomScoreAdj, Pidfd};
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex as AsyncMutex;

use super::record::{CgroupRecord, NetworkRecord, PauseRecord, PodRecord, PodState};
use super::spec::{NsMode, PodSpec};
use super::{Pods, files, lock, now_nanos};
use crate::error::{Error, Result};

/// How long pause may take to report ready.
const PAUSE_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Pods {
    /// Creates the pod; on failure undoes every step and drops the record.
    pub(super) async fn create(&self, id: String, spec: PodSpec) -> Result<()> {
        let pod_dir = self.config.state.join("pods").join(&id);
        let rec = PodRecord {
            id: id.clone(),
            spec,
            state: PodState::Creating,
            created_at: now_nanos(),
            pod_dir,
            pause: None,
            namespaces: BTreeMap::new(),
            shm: None,
            cgroup: None,
            network: None,
            unenforced: Vec::new(),
            oom_score_adj: String::new(),
        };
        self.save(&rec)?;
        let slot = Arc::new(AsyncMutex::new(rec));
        lock(&self.pods).insert(id.clone(), Arc::clone(&slot));
        let mut rec = slot.lock().await;
        match self.create_steps(&mut rec).await {
            Ok(()) => {
                rec.state = PodState::Ready;
                self.save(&rec)?;
                tracing::info!(pod = %id, ips = ?rec.ips(), "pod sandbox ready");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(pod = %id, error = %crate::error::chain(&err), "pod sandbox creation failed; undoing");
                let undone = match self.teardown(&mut rec).await {
                    Ok(()) => self.remove_leftovers(&mut rec).await,
                    Err(e) => Err(e),
                };
                match undone {
                    Ok(()) => {
                        lock(&self.pods).remove(&id);
                        self.release_name(&rec.spec.key(), &id);
                    }
                    Err(e) => {
                        // The pod stays, NotReady, under its name: visible to List, and Stop/Remove retry the rest.
                        tracing::error!(pod = %id, error = %crate::error::chain(&e), "undo incomplete; keeping the pod NotReady");
                        rec.state = PodState::NotReady;
                        let _ = self.save(&rec);
                    }
                }
                Err(err)
            }
        }
    }

    async fn create_steps(&self, rec: &mut PodRecord) -> Result<()> {
        let id = rec.id.clone();
        let own_net = rec.spec.own_network();
        let own_ipc = rec.spec.namespaces.ipc != NsMode::Node;
        let own_pid = rec.spec.namespaces.pid == NsMode::Pod;

        // 1. The pod's files: hostname, resolv.conf (hosts comes once the IPs are known).
        let dir = rec.pod_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::sandbox(format!("create {}", dir.display()), e))?;
        write(
            &dir.join("hostname"),
            files::hostname(&pod_hostname(rec)).as_bytes(),
        )?;
        let resolv = match files::resolv_conf(rec.spec.dns.as_ref()) {
            Some(text) => text.into_bytes(),
            None => std::fs::read(&self.config.pod.resolv_conf).unwrap_or_default(),
        };
        write(&dir.join("resolv.conf"), &resolv)?;
        // Containers' log files go there; kubelet owns (and removes) the directory, as with containerd.
        if !rec.spec.log_directory.is_empty() {
            let logs = std::path::Path::new(&rec.spec.log_directory);
            std::fs::create_dir_all(logs).map_err(|e| {
                Error::sandbox(format!("create log directory {}", logs.display()), e)
            })?;
        }

        // 2. The pod cgroup (limits and overhead), and the sandbox's own child cgroup for pause.
        if let Some(cg) = &self.cgroups {
            let parent = if rec.spec.cgroup_parent.is_empty() {
                default_pod_cgroup(&self.config.cgroup.default_parent, &id)
            } else {
                rec.spec.cgroup_parent.clone()
            };
            let pod = cgroup::expand_parent(&parent).map_err(|e| {
                Error::invalid("config.linux.cgroup_parent", crate::error::chain(&e))
            })?;
            let sandbox = cgroup::sandbox_child(self.driver, &pod, &id);
            let _guard = self.cgroup_lock.lock().await;
            let mut created = CreatedCgroup::default();
            // Record before creating: a crash in between must still remove what was made.
            rec.cgroup = Some(CgroupRecord {
                pod_abs: cg.absolute(&pod),
                sandbox_abs: cg.absolute(&sandbox),
                pod: pod.clone(),
                sandbox: sandbox.clone(),
                created: created.clone(),
            });
            // Ownership is recorded before the directories exist: a crash in between must not orphan them.
            let missing: Vec<_> = sandbox
                .lineage()
                .into_iter()
                .filter(|d| !cg.exists(d))
                .collect();
            self.own_cgroups(&missing)?;
            // The pod cgroup only holds child cgroups, so it may pass controllers down (create_parent).
            let made = cg.create_parent(&pod).map_err(|e| {
                Error::sandbox(
                    format!("create pod cgroup {}", cg.absolute(&pod).display()),
                    e,
                )
            })?;
            created.dirs.extend(made.dirs);
            set_created(rec, &created);
            let resources = match (&rec.spec.resources, &rec.spec.overhead) {
                (Some(r), Some(o)) => Some(r.plus(o)),
                (Some(r), None) => Some(r.clone()),
                (None, Some(o)) => Some(o.clone()),
                (None, None) => None,
            };
            if let Some(r) = resources.filter(|r| !r.is_empty()) {
                let unenforced = cg
                    .apply(&pod, &r)
                    .map_err(|e| Error::sandbox("apply pod resources", e))?;
                for u in &unenforced {
                    tracing::warn!(pod = %id, limit = %u, "pod limit cannot be enforced on this host");
                }
                rec.unenforced = unenforced.iter().map(|u| u.to_string()).collect();
            }
            let made = cg.create(&sandbox).map_err(|e| {
                Error::sandbox(
                    format!("create sandbox cgroup {}", cg.absolute(&sandbox).display()),
                    e,
                )
            })?;
            created.dirs.extend(made.dirs);
            set_created(rec, &created);
            self.save(rec)?;
        }

        // 3. pause: the holder of the pod's namespaces.
        let spec = PauseSpec {
            binary: self.config.pause_binary(),
            new_net: own_net,
            new_ipc: own_ipc,
            new_uts: own_net,
            new_pid: own_pid,
            hostname: own_net.then(|| rec.spec.hostname.clone()),
            sysctls: rec
                .spec
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cgroup: rec.cgroup.as_ref().map(|c| c.sandbox_abs.clone()),
            ready_timeout: PAUSE_READY_TIMEOUT,
        };
        let pause = tokio::task::spawn_blocking(move || crius_sandbox::pause::spawn(&spec))
            .await
            .map_err(|e| Error::sandbox("start pause", e))?
            .map_err(|e| Error::sandbox("start pause", e))?;
        rec.pause = Some(PauseRecord {
            pid: pause.pid,
            start_time: pause.start_time,
        });
        self.save(rec)?;
        let pid = pause.pid;
        // Until its namespaces are pinned by bind mounts, pause stays unreaped: a zombie child's pid cannot be
        // reused, so `pid` cannot come to name another process's namespaces. The reaper starts right after.
        let pinned = self.adjust_and_pin(rec, pid, own_net, own_ipc, own_pid);
        reap_when_exits(id.clone(), pause);
        pinned?;

        // 5. /dev/shm for the pod's IPC namespace.
        if own_ipc {
            let shm = rec.pod_dir.join("shm");
            rec.shm = Some(shm.clone());
            self.save(rec)?;
            crius_sandbox::mount::mount_tmpfs(&shm, self.config.pod.shm_size.0, 0o1777)
                .map_err(|e| Error::sandbox("mount pod /dev/shm", e))?;
        }

        // 6. Network: record the intent first so a crash after ADD still leads to a DEL.
        let mut ips = Vec::new();
        if let Some(netns) = rec.netns().cloned() {
            let choice = self.network.choose()?;
            if !choice.missing_plugins.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "network {:?} ({}) needs CNI plugins {} not found in {}",
                    choice.list.name,
                    choice.origin,
                    choice.missing_plugins.join(", "),
                    self.network.cni_dirs()
                )));
            }
            let (lo, eth0) = self.network.attachments(&id, &rec.spec, netns)?;
            rec.network = Some(NetworkRecord {
                list: choice.list.clone(),
                origin: choice.origin,
                result: None,
                ips: Vec::new(),
            });
            self.save(rec)?;
            let result = self.network.add(&id, &choice.list, &lo, &eth0).await?;
            ips = crate::network::pod_ips(&result);
            if let Some(n) = rec.network.as_mut() {
                n.ips = ips.clone();
                n.result = Some(result.raw.clone());
            }
        }
        let hosts = if own_net {
            files::hosts(&pod_hostname(rec), &ips).into_bytes()
        } else {
            std::fs::read("/etc/hosts").unwrap_or_default()
        };
        write(&rec.pod_dir.join("hosts"), &hosts)?;
        if !rec.pause_alive() {
            return Err(Error::FailedPrecondition(format!(
                "pause (pid {pid}) exited while the pod was being set up"
            )));
        }
        Ok(())
    }

    /// pause's oom_score_adj (clamped where the host forbids it) and the namespace bind mounts.
    fn adjust_and_pin(
        &self,
        rec: &mut PodRecord,
        pid: i32,
        net: bool,
        ipc: bool,
        pidns: bool,
    ) -> Result<()> {
        let id = rec.id.clone();
        rec.oom_score_adj = match crius_sandbox::process::set_oom_score_adj(
            pid,
            self.config.pod.pause_oom_score_adj,
        ) {
            Ok(OomScoreAdj::Set(v)) => v.to_string(),
            Ok(OomScoreAdj::Clamped {
                wanted,
                actual,
                reason,
            }) => {
                tracing::info!(pod = %id, wanted, actual, %reason, "pause oom_score_adj clamped");
                format!("{actual} (wanted {wanted}: {reason})")
            }
            // Never fatal: the pod works with whatever score the kernel kept.
            Err(e) => {
                tracing::warn!(pod = %id, error = %crate::error::chain(&e), "cannot set pause oom_score_adj");
                format!("unknown ({})", crate::error::chain(&e))
            }
        };
        // Bind-mount the namespaces so CNI DEL and later joins work even after pause is gone.
        let mut kinds = Vec::new();
        if net {
            kinds.push((NsKind::Net, "net", "netns"));
            kinds.push((NsKind::Uts, "uts", "utsns"));
        }
        if ipc {
            kinds.push((NsKind::Ipc, "ipc", "ipcns"));
        }
        if pidns {
            kinds.push((NsKind::Pid, "pid", "pidns"));
        }
        for (kind, name, dir) in kinds {
            let target = self.config.state.join(dir).join(&id);
            rec.namespaces.insert(name.to_owned(), target.clone());
            self.save(rec)?;
            crius_sandbox::ns::bind(pid, kind, &target)
                .map_err(|e| Error::sandbox(format!("bind {name} namespace"), e))?;
        }
        Ok(())
    }
}

fn set_created(rec: &mut PodRecord, created: &CreatedCgroup) {
    if let Some(c) = rec.cgroup.as_mut() {
        c.created = created.clone();
    }
}

/// The pod cgroup for a pod that came without a cgroup_parent: under the configured default parent.
fn default_pod_cgroup(parent: &str, id: &str) -> String {
    let short = &id[..id.len().min(12)];
    match parent.strip_suffix(".slice") {
        Some(prefix) => format!("{prefix}-pod{short}.slice"),
        None => format!("{}/pod-{short}", parent.trim_end_matches('/')),
    }
}

fn pod_hostname(rec: &PodRecord) -> String {
    if rec.spec.own_network() {
        rec.spec.hostname.clone()
    } else {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    }
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    crius_sandbox::mount::write_file_atomic(path, bytes, 0o644)
        .map_err(|e| Error::sandbox(format!("write {}", path.display()), e))
}

/// Reaps pause when it exits (it is our child), without a thread per pod: the pidfd turns readable on exit.
fn reap_when_exits(id: String, pause: PauseProcess) {
    let pidfd: Pidfd = pause.pidfd;
    let pid = pause.pid;
    tokio::spawn(async move {
        // `AsyncFd::new` is deprecated because it cannot prove the fd stays open while registered; here the
        // AsyncFd owns the Pidfd, so the fd lives exactly as long as the registration.
        #[allow(deprecated)]
        let registered = AsyncFd::new(pidfd);
        let fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(pod = %id, pid, error = %e, "cannot watch pause");
                return;
            }
        };
        match fd.readable().await {
            Ok(_guard) => {}
            Err(e) => {
                tracing::warn!(pod = %id, pid, error = %e, "pidfd wait failed");
                return;
            }
        }
        let pidfd = fd.into_inner();
        match pidfd.try_reap() {
            Ok(status) => {
                tracing::info!(pod = %id, pid, fd = pidfd.as_raw_fd(), ?status, "pause exited")
            }
            Err(e) => tracing::warn!(pod = %id, pid, error = %e, "cannot reap pause"),
        }
    });
}
