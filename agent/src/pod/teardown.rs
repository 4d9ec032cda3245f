//! Undoing a pod: every step is idempotent and driven by the record, so Stop, Remove, a failed Run and the
//! recovery after a crash all share it.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Pods;
use super::record::PodRecord;
use crate::error::{Error, Result};
use crate::store::CGROUPS;

/// How long processes of a stopped pod may take to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long cgroup removal retries while the last processes exit.
const CGROUP_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Pods {
    /// Kills the pod's processes, releases its network, unmounts its namespaces and shm. The record is updated
    /// (and persisted) as each part goes, so a retry only redoes what failed.
    pub(super) async fn teardown(&self, rec: &mut PodRecord) -> Result<()> {
        let id = rec.id.clone();
        // 1. Processes: everything in the sandbox cgroup (and the pod cgroup when it is ours), then pause itself.
        if let (Some(cg), Some(c)) = (&self.cgroups, &rec.cgroup) {
            let ours = c.created.dirs.contains(&c.pod);
            let target = if ours {
                c.pod.clone()
            } else {
                c.sandbox.clone()
            };
            if cg.exists(&target) {
                tokio::task::block_in_place(|| cg.kill(&target))
                    .map_err(|e| Error::sandbox("kill the pod's processes", e))?;
            }
        }
        if let Some(p) = rec.pause
            && crius_sandbox::process::is_alive(p.pid, p.start_time)
        {
            match crius_sandbox::process::Pidfd::open(p.pid) {
                Ok(fd) => {
                    if crius_sandbox::process::is_alive(p.pid, p.start_time) {
                        let _ = fd.signal(Signal::SIGKILL);
                    }
                }
                Err(e) => tracing::debug!(pod = %id, error = %e, "pause already gone"),
            }
            let deadline = Instant::now() + KILL_WAIT;
            while crius_sandbox::process::is_alive(p.pid, p.start_time) {
                if Instant::now() > deadline {
                    return Err(Error::Timeout {
                        op: "waiting for pause to exit",
                        after: KILL_WAIT,
                    });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        // 2. Network: DEL with the cached result, on a fresh deadline of its own (each plugin call is bounded).
        if let Some(net) = rec.network.clone() {
            let netns = rec.netns().cloned().unwrap_or_default();
            let (lo, eth0) = self.network.attachments(&id, &rec.spec, netns)?;
            self.network.del(&id, &net.list, &lo, &eth0).await?;
            rec.network = None;
            self.save(rec)?;
        }

        // 3. Namespace bind mounts and shm, each forgotten only once it is really gone.
        let names: Vec<String> = rec.namespaces.keys().cloned().collect();
        for name in names {
            if let Some(path) = rec.namespaces.get(&name).cloned() {
                crius_sandbox::ns::unbind(&path)
                    .map_err(|e| Error::sandbox(format!("unmount {name} namespace"), e))?;
                rec.namespaces.remove(&name);
                self.save(rec)?;
            }
        }
        if let Some(shm) = rec.shm.clone() {
            crius_sandbox::mount::unmount(&shm)
                .map_err(|e| Error::sandbox("unmount pod /dev/shm", e))?;
            rec.shm = None;
            self.save(rec)?;
        }
        Ok(())
    }

    /// After teardown: the cgroups we created, the pod directory, and the record.
    pub(super) async fn remove_leftovers(&self, rec: &mut PodRecord) -> Result<()> {
        if let (Some(cg), Some(c)) = (&self.cgroups, &rec.cgroup) {
            let _guard = self.cgroup_lock.lock().await;
            // Deepest first, every directory crius created on the way up (the sandbox cgroup, the pod cgroup, its
            // parents), whichever pod created it: pods of one QoS class share parents, and a second attempt of a
            // pod shares the first one's pod cgroup. A directory still holding other cgroups stays for its last
            // user; one crius did not create is never touched.
            for dir in c.sandbox.lineage().into_iter().rev() {
                let key = dir.to_string();
                if !self.store.contains(CGROUPS, &key)? {
                    if cg.exists(&dir) {
                        break;
                    }
                    continue;
                }
                if has_child_cgroups(&cg.absolute(&dir)) {
                    break;
                }
                let one = crius_sandbox::cgroup::CreatedCgroup {
                    dirs: vec![dir.clone()],
                };
                // rmdir retries (sleeping) while the last processes exit: off the async workers.
                tokio::task::block_in_place(|| cg.remove(&c.sandbox, &one, CGROUP_REMOVE_TIMEOUT))
                    .map_err(|e| {
                        Error::sandbox(format!("remove cgroup {}", cg.absolute(&dir).display()), e)
                    })?;
                self.store.delete(CGROUPS, &key)?;
            }
        }
        rec.cgroup = None;
        match std::fs::remove_dir_all(&rec.pod_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::sandbox(
                    format!("remove {}", rec.pod_dir.display()),
                    e,
                ));
            }
        }
        self.forget(&rec.id)?;
        Ok(())
    }
}

fn has_child_cgroups(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .unwrap_or(false)
}
