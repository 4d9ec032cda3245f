//! The application's side of one stream: [`Stream`], split into a [`StreamReader`] and a [`StreamWriter`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::PollSender;

use super::frame::{Frame, RstStatus};
use super::shared::{Cmd, Live, LiveToken, Out, SessionShared};

/// The largest DATA frame a writer sends (what Go's io.Copy, and so kubelet, writes at a time).
pub(super) const MAX_SEND_FRAME: usize = 32 * 1024;
/// A reader reports what it consumed (for WINDOW_UPDATE) at least this often.
const ACK_EVERY: usize = 8 * 1024;

/// How the peer's half of a stream ended, set by the session before it drops the data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RemoteEnd {
    Fin,
    PeerReset(RstStatus),
    LocalReset,
    SessionClosed,
}

/// State one stream shares between the session task and the two halves.
pub(super) struct StreamShared {
    pub id: u32,
    /// Room left in the receive buffer, in bytes: the session takes permits for each DATA piece before it
    /// queues it, the reader gives them back as it consumes. Closed when the reader is dropped.
    pub recv_room: Semaphore,
    pub end: std::sync::Mutex<Option<RemoteEnd>>,
    /// Set once the stream was reset either way: writes fail from then on.
    pub reset: AtomicBool,
}

impl StreamShared {
    pub fn new(id: u32, window: usize) -> Self {
        StreamShared {
            id,
            recv_room: Semaphore::new(window),
            end: std::sync::Mutex::new(None),
            reset: AtomicBool::new(false),
        }
    }

    pub fn set_end(&self, end: RemoteEnd) {
        let mut slot = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(end);
        }
        if matches!(end, RemoteEnd::PeerReset(_) | RemoteEnd::LocalReset) {
            self.reset.store(true, Ordering::Release);
        }
    }

    fn end(&self) -> Option<RemoteEnd> {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One client-initiated stream, already answered with SYN_REPLY.
pub struct Stream {
    headers: Vec<(String, String)>,
    reader: StreamReader,
    writer: StreamWriter,
}

impl Stream {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shared: Arc<StreamShared>,
        headers: Vec<(String, String)>,
        data: mpsc::UnboundedReceiver<Bytes>,
        out: mpsc::Sender<Out>,
        cmd: mpsc::UnboundedSender<Cmd>,
        session: Arc<SessionShared>,
        local_closed: bool,
        live: &Arc<Live>,
    ) -> Self {
        let reader = StreamReader {
            shared: shared.clone(),
            data,
            current: Bytes::new(),
            cmd: cmd.clone(),
            unreported: 0,
            _live: LiveToken::new(live),
        };
        let writer = StreamWriter {
            shared,
            out: PollSender::new(out),
            cmd,
            session,
            finished: local_closed,
            _live: LiveToken::new(live),
        };
        Stream {
            headers,
            reader,
            writer,
        }
    }

    pub fn id(&self) -> u32 {
        self.reader.shared.id
    }

    /// The first value of header `name` from the SYN_STREAM (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers of the SYN_STREAM, names lower case, one pair per value, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id())
            .field("headers", &self.headers)
            .finish()
    }
}

/// The peer-to-us half. `AsyncRead` ends (reads 0) when the peer sent FIN; it fails with `ConnectionReset`
/// when the peer reset the stream and with `ConnectionAborted` when the stream was reset here or the session
/// ended first. Dropping it discards whatever the peer still sends.
pub struct StreamReader {
    shared: Arc<StreamShared>,
    data: mpsc::UnboundedReceiver<Bytes>,
    current: Bytes,
    cmd: mpsc::UnboundedSender<Cmd>,
    unreported: usize,
    _live: LiveToken,
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The next piece of data as the peer sent it; `Ok(None)` after the peer's FIN.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx, usize::MAX)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        if self.current.is_empty() {
            match ready!(self.data.poll_recv(cx)) {
                Some(chunk) => self.current = chunk,
                None => return Poll::Ready(self.finished()),
            }
        }
        let n = self.current.len().min(max);
        let chunk = self.current.split_to(n);
        self.consumed(n);
        Poll::Ready(Ok(Some(chunk)))
    }

    fn finished(&self) -> io::Result<Option<Bytes>> {
        match self.shared.end() {
            Some(RemoteEnd::Fin) => Ok(None),
            Some(RemoteEnd::PeerReset(status)) => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("stream {} reset by the peer ({status:?})", self.shared.id),
            )),
            Some(RemoteEnd::LocalReset) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("stream {} was reset", self.shared.id),
            )),
            Some(RemoteEnd::SessionClosed) | None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("session ended before stream {} finished", self.shared.id),
            )),
        }
    }

    /// Gives the buffer room back at once, and tells the session (for WINDOW_UPDATE) in batches.
    fn consumed(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.shared.recv_room.add_permits(n);
        self.unreported += n;
        if self.unreported >= ACK_EVERY || self.current.is_empty() {
            self.report();
        }
    }

    fn report(&mut self) {
        if self.unreported > 0 {
            let _ = self.cmd.send(Cmd::Consumed {
                stream_id: self.shared.id,
                bytes: self.unreported,
            });
            self.unreported = 0;
        }
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let max = buf.remaining();
        match ready!(self.poll_chunk(cx, max)) {
            Ok(Some(chunk)) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // The session must never wait for room in a buffer nobody reads.
        self.shared.recv_room.close();
        self.report();
    }
}

/// The us-to-peer half. `AsyncWrite` queues DATA frames of at most 32 KiB on the session's bounded write
/// queue (a slow peer makes writes wait: nothing is buffered without bound); `flush` has nothing to do, the
/// session writes queued frames in order and flushes the connection whenever its queue runs empty.
/// `shutdown` sends an empty DATA frame with FIN; dropping the writer without it does the same. Writes fail
/// with `ConnectionReset` once the stream was reset and with `BrokenPipe` after shutdown or once the session
/// ended.
pub struct StreamWriter {
    shared: Arc<StreamShared>,
    out: PollSender<Out>,
    cmd: mpsc::UnboundedSender<Cmd>,
    session: Arc<SessionShared>,
    finished: bool,
    _live: LiveToken,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Resets the stream (RST_STREAM CANCEL): both halves end at once, here and at the peer.
    pub fn reset(mut self) {
        self.finished = true;
        let _ = self.cmd.send(Cmd::Reset {
            stream_id: self.shared.id,
            status: RstStatus::Cancel,
        });
    }

    fn check_open(&self) -> io::Result<()> {
        if self.shared.reset.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("stream {} was reset", self.shared.id),
            ));
        }
        if self.finished {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("stream {} is shut down for writing", self.shared.id),
            ));
        }
        if self.session.is_closing() {
            return Err(session_closed());
        }
        Ok(())
    }

    fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(ready!(self.out.poll_reserve(cx)).map_err(|_| session_closed()))
    }

    /// Sends into the slot `poll_reserve` took.
    fn send(&mut self, data: Bytes, fin: bool) -> io::Result<()> {
        let frame = Frame::Data {
            stream_id: self.shared.id,
            fin,
            data,
        };
        self.out
            .send_item(Out::Frame(frame))
            .map_err(|_| session_closed())
    }
}

fn session_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "spdy session closed")
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Reserve first, copy after: a waiting write holds no copy of its data.
        ready!(self.poll_reserve(cx))?;
        let n = buf.len().min(MAX_SEND_FRAME);
        self.send(Bytes::copy_from_slice(&buf[..n]), false)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        self.check_open()?;
        ready!(self.poll_reserve(cx))?;
        self.send(Bytes::new(), true)?;
        self.finished = true;
        let _ = self.cmd.send(Cmd::LocalFin(self.shared.id));
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.cmd.send(Cmd::WriterDropped(self.shared.id));
        }
    }
}
