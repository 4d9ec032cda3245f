//! The session task: reads and dispatches frames, keeps the stream table, and ends the session. Frames go out
//! through one bounded queue drained by the writer task (writer.rs), which owns the sending zlib context.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use super::decode::{DecodeLimits, Decoded, Decoder};
use super::frame::{Frame, FrameError, GoAwayStatus, RstStatus, TYPE_SYN_STREAM};
use super::shared::{Cmd, Live, Out, SessionShared};
use super::stream::{RemoteEnd, Stream, StreamShared};
use super::{Ended, SessionOptions};

/// The longest control frame accepted; kubectl's and crictl's are a few hundred bytes.
const MAX_CONTROL_FRAME: usize = 128 * 1024;
/// What one header block may decompress to.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The largest DATA piece handed to a stream at once.
const MAX_PIECE: usize = 16 * 1024;
/// The session-wide receive window of SPDY/3.1 (the draft's default, never changed by SETTINGS).
const SESSION_WINDOW: usize = 64 * 1024;
/// Read from the connection in pieces of about this size.
const READ_CHUNK: usize = 32 * 1024;

/// One entry of the stream table: a stream that is not yet closed both ways.
struct Entry {
    shared: Arc<StreamShared>,
    /// Where DATA goes; `None` once the peer's half is closed.
    data: Option<mpsc::UnboundedSender<Bytes>>,
    local_closed: bool,
    /// Consumed bytes not yet returned to the peer with WINDOW_UPDATE.
    unacked: usize,
}

/// Frame handling stopped: the session ends, with GOAWAY of that status if there is one.
struct Stop(Ended, Option<GoAwayStatus>);

type Handled = Result<(), Stop>;

/// The way out, and what may interrupt waiting for it.
pub(super) struct Link {
    pub out: mpsc::Sender<Out>,
    pub shutdown: CancellationToken,
    pub writer_done: CancellationToken,
}

impl Link {
    /// Queues a frame, waiting for room (that is the backpressure on a peer that does not read).
    async fn send(&self, frame: Frame) -> Handled {
        match self.until_stopped(self.out.send(Out::Frame(frame))).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Stop(Ended::Io, None)),
        }
    }

    /// Runs `f` unless the session is told to stop first.
    async fn until_stopped<F: Future>(&self, f: F) -> Result<F::Output, Stop> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(Stop(Ended::Shutdown, Some(GoAwayStatus::Ok))),
            _ = self.writer_done.cancelled() => Err(Stop(Ended::Io, None)),
            out = f => Ok(out),
        }
    }
}

pub(super) struct Conn {
    link: Link,
    rbuf: BytesMut,
    decoder: Decoder,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    accept: mpsc::Sender<Stream>,
    opts: SessionOptions,
    shared: Arc<SessionShared>,
    live: Arc<Live>,
    streams: HashMap<u32, Entry>,
    last_id: u32,
    peer_gone_away: bool,
    session_unacked: usize,
}

fn decode_limits(opts: &SessionOptions) -> DecodeLimits {
    DecodeLimits {
        max_control: MAX_CONTROL_FRAME,
        max_header_block: MAX_HEADER_BLOCK,
        max_piece: MAX_PIECE.min(opts.stream_window as usize).max(1),
    }
}

enum Event {
    Shutdown,
    WriterDone,
    Cmd(Cmd),
    Read(io::Result<usize>),
    MaybeUnused,
    Idle,
}

impl Conn {
    pub fn new(
        link: Link,
        accept: mpsc::Sender<Stream>,
        opts: SessionOptions,
        shared: Arc<SessionShared>,
        live: Arc<Live>,
    ) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        Conn {
            link,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            decoder: Decoder::new(decode_limits(&opts)),
            cmd_rx,
            cmd_tx,
            accept,
            opts,
            shared,
            live,
            streams: HashMap::new(),
            last_id: 0,
            peer_gone_away: false,
            session_unacked: 0,
        }
    }

    /// Runs until the session ends; returns why, the GOAWAY status to send (if any) and the last stream id
    /// seen. Empties the table.
    pub async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> (Ended, Option<GoAwayStatus>, u32) {
        let Stop(ended, goaway) = loop {
            let idle_at = (!self.opts.idle_timeout.is_zero())
                .then(|| self.shared.last_activity() + self.opts.idle_timeout);
            let event = tokio::select! {
                biased;
                _ = self.link.shutdown.cancelled() => Event::Shutdown,
                _ = self.link.writer_done.cancelled() => Event::WriterDone,
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => Event::Cmd(cmd),
                    None => Event::MaybeUnused,
                },
                read = read_some(rd, &mut self.rbuf) => Event::Read(read),
                _ = self.live.gone() => Event::MaybeUnused,
                _ = self.accept.closed(), if !self.accept.is_closed() => Event::MaybeUnused,
                _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                    Event::Idle
                }
            };
            let step = match event {
                Event::Shutdown => Err(Stop(Ended::Shutdown, Some(GoAwayStatus::Ok))),
                Event::WriterDone => Err(Stop(Ended::Io, None)),
                Event::Cmd(cmd) => self.command(cmd).await,
                Event::Read(Ok(0)) => Err(Stop(Ended::PeerClosed, None)),
                Event::Read(Ok(_)) => self.frames().await,
                Event::Read(Err(e)) => {
                    debug!(error = %e, "spdy: reading the connection failed");
                    Err(Stop(Ended::Io, None))
                }
                Event::MaybeUnused => {
                    if self.live.count() == 0 && self.accept.is_closed() {
                        Err(Stop(Ended::Unused, Some(GoAwayStatus::Ok)))
                    } else {
                        Ok(())
                    }
                }
                Event::Idle => {
                    if self.shared.last_activity() + self.opts.idle_timeout <= Instant::now() {
                        Err(Stop(Ended::IdleTimeout, Some(GoAwayStatus::Ok)))
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(stop) = step {
                break stop;
            }
        };
        self.shared.set_closing();
        for (_, entry) in self.streams.drain() {
            entry.shared.set_end(RemoteEnd::SessionClosed);
        }
        self.shared.set_open_streams(0);
        (ended, goaway, self.last_id)
    }

    /// Handles every complete frame in the read buffer.
    async fn frames(&mut self) -> Handled {
        loop {
            let decoded = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return Ok(()),
                Err(e) => return Err(protocol_error(e)),
            };
            self.shared.touch();
            self.frame(decoded).await?;
        }
    }

    async fn frame(&mut self, decoded: Decoded) -> Handled {
        match decoded {
            Decoded::Data {
                stream_id,
                data,
                fin,
                frame_end,
            } => self.data(stream_id, data, fin, frame_end).await,
            Decoded::Frame(Frame::SynStream {
                stream_id,
                fin,
                unidirectional,
                headers,
                ..
            }) => {
                self.syn_stream(stream_id, fin, unidirectional, headers)
                    .await
            }
            Decoded::Frame(Frame::SynReply { stream_id, .. }) => {
                // The server opens no streams, so no SYN_REPLY can be due.
                self.reset(stream_id, RstStatus::InvalidStream).await
            }
            Decoded::Frame(Frame::Headers { stream_id, fin, .. }) => {
                if !self.streams.contains_key(&stream_id) {
                    return self.rst(stream_id, RstStatus::InvalidStream).await;
                }
                trace!(stream_id, "spdy: HEADERS ignored");
                if fin {
                    self.remote_fin(stream_id);
                }
                Ok(())
            }
            Decoded::Frame(Frame::RstStream { stream_id, status }) => {
                if let Some(entry) = self.remove(stream_id) {
                    debug!(stream_id, ?status, "spdy: stream reset by the peer");
                    entry.shared.set_end(RemoteEnd::PeerReset(status));
                }
                Ok(())
            }
            Decoded::Frame(Frame::Ping { id }) => {
                // Odd ids are the client's (which spdystream echoes only when the parity is not its own);
                // the server sends no pings, so an even id is an unsolicited answer and dropped.
                if id % 2 == 1 {
                    self.send(Frame::Ping { id }).await?;
                }
                Ok(())
            }
            Decoded::Frame(Frame::GoAway {
                last_good_stream_id,
                status,
            }) => {
                debug!(last_good_stream_id, ?status, "spdy: peer sent GOAWAY");
                self.peer_gone_away = true;
                Ok(())
            }
            Decoded::Frame(Frame::Settings { entries, .. }) => {
                trace!(?entries, "spdy: SETTINGS ignored");
                Ok(())
            }
            Decoded::Frame(Frame::WindowUpdate { stream_id, delta }) => {
                // See mod.rs: the send side does not wait for windows.
                trace!(stream_id, delta, "spdy: WINDOW_UPDATE ignored");
                Ok(())
            }
            Decoded::Frame(Frame::Data { .. }) => Ok(()),
            Decoded::BadHeaders {
                frame_type,
                stream_id,
                error,
            } => {
                debug!(frame_type, stream_id, error = %error, "spdy: malformed header block");
                if frame_type == TYPE_SYN_STREAM && stream_id > self.last_id {
                    self.last_id = stream_id;
                }
                self.reset(stream_id, RstStatus::ProtocolError).await
            }
            Decoded::Unknown { frame_type } => {
                trace!(frame_type, "spdy: unknown control frame skipped");
                Ok(())
            }
        }
    }

    async fn syn_stream(
        &mut self,
        stream_id: u32,
        fin: bool,
        unidirectional: bool,
        headers: Vec<(String, String)>,
    ) -> Handled {
        if self.streams.contains_key(&stream_id) {
            return self.reset(stream_id, RstStatus::StreamInUse).await;
        }
        // Client streams have odd ids that only grow (spdystream refuses a lower one the same way).
        if stream_id.is_multiple_of(2) || stream_id <= self.last_id {
            return self.rst(stream_id, RstStatus::ProtocolError).await;
        }
        self.last_id = stream_id;
        if self.peer_gone_away || self.streams.len() >= self.opts.max_concurrent_streams {
            debug!(stream_id, "spdy: stream refused");
            return self.rst(stream_id, RstStatus::RefusedStream).await;
        }
        let slot = match self.link.until_stopped(self.accept.reserve()).await? {
            Ok(slot) => slot,
            Err(_) => {
                return self
                    .link
                    .send(Frame::RstStream {
                        stream_id,
                        status: RstStatus::RefusedStream,
                    })
                    .await;
            }
        };
        let shared = Arc::new(StreamShared::new(
            stream_id,
            self.opts.stream_window as usize,
        ));
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        if fin {
            shared.set_end(RemoteEnd::Fin);
        }
        // An unidirectional stream is half-closed for us from the start, and gets no SYN_REPLY (the draft).
        if !unidirectional {
            self.send(Frame::SynReply {
                stream_id,
                fin: false,
                headers: Vec::new(),
            })
            .await?;
        }
        if !(fin && unidirectional) {
            self.streams.insert(
                stream_id,
                Entry {
                    shared: shared.clone(),
                    data: (!fin).then_some(data_tx),
                    local_closed: unidirectional,
                    unacked: 0,
                },
            );
            self.count_streams();
        }
        debug!(stream_id, ?headers, "spdy: stream opened");
        slot.send(Stream::new(
            shared,
            headers,
            data_rx,
            self.link.out.clone(),
            self.cmd_tx.clone(),
            self.shared.clone(),
            unidirectional,
            &self.live,
        ));
        Ok(())
    }

    async fn data(&mut self, stream_id: u32, data: Bytes, fin: bool, frame_end: bool) -> Handled {
        let len = data.len();
        let Some(entry) = self.streams.get(&stream_id) else {
            // Still counts against the session window the peer keeps.
            self.acknowledge(None, len).await?;
            if frame_end {
                return self.rst(stream_id, RstStatus::InvalidStream).await;
            }
            return Ok(());
        };
        let Some(tx) = entry.data.clone() else {
            self.acknowledge(None, len).await?;
            if frame_end {
                return self.reset(stream_id, RstStatus::StreamAlreadyClosed).await;
            }
            return Ok(());
        };
        if len > 0 {
            let shared = entry.shared.clone();
            // Wait for room in the stream's buffer: a peer that ignores windows is held back by TCP.
            let room = self
                .link
                .until_stopped(shared.recv_room.acquire_many(len as u32))
                .await?;
            let delivered = match room {
                Ok(permit) => {
                    permit.forget();
                    tx.send(data).is_ok()
                }
                Err(_) => false,
            };
            if !delivered {
                // Nobody reads this stream any more: drop the data, but give the window back.
                self.acknowledge(Some(stream_id), len).await?;
            }
        }
        if fin {
            self.remote_fin(stream_id);
        }
        Ok(())
    }

    async fn command(&mut self, cmd: Cmd) -> Handled {
        match cmd {
            Cmd::Consumed { stream_id, bytes } => self.acknowledge(Some(stream_id), bytes).await,
            Cmd::LocalFin(stream_id) => {
                self.local_fin(stream_id);
                Ok(())
            }
            Cmd::WriterDropped(stream_id) => {
                if self
                    .streams
                    .get(&stream_id)
                    .is_some_and(|e| !e.local_closed)
                {
                    self.send(Frame::Data {
                        stream_id,
                        fin: true,
                        data: Bytes::new(),
                    })
                    .await?;
                    self.local_fin(stream_id);
                }
                Ok(())
            }
            Cmd::Reset { stream_id, status } => {
                if self.streams.contains_key(&stream_id) {
                    self.reset(stream_id, status).await?;
                }
                Ok(())
            }
        }
    }

    /// Returns consumed bytes to the peer's windows once half of a window is used up.
    async fn acknowledge(&mut self, stream_id: Option<u32>, bytes: usize) -> Handled {
        if !self.opts.window_updates {
            return Ok(());
        }
        let half = self.opts.stream_window as usize / 2;
        let mut stream_update = None;
        if let Some(entry) = stream_id.and_then(|id| self.streams.get_mut(&id)) {
            // Once the peer's half is closed it sends nothing more: no window to return.
            if entry.data.is_some() {
                entry.unacked += bytes;
                if entry.unacked >= half {
                    stream_update = Some((entry.shared.id, std::mem::take(&mut entry.unacked)));
                }
            }
        }
        if let Some((stream_id, delta)) = stream_update {
            self.send(Frame::WindowUpdate {
                stream_id,
                delta: delta as u32,
            })
            .await?;
        }
        self.session_unacked += bytes;
        if self.session_unacked >= SESSION_WINDOW / 2 {
            let delta = std::mem::take(&mut self.session_unacked);
            self.send(Frame::WindowUpdate {
                stream_id: 0,
                delta: delta as u32,
            })
            .await?;
        }
        Ok(())
    }

    fn remote_fin(&mut self, stream_id: u32) {
        let Some(entry) = self.streams.get_mut(&stream_id) else {
            return;
        };
        entry.shared.set_end(RemoteEnd::Fin);
        entry.data = None;
        if entry.local_closed {
            self.remove(stream_id);
            trace!(stream_id, "spdy: stream closed");
        }
    }

    fn local_fin(&mut self, stream_id: u32) {
        let Some(entry) = self.streams.get_mut(&stream_id) else {
            return;
        };
        entry.local_closed = true;
        if entry.data.is_none() {
            self.remove(stream_id);
            trace!(stream_id, "spdy: stream closed");
        }
    }

    /// Resets a stream: RST_STREAM out, the entry (if any) forgotten, its reader ended.
    async fn reset(&mut self, stream_id: u32, status: RstStatus) -> Handled {
        if let Some(entry) = self.remove(stream_id) {
            entry.shared.set_end(RemoteEnd::LocalReset);
        }
        self.rst(stream_id, status).await
    }

    async fn rst(&mut self, stream_id: u32, status: RstStatus) -> Handled {
        debug!(stream_id, ?status, "spdy: sending RST_STREAM");
        self.send(Frame::RstStream { stream_id, status }).await
    }

    fn remove(&mut self, stream_id: u32) -> Option<Entry> {
        let entry = self.streams.remove(&stream_id);
        self.count_streams();
        entry
    }

    fn count_streams(&self) {
        self.shared.set_open_streams(self.streams.len());
    }

    async fn send(&self, frame: Frame) -> Handled {
        self.link.send(frame).await
    }
}

fn protocol_error(e: FrameError) -> Stop {
    debug!(error = %error_chain(&e), "spdy: protocol error, closing the session");
    Stop(Ended::ProtocolError, Some(GoAwayStatus::ProtocolError))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads what is available into `buf` (cancel-safe: a read either happened or did not).
async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    rd.read_buf(buf).await
}
