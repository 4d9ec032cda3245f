//! The per-pod monitor (`crius-monitor`, the conmon-rs model): one small, single-threaded, long-lived process per
//! pod, the parent (child subreaper) of every container process of the pod. It forks each container init
//! ([`crate::container::create`]), holds the containers' stdio, writes their CRI log files, records every exit
//! durably under `<dir>/exits/<id>`, and answers the agent over a unix socket at `<dir>/monitor.sock`. It does not
//! depend on the agent: killing or restarting `crius serve` leaves it and its containers running.
//!
//! The protocol: one JSON [`Request`] per line, answered by one JSON [`Response`] line, on a connection the agent
//! may keep open or not.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::Rootfs;

pub mod server;

/// A path for the socket `name` in `dir` that fits in a sockaddr_un whatever the length of `dir`: through a
/// descriptor of the directory (`/proc/self/fd/<n>/<name>`). Keep the returned descriptor open while using it.
pub fn short_socket_path(
    dir: &std::path::Path,
    name: &str,
) -> std::io::Result<(std::fs::File, PathBuf)> {
    let d = std::fs::File::open(dir)?;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}/{name}",
        std::os::fd::AsRawFd::as_raw_fd(&d)
    ));
    Ok((d, path))
}

/// The monitor's socket in its directory.
pub const SOCKET: &str = "monitor.sock";
/// Where exit records go: `<dir>/exits/<container id>` (JSON [`ExitRecord`]).
pub const EXITS: &str = "exits";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a container from `<bundle>/config.json` (an OCI runtime spec) on the overlay `rootfs`; its
    /// init waits for [`Request::Start`].
    Create {
        id: String,
        bundle: PathBuf,
        rootfs: Rootfs,
        /// The container's cgroup directory (absolute host path), created by the agent; joined by the init.
        cgroup_dir: Option<PathBuf>,
        /// The CRI log file; none means the output is discarded.
        log_path: Option<PathBuf>,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
    },
    Start {
        id: String,
    },
    /// Sends `signal` to the container's init.
    Signal {
        id: String,
        signal: i32,
    },
    /// The state of every container the monitor knows.
    State,
    /// Reopens the container's log file (kubelet rotated it).
    ReopenLog {
        id: String,
    },
    /// Forgets an exited (or never started) container, killing its init if it is still there.
    Forget {
        id: String,
    },
    /// Kills what is left and exits.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code; 128 + n when killed by signal n (the shell's convention, which kubelet shows).
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub pid: i32,
    pub status: Status,
    /// Nanoseconds since the epoch; 0 before start.
    pub started_at: i64,
    pub exit: Option<ExitRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Created { pid: i32 },
    State { containers: Vec<ContainerState> },
    Error { message: String },
}
