//! ExecSync and the streaming Exec: a command inside a running container, through the `crius-monitor exec`
//! helper (which joins the container's namespaces and cgroup and takes on its identity; see
//! `crius_sandbox::container::exec`).

use std::time::{Duration, Instant};

use super::pty::PtyMaster;
use super::record::{ContainerRecord, ContainerState};
use super::service::Containers;
use crate::config::monitor_binary;
use crate::error::{Error, Result};

/// The most ExecSync returns of each stream; the rest is read and dropped (CRI-O CVE-2022-1708, containerd
/// CVE-2022-31030: unbounded exec output must not exhaust the runtime's memory).
pub const EXEC_OUTPUT_CAP: usize = 16 << 20;

/// What ExecSync returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Both streams together must fit in one CRI response (kubelet and crius take at most 16 MiB per message):
/// each keeps half the room, or more when the other needs less.
fn fit_response(mut out: Vec<u8>, mut err: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    const ROOM: usize = (16 << 20) - 4096;
    let out_keep = out
        .len()
        .min((ROOM / 2).max(ROOM.saturating_sub(err.len())));
    let err_keep = err.len().min(ROOM - out_keep);
    out.truncate(out_keep);
    err.truncate(err_keep);
    (out, err)
}

/// Reads a stream to its end, keeping at most [`EXEC_OUTPUT_CAP`] bytes.
async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut r) = r else { return Vec::new() };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = EXEC_OUTPUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

impl Containers {
    /// ExecSync: `cmd` in all the container's namespaces with its identity; output capped at
    /// [`EXEC_OUTPUT_CAP`] per stream. The timeout (zero: none) kills the command's process group, never the
    /// container, and is reported as a timeout.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let rec = self.exec_target(id, cmd).await?;
        let mut helper = Helper(
            helper_command(&rec, cmd, timeout, false)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| Error::sandbox("start the exec helper", e))?,
        );
        let child = &mut helper.0;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let started = Instant::now();
        let run = async {
            let (stdout, stderr, status) =
                tokio::join!(read_capped(out), read_capped(err), child.wait());
            (stdout, stderr, status)
        };
        // The helper enforces the timeout itself; this bound only guards against a wedged helper.
        let bound = if timeout.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            timeout + Duration::from_secs(10)
        };
        let (stdout, stderr, status) =
            tokio::time::timeout(bound, run)
                .await
                .map_err(|_| Error::Timeout {
                    op: "ExecSync",
                    after: timeout,
                })?;
        let status = status.map_err(|e| Error::sandbox("wait for the exec helper", e))?;
        let code = status.code().unwrap_or(255);
        if !timeout.is_zero()
            && code == crius_sandbox::container::exec::TIMED_OUT
            && started.elapsed() >= timeout
        {
            return Err(Error::Timeout {
                op: "ExecSync",
                after: timeout,
            });
        }
        if code == 126 && stderr.starts_with(b"crius-monitor exec:") {
            return Err(Error::sandbox(
                format!("exec in container {}", rec.id),
                String::from_utf8_lossy(&stderr).trim().to_string(),
            ));
        }
        let (stdout, stderr) = fit_response(stdout, stderr);
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code: code,
        })
    }
}

/// The helper's command line for `cmd` in `rec`'s container.
fn helper_command(
    rec: &ContainerRecord,
    cmd: &[String],
    timeout: Duration,
    tty: bool,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(monitor_binary());
    command
        .arg("exec")
        .arg("--pid")
        .arg(rec.pid.to_string())
        .arg("--spec")
        .arg(rec.bundle.join("config.json"))
        .arg("--timeout-ms")
        .arg(timeout.as_millis().to_string());
    if let Some(dir) = &rec.cgroup_abs {
        command.arg("--cgroup").arg(dir);
    }
    if tty {
        command.arg("--tty");
    }
    command.arg("--").args(cmd);
    command
}

/// The exec helper while it runs. Dropped before it was reaped (a cancelled ExecSync, a session task gone) it
/// gets SIGTERM, so it kills the command's process group before it exits (a SIGKILL would leave the command
/// running in the container); tokio reaps it.
#[derive(Debug)]
struct Helper(tokio::process::Child);

impl Helper {
    fn stop(&self) {
        if let Some(pid) = self.0.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A streaming exec's process: the helper, and the command's stdio (pipes, or the pty master).
#[derive(Debug)]
pub struct ExecProcess {
    helper: Helper,
    pub stdin: Option<tokio::process::ChildStdin>,
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
    pub pty: Option<PtyMaster>,
}

impl ExecProcess {
    /// Waits for the command: its exit code (128 + n after signal n; 126 or 127 when it could not be run,
    /// with the reason on its stderr).
    pub async fn wait(&mut self) -> Result<i32> {
        let status = self
            .helper
            .0
            .wait()
            .await
            .map_err(|e| Error::sandbox("wait for the exec helper", e))?;
        Ok(status.code().unwrap_or(255))
    }

    /// Ends the command (and what it started), never the container: the helper kills its process group.
    pub fn stop(&self) {
        self.helper.stop();
    }
}

impl Containers {
    /// The container an exec runs in: it must exist and be running, and `cmd` must not be empty.
    async fn exec_target(&self, id: &str, cmd: &[String]) -> Result<ContainerRecord> {
        if cmd.is_empty() {
            return Err(Error::invalid("cmd", "must not be empty"));
        }
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(rec)
    }

    /// Checks an Exec request before a URL is handed out for it.
    pub async fn check_exec(&self, id: &str, cmd: &[String]) -> Result<String> {
        Ok(self.exec_target(id, cmd).await?.id)
    }

    /// Starts `cmd` for a streaming exec, with a pty (`tty`) or with pipes for the streams asked for (the
    /// others are /dev/null). No timeout: it runs until it exits or [`ExecProcess::stop`].
    pub async fn exec_start(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<ExecProcess> {
        use std::process::Stdio;
        let rec = self.exec_target(id, cmd).await?;
        let pipe = |wanted: bool| {
            if wanted {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut command = helper_command(&rec, cmd, Duration::ZERO, tty);
        if !tty {
            let mut helper = command
                .stdin(pipe(stdin))
                .stdout(pipe(stdout))
                .stderr(pipe(stderr))
                .spawn()
                .map_err(|e| Error::sandbox("start the exec helper", e))?;
            return Ok(ExecProcess {
                stdin: helper.stdin.take(),
                stdout: helper.stdout.take(),
                stderr: helper.stderr.take(),
                helper: Helper(helper),
                pty: None,
            });
        }
        // The helper hands the pty master over its stdin, a socket; what it says about itself goes to stderr.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::sandbox("make the exec helper's socket", e))?;
        let mut helper = command
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::sandbox("start the exec helper", e))?;
        let received = tokio::task::spawn_blocking(move || {
            ours.set_read_timeout(Some(Duration::from_secs(30)))?;
            crius_sandbox::fdpass::recv_fd(std::os::fd::AsFd::as_fd(&ours))
        })
        .await
        .map_err(|e| Error::sandbox("receive the pty", e))?;
        let master = match received {
            Ok(fd) => fd,
            Err(e) => {
                // The helper failed before the command ran: its message says why.
                let message = read_capped(helper.stderr.take()).await;
                let _ = helper.wait().await;
                let message = String::from_utf8_lossy(&message).trim().to_string();
                return Err(Error::sandbox(
                    format!("exec in container {}", rec.id),
                    if message.is_empty() {
                        e.to_string()
                    } else {
                        message
                    },
                ));
            }
        };
        let pty = PtyMaster::new(master).map_err(|e| Error::sandbox("use the pty", e))?;
        Ok(ExecProcess {
            stdin: None,
            stdout: None,
            stderr: None,
            helper: Helper(helper),
            pty: Some(pty),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_output_fits_one_response() {
        const ROOM: usize = (16 << 20) - 4096;
        let (o, e) = fit_response(vec![1; 20 << 20], vec![]);
        assert_eq!((o.len(), e.len()), (ROOM, 0));
        let (o, e) = fit_response(vec![1; 20 << 20], vec![2; 20 << 20]);
        assert_eq!(o.len() + e.len(), ROOM);
        assert_eq!(o.len(), ROOM / 2);
        let (o, e) = fit_response(vec![1; 100], vec![2; 20 << 20]);
        assert_eq!((o.len(), e.len()), (100, ROOM - 100));
    }
}
