//! The seam in front of the kernel for stats: cgroup interface files, directory walks and network namespaces.
//! [`RealFs`] reads the host; unit tests point the same code at tempdirs that stand in for cgroups.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub trait StatsFs: Send + Sync {
    /// A cgroup interface file; `NotFound` when the host does not provide it (or the cgroup is gone).
    fn read(&self, path: &Path) -> io::Result<String>;
    /// The subdirectories (child cgroups) of `dir`.
    fn subdirs(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Bytes allocated and inodes used under `dir`, symlinks not followed; `Ok(None)` when `deadline` passed
    /// first, `NotFound` when `dir` is gone.
    fn disk_usage(&self, dir: &Path, deadline: Option<Instant>) -> io::Result<Option<(u64, u64)>>;
    /// `/proc/net/dev` as seen inside each network namespace pinned at `netns`, in order.
    fn net_dev(&self, netns: &[PathBuf]) -> Vec<io::Result<String>>;
}

/// The host.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl StatsFs for RealFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn subdirs(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    fn disk_usage(&self, dir: &Path, deadline: Option<Instant>) -> io::Result<Option<(u64, u64)>> {
        super::disk::walk(dir, deadline)
    }

    fn net_dev(&self, netns: &[PathBuf]) -> Vec<io::Result<String>> {
        match crius_sandbox::ns::read_net_dev_in(netns) {
            Ok(out) => out,
            Err(e) => netns
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }
}
