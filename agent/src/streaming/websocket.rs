//! The WebSocket transport (Kubernetes' channel protocols): every message starts with its channel (one byte;
//! in the base64 protocols an ASCII digit followed by base64 text), the rest is that channel's data.
//! remotecommand uses channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; `v5.channel.k8s.io` adds
//! channel 255, whose message `[255, n]` closes channel n (the client's end of stdin). Port-forward uses a
//! data channel 2i and an error channel 2i+1 per port, each opening with the port (u16, little endian).
//!
//! One task reads (routing each channel's bytes into a pipe the session reads), one writes: the session's
//! writers all feed one ordered queue, so the status on the error channel never overtakes the output before
//! it; when every writer is gone the writer task sends a Close frame.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::{CancellationToken, PollSender};

/// The remotecommand subprotocols we speak, best first ("" = the client asked for none: binary channels).
pub const EXEC_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// The port-forward subprotocols.
pub const PORTFORWARD_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The biggest message we send.
const MAX_CHUNK: usize = 32 * 1024;
/// Bytes buffered per channel the client writes to, before we stop reading from it.
const PIPE: usize = 256 * 1024;
/// The channel whose message closes another (v5).
const CLOSE_CHANNEL: u8 = 255;

/// Picks the protocol: the first of the client's (comma-separated `Sec-WebSocket-Protocol` values) that we
/// speak; "" when the client named none. None: the client named only ones we do not speak.
pub fn negotiate(client: &[String], ours: &[&str]) -> Option<String> {
    let asked: Vec<&str> = client
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if asked.is_empty() {
        return Some(String::new());
    }
    asked
        .into_iter()
        .find(|p| ours.contains(p))
        .map(str::to_string)
}

/// The channels of one connection.
pub struct Channels {
    readers: HashMap<u8, DuplexStream>,
    queue: mpsc::Sender<(u8, Vec<u8>)>,
    /// Cancelled when the client is gone (its Close, an error, or the idle timeout).
    pub gone: CancellationToken,
}

impl Channels {
    /// Runs the connection: `readable` are the channels the client may write to. Returns the channels and
    /// the writer task's handle (it ends after the Close frame, once every writer is dropped).
    pub fn open<S>(
        ws: WebSocketStream<S>,
        protocol: &str,
        readable: &[u8],
        idle: Duration,
    ) -> (Channels, tokio::task::JoinHandle<()>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let base64 = protocol.contains("base64");
        let v5 = protocol.starts_with("v5.");
        let (sink, stream) = ws.split();
        let gone = CancellationToken::new();
        let mut readers = HashMap::new();
        let mut feeds = HashMap::new();
        for &ch in readable {
            let (ours, theirs) = tokio::io::duplex(PIPE);
            readers.insert(ch, theirs);
            feeds.insert(ch, ours);
        }
        let (queue, rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
        let activity = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(read_loop(
            stream,
            feeds,
            base64,
            v5,
            gone.clone(),
            idle,
            activity.clone(),
        ));
        let writer = tokio::spawn(write_loop(sink, rx, base64, gone.clone(), activity));
        (
            Channels {
                readers,
                queue,
                gone,
            },
            writer,
        )
    }

    /// What the client writes on `ch` (each readable channel can be taken once).
    pub fn reader(&mut self, ch: u8) -> Option<DuplexStream> {
        self.readers.remove(&ch)
    }

    /// A writer for channel `ch`.
    pub fn writer(&self, ch: u8) -> ChannelWriter {
        ChannelWriter {
            ch,
            tx: PollSender::new(self.queue.clone()),
        }
    }

    /// Sends one message on `ch` now (the empty "connected" message, a port-forward's port prefix).
    pub async fn send(&self, ch: u8, data: Vec<u8>) {
        let _ = self.queue.send((ch, data)).await;
    }
}

/// Writes to one channel; shutting it down just stops it (a channel has no end of its own before v5).
pub struct ChannelWriter {
    ch: u8,
    tx: PollSender<(u8, Vec<u8>)>,
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.tx.poll_reserve(cx)).map_err(|_| io::ErrorKind::BrokenPipe)?;
        let n = data.len().min(MAX_CHUNK);
        let ch = self.ch;
        self.tx
            .send_item((ch, data[..n].to_vec()))
            .map_err(|_| io::ErrorKind::BrokenPipe)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

fn now_ms() -> u64 {
    crate::pod::now_nanos().max(0) as u64 / 1_000_000
}

/// Decodes one client message into (channel, data), by the negotiated protocol whatever the frame type
/// (Kubernetes reads both; the Python client sends stdin given as a string in text frames).
pub fn decode(msg: &Message, base64: bool) -> Option<(u8, Vec<u8>)> {
    let bytes: &[u8] = match msg {
        Message::Binary(b) => b,
        Message::Text(t) => t.as_bytes(),
        _ => return None,
    };
    let (&first, rest) = bytes.split_first()?;
    if base64 {
        let ch = first.checked_sub(b'0')?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        Some((ch, data))
    } else {
        Some((first, rest.to_vec()))
    }
}

/// Encodes (channel, data) as a server message.
pub fn encode(ch: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut t = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        t.push(char::from(b'0' + ch));
        t.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::text(t)
    } else {
        let mut b = Vec::with_capacity(1 + data.len());
        b.push(ch);
        b.extend_from_slice(data);
        Message::binary(b)
    }
}

async fn read_loop<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    mut feeds: HashMap<u8, DuplexStream>,
    base64: bool,
    v5: bool,
    gone: CancellationToken,
    idle: Duration,
    activity: std::sync::Arc<std::sync::atomic::AtomicU64>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use std::sync::atomic::Ordering;
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(idle, stream.next()) => n,
            () = gone.cancelled() => break,
        };
        let msg = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(_)) | None) => break,
            Err(_) => {
                let last_write = activity.load(Ordering::Relaxed);
                if now_ms().saturating_sub(last_write) < idle.as_millis() as u64 {
                    continue;
                }
                tracing::debug!(?idle, "websocket stream idle; closing");
                break;
            }
        };
        if matches!(msg, Message::Close(_)) {
            break;
        }
        let Some((ch, data)) = decode(&msg, base64) else {
            continue;
        };
        if v5 && ch == CLOSE_CHANNEL {
            if let Some(&closed) = data.first() {
                // Dropping our end is the end of that channel's input.
                feeds.remove(&closed);
            }
            continue;
        }
        if let Some(feed) = feeds.get_mut(&ch)
            && feed.write_all(&data).await.is_err()
        {
            feeds.remove(&ch);
        }
    }
    drop(feeds);
    gone.cancel();
}

async fn write_loop<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<(u8, Vec<u8>)>,
    base64: bool,
    gone: CancellationToken,
    activity: std::sync::Arc<std::sync::atomic::AtomicU64>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use std::sync::atomic::Ordering;
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            () = gone.cancelled() => None,
        };
        let Some((ch, data)) = item else { break };
        activity.store(now_ms(), Ordering::Relaxed);
        if sink.send(encode(ch, &data, base64)).await.is_err() {
            gone.cancel();
            return;
        }
    }
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = sink.send(close).await;
        let _ = sink.close().await;
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_that_we_speak() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(
                &s(&["v6.channel.k8s.io, v5.channel.k8s.io", "v4.channel.k8s.io"]),
                &EXEC_PROTOCOLS
            ),
            Some("v5.channel.k8s.io".into())
        );
        assert_eq!(negotiate(&[], &EXEC_PROTOCOLS), Some(String::new()));
        assert_eq!(negotiate(&s(&["nope"]), &EXEC_PROTOCOLS), None);
        assert_eq!(
            negotiate(&s(&["v5.channel.k8s.io"]), &PORTFORWARD_PROTOCOLS),
            None
        );
    }

    #[test]
    fn messages_round_trip_in_both_encodings() {
        for base64 in [false, true] {
            let m = encode(2, b"some \x00 bytes", base64);
            assert_eq!(base64, matches!(m, Message::Text(_)));
            assert_eq!(decode(&m, base64), Some((2, b"some \x00 bytes".to_vec())));
        }
        assert_eq!(
            decode(&Message::text("1aGVsbG8="), true),
            Some((1, b"hello".to_vec()))
        );
        assert_eq!(decode(&Message::binary(vec![]), false), None);
        assert_eq!(decode(&Message::text("x!!"), true), None);
        // The frame type does not matter, the protocol does.
        assert_eq!(
            decode(&Message::text("\u{0}hi\n"), false),
            Some((0, b"hi\n".to_vec()))
        );
        assert_eq!(
            decode(&Message::binary(b"0aGk=".to_vec()), true),
            Some((0, b"hi".to_vec()))
        );
    }
}
