//! The monitor's event loop: one thread, one poll(2) over the control socket, a signalfd, the containers'
//! output pipes and stdin, and the attach sessions. No async runtime: the process forks container inits at any
//! time, and a single thread is what makes that safe.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::attach::{self, Input, Io, Sessions};
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
    /// Non-blocking; with a tty, `stdout` is the pty master (and the terminal's one stream).
    stdout: Option<File>,
    stderr: Option<File>,
    /// Created with stdin (attach sessions may ask for it).
    stdin_wanted: bool,
    /// Our end of the container's stdin, for attach sessions; kept open so stdin does not see EOF. None without
    /// stdin, once closed for good (stdin_once) and after the exit.
    stdin: Option<Input>,
    tty: bool,
}

/// What one poll slot after the listener and the signalfd belongs to.
enum Slot {
    Output(String, Stream),
    Stdin(String),
    Session(u64),
}

/// How many reads of a stream an exit may drain at once (an orphan holding the pipe may write forever).
const FINAL_READS: usize = 64;

pub struct Monitor {
    dir: PathBuf,
    listener: UnixListener,
    signals: SignalFd,
    containers: BTreeMap<String, Container>,
    sessions: Sessions,
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
            sessions: Sessions::default(),
            done: false,
        })
    }

    /// Serves until [`Request::Shutdown`] or SIGTERM.
    pub fn run(&mut self) -> Result<(), MonitorError> {
        while !self.done {
            let mut slots: Vec<Slot> = Vec::new();
            let ready: Vec<PollFlags> = {
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                ];
                for (id, c) in &self.containers {
                    for (stream, f) in [(Stream::Stdout, &c.stdout), (Stream::Stderr, &c.stderr)] {
                        if let Some(f) = f {
                            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                            slots.push(Slot::Output(id.clone(), stream));
                        }
                    }
                    if let Some(input) = c.stdin.as_ref().filter(|i| i.busy()) {
                        fds.push(PollFd::new(input.fd(), PollFlags::POLLOUT));
                        slots.push(Slot::Stdin(id.clone()));
                    }
                }
                let busy = |id: &str| {
                    self.containers
                        .get(id)
                        .is_some_and(|c| c.stdin.as_ref().is_some_and(Input::busy))
                };
                for (key, fd, flags) in self.sessions.interest(busy) {
                    fds.push(PollFd::new(fd, flags));
                    slots.push(Slot::Session(key));
                }
                // Only sessions of exited containers, waiting for their clients to read the end, have a deadline.
                let timeout = match self.sessions.deadline() {
                    None => PollTimeout::NONE,
                    Some(d) => {
                        let ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
                        PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                    }
                };
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(source) => return Err(MonitorError::Sys { op: "poll", source }),
                }
                fds.iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect()
            };
            // Exits first: their output is drained and their sessions ended before anything else is read.
            if !ready[1].is_empty() {
                self.handle_signals();
            }
            for (slot, revents) in slots.iter().zip(&ready[2..]) {
                if revents.is_empty() {
                    continue;
                }
                match slot {
                    Slot::Output(id, stream) => {
                        self.drain(id, *stream);
                    }
                    Slot::Stdin(id) => {
                        if let Some(c) = self.containers.get_mut(id) {
                            attach::flush_input(&mut c.stdin);
                        }
                    }
                    Slot::Session(key) => self.session_ready(*key, *revents),
                }
            }
            self.sessions.expire(Instant::now());
            if !ready[0].is_empty()
                && let Ok((conn, _)) = self.listener.accept()
            {
                self.serve(conn);
            }
        }
        self.kill_all();
        self.sessions.flush_all();
        Ok(())
    }

    /// Hands an attach session what poll reported for it, with its container's stdin and terminal.
    fn session_ready(&mut self, key: u64, revents: PollFlags) {
        let Some(id) = self.sessions.container_of(key).map(str::to_string) else {
            return;
        };
        let io = self.containers.get_mut(&id).map(|c| Io {
            stdin: &mut c.stdin,
            pty: c.stdout.as_ref().filter(|_| c.tty).map(|f| f.as_fd()),
        });
        self.sessions.ready(key, revents, io);
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
        if let Some(id) = self.write_exit(pid, exit_code, signal) {
            self.end_sessions(&id, exit_code);
        }
    }

    /// Attach sessions get what the container wrote before it exited, then the exit, then their end.
    fn end_sessions(&mut self, id: &str, exit_code: i32) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            for _ in 0..FINAL_READS {
                if !self.drain(id, stream) {
                    break;
                }
            }
        }
        if let Some(c) = self.containers.get_mut(id) {
            c.stdin = None;
        }
        self.sessions.exited(id, exit_code);
    }

    /// Records the exit of the container whose init is `pid`, if it is one; its id.
    fn write_exit(&mut self, pid: i32, exit_code: i32, signal: Option<i32>) -> Option<String> {
        let dir = self.dir.clone();
        let (id, c) = self
            .containers
            .iter_mut()
            .find(|(_, c)| c.pid == pid && c.exit.is_none())?;
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
        Some(id.clone())
    }

    /// Reads what is there on one stream into the container's log, then to its attach sessions (the log never
    /// waits for them); EOF closes the stream. Whether it read anything.
    fn drain(&mut self, id: &str, stream: Stream) -> bool {
        let Some(c) = self.containers.get_mut(id) else {
            return false;
        };
        let slot = match stream {
            Stream::Stdout => &mut c.stdout,
            Stream::Stderr => &mut c.stderr,
        };
        let Some(f) = slot else { return false };
        let mut buf = [0u8; 32 * 1024];
        match f.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => false,
            // EIO is a pty's end: its slave is closed.
            Ok(0) | Err(_) => {
                *slot = None;
                if let Some(log) = &mut c.log {
                    let _ = log.finish(stream);
                }
                false
            }
            Ok(n) => {
                // A failing log (disk full) must never stop us from draining: the container would block.
                if let Some(log) = &mut c.log
                    && let Err(e) = log.write(stream, &buf[..n])
                {
                    log_err(id, &e);
                }
                self.sessions.output(id, stream, &buf[..n], &mut c.stdin);
                true
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
        let mut attach = None;
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Attach { id, stdin }) => match self.attachable(&id, stdin) {
                Ok(stdin) => {
                    attach = Some((id, stdin));
                    Response::Ok
                }
                Err(message) => Response::Error { message },
            },
            Ok(req) => self.handle(req),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        // What the client sent after its request line already belongs to the attach session.
        let leftover = reader.buffer().to_vec();
        drop(reader);
        let Ok(mut out) = serde_json::to_vec(&response) else {
            return;
        };
        out.push(b'\n');
        if (&conn).write_all(&out).is_err() {
            return;
        }
        if let Some((id, stdin)) = attach {
            match self.sessions.add(conn, &id, stdin, leftover) {
                Ok(key) => self.session_ready(key, PollFlags::empty()),
                Err(e) => log(&format!("cannot attach to container {id}: {e}")),
            }
        }
    }

    /// Whether container `id` can be attached to (created or running), and whether a session asking for stdin
    /// gets it (not once a stdin_once stdin was closed).
    fn attachable(&self, id: &str, stdin: bool) -> Result<bool, String> {
        let c = self
            .containers
            .get(id)
            .ok_or_else(|| format!("no container {id}"))?;
        if c.exit.is_some() {
            return Err(format!("container {id} has exited"));
        }
        if stdin && !c.stdin_wanted {
            return Err(format!("container {id} was created without stdin"));
        }
        Ok(stdin && c.stdin.is_some())
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
                stdin_once,
                tty,
            } => match self.create(
                &id,
                &bundle,
                &rootfs,
                cgroup_dir.as_deref(),
                log_path.as_deref(),
                (stdin, stdin_once),
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
            // Answered in `serve`: the connection becomes the session.
            Request::Attach { .. } => fail("attach is not a one-shot request".into()),
            Request::Forget { id } => {
                self.sessions.forget(&id);
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
        (stdin, stdin_once): (bool, bool),
        tty: bool,
    ) -> Result<i32, String> {
        if self.containers.contains_key(id) {
            return Err(format!("container {id} exists"));
        }
        let spec_path = bundle.join("config.json");
        if !spec_path.is_file() {
            return Err(format!("no OCI spec at {}", spec_path.display()));
        }
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
            let writer = match stdin {
                true => Some(master.try_clone().map_err(|e| format!("dup: {e}"))?),
                false => None,
            };
            (stdio, Some(master), None, writer)
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
        // Never block on the container: its output is read, and its stdin written, only as far as it goes now.
        for f in [&out_r, &err_r].into_iter().flatten() {
            attach::set_nonblocking(f.as_fd()).map_err(|e| format!("fcntl: {e}"))?;
        }
        let stdin_w = match stdin_w {
            Some(w) => Some(Input::new(w, stdin_once, tty).map_err(|e| format!("fcntl: {e}"))?),
            None => None,
        };
        let created = container::create(&spec_path, rootfs, cgroup_dir, stdio)
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
                stdin_wanted: stdin,
                stdin: stdin_w,
                tty,
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
