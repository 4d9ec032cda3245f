//! Talking to a pod's monitor (`crius-monitor`, see `crius_sandbox::monitor`): starting it, one JSON request per
//! connection over its socket, and attach sessions (a request, then binary frames both ways). The monitor outlives
//! the agent; after a restart the agent simply connects again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crius_sandbox::monitor::{Request, Response, SOCKET, short_socket_path};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::attach::Attach;

use crate::error::{Error, Result};

/// How long one monitor request may take (a create mounts and forks; a start execs).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The monitor of one pod, known by its directory (`<state>/pods/<id>`).
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    dir: PathBuf,
}

impl MonitorHandle {
    pub fn new(pod_dir: &Path) -> MonitorHandle {
        MonitorHandle {
            dir: pod_dir.to_path_buf(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// Whether a monitor answers on the socket.
    pub async fn alive(&self) -> bool {
        matches!(self.call(&Request::State).await, Ok(Response::State { .. }))
    }

    /// Starts the monitor unless one already answers. It runs in its own process group (a Ctrl-C or a signal
    /// to the agent's group does not reach it), logs to `<dir>/monitor.log`, and is reaped by a task of ours
    /// while we live.
    pub async fn ensure_running(&self, binary: &Path) -> Result<()> {
        if self.alive().await {
            return Ok(());
        }
        // The log is the pod's first monitor's: a monitor started where one is gone is a restart.
        let restart = self.dir.join("monitor.log").exists();
        let started = self.start(binary).await;
        crate::metrics::monitor_start(restart, started.is_ok());
        started
    }

    async fn start(&self, binary: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("monitor.log"))
            .map_err(|e| Error::sandbox(format!("open {}/monitor.log", self.dir.display()), e))?;
        let mut child = tokio::process::Command::new(binary)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                Error::sandbox(format!("start the pod monitor {}", binary.display()), e)
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::FailedPrecondition("monitor stdout not piped".into()))?;
        let mut line = String::new();
        let read =
            tokio::time::timeout(CALL_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match read {
            Ok(Ok(_)) if line.trim() == "ready" => Ok(()),
            Ok(Ok(_)) => Err(Error::FailedPrecondition(format!(
                "the pod monitor did not start: {}",
                line.trim()
            ))),
            Ok(Err(e)) => Err(Error::sandbox("read the pod monitor's readiness", e)),
            Err(_) => Err(Error::Timeout {
                op: "pod monitor start",
                after: CALL_TIMEOUT,
            }),
        }
    }

    /// One request, one response.
    pub async fn call(&self, req: &Request) -> Result<Response> {
        let socket = self.socket();
        let exchange = async {
            // Through a descriptor of the pod dir: its path may be longer than a sockaddr_un holds.
            let (_dir, short) = short_socket_path(&self.dir, SOCKET)?;
            let mut s = UnixStream::connect(&short).await?;
            let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
            line.push(b'\n');
            s.write_all(&line).await?;
            let mut out = String::new();
            BufReader::new(s).read_line(&mut out).await?;
            serde_json::from_str::<Response>(&out).map_err(std::io::Error::other)
        };
        match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Error::sandbox(
                format!("talk to the pod monitor at {}", socket.display()),
                e,
            )),
            Err(_) => Err(Error::Timeout {
                op: "pod monitor request",
                after: CALL_TIMEOUT,
            }),
        }
    }

    /// Opens an attach session to container `id` (created or running): its output from now on, and with
    /// `stdin` its stdin (the container must have been created with stdin). Connecting and the monitor's answer
    /// are bounded by the call timeout; the session itself lasts until the container exits or it is dropped.
    pub async fn attach(&self, id: &str, stdin: bool) -> Result<Attach> {
        let socket = self.socket();
        let req = Request::Attach {
            id: id.to_string(),
            stdin,
        };
        let open = async {
            let (_dir, short) = short_socket_path(&self.dir, SOCKET)?;
            let s = UnixStream::connect(&short).await?;
            let (r, mut w) = s.into_split();
            let mut line = serde_json::to_vec(&req).map_err(std::io::Error::other)?;
            line.push(b'\n');
            w.write_all(&line).await?;
            // The reader keeps whatever follows the answer: the first frames.
            let mut r = BufReader::new(r);
            let mut answer = String::new();
            r.read_line(&mut answer).await?;
            let answer =
                serde_json::from_str::<Response>(&answer).map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((answer, r, w))
        };
        let (answer, r, w) = match tokio::time::timeout(CALL_TIMEOUT, open).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                return Err(Error::sandbox(
                    format!("attach to container {id} at {}", socket.display()),
                    e,
                ));
            }
            Err(_) => {
                return Err(Error::Timeout {
                    op: "pod monitor attach",
                    after: CALL_TIMEOUT,
                });
            }
        };
        match answer {
            Response::Ok => Ok(Attach::new(r, w, id)),
            Response::Error { message } => Err(Error::FailedPrecondition(format!(
                "attach to container {id}: {message}"
            ))),
            other => Err(Error::FailedPrecondition(format!(
                "attach to container {id}: the pod monitor answered {other:?}"
            ))),
        }
    }

    /// [`MonitorHandle::call`], with an `Error` response turned into `Err` (`what` names the step).
    pub async fn expect_ok(&self, req: &Request, what: &str) -> Result<Response> {
        match self.call(req).await? {
            Response::Error { message } => {
                Err(Error::FailedPrecondition(format!("{what}: {message}")))
            }
            other => Ok(other),
        }
    }
}
