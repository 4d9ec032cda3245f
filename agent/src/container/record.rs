//! The persisted record of a container: what it was asked to be, where its parts live, and the last state the
//! monitor reported.

use std::path::PathBuf;

use crius_sandbox::cgroup::{CgroupPath, CreatedCgroup};
use serde::{Deserialize, Serialize};

use super::config::ContainerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// CreateContainer in progress (or cut short by a crash: undone at the next start).
    Creating,
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image's id (config digest) and the digest reference it was pulled as.
    pub image_id: String,
    pub image_ref: String,
    /// Layers the rootfs stacks (bottom first): kept while the container exists, whatever RemoveImage does.
    pub chain_ids: Vec<String>,
    pub state: ContainerState,
    /// Nanoseconds since the epoch; 0 until it happened.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The init's pid (valid while Created or Running).
    pub pid: i32,
    /// `<root>/containers/<id>`: config.json, rootfs/ (mount point), upper/, work/.
    pub bundle: PathBuf,
    /// The pod's directory (the monitor lives there).
    pub pod_dir: PathBuf,
    pub cgroup: Option<CgroupPath>,
    pub cgroup_abs: Option<PathBuf>,
    /// Only these directories are removed again.
    pub cgroup_created: CreatedCgroup,
    /// `<pod log_directory>/<log_path>`, when both are set.
    pub log_path: Option<PathBuf>,
    /// The signal StopContainer sends first (the image's StopSignal, else SIGTERM).
    pub stop_signal: i32,
    /// The identity the process runs as (ContainerStatus.user), from the spec.
    #[serde(default)]
    pub user: Option<UserIds>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
}
