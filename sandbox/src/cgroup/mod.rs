//! The cgroup v2 manager: where a pod's cgroup lives, creating and removing it, its limits, its processes.
//!
//! crius targets cgroup v2 only. On a hybrid host (v1 controllers plus a cgroup2 tree at
//! `/sys/fs/cgroup/unified`) grouping, `cgroup.kill` and removal still work on the v2 tree, and every limit
//! whose controller is missing there is reported as [`Unenforced`] instead of failing the pod.
//!
//! Every kernel access goes through [`CgroupFs`], so the logic deciding what to create, write and remove is
//! unit-tested against [`fake::FakeCgroupFs`] (a tempdir that behaves like a cgroup2 mount) without root.
//!
//! Ownership rule: crius writes only into cgroups it created. [`CgroupManager::create`] records the
//! directories it made ([`CreatedCgroup`]); only those get controllers enabled in their `cgroup.subtree_control`
//! and only those are removed later.

mod fs;
mod manager;
mod path;
mod resources;

pub mod fake;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

pub use self::fs::{CgroupFs, RealFs};
pub use self::manager::{CgroupManager, CreatedCgroup, Unenforced};
pub use self::path::{CgroupPath, expand_parent, sandbox_child};
pub use self::resources::{Resources, shares_to_weight};

/// Who names the pod cgroups kubelet passes: plain paths (`cgroupfs`) or systemd slices (`systemd`).
///
/// crius writes the cgroup tree directly with either driver (it does not ask systemd over D-Bus to create
/// scopes); the driver decides naming and is what RuntimeConfig reports to kubelet.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cgroupfs => "cgroupfs",
            Self::Systemd => "systemd",
        })
    }
}

impl FromStr for CgroupDriver {
    type Err = CgroupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cgroupfs" => Ok(Self::Cgroupfs),
            "systemd" => Ok(Self::Systemd),
            other => Err(CgroupError::UnknownDriver(other.to_string())),
        }
    }
}

/// Everything that can go wrong in this module.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("unknown cgroup driver {0:?} (expected \"cgroupfs\" or \"systemd\")")]
    UnknownDriver(String),
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid systemd slice name {name:?}: {reason}")]
    InvalidSlice { name: String, reason: &'static str },
    #[error("no cgroup2 hierarchy found at {}", tried.join(" or "))]
    NoCgroup2 { tried: Vec<String> },
    #[error("{} is not a cgroup2 mount", path.display())]
    NotCgroup2 { path: PathBuf },
    #[error("cannot inspect the file system at {}", path.display())]
    Statfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("invalid resource {field}: {reason}")]
    InvalidResource { field: String, reason: String },
    #[error("refusing to {op} the root cgroup")]
    RootCgroup { op: &'static str },
    #[error("cgroup {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot create cgroup {}", path.display())]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove cgroup {}", path.display())]
    Rmdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {} is still busy after {timeout:?}", path.display())]
    RemoveTimeout {
        path: PathBuf,
        timeout: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected content in {}: {content:?}", path.display())]
    Parse { path: PathBuf, content: String },
    #[error("cannot kill process {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("recorded cgroup {dir} is not {path} or one of its ancestors")]
    NotOwned { dir: CgroupPath, path: CgroupPath },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
