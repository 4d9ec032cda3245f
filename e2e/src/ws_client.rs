//! A WebSocket client for crius' streaming server, written from Kubernetes' channel protocols (what kubectl and
//! the API server speak), not from crius' code: exec and attach (`v5.channel.k8s.io`, `v4.channel.k8s.io`, their
//! base64 variants, `channel.k8s.io`) and port-forward (`v4.channel.k8s.io`, a data and an error channel per port).
//!
//! ```no_run
//! # async fn example(url: &str) -> anyhow::Result<()> {
//! use crius_e2e::ws_client::{self, STDIN, V5};
//! let mut s = ws_client::connect(url, &[V5]).await?;
//! s.send(STDIN, b"hello\n").await?;
//! s.close_stdin().await?;
//! let out = s.collect(ws_client::SESSION_TIMEOUT).await?;
//! assert_eq!(out.stdout(), b"hello\n");
//! assert_eq!(out.exit_code()?, 0);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// Remote command subprotocols, newest first.
pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
pub const V1_BASE64: &str = "base64.channel.k8s.io";

/// Remote command channels.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes that channel (stdin: the process sees EOF).
pub const CLOSE: u8 = 255;

/// How long a whole session may take in the tests unless they say otherwise.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// `http://host:port/path` → `ws://host:port/path` (and https → wss).
pub fn ws_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_string()
    }
}

/// The `host:port` and the path (with query) of an `http://` or `ws://` URL.
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .with_context(|| format!("{url:?} is not a plain http:// or ws:// URL"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Opens a WebSocket to a streaming URL asking for `protocols` (none: no `Sec-WebSocket-Protocol` header).
/// Fails when the server does not answer 101 (the error says which status and body it sent).
pub async fn connect(url: &str, protocols: &[&str]) -> anyhow::Result<Session> {
    let (addr, _) = split_url(url)?;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut request = ws_url(url)
        .into_client_request()
        .with_context(|| format!("bad URL {url:?}"))?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", ")).context("bad subprotocol list")?,
        );
    }
    let (ws, response) = match tokio_tungstenite::client_async(request, tcp).await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!(
                "upgrade of {url} refused: HTTP {} {}",
                r.status(),
                body.trim()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("WebSocket handshake with {url}")),
    };
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let base64 = protocol.as_deref().is_some_and(|p| p.contains("base64"));
    Ok(Session {
        ws,
        protocol,
        base64,
        out: Output::default(),
    })
}

/// Sends a WebSocket upgrade request for `url` by hand (no client library) and returns the HTTP status of the
/// answer, and its body when it is not 101. `protocols` empty: no `Sec-WebSocket-Protocol` header.
pub async fn upgrade_status(url: &str, protocols: &[&str]) -> anyhow::Result<(u16, String)> {
    let (addr, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if !protocols.is_empty() {
        req.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            protocols.join(", ")
        ));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    // Up to the end of the headers, then whatever body comes within a moment (the answer to a refused
    // upgrade is small; a 101 has none).
    let head_end = loop {
        if let Some(i) = find(&got, b"\r\n\r\n") {
            break i + 4;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, tcp.read(&mut buf))
            .await
            .with_context(|| format!("no HTTP answer from {url} within 10 s"))??;
        if n == 0 {
            break got.len();
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line in {head:?}"))?;
    if status == 101 {
        return Ok((status, String::new()));
    }
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await
    {
        if n == 0 || got.len() > 64 * 1024 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok((
        status,
        String::from_utf8_lossy(&got[head_end..]).into_owned(),
    ))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One open WebSocket session, and what it has received so far.
pub struct Session {
    ws: WebSocketStream<TcpStream>,
    protocol: Option<String>,
    base64: bool,
    out: Output,
}

/// Everything a session received, by channel.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// The bytes of every message on a channel, concatenated (with the channel byte removed).
    pub channels: BTreeMap<u8, Vec<u8>>,
    /// The first message of each channel, whole (the empty "up" message, a port-forward port prefix).
    pub firsts: BTreeMap<u8, Vec<u8>>,
    /// (channel, length) of every message in arrival order.
    pub messages: Vec<(u8, usize)>,
    /// Set when the server's Close frame arrived: its code and reason.
    pub close: Option<(u16, String)>,
    /// The connection ended (a Close frame, or EOF without one).
    pub ended: bool,
}

impl Output {
    /// All bytes received on `channel`.
    pub fn channel(&self, channel: u8) -> &[u8] {
        self.channels.get(&channel).map_or(&[][..], Vec::as_slice)
    }

    pub fn stdout(&self) -> &[u8] {
        self.channel(STDOUT)
    }

    pub fn stderr(&self) -> &[u8] {
        self.channel(STDERR)
    }

    /// A channel as (lossy) text.
    pub fn text(&self, channel: u8) -> String {
        String::from_utf8_lossy(self.channel(channel)).into_owned()
    }

    /// The metav1.Status the server sent on the error channel (v4, v5).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let raw = self.channel(ERROR);
        serde_json::from_slice(raw).with_context(|| {
            format!(
                "the error channel does not hold a JSON Status: {:?}",
                String::from_utf8_lossy(raw)
            )
        })
    }

    /// The exit code the Status reports: 0 for `Success`, the `ExitCode` cause of a `NonZeroExitCode`
    /// failure. Any other shape is an error.
    pub fn exit_code(&self) -> anyhow::Result<i32> {
        let st = self.status()?;
        match st["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if st["reason"] == "NonZeroExitCode" => {
                let cause = &st["details"]["causes"][0];
                if cause["reason"] != "ExitCode" {
                    bail!("NonZeroExitCode without an ExitCode cause: {st}");
                }
                cause["message"]
                    .as_str()
                    .and_then(|m| m.parse().ok())
                    .with_context(|| format!("ExitCode cause without a number: {st}"))
            }
            _ => bail!("not a Success or NonZeroExitCode Status: {st}"),
        }
    }

    /// Port-forward: what arrived on the data channel of port `index` after its port prefix.
    pub fn port_data(&self, index: usize) -> &[u8] {
        self.after_first(data_channel(index))
    }

    /// Port-forward: the text on the error channel of port `index` after its port prefix.
    pub fn port_error(&self, index: usize) -> String {
        String::from_utf8_lossy(self.after_first(error_channel(index))).into_owned()
    }

    fn after_first(&self, channel: u8) -> &[u8] {
        let skip = self.firsts.get(&channel).map_or(0, Vec::len);
        self.channel(channel).get(skip..).unwrap_or(&[])
    }

    fn record(&mut self, channel: u8, data: Vec<u8>) {
        self.messages.push((channel, data.len()));
        self.firsts.entry(channel).or_insert_with(|| data.clone());
        self.channels.entry(channel).or_default().extend(data);
    }
}

impl fmt::Display for Output {
    /// A short summary for failure messages: bytes per channel (the start of each), the close.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} messages", self.messages.len())?;
        for (ch, data) in &self.channels {
            let head = &data[..data.len().min(200)];
            write!(
                f,
                "; channel {ch}: {} bytes {:?}",
                data.len(),
                String::from_utf8_lossy(head)
            )?;
        }
        match &self.close {
            Some((code, reason)) => write!(f, "; closed ({code} {reason:?})"),
            None if self.ended => write!(f, "; ended without a Close frame"),
            None => write!(f, "; open"),
        }
    }
}

/// The channel carrying data of port `index` of a port-forward session.
pub fn data_channel(index: usize) -> u8 {
    u8::try_from(2 * index).expect("port index too large")
}

/// The channel carrying errors of port `index` of a port-forward session.
pub fn error_channel(index: usize) -> u8 {
    u8::try_from(2 * index + 1).expect("port index too large")
}

impl Session {
    /// The subprotocol the server chose (`Sec-WebSocket-Protocol` of its 101), if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// What arrived so far.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// One message on `channel`: binary `[channel] + data`, or for base64 protocols text `'0'+channel` +
    /// base64(data).
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> anyhow::Result<()> {
        let msg = if self.base64 {
            let digit = char::from(b'0' + channel);
            Message::text(format!("{digit}{}", STANDARD.encode(data)))
        } else {
            let mut bytes = Vec::with_capacity(data.len() + 1);
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        };
        self.ws
            .send(msg)
            .await
            .with_context(|| format!("cannot send {} bytes on channel {channel}", data.len()))
    }

    /// A text message exactly as given, whatever the protocol: what clients that write `str`s send (the
    /// Kubernetes Python client's `write_stdin("...")` sends `chr(channel) + data` as text on binary protocols).
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("cannot send a text message")
    }

    /// v5: closes stdin (`[255, 0]`).
    pub async fn close_stdin(&mut self) -> anyhow::Result<()> {
        self.ws
            .send(Message::binary(vec![CLOSE, STDIN]))
            .await
            .context("cannot send the close of stdin")
    }

    /// A terminal size on the resize channel.
    pub async fn resize(&mut self, width: u16, height: u16) -> anyhow::Result<()> {
        let json = serde_json::json!({ "Width": width, "Height": height }).to_string();
        self.send(RESIZE, json.as_bytes()).await
    }

    /// Reads one message (pings are answered by the library); false once the connection has ended.
    async fn read_one(&mut self) -> anyhow::Result<bool> {
        if self.out.ended {
            return Ok(false);
        }
        let Some(msg) = self.ws.next().await else {
            self.out.ended = true;
            return Ok(false);
        };
        match msg {
            Ok(Message::Binary(b)) => self.take(&b)?,
            Ok(Message::Text(t)) => self.take(t.as_bytes())?,
            Ok(Message::Close(frame)) => {
                self.out.close = Some(frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                }));
                self.out.ended = true;
            }
            Ok(_) => {}
            // The server may shut the TCP connection right after its Close frame.
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.out.ended = true;
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => {
                self.out.ended = true;
            }
            Err(e) => return Err(e).context("WebSocket read"),
        }
        Ok(!self.out.ended)
    }

    /// Decodes a data message into the output.
    fn take(&mut self, raw: &[u8]) -> anyhow::Result<()> {
        let Some((&first, rest)) = raw.split_first() else {
            bail!("an empty WebSocket message (no channel byte)");
        };
        if self.base64 {
            if !first.is_ascii_digit() {
                bail!(
                    "base64 protocol message with channel byte {first:#x}: {:?}",
                    String::from_utf8_lossy(raw)
                );
            }
            let data = STANDARD
                .decode(rest)
                .with_context(|| format!("bad base64 in {:?}", String::from_utf8_lossy(raw)))?;
            self.out.record(first - b'0', data);
        } else {
            self.out.record(first, rest.to_vec());
        }
        Ok(())
    }

    /// Reads until `done(output)` holds; fails when the connection ends first or `timeout` passes.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Output) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(&self.out) {
            if self.out.ended {
                bail!("the session ended before {what}; received: {}", self.out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_one()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => bail!("no {what} within {timeout:?}; received: {}", self.out),
            }
        }
        Ok(())
    }

    /// Reads until the server ends the session (its Close frame, or EOF) and returns everything received.
    pub async fn collect(mut self, timeout: Duration) -> anyhow::Result<Output> {
        let deadline = Instant::now() + timeout;
        while !self.out.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_one()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => bail!(
                    "the server did not end the session within {timeout:?}; received: {}",
                    self.out
                ),
            }
        }
        Ok(self.out)
    }

    /// Closes from our side (a Close frame, normal closure), then reads until the server's answer or the end
    /// (at most 5 s). Returns everything received.
    pub async fn close(mut self) -> anyhow::Result<Output> {
        if !self.out.ended {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            // The server may have closed the connection meanwhile: then there is nothing to say.
            let _ = self.ws.send(Message::Close(Some(frame))).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.out.ended {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.read_one()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break,
                    Err(_) => bail!(
                        "no Close frame in answer to ours within 5 s; received: {}",
                        self.out
                    ),
                }
            }
        }
        Ok(self.out)
    }
}

/// Port-forward: connects with `protocols` and reads until every channel of `ports` (in the order of the
/// request) has had its first message, checking that each is the port number as u16 little endian.
pub async fn port_forward(
    url: &str,
    protocols: &[&str],
    ports: &[u16],
    timeout: Duration,
) -> anyhow::Result<Session> {
    let mut s = connect(url, protocols).await?;
    let want: Vec<u8> = (0..ports.len())
        .flat_map(|i| [data_channel(i), error_channel(i)])
        .collect();
    s.read_until(timeout, "port prefixes on every channel", |o| {
        want.iter().all(|ch| o.firsts.contains_key(ch))
    })
    .await?;
    for (i, port) in ports.iter().enumerate() {
        for ch in [data_channel(i), error_channel(i)] {
            let first = &s.out.firsts[&ch];
            if first[..] != port.to_le_bytes() {
                bail!(
                    "the first message on channel {ch} is {first:?}, not port {port} as u16 LE {:?}",
                    port.to_le_bytes()
                );
            }
        }
    }
    Ok(s)
}
