//! Containers from OCI runtime specs: the init that the pod monitor forks for each container.
//!
//! The monitor (single-threaded) calls [`create`]: it forks stage 1, which joins the pod's namespaces and the
//! container's cgroup and, since a PID namespace only applies to children, forks stage 2 and exits. Stage 2 is
//! the container init: it unshares its mount (and cgroup) namespace, mounts the overlay rootfs and the spec's
//! mounts, populates /dev, masks paths, pivots into the rootfs, applies rlimits, oom_score_adj, user, groups,
//! capabilities, no_new_privs and seccomp, reports `created`, and waits until [`Created::start`] to exec the
//! workload. The monitor is a child subreaper, so stage 2 becomes its child when stage 1 exits.
//!
//! Between the steps, stage 1 and 2 talk to the monitor over a pipe, one line each: `pid <n>`, `created`, or
//! `error <message>`. The pipe is close-on-exec: EOF after start means the exec succeeded.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

pub mod dev;
pub mod exec;
mod init;
pub mod mounts;

use crate::sys::{self, ForkSide};

/// What the monitor is asked to create, besides the OCI spec (`<bundle>/config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Image layer directories, topmost first (overlay lowerdirs).
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// The container's standard streams, as descriptors for stage 2.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid spec: {0}")]
    BadSpec(String),
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op} {}", target.display())]
    Mount {
        op: &'static str,
        target: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{op}")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// What the container init reported (already a whole message).
    #[error("{0}")]
    Reported(String),
}

impl InitError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> InitError {
        InitError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn sys(op: &'static str) -> impl Fn(nix::errno::Errno) -> InitError {
        move |source| InitError::Sys { op, source }
    }
}

/// A created container: its init is set up and waits for [`Created::start`].
#[derive(Debug)]
pub struct Created {
    /// The init's pid (in the monitor's PID namespace).
    pub pid: i32,
    start: File,
    sync: BufReader<File>,
}

impl Created {
    /// Lets the init exec the workload; `Err` with the init's message when the exec fails (command not found,
    /// not executable, ...). The init has exited then, with 127.
    pub fn start(mut self) -> Result<(), InitError> {
        self.start
            .write_all(b"s")
            .map_err(|e| InitError::io("signal start to", Path::new("the container init"), e))?;
        drop(self.start);
        match read_line(&mut self.sync)? {
            None => Ok(()),
            Some(line) => Err(InitError::Reported(
                line.strip_prefix("error ").unwrap_or(&line).to_string(),
            )),
        }
    }
}

/// Forks the container's init for the OCI spec at `spec_path` and waits until it is set up. Only for
/// single-threaded callers. The spec is read and its seccomp profile compiled in the child: the monitor itself
/// never runs (nor keeps the pages of) the JSON and BPF code, which keeps it small; a bad spec or profile is
/// reported by the child like any other setup error.
pub fn create(
    spec_path: &Path,
    rootfs: &Rootfs,
    cgroup_dir: Option<&Path>,
    stdio: Stdio,
) -> Result<Created, InitError> {
    let (sync_r, sync_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(InitError::sys("pipe"))?;
    let (start_r, start_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(InitError::sys("pipe"))?;
    match sys::fork_single_threaded().map_err(InitError::sys("fork stage 1"))? {
        ForkSide::Child => {
            drop(sync_r);
            drop(start_w);
            let mut report = File::from(sync_w);
            let setup = || -> Result<(), InitError> {
                let spec = Spec::load(spec_path).map_err(|e| {
                    InitError::BadSpec(format!("cannot load {}: {e}", spec_path.display()))
                })?;
                let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
                    Some(profile) => Some(crate::seccomp::compile(profile)?),
                    None => None,
                };
                init::stage1(
                    &spec,
                    rootfs,
                    cgroup_dir,
                    stdio,
                    seccomp.as_ref(),
                    start_r,
                    &mut report,
                )
            };
            let code = match setup() {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(report, "error {}", one_line(&e));
                    1
                }
            };
            sys::exit_now(code)
        }
        ForkSide::Parent(stage1) => {
            drop(sync_w);
            drop(start_r);
            drop(stdio);
            let mut sync = BufReader::new(File::from(sync_r));
            let first = read_line(&mut sync);
            // Stage 1 exits right after reporting; reap it here so the caller's SIGCHLD handling never sees it.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage1), None);
            let pid = match first? {
                Some(line) if line.starts_with("pid ") => line[4..]
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| InitError::Reported(format!("bad report from stage 1: {line}")))?,
                Some(line) => return Err(reported(&line)),
                None => {
                    return Err(InitError::Reported(
                        "the container init died during setup".into(),
                    ));
                }
            };
            match read_line(&mut sync)? {
                Some(line) if line == "created" => Ok(Created {
                    pid,
                    start: File::from(start_w),
                    sync,
                }),
                other => {
                    // The init is gone or broken: make sure it is gone, and reap it.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                    Err(match other {
                        Some(line) => reported(&line),
                        None => InitError::Reported("the container init died during setup".into()),
                    })
                }
            }
        }
    }
}

fn reported(line: &str) -> InitError {
    InitError::Reported(line.strip_prefix("error ").unwrap_or(line).to_string())
}

fn read_line(r: &mut BufReader<File>) -> Result<Option<String>, InitError> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(line.trim_end().to_string())),
        Err(e) => Err(InitError::io(
            "read from",
            Path::new("the container init"),
            e,
        )),
    }
}

/// The whole error chain on one line (the report protocol is line-based).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out.replace('\n', " ")
}
