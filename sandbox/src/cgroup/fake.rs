//! A cgroup2 mount emulated in a directory, for unit tests without root (here and in the agent).
//!
//! It emulates what the manager's logic depends on: `cgroup.controllers` of a new cgroup is its parent's
//! `cgroup.subtree_control`; interface files exist only for the controllers a cgroup has; enabling a
//! controller the cgroup does not have is `EINVAL`; the no-internal-processes rule (`EBUSY`); moving a pid
//! between `cgroup.procs` files; `cgroup.kill`; rmdir is `EBUSY` while a cgroup has processes or children;
//! `.max` files and `cpu.weight` reject malformed values with `EINVAL`; `cgroup.max.depth` limits mkdir. Every write is recorded.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::CgroupFs;

/// Interface files per controller, with their kernel defaults.
const FILES: &[(&str, &[(&str, &str)])] = &[
    (
        "memory",
        &[
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("memory.high", "max"),
            ("memory.events", "oom 0\noom_kill 0\n"),
        ],
    ),
    ("cpu", &[("cpu.max", "max 100000"), ("cpu.weight", "100")]),
    ("cpuset", &[("cpuset.cpus", ""), ("cpuset.mems", "")]),
    ("pids", &[("pids.max", "max")]),
    (
        "hugetlb",
        &[("hugetlb.2MB.max", "max"), ("hugetlb.1GB.max", "max")],
    ),
    ("io", &[("io.max", ""), ("io.weight", "default 100")]),
];

#[derive(Debug, Default)]
struct State {
    writes: Vec<(PathBuf, String)>,
    killed: Vec<i32>,
    busy: Vec<(PathBuf, u32)>,
}

/// A fake cgroup2 mount rooted at a directory the test owns (e.g. a `tempfile::TempDir`).
#[derive(Debug)]
pub struct FakeCgroupFs {
    root: PathBuf,
    cgroup_kill: bool,
    missing: Vec<String>,
    state: Mutex<State>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn list(content: &str) -> BTreeSet<String> {
    content.split_whitespace().map(str::to_string).collect()
}

impl FakeCgroupFs {
    /// A root cgroup at `root` (an existing directory) whose `cgroup.controllers` lists `controllers` and
    /// whose `cgroup.subtree_control` is empty.
    pub fn new(root: &Path, controllers: &[&str]) -> io::Result<Self> {
        fs::write(root.join("cgroup.controllers"), controllers.join(" "))?;
        fs::write(root.join("cgroup.subtree_control"), "")?;
        fs::write(root.join("cgroup.procs"), "")?;
        fs::write(root.join("cgroup.max.depth"), "max")?;
        Ok(Self {
            root: root.to_path_buf(),
            cgroup_kill: true,
            missing: Vec::new(),
            state: Mutex::default(),
        })
    }

    /// Whether new cgroups get a `cgroup.kill` file (kernel ≥ 5.14); default true.
    pub fn with_cgroup_kill(mut self, present: bool) -> Self {
        self.cgroup_kill = present;
        self
    }

    /// Interface files the emulated kernel does not provide (e.g. `memory.swap.max` without swap accounting).
    pub fn without_files(mut self, files: &[&str]) -> Self {
        self.missing = files.iter().map(|f| f.to_string()).collect();
        self
    }

    /// Sets the root's `cgroup.subtree_control` (what the host administrator delegated), unrecorded.
    pub fn delegate_from_root(&self, controllers: &[&str]) -> io::Result<()> {
        fs::write(
            self.root.join("cgroup.subtree_control"),
            controllers.join(" "),
        )
    }

    /// Puts processes into a cgroup directory directly (a process the test pretends is running there).
    pub fn place(&self, dir: &Path, pids: &[i32]) -> io::Result<()> {
        let mut procs = self.procs_of(dir)?;
        procs.extend_from_slice(pids);
        self.store_procs(dir, &procs)
    }

    /// Makes the next `times` rmdir calls on `dir` fail with `EBUSY`.
    pub fn busy(&self, dir: &Path, times: u32) {
        self.lock().busy.push((dir.to_path_buf(), times));
    }

    /// Every write through [`CgroupFs::write`] so far: (file, value).
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.lock().writes.clone()
    }

    /// Every pid passed to [`CgroupFs::sigkill`] or killed by `cgroup.kill`, in order.
    pub fn killed(&self) -> Vec<i32> {
        self.lock().killed.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn procs_of(&self, dir: &Path) -> io::Result<Vec<i32>> {
        let content = fs::read_to_string(dir.join("cgroup.procs"))?;
        content
            .split_whitespace()
            .map(|p| p.parse().map_err(|_| errno(libc::EINVAL)))
            .collect()
    }

    fn store_procs(&self, dir: &Path, pids: &[i32]) -> io::Result<()> {
        let content: String = pids.iter().map(|p| format!("{p}\n")).collect();
        fs::write(dir.join("cgroup.procs"), content)
    }

    /// All cgroup directories from `dir` down, parents first.
    fn subtree(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = vec![dir.to_path_buf()];
        let mut i = 0;
        while i < out.len() {
            for name in self.children(&out[i].clone())? {
                out.push(out[i].join(name));
            }
            i += 1;
        }
        Ok(out)
    }

    /// Removes `pid` from every cgroup; whether it was anywhere.
    fn remove_pid(&self, pid: i32) -> io::Result<bool> {
        let mut found = false;
        for dir in self.subtree(&self.root)? {
            let mut procs = self.procs_of(&dir)?;
            let before = procs.len();
            procs.retain(|&p| p != pid);
            if procs.len() != before {
                found = true;
                self.store_procs(&dir, &procs)?;
            }
        }
        Ok(found)
    }

    fn write_subtree_control(&self, dir: &Path, value: &str) -> io::Result<()> {
        let available = list(&fs::read_to_string(dir.join("cgroup.controllers"))?);
        let mut enabled = list(&fs::read_to_string(dir.join("cgroup.subtree_control"))?);
        if dir != self.root && !self.procs_of(dir)?.is_empty() {
            return Err(errno(libc::EBUSY));
        }
        for token in value.split_whitespace() {
            let (op, name) = token.split_at(1);
            match op {
                "+" if available.contains(name) => enabled.insert(name.to_string()),
                "-" => enabled.remove(name),
                _ => return Err(errno(libc::EINVAL)),
            };
        }
        let enabled = enabled.into_iter().collect::<Vec<_>>().join(" ");
        fs::write(dir.join("cgroup.subtree_control"), &enabled)?;
        // Existing children see the change at once, as in the kernel.
        for child in self.children(dir)? {
            self.populate(&dir.join(child), &enabled)?;
        }
        Ok(())
    }

    /// Sets a cgroup's `cgroup.controllers` and adds the interface files of its controllers.
    fn populate(&self, dir: &Path, controllers: &str) -> io::Result<()> {
        fs::write(dir.join("cgroup.controllers"), controllers)?;
        for controller in list(controllers) {
            let files = FILES
                .iter()
                .find(|(c, _)| *c == controller)
                .map_or(&[][..], |(_, f)| *f);
            for (file, default) in files
                .iter()
                .filter(|(f, _)| !self.missing.iter().any(|m| m == f))
            {
                if !dir.join(file).exists() {
                    fs::write(dir.join(file), default)?;
                }
            }
        }
        Ok(())
    }

    fn write_procs(&self, dir: &Path, value: &str) -> io::Result<()> {
        let pid: i32 = value.trim().parse().map_err(|_| errno(libc::EINVAL))?;
        if dir != self.root
            && !fs::read_to_string(dir.join("cgroup.subtree_control"))?
                .trim()
                .is_empty()
        {
            return Err(errno(libc::EBUSY));
        }
        self.remove_pid(pid)?;
        self.place(dir, &[pid])
    }

    fn write_kill(&self, dir: &Path, value: &str) -> io::Result<()> {
        if value.trim() != "1" {
            return Err(errno(libc::EINVAL));
        }
        for sub in self.subtree(dir)? {
            let procs = self.procs_of(&sub)?;
            self.lock().killed.extend(&procs);
            self.store_procs(&sub, &[])?;
        }
        Ok(())
    }
}

/// What the kernel would accept in a `.max` file or `cpu.weight`.
fn valid_value(file: &str, value: &str) -> bool {
    let number_or_max = |s: &str| s == "max" || s.parse::<u64>().is_ok();
    if file == "cpu.weight" {
        return value
            .trim()
            .parse::<u64>()
            .is_ok_and(|w| (1..=10_000).contains(&w));
    }
    if file == "cpu.max" {
        let mut parts = value.split_whitespace();
        return parts.next().is_some_and(number_or_max)
            && parts.next().is_none_or(|p| p.parse::<u64>().is_ok())
            && parts.next().is_none();
    }
    if file.ends_with(".max") && file != "io.max" {
        return number_or_max(value.trim());
    }
    true
}

impl CgroupFs for FakeCgroupFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().ok_or_else(|| errno(libc::EINVAL))?;
        if !parent.join("cgroup.procs").exists() {
            return Err(errno(libc::ENOENT));
        }
        // cgroup.max.depth of any ancestor limits how deep below it cgroups may be created (EAGAIN).
        let ancestors = parent.ancestors().take_while(|a| a.starts_with(&self.root));
        for (depth, ancestor) in (1..).zip(ancestors) {
            let limit = fs::read_to_string(ancestor.join("cgroup.max.depth")).unwrap_or_default();
            if limit.trim().parse::<usize>().is_ok_and(|max| depth > max) {
                return Err(errno(libc::EAGAIN));
            }
        }
        fs::create_dir(path)?;
        let controllers = fs::read_to_string(parent.join("cgroup.subtree_control"))?;
        fs::write(path.join("cgroup.subtree_control"), "")?;
        fs::write(path.join("cgroup.procs"), "")?;
        fs::write(path.join("cgroup.max.depth"), "max")?;
        if self.cgroup_kill {
            fs::write(path.join("cgroup.kill"), "")?;
        }
        self.populate(path, &controllers)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        if !path.is_dir() {
            return Err(errno(libc::ENOENT));
        }
        {
            let mut state = self.lock();
            if let Some((_, times)) = state.busy.iter_mut().find(|(p, t)| p == path && *t > 0) {
                *times -= 1;
                return Err(errno(libc::EBUSY));
            }
        }
        if !self.children(path)?.is_empty() || !self.procs_of(path)?.is_empty() {
            return Err(errno(libc::EBUSY));
        }
        fs::remove_dir_all(path)
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        if !path.is_file() {
            return Err(errno(libc::ENOENT));
        }
        self.lock()
            .writes
            .push((path.to_path_buf(), value.to_string()));
        let dir = path.parent().ok_or_else(|| errno(libc::EINVAL))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.as_str() {
            "cgroup.subtree_control" => self.write_subtree_control(dir, value),
            "cgroup.procs" => self.write_procs(dir, value),
            "cgroup.kill" => self.write_kill(dir, value),
            "cgroup.controllers" => Err(errno(libc::EACCES)),
            file if !valid_value(file, value) => Err(errno(libc::EINVAL)),
            _ => fs::write(path, value),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn children(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn sigkill(&self, pid: i32) -> io::Result<()> {
        if pid <= 0 {
            return Err(errno(libc::EINVAL));
        }
        self.lock().killed.push(pid);
        if self.remove_pid(pid)? {
            Ok(())
        } else {
            Err(errno(libc::ESRCH))
        }
    }
}
