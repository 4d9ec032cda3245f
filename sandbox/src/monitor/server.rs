//! The monitor's event loop: one thread, one poll(2) over the control socket, a signalfd and the containers'
//! output pipes. No async runtime: the process forks container inits at any time, and a single thread is what
//! makes that safe.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{ContainerState, EXITS, ExitRecord, Request, Response, SOCKET, Status};
use crate::container::{self, Created, Stdio};
use crate::crilog::{CriLog, DEFAULT_MAX_LINE, Stream};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
}

struct Container {
    pid: i32,
    status: Status,
    started_at: i64,
    exit: Option<ExitRecord>,
    /// Until started: the handle that lets the init exec.
    created: Option<Created>,
    log: Option<CriLog>,
    stdout: Option<File>,
    stderr: Option<File>,
    /// Our end of the container's stdin (attach writes here; kept open so stdin does not see EOF).
    _stdin: Option<File>,
}

pub struct Monitor {
    dir: PathBuf,
    listener: UnixListener,
    signals: SignalFd,
    containers: BTreeMap<String, Container>,
    done: bool,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Monitor {
    /// Binds `<dir>/monitor.sock` (replacing a stale one), becomes a child subreaper and routes SIGCHLD and
    /// SIGTERM to a signalfd.
    pub fn new(dir: &Path) -> Result<Monitor, MonitorError> {
        let sys = |op| move |source| MonitorError::Sys { op, source };
        nix::sys::prctl::set_child_subreaper(true).map_err(sys("become a child subreaper"))?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGPIPE,
        ] {
            mask.add(s);
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(sys("block signals"))?;
        let mut wanted = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
            wanted.add(s);
        }
        let signals = SignalFd::with_flags(&wanted, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(sys("signalfd"))?;
        let exits = dir.join(EXITS);
        std::fs::create_dir_all(&exits).map_err(|e| MonitorError::Io {
            op: "create",
            path: exits.clone(),
            source: e,
        })?;
        let socket = dir.join(SOCKET);
        let _ = std::fs::remove_file(&socket);
        let bind_err = |e| MonitorError::Io {
            op: "bind",
            path: socket.clone(),
            source: e,
        };
        // The pod dir may be deeper than a sockaddr_un can name: bind through a descriptor of it.
        let (_dir_fd, short) = super::short_socket_path(dir, SOCKET).map_err(bind_err)?;
        let listener = UnixListener::bind(&short).map_err(bind_err)?;
        Ok(Monitor {
            dir: dir.to_path_buf(),
            listener,
            signals,
            containers: BTreeMap::new(),
            done: false,
        })
    }

    /// Serves until [`Request::Shutdown`] or SIGTERM.
    pub fn run(&mut self) -> Result<(), MonitorError> {
        while !self.done {
            // Which container stream each poll slot after the first two belongs to.
            let mut slots: Vec<(String, Stream)> = Vec::new();
            let ready: Vec<bool> = {
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                ];
                for (id, c) in &self.containers {
                    for (stream, f) in [(Stream::Stdout, &c.stdout), (Stream::Stderr, &c.stderr)] {
                        if let Some(f) = f {
                            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                            slots.push((id.clone(), stream));
                        }
                    }
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(source) => return Err(MonitorError::Sys { op: "poll", source }),
                }
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect()
            };
            if ready[1] {
                self.handle_signals();
            }
            for (i, (id, stream)) in slots.iter().enumerate() {
                if ready[i + 2] {
                    self.drain(id, *stream);
                }
            }
            if ready[0]
                && let Ok((conn, _)) = self.listener.accept()
            {
                self.serve(conn);
            }
        }
        self.kill_all();
        Ok(())
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo == Signal::SIGTERM as u32 || info.ssi_signo == Signal::SIGINT as u32 {
                log("shutting down on signal");
                self.done = true;
            }
        }
        self.reap();
    }

    /// Reaps every exited child: containers get their exit recorded, orphans (reparented to us) just go.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, exit_code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, code, None),
                WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, Some(sig as i32)),
                _ => continue,
            };
            self.record_exit(pid.as_raw(), exit_code, signal);
        }
    }

    fn record_exit(&mut self, pid: i32, exit_code: i32, signal: Option<i32>) {
        let dir = self.dir.clone();
        let Some((id, c)) = self
            .containers
            .iter_mut()
            .find(|(_, c)| c.pid == pid && c.exit.is_none())
        else {
            return;
        };
        let rec = ExitRecord {
            exit_code,
            signal,
            finished_at: now_nanos(),
        };
        c.exit = Some(rec);
        c.status = Status::Exited;
        c.created = None;
        // Durable before anyone can ask: the agent reads this file when we are gone.
        if let Ok(json) = serde_json::to_vec(&rec)
            && let Err(e) = crate::mount::write_file_atomic(&dir.join(EXITS).join(id), &json, 0o644)
        {
            log(&format!("cannot record the exit of {id}: {e}"));
        }
        log(&format!(
            "container {id} (pid {pid}) exited with {exit_code}"
        ));
    }

    /// Reads what is there on one stream into the container's log; EOF closes the stream.
    fn drain(&mut self, id: &str, stream: Stream) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        let slot = match stream {
            Stream::Stdout => &mut c.stdout,
            Stream::Stderr => &mut c.stderr,
        };
        let Some(f) = slot else { return };
        let mut buf = [0u8; 32 * 1024];
        match f.read(&mut buf) {
            Ok(0) | Err(_) => {
                *slot = None;
                if let Some(log) = &mut c.log {
                    let _ = log.finish(stream);
                }
            }
            Ok(n) => {
                // A failing log (disk full) must never stop us from draining: the container would block.
                if let Some(log) = &mut c.log
                    && let Err(e) = log.write(stream, &buf[..n])
                {
                    log_err(id, &e);
                }
            }
        }
    }

    fn serve(&mut self, conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(&conn);
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => self.handle(req),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        if let Ok(mut out) = serde_json::to_vec(&response) {
            out.push(b'\n');
            let _ = (&conn).write_all(&out);
        }
    }

    fn handle(&mut self, req: Request) -> Response {
        let fail = |message: String| Response::Error { message };
        match req {
            Request::Create {
                id,
                bundle,
                rootfs,
                cgroup_dir,
                log_path,
                stdin,
                stdin_once: _,
                tty,
            } => match self.create(
                &id,
                &bundle,
                &rootfs,
                cgroup_dir.as_deref(),
                log_path.as_deref(),
                stdin,
                tty,
            ) {
                Ok(pid) => Response::Created { pid },
                Err(message) => fail(message),
            },
            Request::Start { id } => match self.containers.get_mut(&id) {
                None => fail(format!("no container {id}")),
                Some(c) => match c.created.take() {
                    None => fail(format!("container {id} is not in the created state")),
                    Some(created) => match created.start() {
                        Ok(()) => {
                            c.status = Status::Running;
                            c.started_at = now_nanos();
                            Response::Ok
                        }
                        Err(e) => {
                            // The init exits right after its report: record it now, not at the next SIGCHLD.
                            let pid = c.pid;
                            c.started_at = now_nanos();
                            if let Ok(WaitStatus::Exited(_, code)) =
                                waitpid(Pid::from_raw(pid), None)
                            {
                                self.record_exit(pid, code, None);
                            }
                            fail(container::one_line(&e))
                        }
                    },
                },
            },
            Request::Signal { id, signal } => match self.containers.get(&id) {
                None => fail(format!("no container {id}")),
                Some(c) if c.exit.is_some() => Response::Ok,
                Some(c) => match Signal::try_from(signal) {
                    Err(_) => fail(format!("bad signal {signal}")),
                    Ok(sig) => match nix::sys::signal::kill(Pid::from_raw(c.pid), sig) {
                        Ok(()) | Err(nix::errno::Errno::ESRCH) => Response::Ok,
                        Err(e) => fail(format!("kill {}: {e}", c.pid)),
                    },
                },
            },
            Request::State => Response::State {
                containers: self
                    .containers
                    .iter()
                    .map(|(id, c)| ContainerState {
                        id: id.clone(),
                        pid: c.pid,
                        status: c.status,
                        started_at: c.started_at,
                        exit: c.exit,
                    })
                    .collect(),
            },
            Request::ReopenLog { id } => match self.containers.get_mut(&id) {
                None => fail(format!("no container {id}")),
                Some(c) => match &mut c.log {
                    None => Response::Ok,
                    Some(log) => match log.reopen() {
                        Ok(()) => Response::Ok,
                        Err(e) => fail(container::one_line(&e)),
                    },
                },
            },
            Request::Forget { id } => {
                if let Some(c) = self.containers.remove(&id)
                    && c.exit.is_none()
                {
                    let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), Signal::SIGKILL);
                    let _ = waitpid(Pid::from_raw(c.pid), None);
                }
                let _ = std::fs::remove_file(self.dir.join(EXITS).join(&id));
                Response::Ok
            }
            Request::Shutdown => {
                self.done = true;
                Response::Ok
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        rootfs: &container::Rootfs,
        cgroup_dir: Option<&Path>,
        log_path: Option<&Path>,
        stdin: bool,
        tty: bool,
    ) -> Result<i32, String> {
        if self.containers.contains_key(id) {
            return Err(format!("container {id} exists"));
        }
        let spec_path = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path)
            .map_err(|e| format!("cannot load {}: {e}", spec_path.display()))?;
        let cri_log = match log_path {
            Some(p) => {
                Some(CriLog::open(p, DEFAULT_MAX_LINE).map_err(|e| container::one_line(&e))?)
            }
            None => None,
        };
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let devnull = || -> Result<OwnedFd, String> {
            File::open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| format!("open /dev/null: {e}"))
        };
        let (stdio, out_r, err_r, stdin_w) = if tty {
            let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
            let slave = pty.slave;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
            let stdio = Stdio {
                stdin: dup(&slave)?,
                stdout: dup(&slave)?,
                stderr: slave,
            };
            let master = File::from(pty.master);
            let writer = master.try_clone().map_err(|e| format!("dup: {e}"))?;
            (stdio, Some(master), None, Some(writer))
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let (stdin_fd, stdin_w) = if stdin {
                let (r, w) = pipe()?;
                (r, Some(File::from(w)))
            } else {
                (devnull()?, None)
            };
            let stdio = Stdio {
                stdin: stdin_fd,
                stdout: out_w,
                stderr: err_w,
            };
            (
                stdio,
                Some(File::from(out_r)),
                Some(File::from(err_r)),
                stdin_w,
            )
        };
        let created = container::create(&spec, rootfs, cgroup_dir, stdio)
            .map_err(|e| container::one_line(&e))?;
        let pid = created.pid;
        log(&format!("container {id} created, init pid {pid}"));
        self.containers.insert(
            id.to_string(),
            Container {
                pid,
                status: Status::Created,
                started_at: 0,
                exit: None,
                created: Some(created),
                log: cri_log,
                stdout: out_r,
                stderr: err_r,
                _stdin: stdin_w,
            },
        );
        Ok(pid)
    }

    fn kill_all(&mut self) {
        for c in self.containers.values() {
            if c.exit.is_none() {
                let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), Signal::SIGKILL);
            }
        }
        let pids: Vec<i32> = self
            .containers
            .values()
            .filter(|c| c.exit.is_none())
            .map(|c| c.pid)
            .collect();
        for pid in pids {
            if let Ok(WaitStatus::Signaled(_, sig, _)) = waitpid(Pid::from_raw(pid), None) {
                self.record_exit(pid, 128 + sig as i32, Some(sig as i32));
            }
        }
    }
}

/// The monitor's own log: stderr, which the agent points at `<dir>/monitor.log`.
pub fn log(msg: &str) {
    eprintln!(
        "{} crius-monitor: {msg}",
        crate::crilog::format_timestamp(SystemTime::now())
    );
}

fn log_err(id: &str, e: &(dyn std::error::Error + 'static)) {
    log(&format!("container {id}: {}", container::one_line(e)));
}
