//! [`CgroupManager`]: create, limit, populate, kill and remove cgroups on one cgroup2 tree.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use serde::{Deserialize, Serialize};

use super::resources::Origin;
use super::{CgroupError, CgroupFs, CgroupPath, RealFs, Resources};

/// Where cgroup2 is looked for, in order: a pure v2 host, then the v2 tree of a hybrid host.
pub const CGROUP2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// How long `remove` waits between rmdir attempts at most while a cgroup is busy.
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// Rounds of "list pids, SIGKILL the new ones" when `cgroup.kill` is missing (processes may fork meanwhile).
const KILL_ROUNDS: usize = 100;

/// The cgroup directories one [`CgroupManager::create`] call made, so that exactly those are removed later.
/// The agent persists it with the pod or container record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedCgroup {
    /// Top first.
    pub dirs: Vec<CgroupPath>,
}

/// A limit that was asked for but that this host cannot enforce (its controller or file is missing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unenforced {
    /// The interface file, e.g. `memory.max`.
    pub limit: String,
    pub controller: String,
    pub reason: String,
}

impl fmt::Display for Unenforced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.limit, self.reason)
    }
}

/// The cgroup v2 manager over one cgroup2 mount.
#[derive(Debug)]
pub struct CgroupManager {
    root: PathBuf,
    fs: Box<dyn CgroupFs>,
}

fn is_cgroup2(path: &Path) -> Result<bool, CgroupError> {
    let stat = statfs(path).map_err(|source| CgroupError::Statfs {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(stat.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

fn is_errno(e: &io::Error, code: i32) -> bool {
    e.raw_os_error() == Some(code)
}

impl CgroupManager {
    /// Finds the host's cgroup2 tree: `/sys/fs/cgroup` if it is cgroup2, else `/sys/fs/cgroup/unified`.
    pub fn detect() -> Result<Self, CgroupError> {
        for mount in CGROUP2_MOUNTS {
            let path = Path::new(mount);
            match is_cgroup2(path) {
                Ok(true) => return Ok(Self::with_fs(path.to_path_buf(), Box::new(RealFs))),
                Ok(false)
                | Err(CgroupError::Statfs {
                    source: nix::Error::ENOENT,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(CgroupError::NoCgroup2 {
            tried: CGROUP2_MOUNTS.iter().map(|m| m.to_string()).collect(),
        })
    }

    /// A manager over an explicit cgroup2 mount point (from the config); refused if it is not cgroup2.
    pub fn with_root(root: PathBuf) -> Result<Self, CgroupError> {
        if !is_cgroup2(&root)? {
            return Err(CgroupError::NotCgroup2 { path: root });
        }
        Ok(Self::with_fs(root, Box::new(RealFs)))
    }

    /// A manager over any [`CgroupFs`] (a fake in tests); `root` is not checked.
    pub fn with_fs(root: PathBuf, fs: Box<dyn CgroupFs>) -> Self {
        Self { root, fs }
    }

    /// The cgroup2 mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file system path of a cgroup.
    pub fn absolute(&self, path: &CgroupPath) -> PathBuf {
        self.root.join(path.relative())
    }

    pub fn exists(&self, path: &CgroupPath) -> bool {
        self.fs.exists(&self.absolute(path))
    }

    /// The controllers of the tree (the root's `cgroup.controllers`); empty if it cannot be read.
    pub fn controllers(&self) -> Vec<String> {
        self.read_list_or_empty("cgroup.controllers")
    }

    /// The controllers children of the root can use (the root's `cgroup.subtree_control`).
    pub fn usable_controllers(&self) -> Vec<String> {
        self.read_list_or_empty("cgroup.subtree_control")
    }

    fn read_list_or_empty(&self, file: &str) -> Vec<String> {
        let path = self.root.join(file);
        match self.read_list(&path) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cgroup2 root");
                Vec::new()
            }
        }
    }

    fn read_list(&self, path: &Path) -> Result<Vec<String>, CgroupError> {
        let content = self.fs.read(path).map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(content.split_whitespace().map(str::to_string).collect())
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), CgroupError> {
        self.fs
            .write(path, value)
            .map_err(|source| CgroupError::Write {
                path: path.to_path_buf(),
                value: value.to_string(),
                source,
            })
    }

    /// Creates `path` and any missing ancestors (mkdir -p) for a cgroup that will hold processes. Controllers
    /// are enabled in the `cgroup.subtree_control` of the ancestors this call created (never of pre-existing
    /// ones, never of `path` itself, which must stay free of them to accept processes). On failure the
    /// directories made so far are removed again.
    pub fn create(&self, path: &CgroupPath) -> Result<CreatedCgroup, CgroupError> {
        self.create_inner(path, false)
    }

    /// Like [`create`](Self::create) for a cgroup that will only have child cgroups (a pod cgroup whose
    /// sandbox and containers get children): controllers are enabled in `path` too if this call created it.
    pub fn create_parent(&self, path: &CgroupPath) -> Result<CreatedCgroup, CgroupError> {
        self.create_inner(path, true)
    }

    fn create_inner(
        &self,
        path: &CgroupPath,
        enable_leaf: bool,
    ) -> Result<CreatedCgroup, CgroupError> {
        if path.is_root() {
            return Err(CgroupError::RootCgroup { op: "create" });
        }
        let mut created = CreatedCgroup::default();
        for dir in path.lineage() {
            let abs = self.absolute(&dir);
            match self.fs.mkdir(&abs) {
                Ok(()) => created.dirs.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    self.undo(&created);
                    return Err(CgroupError::Mkdir { path: abs, source });
                }
            }
            // Enable before creating the next level, so the child starts with the controllers.
            if (enable_leaf || dir != *path)
                && let Err(e) = self.enable_controllers(&dir)
            {
                self.undo(&created);
                return Err(e);
            }
        }
        tracing::debug!(cgroup = %path, created = created.dirs.len(), "created cgroup");
        Ok(created)
    }

    /// Enables, in `dir`'s `cgroup.subtree_control`, every controller `dir` itself has.
    fn enable_controllers(&self, dir: &CgroupPath) -> Result<(), CgroupError> {
        let abs = self.absolute(dir);
        let file = abs.join("cgroup.subtree_control");
        for controller in self.read_list(&abs.join("cgroup.controllers"))? {
            self.write(&file, &format!("+{controller}"))?;
        }
        Ok(())
    }

    /// Best-effort removal of directories a failed `create` made, deepest first.
    fn undo(&self, created: &CreatedCgroup) {
        for dir in created.dirs.iter().rev() {
            if let Err(e) = self.fs.rmdir(&self.absolute(dir)) {
                tracing::warn!(cgroup = %dir, error = %e, "cannot remove a cgroup after a failed create");
            }
        }
    }

    /// Writes the limits to `path`. Limits whose controller (or interface file) this tree lacks are returned
    /// as [`Unenforced`], not errors; a value the kernel rejects is an error naming the file and the value.
    pub fn apply(
        &self,
        path: &CgroupPath,
        resources: &Resources,
    ) -> Result<Vec<Unenforced>, CgroupError> {
        let settings = resources.settings()?;
        if settings.is_empty() {
            return Ok(Vec::new());
        }
        if path.is_root() {
            return Err(CgroupError::RootCgroup {
                op: "apply limits to",
            });
        }
        let dir = self.absolute(path);
        if !self.fs.exists(&dir) {
            return Err(CgroupError::NotFound { path: dir });
        }
        let available = self.read_list(&dir.join("cgroup.controllers"))?;
        let in_tree = self.controllers();
        let mut unenforced = Vec::new();
        for setting in settings {
            let controller = setting.controller.as_str();
            let reason = if controller == "cgroup" || available.iter().any(|c| c == controller) {
                None
            } else if in_tree.iter().any(|c| c == controller) {
                Some(format!(
                    "controller {controller} is not enabled for {path} (its parent's cgroup.subtree_control does \
                     not delegate it)"
                ))
            } else {
                Some(format!(
                    "controller {controller} is not available in the cgroup v2 tree at {}",
                    self.root.display()
                ))
            };
            let file = dir.join(&setting.file);
            let reason = match reason {
                None if !self.fs.exists(&file) => match setting.origin {
                    Origin::Limit => Some(format!(
                        "the kernel provides no {} (not supported or disabled)",
                        setting.file
                    )),
                    Origin::Unified => {
                        return Err(CgroupError::InvalidResource {
                            field: format!("unified[{:?}]", setting.file),
                            reason: format!("no such interface file in cgroup {path}"),
                        });
                    }
                },
                reason => reason,
            };
            match reason {
                Some(reason) => {
                    unenforced.push(Unenforced {
                        limit: setting.file,
                        controller: setting.controller,
                        reason,
                    });
                }
                None => self.write(&file, &setting.value)?,
            }
        }
        Ok(unenforced)
    }

    /// Moves process `pid` into `path`.
    pub fn add_process(&self, path: &CgroupPath, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidResource {
                field: "pid".into(),
                reason: format!("{pid} is not a process id"),
            });
        }
        let dir = self.absolute(path);
        if !self.fs.exists(&dir) {
            return Err(CgroupError::NotFound { path: dir });
        }
        self.write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    /// The processes in `path` and all its descendants; empty if the cgroup does not exist.
    pub fn procs(&self, path: &CgroupPath) -> Result<Vec<i32>, CgroupError> {
        let mut out = Vec::new();
        for dir in self.subtree(path)? {
            let file = self.absolute(&dir).join("cgroup.procs");
            let content = match self.fs.read(&file) {
                Ok(content) => content,
                // Removed while we walked: it has no processes.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Read { path: file, source }),
            };
            for line in content.split_whitespace() {
                let pid = line.parse().map_err(|_| CgroupError::Parse {
                    path: file.clone(),
                    content: content.clone(),
                })?;
                out.push(pid);
            }
        }
        Ok(out)
    }

    /// `path` and every descendant, parents first; cgroups that vanish meanwhile are skipped.
    fn subtree(&self, path: &CgroupPath) -> Result<Vec<CgroupPath>, CgroupError> {
        if !self.exists(path) {
            return Ok(Vec::new());
        }
        let mut out = vec![path.clone()];
        let mut i = 0;
        while i < out.len() {
            let abs = self.absolute(&out[i]);
            let names = match self.fs.children(&abs) {
                Ok(names) => names,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(source) => return Err(CgroupError::Read { path: abs, source }),
            };
            for name in names {
                let child = out[i].join(&name)?;
                out.push(child);
            }
            i += 1;
        }
        Ok(out)
    }

    /// Kills every process in `path` and below: one write to `cgroup.kill` (Linux ≥ 5.14), else SIGKILL to
    /// each pid, repeated while new pids appear (processes may fork meanwhile). Does not wait for them to
    /// exit; [`remove`](Self::remove) does. A missing cgroup is not an error.
    pub fn kill(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        if path.is_root() {
            return Err(CgroupError::RootCgroup { op: "kill" });
        }
        let dir = self.absolute(path);
        if !self.fs.exists(&dir) {
            return Ok(());
        }
        let kill_file = dir.join("cgroup.kill");
        if self.fs.exists(&kill_file) {
            return match self.fs.write(&kill_file, "1") {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                result => result.map_err(|source| CgroupError::Write {
                    path: kill_file,
                    value: "1".into(),
                    source,
                }),
            };
        }
        let mut signalled = HashSet::new();
        for _ in 0..KILL_ROUNDS {
            let fresh: Vec<i32> = self
                .procs(path)?
                .into_iter()
                .filter(|p| !signalled.contains(p))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                match self.fs.sigkill(pid) {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::ESRCH) => {}
                    Err(source) => return Err(CgroupError::Signal { pid, source }),
                }
                signalled.insert(pid);
            }
        }
        Ok(())
    }

    /// Removes the directories `created` recorded (each must be `path` or one of its ancestors), deepest
    /// first, retrying while the kernel says `EBUSY` (processes still exiting) until `timeout`. Directories
    /// already gone are fine, so this is idempotent; pre-existing ancestors are never touched.
    pub fn remove(
        &self,
        path: &CgroupPath,
        created: &CreatedCgroup,
        timeout: Duration,
    ) -> Result<(), CgroupError> {
        for dir in &created.dirs {
            if dir.is_root() {
                return Err(CgroupError::RootCgroup { op: "remove" });
            }
            if !path.is_within(dir) {
                return Err(CgroupError::NotOwned {
                    dir: dir.clone(),
                    path: path.clone(),
                });
            }
        }
        let mut dirs = created.dirs.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.depth()));
        let deadline = Instant::now() + timeout;
        for dir in &dirs {
            self.rmdir_until(dir, deadline, timeout)?;
        }
        Ok(())
    }

    /// Removes `path` and every cgroup below it, deepest first, with the same retry as [`remove`](Self::remove).
    /// For cleaning up what a crash left behind; a missing cgroup is fine.
    pub fn remove_tree(&self, path: &CgroupPath, timeout: Duration) -> Result<(), CgroupError> {
        if path.is_root() {
            return Err(CgroupError::RootCgroup { op: "remove" });
        }
        let deadline = Instant::now() + timeout;
        for dir in self.subtree(path)?.iter().rev() {
            self.rmdir_until(dir, deadline, timeout)?;
        }
        Ok(())
    }

    fn rmdir_until(
        &self,
        dir: &CgroupPath,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), CgroupError> {
        let abs = self.absolute(dir);
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.fs.rmdir(&abs) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if is_errno(&e, libc::EBUSY) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(CgroupError::RemoveTimeout {
                            path: abs,
                            timeout,
                            source: e,
                        });
                    }
                    std::thread::sleep(backoff.min(deadline - now));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(source) => return Err(CgroupError::Rmdir { path: abs, source }),
            }
        }
    }

    /// How many times the OOM killer killed a process in `path` (`oom_kill` of `memory.events`); `None` when
    /// the memory controller is not available there, so OOM kills cannot be observed.
    pub fn oom_kills(&self, path: &CgroupPath) -> Result<Option<u64>, CgroupError> {
        let file = self.absolute(path).join("memory.events");
        let content = match self.fs.read(&file) {
            Ok(content) => content,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CgroupError::Read { path: file, source }),
        };
        let value = content
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "));
        match value.map(|v| v.trim().parse::<u64>()) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => Err(CgroupError::Parse {
                path: file,
                content,
            }),
        }
    }
}
