//! A server-side SPDY/3.1 session, as the streaming server needs it: kubectl exec/attach/port-forward and
//! crictl speak SPDY/3.1 through Go's moby/spdystream (wrapped by k8s.io/apimachinery's httpstream/spdy)
//! once the HTTP upgrade answered 101.
//!
//! ```ignore
//! let (session, mut streams) = spdy::serve(upgraded_io, SessionOptions::default());
//! while let Some(stream) = streams.recv().await {
//!     let kind = stream.header("streamtype").unwrap_or_default().to_owned();
//!     let (reader, writer) = stream.split(); // AsyncRead + AsyncWrite
//!     // ...
//! }
//! let why = session.ended().await; // or just session.closed().await
//! ```
//!
//! [`serve`] spawns the session (it must run inside a tokio runtime) and yields each client stream after it
//! was answered with SYN_REPLY, as kubelet answers every stream at once. The session ends when the peer
//! closes the connection, on [`Session::shutdown`], after `idle_timeout` without a frame either way, on a
//! protocol error (GOAWAY PROTOCOL_ERROR first), or when nothing can use it any more: every [`Session`]
//! handle, the stream receiver and every stream half dropped. Then the receiver yields `None`, stream halves
//! fail, [`Session::closed`] resolves and [`Session::ended`] says why.
//!
//! What the peer does, from moby/spdystream's source (Debian's golang-github-docker-spdystream-dev 0.2.0,
//! `connection.go`, `stream.go`, `spdy/read.go`), and what this module does about it:
//! - **No flow control.** spdystream neither sends WINDOW_UPDATE nor honours one (its read loop hands
//!   WINDOW_UPDATE and SETTINGS to a default case that logs "unhandled frame type"; moby/spdystream issue #2,
//!   "Implement flow control", is open). A sender that waited for SPDY/3.1's 64 KiB window would stall a
//!   10 MiB exec output forever, so writers here never wait for a window; they wait only for room in the
//!   session's bounded write queue. Receiving, each stream buffers at most `stream_window` bytes and the
//!   session stops reading the connection while a stream's buffer is full (TCP then holds the peer back,
//!   which is what spdystream's unbuffered channels do to kubelet too). As a real 3.1 peer expects, consumed
//!   bytes are returned with WINDOW_UPDATE (stream and session, stream id 0) once half a window is used;
//!   spdystream parses and ignores them.
//! - **One DATA frame per Write.** spdystream sends whatever one `Write` got as one DATA frame (up to 16 MiB);
//!   DATA is therefore read in pieces as it arrives and never buffered whole. Writers here send at most
//!   32 KiB per frame.
//! - **Streams.** The client opens odd, growing ids (spdystream refuses a lower id with RST PROTOCOL_ERROR;
//!   so does this server). DATA that arrives before the SYN_REPLY is dropped by spdystream, so the reply is
//!   queued before the stream is handed out. Its `Close` is an empty DATA frame with FIN; a stream is
//!   forgotten once FIN went both ways or it was reset.
//! - **PING.** spdystream's client pings with odd ids and answers pings whose parity is not its own; this
//!   server echoes odd ids and sends no pings of its own.
//! - **GOAWAY.** On GOAWAY spdystream stops reading at once, so this server sends GOAWAY only as the last
//!   frame, after everything already queued. A client's GOAWAY (sent by `Close`) only refuses new streams;
//!   the client closes the connection when its streams are done.

// The streaming server (remotecommand, portforward) is what uses this; tests exercise all of it.
#![cfg_attr(not(test), allow(dead_code))]

mod decode;
mod frame;
mod headers;
mod session;
mod shared;
mod stream;
mod writer;

#[cfg(test)]
mod go_tests;
#[cfg(test)]
mod test_client;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use self::frame::Frame;
use self::session::{Conn, Link};
use self::shared::{Live, LiveToken, Out, SessionShared};
// The halves' types, for callers that name them (`Stream::split` hands them out).
#[allow(unused_imports)]
pub use self::stream::{Stream, StreamReader, StreamWriter};

/// New streams wait here for the application to take them.
const ACCEPT_QUEUE: usize = 16;
const MIN_STREAM_WINDOW: u32 = 1024;

/// Tunables of one session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// No frame either way for this long: GOAWAY and close. `Duration::ZERO` never times out. Default 4 h,
    /// kubelet's default stream idle timeout.
    pub idle_timeout: Duration,
    /// Streams open at once; a SYN_STREAM beyond them gets RST_STREAM REFUSED_STREAM.
    pub max_concurrent_streams: usize,
    /// What one stream buffers from the peer before the session stops reading (default 64 KiB, SPDY/3.1's
    /// initial window; at least 1 KiB). At most `max_concurrent_streams * stream_window` is buffered for
    /// reading.
    pub stream_window: u32,
    /// Frames (DATA of at most 32 KiB) queued for the connection before writers wait.
    pub write_queue: usize,
    /// Send WINDOW_UPDATE as data is consumed (harmless to spdystream, needed by a real SPDY/3.1 peer).
    pub window_updates: bool,
    /// How long a closing session may take to write what is queued and its GOAWAY.
    pub close_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            max_concurrent_streams: 256,
            stream_window: 64 * 1024,
            write_queue: 32,
            window_updates: true,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed the connection.
    PeerClosed,
    /// [`Session::shutdown`].
    Shutdown,
    IdleTimeout,
    /// Every handle, the stream receiver and every stream were dropped.
    Unused,
    /// The peer broke the protocol (malformed frame, bad header compression); GOAWAY PROTOCOL_ERROR was sent.
    ProtocolError,
    /// Reading or writing the connection failed.
    Io,
}

/// A cheap handle on a running session.
#[derive(Clone)]
pub struct Session {
    shared: Arc<SessionShared>,
    shutdown: CancellationToken,
    ended: watch::Receiver<Option<Ended>>,
    _live: LiveToken,
}

impl Session {
    /// Resolves once the session is over and the connection closed.
    pub async fn closed(&self) {
        self.ended().await;
    }

    /// Resolves once the session is over and the connection closed, with the reason.
    pub async fn ended(&self) -> Ended {
        let mut ended = self.ended.clone();
        match ended.wait_for(Option::is_some).await {
            Ok(ended) => (*ended).unwrap_or(Ended::Io),
            Err(_) => Ended::Io,
        }
    }

    /// Ends the session: what is queued is written, then GOAWAY, then the connection is closed.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Streams not yet closed both ways.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams()
    }
}

/// Runs a server-side SPDY/3.1 session on an already-upgraded connection (after the HTTP 101).
pub fn serve<IO>(io: IO, opts: SessionOptions) -> (Session, mpsc::Receiver<Stream>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut opts = opts;
    opts.stream_window = opts.stream_window.max(MIN_STREAM_WINDOW);
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(opts.write_queue.max(1));
    let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
    let (ended_tx, ended_rx) = watch::channel(None);
    let shared = Arc::new(SessionShared::new());
    let live = Live::new();
    let shutdown = CancellationToken::new();
    let writer_done = CancellationToken::new();
    let kill = CancellationToken::new();

    let session = Session {
        shared: shared.clone(),
        shutdown: shutdown.clone(),
        ended: ended_rx,
        _live: LiveToken::new(&live),
    };

    let mut writer = tokio::spawn({
        let shared = shared.clone();
        let writer_done = writer_done.clone();
        let kill = kill.clone();
        async move {
            if let Err(e) = writer::run(wr, out_rx, shared, kill).await {
                debug!(error = %e, "spdy: writing the connection failed");
            }
            writer_done.cancel();
        }
    });

    tokio::spawn(async move {
        let close_timeout = opts.close_timeout;
        let out = out_tx.clone();
        let link = Link {
            out: out_tx,
            shutdown,
            writer_done,
        };
        let mut rd = rd;
        let mut conn = Conn::new(link, accept_tx, opts, shared, live);
        let (ended, goaway, last_good_stream_id) = conn.run(&mut rd).await;
        // The read half, the stream receiver's sender and the command queue go now.
        drop((conn, rd));
        debug!(?ended, "spdy: session ended");
        let goodbye = async {
            if let Some(status) = goaway {
                let frame = Frame::GoAway {
                    last_good_stream_id,
                    status,
                };
                let _ = out.send(Out::Frame(frame)).await;
            }
            let _ = out.send(Out::Close).await;
            let _ = (&mut writer).await;
        };
        if tokio::time::timeout(close_timeout, goodbye).await.is_err() {
            kill.cancel();
            let _ = writer.await;
        }
        let _ = ended_tx.send(Some(ended));
    });

    (session, accept_rx)
}
