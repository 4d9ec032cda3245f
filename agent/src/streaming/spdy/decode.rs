//! Decoding SPDY/3 frames from a growing read buffer, with the session's receiving zlib context.

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{
    FLAG_FIN, FLAG_SETTINGS_CLEAR, FLAG_UNIDIRECTIONAL, Frame, FrameError, GoAwayStatus, RstStatus,
    STREAM_ID_MASK, Setting, TYPE_GOAWAY, TYPE_HEADERS, TYPE_PING, TYPE_RST_STREAM, TYPE_SETTINGS,
    TYPE_SYN_REPLY, TYPE_SYN_STREAM, TYPE_WINDOW_UPDATE, VERSION, be32,
};
use super::headers::{self, HeaderDecompressor, HeaderError};

/// What the decoder found next.
#[derive(Debug)]
pub enum Decoded {
    /// A complete control frame (never `Frame::Data`).
    Frame(Frame),
    /// A piece of a DATA frame; `fin` is only ever set on the frame's last piece (`frame_end`).
    Data {
        stream_id: u32,
        data: Bytes,
        fin: bool,
        frame_end: bool,
    },
    /// A header-bearing frame whose block decompressed fine but is malformed: an error of that stream only.
    BadHeaders {
        frame_type: u16,
        stream_id: u32,
        error: HeaderError,
    },
    /// A control frame of a type SPDY/3 does not define (or CREDENTIAL), skipped as the draft says.
    Unknown { frame_type: u16 },
}

/// Limits the decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// The longest control frame accepted (its payload is buffered whole).
    pub max_control: usize,
    /// What one header block may decompress to.
    pub max_header_block: usize,
    /// The largest DATA piece handed out at once.
    pub max_piece: usize,
}

enum State {
    Head,
    Data {
        stream_id: u32,
        fin: bool,
        remaining: usize,
    },
    Skip {
        frame_type: u16,
        remaining: usize,
    },
}

/// Decodes frames; owns the session's receiving decompression context.
pub struct Decoder {
    state: State,
    headers: HeaderDecompressor,
    limits: DecodeLimits,
}

impl Decoder {
    pub fn new(limits: DecodeLimits) -> Self {
        Decoder {
            state: State::Head,
            headers: HeaderDecompressor::new(limits.max_header_block),
            limits,
        }
    }

    /// Takes the next frame (or DATA piece) off the front of `buf`; `None` means more bytes are needed. When
    /// a control frame is incomplete, `buf` is grown to hold it (the length was checked first).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        loop {
            match self.state {
                State::Head => {
                    if buf.len() < 8 {
                        return Ok(None);
                    }
                    let first = be32(buf, 0);
                    let second = be32(buf, 4);
                    let flags = (second >> 24) as u8;
                    let len = (second & 0xff_ffff) as usize;
                    if first & 0x8000_0000 == 0 {
                        let stream_id = first & STREAM_ID_MASK;
                        if stream_id == 0 {
                            return Err(FrameError::ZeroStream(0));
                        }
                        buf.advance(8);
                        let fin = flags & FLAG_FIN != 0;
                        if len == 0 {
                            return Ok(Some(Decoded::Data {
                                stream_id,
                                data: Bytes::new(),
                                fin,
                                frame_end: true,
                            }));
                        }
                        self.state = State::Data {
                            stream_id,
                            fin,
                            remaining: len,
                        };
                        continue;
                    }
                    let version = ((first >> 16) & 0x7fff) as u16;
                    let frame_type = (first & 0xffff) as u16;
                    if version != VERSION {
                        return Err(FrameError::Version(version));
                    }
                    if !matches!(frame_type, 1..=4 | 6..=9) {
                        buf.advance(8);
                        self.state = State::Skip {
                            frame_type,
                            remaining: len,
                        };
                        continue;
                    }
                    if len > self.limits.max_control {
                        return Err(FrameError::TooLarge {
                            frame_type,
                            len,
                            max: self.limits.max_control,
                        });
                    }
                    if buf.len() < 8 + len {
                        buf.reserve(8 + len - buf.len());
                        return Ok(None);
                    }
                    buf.advance(8);
                    let payload = buf.split_to(len);
                    return self.control(frame_type, flags, &payload).map(Some);
                }
                State::Data {
                    stream_id,
                    fin,
                    remaining,
                } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len().min(remaining).min(self.limits.max_piece);
                    let data = buf.split_to(n).freeze();
                    let left = remaining - n;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Data {
                            stream_id,
                            fin,
                            remaining: left,
                        }
                    };
                    return Ok(Some(Decoded::Data {
                        stream_id,
                        data,
                        fin: fin && left == 0,
                        frame_end: left == 0,
                    }));
                }
                State::Skip {
                    frame_type,
                    remaining,
                } => {
                    let n = buf.len().min(remaining);
                    buf.advance(n);
                    if n < remaining {
                        self.state = State::Skip {
                            frame_type,
                            remaining: remaining - n,
                        };
                        return Ok(None);
                    }
                    self.state = State::Head;
                    return Ok(Some(Decoded::Unknown { frame_type }));
                }
            }
        }
    }

    fn control(&mut self, frame_type: u16, flags: u8, p: &[u8]) -> Result<Decoded, FrameError> {
        let bad_length = || FrameError::BadLength {
            frame_type,
            len: p.len(),
        };
        let fin = flags & FLAG_FIN != 0;
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                if p.len() < 10 {
                    return Err(bad_length());
                }
                let stream_id = be32(p, 0) & STREAM_ID_MASK;
                let headers = match self.block(frame_type, stream_id, &p[10..])? {
                    Ok(headers) => headers,
                    Err(bad) => return Ok(bad),
                };
                Frame::SynStream {
                    stream_id,
                    associated_to: be32(p, 4) & STREAM_ID_MASK,
                    priority: p[8] >> 5,
                    slot: p[9],
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                if p.len() < 4 {
                    return Err(bad_length());
                }
                let stream_id = be32(p, 0) & STREAM_ID_MASK;
                let headers = match self.block(frame_type, stream_id, &p[4..])? {
                    Ok(headers) => headers,
                    Err(bad) => return Ok(bad),
                };
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                if p.len() != 8 {
                    return Err(bad_length());
                }
                Frame::RstStream {
                    stream_id: be32(p, 0) & STREAM_ID_MASK,
                    status: RstStatus::from_code(be32(p, 4)),
                }
            }
            TYPE_SETTINGS => {
                if p.len() < 4 {
                    return Err(bad_length());
                }
                let count = be32(p, 0) as usize;
                if count != (p.len() - 4) / 8 || !(p.len() - 4).is_multiple_of(8) {
                    return Err(bad_length());
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| {
                        let flags_id = be32(e, 0);
                        Setting {
                            flags: (flags_id >> 24) as u8,
                            id: flags_id & 0xff_ffff,
                            value: be32(e, 4),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            TYPE_PING => {
                if p.len() != 4 {
                    return Err(bad_length());
                }
                Frame::Ping { id: be32(p, 0) }
            }
            TYPE_GOAWAY => {
                if p.len() != 8 {
                    return Err(bad_length());
                }
                Frame::GoAway {
                    last_good_stream_id: be32(p, 0) & STREAM_ID_MASK,
                    status: GoAwayStatus::from_code(be32(p, 4)),
                }
            }
            TYPE_WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(bad_length());
                }
                Frame::WindowUpdate {
                    stream_id: be32(p, 0) & STREAM_ID_MASK,
                    delta: be32(p, 4) & 0x7fff_ffff,
                }
            }
            other => return Ok(Decoded::Unknown { frame_type: other }),
        };
        let stream_id = match &frame {
            Frame::SynStream { stream_id, .. }
            | Frame::SynReply { stream_id, .. }
            | Frame::Headers { stream_id, .. }
            | Frame::RstStream { stream_id, .. } => Some(*stream_id),
            _ => None,
        };
        if stream_id == Some(0) {
            return Err(FrameError::ZeroStream(frame_type));
        }
        Ok(Decoded::Frame(frame))
    }

    /// Decompresses a block (always, to keep the zlib stream in step) and parses it. The outer error is a
    /// session error; the inner one is that stream's.
    #[allow(clippy::type_complexity)]
    fn block(
        &mut self,
        frame_type: u16,
        stream_id: u32,
        compressed: &[u8],
    ) -> Result<Result<Vec<(String, String)>, Decoded>, FrameError> {
        let raw = self
            .headers
            .decompress(compressed)
            .map_err(FrameError::Headers)?;
        Ok(
            headers::parse_block(&raw).map_err(|error| Decoded::BadHeaders {
                frame_type,
                stream_id,
                error,
            }),
        )
    }
}
