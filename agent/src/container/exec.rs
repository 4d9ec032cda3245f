//! ExecSync: a command inside a running container, through the `crius-monitor exec` helper (which joins the
//! container's namespaces and cgroup and takes on its identity; see `crius_sandbox::container::exec`).

use std::time::{Duration, Instant};

use super::record::ContainerState;
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
        let mut child = command
            .arg("--")
            .args(cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::sandbox("start the exec helper", e))?;
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
