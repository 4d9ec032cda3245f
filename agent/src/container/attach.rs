//! Attach: a live session with a running container's stdio through its pod's monitor, which the streaming server
//! carries to kubectl or crictl. [`Containers::attach`] checks the container ([`Containers::check_attach`]) and
//! opens the session ([`MonitorHandle::attach`]); [`Attach`] is the agent's side of the monitor's attach framing
//! (`crius_sandbox::monitor::Frame`).

use bytes::Bytes;
use crius_sandbox::monitor::{FRAME_HEADER, Frame, MAX_PAYLOAD, kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::monitor::MonitorHandle;
use super::record::{ContainerRecord, ContainerState};
use super::service::Containers;
use crate::error::{Error, Result};

impl Containers {
    /// The checks of Attach, without attaching (the CRI Attach RPC, which hands out a URL, makes them; the session
    /// opens when the client comes): the container's record, for a full id or a unique prefix. NotFound for an
    /// unknown container, FailedPrecondition unless it is running, InvalidArgument for stdin on a container
    /// created without it.
    pub async fn check_attach(&self, id: &str, stdin: bool) -> Result<ContainerRecord> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        if stdin && !rec.config.stdin {
            return Err(Error::invalid(
                "stdin",
                format!("container {} was created without stdin", rec.id),
            ));
        }
        Ok(rec)
    }

    /// Attach to container `id` (checked as by [`Containers::check_attach`]): its output from now on and, with
    /// `stdin`, its stdin.
    pub async fn attach(&self, id: &str, stdin: bool) -> Result<Attach> {
        let rec = self.check_attach(id, stdin).await?;
        tracing::debug!(container = %rec.id, stdin, "attaching");
        MonitorHandle::new(&rec.pod_dir)
            .attach(&rec.id, stdin)
            .await
    }
}

/// What an attach session receives, in the order the container wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutput {
    Stdout(Bytes),
    /// Never with a tty: a terminal's output is one stream, reported as stdout.
    Stderr(Bytes),
    /// The container exited with this code (128 + n when killed by signal n) and all its output was delivered:
    /// the last item of a session.
    Exit(i32),
}

/// A live attach session with one container (see [`MonitorHandle::attach`]): [`Attach::split`] it into the output
/// half and the input half, for two tasks. Dropping both ends the session; dropping the input half alone ends its
/// stdin (as [`AttachWriter::close_stdin`]).
#[derive(Debug)]
pub struct Attach {
    output: AttachReader,
    input: AttachWriter,
}

impl Attach {
    /// The session on a connection whose attach request the monitor answered `Ok` (`r` holds what followed).
    pub(super) fn new(r: BufReader<OwnedReadHalf>, w: OwnedWriteHalf, container: &str) -> Attach {
        Attach {
            output: AttachReader {
                r,
                container: container.to_string(),
                done: false,
            },
            input: AttachWriter {
                w,
                container: container.to_string(),
                buf: Vec::new(),
            },
        }
    }

    pub fn split(self) -> (AttachReader, AttachWriter) {
        (self.output, self.input)
    }
}

/// The output half of an attach session.
#[derive(Debug)]
pub struct AttachReader {
    r: BufReader<OwnedReadHalf>,
    container: String,
    done: bool,
}

impl AttachReader {
    /// The next piece of output; `None` once the session is over: after [`AttachOutput::Exit`], or when the
    /// monitor closed it without one (the monitor went away, or this reader fell more than the monitor's backlog
    /// limit behind and was disconnected).
    pub async fn next(&mut self) -> Option<AttachOutput> {
        if self.done {
            return None;
        }
        let out = self.read().await;
        match &out {
            Ok(Some(AttachOutput::Exit(_))) | Ok(None) => self.done = true,
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(container = %self.container, error = %e, "attach session ended");
                self.done = true;
            }
        }
        out.ok().flatten()
    }

    async fn read(&mut self) -> std::io::Result<Option<AttachOutput>> {
        let mut header = [0u8; FRAME_HEADER];
        match self.r.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (kind, len) = Frame::decode_header(header).map_err(std::io::Error::other)?;
        let mut payload = vec![0u8; len];
        self.r.read_exact(&mut payload).await?;
        // Data frames keep their buffer; the others are checked and read by the shared decoder.
        Ok(Some(match kind {
            kind::STDOUT => AttachOutput::Stdout(Bytes::from(payload)),
            kind::STDERR => AttachOutput::Stderr(Bytes::from(payload)),
            _ => match Frame::from_parts(kind, &payload).map_err(std::io::Error::other)? {
                Frame::Exit(code) => AttachOutput::Exit(code),
                other => {
                    return Err(std::io::Error::other(format!(
                        "the pod monitor sent a frame of kind {} (only the agent sends those)",
                        other.kind()
                    )));
                }
            },
        }))
    }
}

/// The input half of an attach session. Its writes wait while the container does not read its stdin.
#[derive(Debug)]
pub struct AttachWriter {
    w: OwnedWriteHalf,
    container: String,
    buf: Vec<u8>,
}

impl AttachWriter {
    /// Bytes for the container's stdin (dropped by the monitor if this session has no stdin).
    pub async fn stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(Frame::Stdin(data)).await
    }

    /// Ends this session's stdin: a `stdin_once` container's stdin is closed for good (it reads EOF), any other
    /// stays open for the next session.
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.send(Frame::StdinEof).await
    }

    /// Sets the container's terminal size (ignored without a tty).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        self.send(Frame::Resize { width, height }).await
    }

    async fn send(&mut self, frame: Frame<'_>) -> Result<()> {
        self.buf.clear();
        frame.encode(&mut self.buf);
        let r = self.w.write_all(&self.buf).await;
        if self.buf.capacity() > 4 * MAX_PAYLOAD {
            self.buf = Vec::new();
        }
        r.map_err(|e| {
            Error::sandbox(
                format!(
                    "write to the attach session of container {}",
                    self.container
                ),
                e,
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{BufRead, Read, Write};

    use crius_sandbox::monitor::{Request, SOCKET};

    use super::*;

    /// A one-connection stand-in for the monitor: checks the request, answers `answer`, then (if `Ok`) sends
    /// `frames` and returns every frame the agent sent until it ended its stdin.
    fn fake_monitor(
        dir: &std::path::Path,
        answer: &'static str,
        frames: Vec<u8>,
    ) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        let listener = std::os::unix::net::UnixListener::bind(dir.join(SOCKET)).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(
                serde_json::from_str::<Request>(&line).unwrap(),
                Request::Attach {
                    id: "c1".into(),
                    stdin: true
                }
            );
            // The answer and the first frames in one write: the agent must keep what follows the line.
            let mut out = format!("{answer}\n").into_bytes();
            out.extend_from_slice(&frames);
            conn.write_all(&out).unwrap();
            let mut got = Vec::new();
            let mut header = [0u8; FRAME_HEADER];
            while reader.read_exact(&mut header).is_ok() {
                let (kind, len) = Frame::decode_header(header).unwrap();
                let mut frame = header.to_vec();
                frame.resize(FRAME_HEADER + len, 0);
                reader.read_exact(&mut frame[FRAME_HEADER..]).unwrap();
                got.push(frame);
                if kind == crius_sandbox::monitor::kind::STDIN_EOF {
                    let mut exit = Vec::new();
                    Frame::Exit(3).encode(&mut exit);
                    conn.write_all(&exit).unwrap();
                    break;
                }
            }
            got
        })
    }

    fn encoded(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            f.encode(&mut out);
        }
        out
    }

    #[tokio::test]
    async fn a_session_carries_output_stdin_resizes_and_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'x'; MAX_PAYLOAD + 1];
        let monitor = fake_monitor(
            dir.path(),
            r#"{"result":"ok"}"#,
            encoded(&[Frame::Stdout(b"hello\n"), Frame::Stderr(b"oops\n")]),
        );
        let attach = MonitorHandle::new(dir.path())
            .attach("c1", true)
            .await
            .unwrap();
        let (mut output, mut input) = attach.split();
        assert_eq!(
            output.next().await,
            Some(AttachOutput::Stdout(Bytes::from_static(b"hello\n")))
        );
        assert_eq!(
            output.next().await,
            Some(AttachOutput::Stderr(Bytes::from_static(b"oops\n")))
        );
        input.stdin(b"echo hi\n").await.unwrap();
        input.stdin(&big).await.unwrap();
        input.resize(132, 43).await.unwrap();
        input.close_stdin().await.unwrap();
        assert_eq!(output.next().await, Some(AttachOutput::Exit(3)));
        assert_eq!(output.next().await, None);
        let got = monitor.join().unwrap();
        let want = [
            encoded(&[Frame::Stdin(b"echo hi\n")]),
            encoded(&[Frame::Stdin(&big[..MAX_PAYLOAD])]),
            encoded(&[Frame::Stdin(&big[MAX_PAYLOAD..])]),
            encoded(&[Frame::Resize {
                width: 132,
                height: 43,
            }]),
            encoded(&[Frame::StdinEof]),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_refusal_is_a_failed_precondition_with_the_monitor_s_reason() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = fake_monitor(
            dir.path(),
            r#"{"result":"error","message":"container c1 has exited"}"#,
            Vec::new(),
        );
        let err = MonitorHandle::new(dir.path())
            .attach("c1", true)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("container c1 has exited")),
            "{err}"
        );
        assert!(monitor.join().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_session_the_monitor_drops_ends_without_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        let monitor = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = [0u8; 1];
            while conn.read(&mut line).unwrap() == 1 && line[0] != b'\n' {}
            let mut out = b"{\"result\":\"ok\"}\n".to_vec();
            Frame::Stdout(b"part").encode(&mut out);
            conn.write_all(&out).unwrap();
        });
        let (mut output, _input) = MonitorHandle::new(dir.path())
            .attach("c1", true)
            .await
            .unwrap()
            .split();
        monitor.join().unwrap();
        assert_eq!(
            output.next().await,
            Some(AttachOutput::Stdout(Bytes::from_static(b"part")))
        );
        assert_eq!(output.next().await, None);
        assert_eq!(output.next().await, None);
    }
}
