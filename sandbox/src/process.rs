//! Process handles: pidfds, /proc/<pid>/stat start times, liveness and oom_score_adj.
//!
//! A pid alone is not an identity (pids are reused); `(pid, start_time)` is, and a pidfd is
//! better still for a process we spawned ourselves.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
pub use nix::sys::signal::Signal;

use crate::sys;

/// Errors from process handles.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("open pidfd for pid {pid}")]
    PidfdOpen {
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("process has already exited")]
    NoSuchProcess,
    #[error("send {signal} via pidfd")]
    Signal {
        signal: Signal,
        #[source]
        source: Errno,
    },
    #[error("wait for process via pidfd")]
    Wait(#[source] Errno),
    #[error("read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("write {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// How a process ended, as `waitid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatusLike {
    /// Called exit with this code.
    Exited(i32),
    /// Killed by this signal number.
    Signaled { signal: i32, core_dumped: bool },
    /// Gone, but not our child (someone else reaped it): no status to report.
    Unknown,
}

impl ExitStatusLike {
    pub(crate) fn from_waited(w: &sys::Waited) -> Self {
        match w.code {
            libc::CLD_EXITED => ExitStatusLike::Exited(w.status),
            libc::CLD_DUMPED => ExitStatusLike::Signaled {
                signal: w.status,
                core_dumped: true,
            },
            _ => ExitStatusLike::Signaled {
                signal: w.status,
                core_dumped: false,
            },
        }
    }

    /// The shell convention: the exit code, or 128 + signal number.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitStatusLike::Exited(c) => Some(*c),
            ExitStatusLike::Signaled { signal, .. } => Some(128 + signal),
            ExitStatusLike::Unknown => None,
        }
    }
}

impl fmt::Display for ExitStatusLike {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatusLike::Exited(c) => write!(f, "exited with code {c}"),
            ExitStatusLike::Signaled {
                signal,
                core_dumped,
            } => {
                let name = Signal::try_from(*signal)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "killed by signal {signal} ({name})")?;
                if *core_dumped {
                    write!(f, ", core dumped")?;
                }
                Ok(())
            }
            ExitStatusLike::Unknown => write!(f, "exited (status not available: not our child)"),
        }
    }
}

/// A process file descriptor: becomes readable when the process exits.
///
/// Wrap it in `tokio::io::unix::AsyncFd` to await the exit, then call [`Pidfd::try_reap`].
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// pidfd_open for `pid`. Check the start time afterwards if the pid may have been reused.
    pub fn open(pid: i32) -> Result<Pidfd, ProcessError> {
        sys::pidfd_open(pid)
            .map(Pidfd)
            .map_err(|source| ProcessError::PidfdOpen { pid, source })
    }

    pub(crate) fn from_owned(fd: OwnedFd) -> Pidfd {
        Pidfd(fd)
    }

    /// Sends `sig`; [`ProcessError::NoSuchProcess`] once the process has exited.
    pub fn signal(&self, sig: Signal) -> Result<(), ProcessError> {
        match sys::pidfd_send_signal(self.0.as_fd(), sig as i32) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(ProcessError::NoSuchProcess),
            Err(source) => Err(ProcessError::Signal {
                signal: sig,
                source,
            }),
        }
    }

    /// Reaps the process if it has exited (`waitid(P_PIDFD, WEXITED|WNOHANG)`).
    ///
    /// `Ok(None)`: still running. A process that is not our child (ECHILD) counts as exited
    /// with [`ExitStatusLike::Unknown`] once it is really gone.
    pub fn try_reap(&self) -> Result<Option<ExitStatusLike>, ProcessError> {
        match sys::waitid_pidfd(self.0.as_fd(), true) {
            Ok(None) => Ok(None),
            Ok(Some(w)) => Ok(Some(ExitStatusLike::from_waited(&w))),
            Err(Errno::ECHILD) => {
                if self.exited()? {
                    Ok(Some(ExitStatusLike::Unknown))
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(ProcessError::Wait(e)),
        }
    }

    /// Blocks until the process exits and reaps it. Blocking: call from a blocking context.
    pub fn reap_blocking(&self) -> Result<ExitStatusLike, ProcessError> {
        match sys::waitid_pidfd(self.0.as_fd(), false) {
            Ok(Some(w)) => Ok(ExitStatusLike::from_waited(&w)),
            Ok(None) => Err(ProcessError::Wait(Errno::EAGAIN)),
            Err(Errno::ECHILD) => {
                while !self.exited()? {
                    sys::poll_readable(self.0.as_fd(), -1).map_err(ProcessError::Wait)?;
                }
                Ok(ExitStatusLike::Unknown)
            }
            Err(e) => Err(ProcessError::Wait(e)),
        }
    }

    /// Whether the pidfd reports the process as exited (readable), without blocking.
    fn exited(&self) -> Result<bool, ProcessError> {
        sys::poll_readable(self.0.as_fd(), 0).map_err(ProcessError::Wait)
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The fields of /proc/<pid>/stat we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub start_time: u64,
}

/// Parses /proc/<pid>/stat. The comm field (2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the LAST ')'.
pub(crate) fn parse_stat(content: &str) -> Option<Stat> {
    let rest = &content[content.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After comm: field 3 (state) is index 0, field 22 (starttime) is index 19.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

fn read_stat(pid: i32) -> Option<Stat> {
    let content = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&content)
}

/// Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22).
pub fn start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
}

/// True when `pid` exists, has the given start time (it is the same process) and is not a zombie.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    matches!(read_stat(pid), Some(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

/// Outcome of [`set_oom_score_adj`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomScoreAdj {
    /// The kernel accepted the wanted value.
    Set(i32),
    /// Not allowed (lowering needs CAP_SYS_RESOURCE); the process keeps `actual`.
    Clamped {
        wanted: i32,
        actual: i32,
        reason: String,
    },
}

/// Writes /proc/<pid>/oom_score_adj. EPERM/EACCES is not an error but [`OomScoreAdj::Clamped`].
pub fn set_oom_score_adj(pid: i32, wanted: i32) -> Result<OomScoreAdj, ProcessError> {
    let path = format!("/proc/{pid}/oom_score_adj");
    match std::fs::write(&path, wanted.to_string()) {
        Ok(()) => Ok(OomScoreAdj::Set(wanted)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            let actual = std::fs::read_to_string(&path)
                .map_err(|source| ProcessError::Read {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .parse()
                .map_err(|e| ProcessError::Read {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                })?;
            Ok(OomScoreAdj::Clamped {
                wanted,
                actual,
                reason: format!(
                    "not permitted ({e}); lowering oom_score_adj needs CAP_SYS_RESOURCE"
                ),
            })
        }
        Err(source) => Err(ProcessError::Write { path, source }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stat_line(comm: &str, state: char, start: u64) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice num_threads itrealvalue starttime vsize ...
        format!(
            "4242 ({comm}) {state} 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 12345 67 \
             18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
        )
    }

    #[test]
    fn parse_stat_plain_comm() {
        let s = parse_stat(&stat_line("sleep", 'S', 987654)).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                start_time: 987654
            }
        );
    }

    #[test]
    fn parse_stat_comm_with_spaces_and_parens() {
        for comm in ["a b", "x) Z 1 2 (y", ") )", "((", "tab\there"] {
            let s = parse_stat(&stat_line(comm, 'R', 31337)).unwrap();
            assert_eq!(
                s,
                Stat {
                    state: 'R',
                    start_time: 31337
                },
                "comm {comm:?}"
            );
        }
    }

    #[test]
    fn parse_stat_rejects_truncated() {
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn own_process_is_alive_with_its_start_time_only() {
        let me = std::process::id() as i32;
        let st = start_time(me).expect("own start time");
        assert!(is_alive(me, st));
        assert!(!is_alive(me, st + 1));
        assert_eq!(start_time(-5), None);
    }

    #[test]
    fn exit_status_codes_and_display() {
        assert_eq!(ExitStatusLike::Exited(3).code(), Some(3));
        let killed = ExitStatusLike::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(killed.code(), Some(137));
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(ExitStatusLike::Unknown.code(), None);
    }
}
