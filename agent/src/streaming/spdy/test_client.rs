//! A minimal SPDY client for the in-memory session tests, built from the frame codec.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::decode::{DecodeLimits, Decoded, Decoder};
use super::frame::{Encoder, Frame, RstStatus};
use super::{Session, SessionOptions, Stream, serve};

pub(super) const LIMITS: DecodeLimits = DecodeLimits {
    max_control: 1 << 20,
    max_header_block: 1 << 20,
    max_piece: 64 * 1024,
};
pub(super) const WAIT: Duration = Duration::from_secs(20);

/// What the client reads: frames in through `dec`.
pub(super) struct Inbound {
    pub rd: ReadHalf<DuplexStream>,
    pub dec: Decoder,
    pub buf: BytesMut,
}

impl Inbound {
    /// The next thing the server sent; `None` at EOF.
    pub async fn next(&mut self) -> Option<Decoded> {
        timeout(WAIT, async {
            loop {
                if let Some(d) = self.dec.decode(&mut self.buf).unwrap() {
                    return Some(d);
                }
                self.buf.reserve(64 * 1024);
                if self.rd.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("the server said nothing")
    }

    /// The next control frame, skipping WINDOW_UPDATEs.
    pub async fn control(&mut self) -> Frame {
        loop {
            match self.next().await {
                Some(Decoded::Frame(Frame::WindowUpdate { .. })) => {}
                Some(Decoded::Frame(f)) => return f,
                other => panic!("expected a control frame, got {other:?}"),
            }
        }
    }

    /// Reads until every stream in `ids` got its FIN; returns what each received.
    pub async fn collect(&mut self, ids: &[u32]) -> HashMap<u32, Vec<u8>> {
        let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut open: Vec<u32> = ids.to_vec();
        while !open.is_empty() {
            match self.next().await {
                Some(Decoded::Data {
                    stream_id,
                    data,
                    fin,
                    ..
                }) => {
                    got.entry(stream_id).or_default().extend_from_slice(&data);
                    if fin {
                        open.retain(|id| *id != stream_id);
                    }
                }
                Some(Decoded::Frame(Frame::SynReply { .. } | Frame::WindowUpdate { .. })) => {}
                other => panic!("unexpected {other:?} with streams {open:?} open"),
            }
        }
        got
    }
}

/// The client end: frames out through `enc`.
pub(super) struct Client {
    pub inb: Inbound,
    pub wr: WriteHalf<DuplexStream>,
    pub enc: Encoder,
    pub next_id: u32,
}

impl Client {
    pub fn new(io: DuplexStream) -> Self {
        let (rd, wr) = tokio::io::split(io);
        Client {
            inb: Inbound {
                rd,
                dec: Decoder::new(LIMITS),
                buf: BytesMut::new(),
            },
            wr,
            enc: Encoder::new().unwrap(),
            next_id: 1,
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.enc.encode(&frame, &mut out).unwrap();
        self.wr.write_all(&out).await.unwrap();
    }

    pub async fn open(&mut self, headers: &[(&str, &str)], fin: bool) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin,
            unidirectional: false,
            headers,
        })
        .await;
        id
    }

    pub async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
        let data = Bytes::copy_from_slice(data);
        self.send(Frame::Data {
            stream_id,
            fin,
            data,
        })
        .await;
    }

    pub async fn next(&mut self) -> Option<Decoded> {
        self.inb.next().await
    }

    pub async fn control(&mut self) -> Frame {
        self.inb.control().await
    }

    pub async fn collect(&mut self, ids: &[u32]) -> HashMap<u32, Vec<u8>> {
        self.inb.collect(ids).await
    }

    pub async fn ping(&mut self, id: u32) {
        self.send(Frame::Ping { id }).await;
        assert_eq!(self.control().await, Frame::Ping { id });
    }

    pub async fn expect_reply(&mut self, id: u32) {
        match self.control().await {
            Frame::SynReply {
                stream_id,
                fin: false,
                ..
            } if stream_id == id => {}
            other => panic!("expected SYN_REPLY for {id}, got {other:?}"),
        }
    }

    pub async fn expect_rst(&mut self, id: u32, status: RstStatus) {
        assert_eq!(
            self.control().await,
            Frame::RstStream {
                stream_id: id,
                status
            }
        );
    }
}

pub(super) fn start(opts: SessionOptions) -> (Client, Session, mpsc::Receiver<Stream>) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (session, streams) = serve(server, opts);
    (Client::new(client), session, streams)
}
