//! The per-pod monitor (`crius-monitor`, the conmon-rs model): one small, single-threaded, long-lived process per
//! pod, the parent (child subreaper) of every container process of the pod. It forks each container init
//! ([`crate::container::create`]), holds the containers' stdio, writes their CRI log files, records every exit
//! durably under `<dir>/exits/<id>`, and answers the agent over a unix socket at `<dir>/monitor.sock`. It does not
//! depend on the agent: killing or restarting `crius serve` leaves it and its containers running.
//!
//! The protocol: one JSON [`Request`] per line, answered by one JSON [`Response`] line, on a connection the agent
//! may keep open or not.
//!
//! Attach is the exception: after [`Request::Attach`] is answered [`Response::Ok`], the same connection carries
//! binary [`Frame`]s both ways (`[kind: u8][len: u32 big-endian][payload]`, at most [`MAX_PAYLOAD`] bytes of
//! payload) until the container exits or either side closes. The monitor sends the container's output live from
//! that moment (with a tty, the terminal's output is one stream, reported as stdout), then [`Frame::Exit`] once the
//! container has exited and its output is drained, then closes. The agent sends stdin, the end of its stdin and
//! terminal resizes. A client that reads too slowly is disconnected (its backlog is bounded); the container and its
//! log never wait for it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::Rootfs;

mod attach;
pub mod server;

/// A path for the socket `name` in `dir` that fits in a sockaddr_un whatever the length of `dir`: through a
/// descriptor of the directory (`/proc/self/fd/<n>/<name>`). Keep the returned descriptor open while using it.
pub fn short_socket_path(
    dir: &std::path::Path,
    name: &str,
) -> std::io::Result<(std::fs::File, PathBuf)> {
    let d = std::fs::File::open(dir)?;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}/{name}",
        std::os::fd::AsRawFd::as_raw_fd(&d)
    ));
    Ok((d, path))
}

/// The monitor's socket in its directory.
pub const SOCKET: &str = "monitor.sock";
/// Where exit records go: `<dir>/exits/<container id>` (JSON [`ExitRecord`]).
pub const EXITS: &str = "exits";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a container from `<bundle>/config.json` (an OCI runtime spec) on the overlay `rootfs`; its
    /// init waits for [`Request::Start`].
    Create {
        id: String,
        bundle: PathBuf,
        rootfs: Rootfs,
        /// The container's cgroup directory (absolute host path), created by the agent; joined by the init.
        cgroup_dir: Option<PathBuf>,
        /// The CRI log file; none means the output is discarded.
        log_path: Option<PathBuf>,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
    },
    Start {
        id: String,
    },
    /// Sends `signal` to the container's init.
    Signal {
        id: String,
        signal: i32,
    },
    /// The state of every container the monitor knows.
    State,
    /// Reopens the container's log file (kubelet rotated it).
    ReopenLog {
        id: String,
    },
    /// Attaches to a created or running container: answered `Ok` (then [`Frame`]s) or `Error`. With `stdin`, the
    /// connection's [`Frame::Stdin`] goes to the container's stdin, which must have been created with `stdin`
    /// (once a `stdin_once` container's stdin was closed, a new session's stdin is dropped). The end of this
    /// session's stdin ([`Frame::StdinEof`], or the connection closing) closes the container's stdin for good if
    /// it was created `stdin_once`, and leaves it open for the next session otherwise.
    Attach {
        id: String,
        stdin: bool,
    },
    /// Forgets an exited (or never started) container, killing its init if it is still there.
    Forget {
        id: String,
    },
    /// Kills what is left and exits.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code; 128 + n when killed by signal n (the shell's convention, which kubelet shows).
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub pid: i32,
    pub status: Status,
    /// Nanoseconds since the epoch; 0 before start.
    pub started_at: i64,
    pub exit: Option<ExitRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Created { pid: i32 },
    State { containers: Vec<ContainerState> },
    Error { message: String },
}

/// The most payload one [`Frame`] carries; a longer one is refused as malformed.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The size of a frame's header: kind (1 byte) and payload length (4 bytes, big-endian).
pub const FRAME_HEADER: usize = 5;

/// The frame kinds on an attach connection.
pub mod kind {
    /// Agent to monitor: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// Monitor to agent: the container's stdout (or its terminal's output).
    pub const STDOUT: u8 = 1;
    /// Monitor to agent: the container's stderr.
    pub const STDERR: u8 = 2;
    /// Monitor to agent: the container's exit code (i32, big-endian), the last frame.
    pub const EXIT: u8 = 3;
    /// Agent to monitor: this session's stdin has ended (no payload).
    pub const STDIN_EOF: u8 = 4;
    /// Agent to monitor: the terminal's new size (u16 width, u16 height, big-endian).
    pub const RESIZE: u8 = 5;
}

/// One frame of an attach connection (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Stdin(&'a [u8]),
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
    Exit(i32),
    StdinEof,
    Resize { width: u16, height: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown attach frame kind {0}")]
    UnknownKind(u8),
    #[error("attach frame of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLong(usize),
    #[error("attach frame of kind {kind} with a payload of {len} bytes")]
    BadPayload { kind: u8, len: usize },
}

impl<'a> Frame<'a> {
    /// The frame's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Stdin(_) => kind::STDIN,
            Frame::Stdout(_) => kind::STDOUT,
            Frame::Stderr(_) => kind::STDERR,
            Frame::Exit(_) => kind::EXIT,
            Frame::StdinEof => kind::STDIN_EOF,
            Frame::Resize { .. } => kind::RESIZE,
        }
    }

    /// Appends the frame to `out`; data longer than [`MAX_PAYLOAD`] becomes several frames of its kind (and empty
    /// data none at all: an empty data frame means nothing).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let header = |out: &mut Vec<u8>, kind: u8, len: usize| {
            out.push(kind);
            // At most MAX_PAYLOAD, so it fits.
            out.extend_from_slice(&(len as u32).to_be_bytes());
        };
        match *self {
            Frame::Stdin(data) | Frame::Stdout(data) | Frame::Stderr(data) => {
                out.reserve(data.len() + FRAME_HEADER * data.len().div_ceil(MAX_PAYLOAD));
                for chunk in data.chunks(MAX_PAYLOAD) {
                    header(out, self.kind(), chunk.len());
                    out.extend_from_slice(chunk);
                }
            }
            Frame::Exit(code) => {
                header(out, kind::EXIT, 4);
                out.extend_from_slice(&code.to_be_bytes());
            }
            Frame::StdinEof => header(out, kind::STDIN_EOF, 0),
            Frame::Resize { width, height } => {
                header(out, kind::RESIZE, 4);
                out.extend_from_slice(&width.to_be_bytes());
                out.extend_from_slice(&height.to_be_bytes());
            }
        }
    }

    /// Reads a header: the kind and the payload's length, both checked.
    pub fn decode_header(header: [u8; FRAME_HEADER]) -> Result<(u8, usize), FrameError> {
        let [kind, len @ ..] = header;
        let len = u32::from_be_bytes(len) as usize;
        if kind > kind::RESIZE {
            return Err(FrameError::UnknownKind(kind));
        }
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLong(len));
        }
        Ok((kind, len))
    }

    /// The frame of `kind` carrying `payload` (as checked by [`Frame::decode_header`]).
    pub fn from_parts(kind: u8, payload: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let bad = || FrameError::BadPayload {
            kind,
            len: payload.len(),
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLong(payload.len()));
        }
        Ok(match kind {
            kind::STDIN => Frame::Stdin(payload),
            kind::STDOUT => Frame::Stdout(payload),
            kind::STDERR => Frame::Stderr(payload),
            kind::EXIT => Frame::Exit(i32::from_be_bytes(payload.try_into().map_err(|_| bad())?)),
            kind::STDIN_EOF if payload.is_empty() => Frame::StdinEof,
            kind::STDIN_EOF => return Err(bad()),
            kind::RESIZE => {
                let [w0, w1, h0, h1]: [u8; 4] = payload.try_into().map_err(|_| bad())?;
                Frame::Resize {
                    width: u16::from_be_bytes([w0, w1]),
                    height: u16::from_be_bytes([h0, h1]),
                }
            }
            other => return Err(FrameError::UnknownKind(other)),
        })
    }

    /// The first frame in `buf` and how many bytes it took; `None` while `buf` holds only part of one.
    pub fn decode(buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
        let Some(header) = buf.first_chunk::<FRAME_HEADER>() else {
            return Ok(None);
        };
        let (kind, len) = Frame::decode_header(*header)?;
        let Some(payload) = buf[FRAME_HEADER..].get(..len) else {
            return Ok(None);
        };
        Ok(Some((
            Frame::from_parts(kind, payload)?,
            FRAME_HEADER + len,
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(f: Frame<'_>) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let (back, used) = Frame::decode(&buf).unwrap().unwrap();
        assert_eq!((back, used), (f, buf.len()));
    }

    #[test]
    fn every_frame_kind_round_trips() {
        round_trip(Frame::Stdin(b"echo hello\n"));
        round_trip(Frame::Stdout(b"hello\n"));
        round_trip(Frame::Stderr(&[0, 255, 10]));
        round_trip(Frame::Exit(-1));
        round_trip(Frame::Exit(137));
        round_trip(Frame::StdinEof);
        round_trip(Frame::Resize {
            width: 132,
            height: 43,
        });
    }

    #[test]
    fn the_wire_format_is_kind_length_payload_big_endian() {
        let mut buf = Vec::new();
        Frame::Resize {
            width: 0x0102,
            height: 0x0304,
        }
        .encode(&mut buf);
        Frame::Exit(7).encode(&mut buf);
        Frame::StdinEof.encode(&mut buf);
        Frame::Stdout(b"hi").encode(&mut buf);
        assert_eq!(
            buf,
            [
                5, 0, 0, 0, 4, 1, 2, 3, 4, //
                3, 0, 0, 0, 4, 0, 0, 0, 7, //
                4, 0, 0, 0, 0, //
                1, 0, 0, 0, 2, b'h', b'i'
            ]
        );
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut buf = Vec::new();
        Frame::Stdin(b"abcdef").encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(Frame::decode(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        // Two frames back to back decode one at a time.
        Frame::StdinEof.encode(&mut buf);
        let (first, used) = Frame::decode(&buf).unwrap().unwrap();
        assert_eq!(first, Frame::Stdin(b"abcdef"));
        assert_eq!(
            Frame::decode(&buf[used..]).unwrap(),
            Some((Frame::StdinEof, 5))
        );
    }

    #[test]
    fn long_data_is_split_and_empty_data_sends_nothing() {
        let data = vec![7u8; MAX_PAYLOAD * 2 + 10];
        let mut buf = Vec::new();
        Frame::Stdout(&data).encode(&mut buf);
        let mut at = 0;
        let mut lens = Vec::new();
        while let Some((f, used)) = Frame::decode(&buf[at..]).unwrap() {
            let Frame::Stdout(d) = f else { panic!("{f:?}") };
            lens.push(d.len());
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(lens, [MAX_PAYLOAD, MAX_PAYLOAD, 10]);
        let mut empty = Vec::new();
        Frame::Stdin(b"").encode(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(
            Frame::decode(&[9, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(9))
        );
        let too_long = (MAX_PAYLOAD as u32 + 1).to_be_bytes();
        assert_eq!(
            Frame::decode(&[0, too_long[0], too_long[1], too_long[2], too_long[3]]),
            Err(FrameError::TooLong(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            Frame::decode(&[3, 0, 0, 0, 2, 0, 0]),
            Err(FrameError::BadPayload { kind: 3, len: 2 })
        );
        assert_eq!(
            Frame::decode(&[4, 0, 0, 0, 1, 0]),
            Err(FrameError::BadPayload { kind: 4, len: 1 })
        );
        assert_eq!(
            Frame::decode(&[5, 0, 0, 0, 3, 0, 0, 0]),
            Err(FrameError::BadPayload { kind: 5, len: 3 })
        );
    }

    #[test]
    fn attach_requests_are_json_lines_like_the_others() {
        let req = Request::Attach {
            id: "c1".into(),
            stdin: true,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"op":"attach","id":"c1","stdin":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
    }
}
