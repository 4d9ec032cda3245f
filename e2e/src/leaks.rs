//! The leak check run after every test: nothing a pod used may outlive its removal.

use std::path::{Path, PathBuf};

use crate::instance::Crius;
use crate::procfs;

impl Crius {
    /// Everything this instance left behind, one line each; empty when clean. Checks: ListPodSandbox is empty
    /// (when crius runs); no pause pid seen by the test is alive; no live process in the instance's cgroup
    /// parent; no live child of crius running the pause binary; no mount under the instance's dir; empty
    /// `<state>/{netns,ipcns,utsns,pidns,pods}`; no interface enslaved to the instance's bridge; no IP
    /// reservation in the IPAM data dir; no cached CNI result under `<root>/cni`; no cgroup directory left
    /// under the cgroup parent.
    pub async fn leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        if self.is_running() {
            match self.list_pods(None).await {
                Ok(pods) => leaks.extend(pods.iter().map(|p| {
                    let name = p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("?");
                    format!("pod record {} ({name}) still listed", p.id)
                })),
                Err(e) => leaks.push(format!("ListPodSandbox failed: {e}")),
            }
            match self
                .runtime()
                .list_containers(crate::v1::ListContainersRequest::default())
                .await
            {
                Ok(r) => leaks.extend(
                    r.into_inner()
                        .containers
                        .iter()
                        .map(|c| format!("container record {} still listed", c.id)),
                ),
                Err(e) => leaks.push(format!("ListContainers failed: {e}")),
            }
        }
        leaks.extend(self.process_leaks());
        leaks.extend(self.file_leaks());
        leaks.extend(self.network_leaks());
        leaks.extend(self.cgroup_leaks());
        leaks
    }

    /// Panics listing every leak found by [`Crius::leaks`].
    pub async fn assert_no_leaks(&self) {
        let leaks = self.leaks().await;
        assert!(
            leaks.is_empty(),
            "leaks after the test:\n  {}",
            leaks.join("\n  ")
        );
    }

    /// Live processes attributable to this instance's pods.
    pub(crate) fn leaked_pids(&self) -> Vec<(i32, String)> {
        let mut found = Vec::new();
        for pid in self.pause_pids() {
            if let Some(st) = procfs::stat(pid)
                && st.state != 'Z'
                && st.comm == "crius-pause"
            {
                found.push((
                    pid,
                    format!("pause pid {pid} (seen by the test) is still alive"),
                ));
            }
        }
        let crius_pid = self.pid();
        for pid in procfs::all_pids() {
            if found.iter().any(|(p, _)| *p == pid) || !procfs::is_alive(pid) {
                continue;
            }
            if let Some(path) = procfs::cgroup_v2_path(pid)
                && self.owns_cgroup(&path)
            {
                let comm = procfs::stat(pid).map(|s| s.comm).unwrap_or_default();
                found.push((
                    pid,
                    format!("process {pid} ({comm}) still in cgroup {path}"),
                ));
                continue;
            }
            if procfs::exe(pid).as_deref() == Some(self.monitor_bin().as_path())
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*self.paths.state.to_string_lossy())
                })
            {
                found.push((pid, format!("pod monitor {pid} still alive")));
                continue;
            }
            if let (Some(crius_pid), Some(st)) = (crius_pid, procfs::stat(pid))
                && st.ppid == crius_pid
                && procfs::exe(pid).as_deref() == Some(self.pause_bin.as_path())
            {
                found.push((
                    pid,
                    format!("pause process {pid} (child of crius) still alive"),
                ));
            }
        }
        found
    }

    /// Whether a cgroup v2 path (as in /proc/<pid>/cgroup) is the instance's parent or below it.
    pub(crate) fn owns_cgroup(&self, path: &str) -> bool {
        path == self.cgroup_parent_path
            || path.starts_with(&format!("{}/", self.cgroup_parent_path))
    }

    fn process_leaks(&self) -> Vec<String> {
        self.leaked_pids()
            .into_iter()
            .map(|(_, what)| what)
            .collect()
    }

    fn file_leaks(&self) -> Vec<String> {
        let mut leaks: Vec<String> = procfs::mounts_under(&self.paths.dir)
            .into_iter()
            .map(|m| format!("mount left: {}", m.line))
            .collect();
        for kind in ["netns", "ipcns", "utsns", "pidns", "pods"] {
            let dir = self.paths.state.join(kind);
            for entry in list_dir(&dir) {
                leaks.push(format!("{} left", entry.display()));
            }
        }
        for entry in list_dir(&self.paths.root.join("containers")) {
            leaks.push(format!("container dir left: {}", entry.display()));
        }
        let cni_cache = self.paths.root.join("cni");
        for file in files_under(&cni_cache) {
            leaks.push(format!("cached CNI file left: {}", file.display()));
        }
        leaks
    }

    /// The interfaces enslaved to the instance's bridge (`ip -o link show master <bridge>`), one line each.
    pub fn bridge_ports(&self) -> anyhow::Result<Vec<String>> {
        let bridge = self.bridge();
        if !Path::new("/sys/class/net").join(bridge).exists() {
            return Ok(Vec::new());
        }
        let out = procfs::run("ip", &["-o", "link", "show", "master", bridge])?;
        Ok(out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect())
    }

    /// host-local's IP reservations in the IPAM data dir: (address file, owner it records).
    pub fn ip_reservations(&self) -> Vec<(PathBuf, String)> {
        files_under(&self.paths.ipam_dir)
            .into_iter()
            .filter(|f| {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name != "lock" && !name.starts_with("last_reserved_ip")
            })
            .map(|f| {
                let owner = std::fs::read_to_string(&f).unwrap_or_default();
                (f, owner.trim().to_string())
            })
            .collect()
    }

    fn network_leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        match self.bridge_ports() {
            Ok(ports) => leaks.extend(
                ports
                    .into_iter()
                    .map(|l| format!("interface still on bridge {}: {l}", self.bridge())),
            ),
            Err(e) => leaks.push(format!("cannot list the ports of {}: {e:#}", self.bridge())),
        }
        for (file, owner) in self.ip_reservations() {
            leaks.push(format!(
                "IP reservation left: {} (held by {owner:?})",
                file.display()
            ));
        }
        leaks
    }

    fn cgroup_leaks(&self) -> Vec<String> {
        let dir = self.cgroup_dir();
        let mut leaks = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in list_dir(&d) {
                if entry.is_dir() {
                    leaks.push(format!("cgroup left: {}", entry.display()));
                    stack.push(entry);
                }
            }
        }
        leaks
    }
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    v
}

/// Regular files (and symlinks) anywhere below `dir`.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in list_dir(&d) {
            match std::fs::symlink_metadata(&entry) {
                Ok(m) if m.is_dir() => stack.push(entry),
                Ok(_) => files.push(entry),
                Err(_) => {}
            }
        }
    }
    files.sort();
    files
}
