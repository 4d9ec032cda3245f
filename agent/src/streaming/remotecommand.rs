//! The remotecommand protocol (exec and attach) independent of the transport: the streams of one session,
//! the status written on the error stream at the end, and how a SPDY client's streams become a session.
//!
//! Versions: `channel.k8s.io` (v1), `v2.channel.k8s.io`, `v3.channel.k8s.io` (adds resize) and
//! `v4.channel.k8s.io` (the error stream carries a JSON `metav1.Status` with the exit code; before v4 it
//! carries the message of a failure and nothing on success). SPDY clients asking for `v5.channel.k8s.io` get
//! v4 behaviour (v5 differs only in WebSocket's close frames), as kubelet does.

use std::pin::Pin;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy;

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// The remotecommand protocols, best first.
pub const PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How the error stream reports the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// v1-v3: a failure's message as text; nothing on success.
    Text,
    /// v4 and later: a JSON metav1.Status, always.
    Json,
}

impl StatusFormat {
    pub fn of(protocol: &str) -> StatusFormat {
        match protocol {
            "v5.channel.k8s.io" | "v4.channel.k8s.io" | "v4.base64.channel.k8s.io" => {
                StatusFormat::Json
            }
            _ => StatusFormat::Text,
        }
    }
}

/// Which streams the request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size from the client (`{"Width": 80, "Height": 24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// One session's streams, whatever carries them.
pub struct Streams {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    pub error: Option<Writer>,
    pub format: StatusFormat,
}

/// How the operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (attach: the session ended; 0).
    Exited(i32),
    /// It could not be run or followed.
    Failed(String),
}

/// What goes on the error stream for `outcome`, in `format` (None: nothing).
pub fn status_bytes(format: StatusFormat, outcome: &Outcome) -> Option<Vec<u8>> {
    let (message, status) = match outcome {
        Outcome::Exited(0) => (None, json!({"metadata": {}, "status": "Success"})),
        Outcome::Exited(code) => {
            let message = format!("command terminated with non-zero exit code: exit status {code}");
            let status = json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            });
            (Some(message), status)
        }
        Outcome::Failed(why) => {
            let message = format!("error executing command in container: {why}");
            let status = json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {message}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            });
            (Some(message), status)
        }
    };
    match format {
        StatusFormat::Json => Some(status.to_string().into_bytes()),
        StatusFormat::Text => message.map(String::into_bytes),
    }
}

impl Streams {
    /// Writes the status, then ends every stream we write (the client's reads see their end).
    pub async fn finish(mut self, outcome: &Outcome) {
        if let Some(mut err) = self.error.take() {
            if let Some(bytes) = status_bytes(self.format, outcome) {
                let _ = err.write_all(&bytes).await;
            }
            let _ = err.shutdown().await;
        }
        for w in [self.stdout.take(), self.stderr.take()]
            .into_iter()
            .flatten()
        {
            let mut w = w;
            let _ = w.shutdown().await;
        }
    }
}

/// Reads resize events (a stream of JSON objects) into a channel until the stream ends.
pub fn resize_events(mut r: Reader) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut de = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
            let mut used = 0;
            loop {
                match de.next() {
                    Some(Ok(size)) => {
                        used = de.byte_offset();
                        if tx.send(size).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    // Garbage: kubelet gives up on the resize stream too.
                    Some(Err(_)) => return,
                    None => break,
                }
            }
            buf.drain(..used);
            if buf.len() > 64 * 1024 {
                return;
            }
        }
    });
    rx
}

/// The streams a SPDY client opens for one session: `error`, plus stdin/stdout/stderr as asked, plus `resize`
/// for a TTY from v3 on, each named by its `streamType` header; within `timeout` of the upgrade.
pub async fn spdy_streams(
    incoming: &mut mpsc::Receiver<spdy::Stream>,
    protocol: &str,
    wanted: Wanted,
    timeout: Duration,
) -> Result<Streams, String> {
    let resize = wanted.tty && !matches!(protocol, "v2.channel.k8s.io" | "channel.k8s.io" | "");
    let expected = 1
        + usize::from(wanted.stdin)
        + usize::from(wanted.stdout)
        + usize::from(wanted.stderr)
        + usize::from(resize);
    let mut s = Streams {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        error: None,
        format: StatusFormat::of(protocol),
    };
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while received < expected {
        let stream = tokio::time::timeout_at(deadline, incoming.recv())
            .await
            .map_err(|_| format!("timed out waiting for the client to open {expected} streams"))?
            .ok_or("the client went away before opening its streams")?;
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        let (r, w) = stream.split();
        match kind.as_str() {
            "error" => s.error = Some(Box::pin(w)),
            "stdin" => s.stdin = Some(Box::pin(r)),
            "stdout" => s.stdout = Some(Box::pin(w)),
            "stderr" => s.stderr = Some(Box::pin(w)),
            "resize" => s.resize = Some(resize_events(Box::pin(r))),
            other => {
                tracing::debug!(stream_type = other, "unexpected stream type; ignored");
                continue;
            }
        }
        received += 1;
    }
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code() {
        let s = status_bytes(StatusFormat::Json, &Outcome::Exited(3)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let ok = status_bytes(StatusFormat::Json, &Outcome::Exited(0)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(v["status"], "Success");
        let failed = status_bytes(StatusFormat::Json, &Outcome::Failed("no such".into())).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&failed).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
    }

    #[test]
    fn before_v4_only_failures_are_written_as_text() {
        assert_eq!(status_bytes(StatusFormat::Text, &Outcome::Exited(0)), None);
        let t = status_bytes(StatusFormat::Text, &Outcome::Exited(2)).unwrap();
        assert!(String::from_utf8(t).unwrap().contains("exit code"));
        assert_eq!(StatusFormat::of("v3.channel.k8s.io"), StatusFormat::Text);
        assert_eq!(StatusFormat::of("v5.channel.k8s.io"), StatusFormat::Json);
    }

    #[tokio::test]
    async fn resize_events_are_read_across_chunks() {
        let (mut w, r) = tokio::io::duplex(64);
        let mut rx = resize_events(Box::pin(r));
        w.write_all(br#"{"Width":80,"Height":24}{"Width":1"#)
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await,
            Some(TermSize {
                width: 80,
                height: 24
            })
        );
        w.write_all(br#"32,"Height":43}"#).await.unwrap();
        assert_eq!(
            rx.recv().await,
            Some(TermSize {
                width: 132,
                height: 43
            })
        );
        drop(w);
        assert_eq!(rx.recv().await, None);
    }
}
