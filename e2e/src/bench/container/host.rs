//! The host side of the container benchmark: the cgroup v1 directories made for containerd's pods and shims
//! (created here, removed here, nothing else written), snapshots of cgroup trees that show what appeared where,
//! and finding a runtime's per-pod processes in `/proc`.
//!
//! This machine is a cgroup v1 hybrid: controllers under `/sys/fs/cgroup/<controller>`, a v2 tree (hugetlb
//! only) at `/sys/fs/cgroup/unified`. runc (cgroupfs driver) puts a container with an absolute cgroupsPath at
//! that path from the root of every v1 hierarchy; with a relative one it would nest it inside its own cgroup,
//! which on the memory hierarchy is the cgroup the machine's own processes live in. So containerd's pods get an
//! absolute `cgroup_parent` created here in every v1 hierarchy, and its shims a memory cgroup of their own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::containerd;
use crate::procfs;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// `memory`, `cpu`, `name=systemd`, ... (v1) or `unified` (v2).
    pub name: String,
    pub mount: PathBuf,
    pub v2: bool,
}

/// Mount options of a v1 cgroup mount that are not controllers.
const NOT_CONTROLLERS: &[&str] = &[
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
];

/// Every cgroup hierarchy mounted here (v1 and v2), from `/proc/self/mountinfo`.
pub fn hierarchies() -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = procfs::mounts()
        .into_iter()
        .filter_map(|m| match m.fs_type.as_str() {
            "cgroup" => {
                let controllers: Vec<&str> = m
                    .super_options
                    .split(',')
                    .filter(|o| !NOT_CONTROLLERS.contains(o))
                    .filter(|o| !o.contains('=') || o.starts_with("name="))
                    .collect();
                Some(Hierarchy {
                    name: controllers.join(","),
                    mount: m.mount_point,
                    v2: false,
                })
            }
            "cgroup2" => Some(Hierarchy {
                name: "unified".into(),
                mount: m.mount_point,
                v2: true,
            }),
            _ => None,
        })
        .collect();
    found.sort_by(|a, b| a.mount.cmp(&b.mount));
    found.dedup_by(|a, b| a.mount == b.mount);
    found
}

/// The directories of this process' own cgroups that are not a hierarchy's root (`/proc/self/cgroup`):
/// the cgroups the machine put us in. Nothing may be created or written below them.
pub fn own_cgroup_dirs(hs: &[Hierarchy]) -> Vec<PathBuf> {
    cgroup_dirs(hs, "self")
        .into_iter()
        .filter(|d| !hs.iter().any(|h| &h.mount == d))
        .collect()
}

/// The directory of each cgroup `pid` (a number or `self`) is in, one per hierarchy.
pub fn cgroup_dirs(hs: &[Hierarchy], pid: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let h = if controllers.is_empty() {
                hs.iter().find(|h| h.v2)?
            } else {
                hs.iter().find(|h| {
                    !h.v2
                        && h.name
                            .split(',')
                            .any(|n| controllers.split(',').any(|c| c == n))
                })?
            };
            Some(h.mount.join(path.trim_start_matches('/')))
        })
        .collect()
}

/// Every directory at or below `roots`, as a set (a snapshot to compare).
pub fn tree(roots: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack: Vec<PathBuf> = roots.iter().filter(|r| r.is_dir()).cloned().collect();
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        found.insert(dir);
    }
    found
}

/// The top-level cgroup directories (in any hierarchy) whose name starts with `prefix`.
pub fn top_level_named(hs: &[Hierarchy], prefix: &str) -> Vec<PathBuf> {
    hs.iter()
        .flat_map(|h| std::fs::read_dir(&h.mount).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// Cgroup directories this benchmark created (one name, in some hierarchies). [`CgroupDirs::remove`] (and
/// Drop) kills what is still in them, then removes them and everything below them, deepest first.
#[derive(Debug)]
pub struct CgroupDirs {
    /// The path from each hierarchy's root, `/crius-bench-<pid>-pods`.
    pub path: String,
    dirs: Vec<PathBuf>,
}

impl CgroupDirs {
    /// Creates `/<name>` at the root of each hierarchy in `hs`. Fails if one exists already (it would not be
    /// ours to remove).
    pub fn create(hs: &[&Hierarchy], name: &str) -> anyhow::Result<CgroupDirs> {
        let mut me = CgroupDirs {
            path: format!("/{name}"),
            dirs: Vec::new(),
        };
        for h in hs {
            let dir = h.mount.join(name);
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            me.dirs.push(dir);
        }
        Ok(me)
    }

    /// The created directories and everything below them.
    pub fn tree(&self) -> BTreeSet<PathBuf> {
        tree(&self.dirs)
    }

    /// The processes in any of the directories (`cgroup.procs`).
    pub fn procs(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .tree()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills (SIGKILL, by pid) and reaps whatever is still in the directories, then removes them deepest
    /// first. Returns the directories that could not be removed.
    pub fn remove(&mut self) -> Vec<PathBuf> {
        let pids = self.procs();
        if !pids.is_empty() {
            containerd::kill_and_reap(&pids);
        }
        let mut dirs: Vec<PathBuf> = self.tree().into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let mut left = Vec::new();
        for d in dirs {
            // A cgroup whose last task just exited can stay busy for a moment: retry briefly.
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Err(e) = std::fs::remove_dir(&d) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    break;
                }
                if Instant::now() > deadline {
                    left.push(d.clone());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.dirs.retain(|d| d.exists());
        left
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        if !self.dirs.is_empty() {
            self.remove();
        }
    }
}

/// The single process whose exe is `exe` and whose arguments contain `arg`, not counting a child forked from
/// another such process (a container init before its exec has the monitor's exe and command line).
pub fn find_process(exe: &Path, arg: &str) -> anyhow::Result<i32> {
    let matches: Vec<i32> = procfs::all_pids()
        .into_iter()
        .filter(|&p| procfs::is_alive(p) && procfs::exe(p).as_deref() == Some(exe))
        .filter(|&p| containerd::cmdline(p).iter().any(|a| a == arg))
        .collect();
    let tops: Vec<i32> = matches
        .iter()
        .copied()
        .filter(|p| procfs::stat(*p).is_none_or(|s| !matches.contains(&s.ppid)))
        .collect();
    match tops.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no {} process with argument {arg}", exe.display()),
        many => bail!(
            "{} {} processes with argument {arg}: {many:?}",
            many.len(),
            exe.display()
        ),
    }
}

/// `/proc/<pid>/cgroup`, one `hierarchy:path` per line, for the report.
pub fn cgroups_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(_, rest)| rest.to_string()))
        .collect()
}

/// The v1 memory cgroup of `pid` (`/` when at the root).
pub fn memory_cgroup(pid: i32) -> Option<String> {
    cgroups_of(pid).into_iter().find_map(|l| {
        let (controllers, path) = l.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })
}

/// Deletes a network interface we created (by name), if it exists.
pub fn delete_link(name: &str) {
    if Path::new("/sys/class/net").join(name).exists() {
        let _ = procfs::run("ip", &["link", "del", name]);
    }
}

/// The interfaces enslaved to `bridge`, one line each (empty when the bridge does not exist).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    if !Path::new("/sys/class/net").join(bridge).exists() {
        return Vec::new();
    }
    procfs::run("ip", &["-o", "link", "show", "master", bridge])
        .map(|out| out.lines().map(|l| l.trim().to_string()).collect())
        .unwrap_or_else(|e| vec![format!("cannot list the ports of {bridge}: {e:#}")])
}

/// Files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => found.push(e.path()),
                Err(_) => {}
            }
        }
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_cgroup_hierarchies_and_a_tree_lists_dirs() {
        let hs = hierarchies();
        assert!(!hs.is_empty());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/f"), "x").unwrap();
        let t = tree(&[dir.path().to_path_buf()]);
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(files_under(dir.path()), vec![dir.path().join("a/f")]);
    }

    #[test]
    fn cgroup_dirs_are_created_and_removed_under_a_stand_in_root() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            name: "memory".into(),
            mount: root.path().to_path_buf(),
            v2: false,
        };
        let mut dirs = CgroupDirs::create(&[&h], "crius-bench-test").unwrap();
        assert_eq!(dirs.path, "/crius-bench-test");
        std::fs::create_dir_all(root.path().join("crius-bench-test/pod1/c1")).unwrap();
        assert_eq!(dirs.tree().len(), 3);
        assert!(dirs.procs().is_empty());
        assert!(CgroupDirs::create(&[&h], "crius-bench-test").is_err());
        assert!(dirs.remove().is_empty());
        assert!(!root.path().join("crius-bench-test").exists());
        assert_eq!(top_level_named(&[h], "crius-bench-"), Vec::<PathBuf>::new());
    }
}
