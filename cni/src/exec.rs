//! Running one plugin: environment, stdin, stdout, the error JSON, and a bounded run time.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::error::CniError;

/// The code reported when a failing plugin printed no error JSON.
pub const CODE_UNPARSED_ERROR: u32 = 999;

/// The parameters of one plugin invocation.
pub(crate) struct Invocation<'a> {
    pub plugin: &'a str,
    pub path: &'a Path,
    pub command: &'static str,
    /// Whether CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_ARGS are set (not for STATUS).
    pub per_attachment: bool,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub cni_args: &'a str,
    pub cni_path: &'a [PathBuf],
    pub stdin: &'a Value,
    pub timeout: Duration,
}

/// Runs the plugin and returns its stdout when it exits 0.
///
/// The plugin runs in its own process group, so on timeout the whole group (the plugin and the
/// IPAM plugins it delegated to) is killed; the plugin itself is always reaped.
pub(crate) async fn run(inv: &Invocation<'_>) -> Result<Vec<u8>, CniError> {
    let exec_err = |source| CniError::Exec {
        plugin: inv.plugin.to_owned(),
        source,
    };
    let input = serde_json::to_vec(inv.stdin).map_err(|e| exec_err(std::io::Error::other(e)))?;
    let cni_path =
        std::env::join_paths(inv.cni_path).map_err(|e| exec_err(std::io::Error::other(e)))?;

    let mut cmd = Command::new(inv.path);
    cmd.env("CNI_COMMAND", inv.command)
        .env("CNI_PATH", cni_path);
    // STATUS (and GC) are about the network, not one attachment: no per-attachment variables.
    for (key, value) in [
        ("CNI_CONTAINERID", inv.container_id.as_ref()),
        ("CNI_NETNS", inv.netns.as_os_str()),
        ("CNI_IFNAME", inv.ifname.as_ref()),
        ("CNI_ARGS", inv.cni_args.as_ref()),
    ] {
        if inv.per_attachment {
            cmd.env(key, value);
        } else {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(exec_err)?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(exec_err(std::io::Error::other(
            "plugin stdio pipes missing",
        )));
    };

    let talk = async {
        let write = async {
            // A plugin may exit without reading its config (e.g. on an early error): a broken
            // pipe here is not the failure to report; the exit status and output are.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (_, out_res, err_res, status) = tokio::join!(
            write,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        out_res
            .and(err_res)
            .and(status)
            .map(|status| (status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(inv.timeout, talk).await {
        Ok(res) => res.map_err(exec_err)?,
        Err(_) => {
            if let Some(pid) = pid {
                // The group may already be gone; nothing else to do about an error here.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // Kill (if still needed) and reap the plugin so it does not linger as a zombie.
            if let Err(e) = child.kill().await {
                tracing::warn!(plugin = inv.plugin, error = %e, "cannot reap timed-out cni plugin");
            }
            return Err(CniError::Timeout {
                plugin: inv.plugin.to_owned(),
                after: inv.timeout,
            });
        }
    };
    if status.success() {
        return Ok(out);
    }
    Err(plugin_error(inv.plugin, status, &out, &err))
}

/// The error a failed plugin reported: its `{code, msg, details}` JSON on stdout, else its text.
fn plugin_error(plugin: &str, status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> CniError {
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(stdout)
        && let Some(code) = o.get("code").and_then(Value::as_u64)
    {
        let text = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        return CniError::Plugin {
            plugin: plugin.to_owned(),
            code: u32::try_from(code).unwrap_or(u32::MAX),
            msg: text("msg"),
            details: text("details"),
        };
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    let msg = [text(stderr), text(stdout)]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    CniError::Plugin {
        plugin: plugin.to_owned(),
        code: CODE_UNPARSED_ERROR,
        msg: if msg.is_empty() {
            format!("exited with {status}")
        } else {
            msg
        },
        details: String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn error_json_from_stdout() {
        let out = br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid network config","details":"bad subnet"}"#;
        match plugin_error("bridge", ExitStatus::from_raw(1 << 8), out, b"noise") {
            CniError::Plugin {
                plugin,
                code,
                msg,
                details,
            } => {
                assert_eq!(
                    (plugin.as_str(), code, msg.as_str(), details.as_str()),
                    ("bridge", 7, "invalid network config", "bad subnet")
                );
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn error_text_fallbacks() {
        match plugin_error("p", ExitStatus::from_raw(2 << 8), b"", b" panic: oops \n") {
            CniError::Plugin { code, msg, .. } => {
                assert_eq!((code, msg.as_str()), (CODE_UNPARSED_ERROR, "panic: oops"))
            }
            e => panic!("{e:?}"),
        }
        match plugin_error("p", ExitStatus::from_raw(2 << 8), b"", b"") {
            CniError::Plugin { msg, .. } => assert!(msg.contains("exit status: 2"), "{msg}"),
            e => panic!("{e:?}"),
        }
    }
}
