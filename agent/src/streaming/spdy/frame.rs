//! SPDY/3 frames: the 8-byte frame head, the control frames of draft-mbelshe-httpbis-spdy-00 (plus the 3.1
//! session window, stream 0 in WINDOW_UPDATE) and DATA frames.
//!
//! ```text
//! control: |1| version (15) | type (16) |  flags (8) | length (24) | payload
//! data:    |0| stream id (31)           |  flags (8) | length (24) | payload
//! ```
//!
//! The decoder (decode.rs) works on a growing read buffer and never needs more than one control frame in memory: a
//! control frame longer than its limit is refused before anything is allocated for it, and DATA payloads (up to
//! SPDY's 16 MiB) are handed out in pieces of at most `max_piece` bytes as they arrive.

use bytes::{Bytes, BytesMut};

use super::headers::{self, HeaderCompressor, HeaderError};

pub const VERSION: u16 = 3;
/// The largest length the 24-bit field can carry.
pub const MAX_FRAME_LEN: usize = 0xff_ffff;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// SETTINGS id of the initial stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

pub(super) const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// RST_STREAM status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RstStatus {
    ProtocolError,
    InvalidStream,
    RefusedStream,
    UnsupportedVersion,
    Cancel,
    InternalError,
    FlowControlError,
    StreamInUse,
    StreamAlreadyClosed,
    FrameTooLarge,
    Other(u32),
}

impl RstStatus {
    pub fn code(self) -> u32 {
        match self {
            RstStatus::ProtocolError => 1,
            RstStatus::InvalidStream => 2,
            RstStatus::RefusedStream => 3,
            RstStatus::UnsupportedVersion => 4,
            RstStatus::Cancel => 5,
            RstStatus::InternalError => 6,
            RstStatus::FlowControlError => 7,
            RstStatus::StreamInUse => 8,
            RstStatus::StreamAlreadyClosed => 9,
            RstStatus::FrameTooLarge => 11,
            RstStatus::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> Self {
        match code {
            1 => RstStatus::ProtocolError,
            2 => RstStatus::InvalidStream,
            3 => RstStatus::RefusedStream,
            4 => RstStatus::UnsupportedVersion,
            5 => RstStatus::Cancel,
            6 => RstStatus::InternalError,
            7 => RstStatus::FlowControlError,
            8 => RstStatus::StreamInUse,
            9 => RstStatus::StreamAlreadyClosed,
            11 => RstStatus::FrameTooLarge,
            other => RstStatus::Other(other),
        }
    }
}

/// GOAWAY status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAwayStatus {
    Ok,
    ProtocolError,
    InternalError,
    Other(u32),
}

impl GoAwayStatus {
    pub fn code(self) -> u32 {
        match self {
            GoAwayStatus::Ok => 0,
            GoAwayStatus::ProtocolError => 1,
            GoAwayStatus::InternalError => 2,
            GoAwayStatus::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> Self {
        match code {
            0 => GoAwayStatus::Ok,
            1 => GoAwayStatus::ProtocolError,
            2 => GoAwayStatus::InternalError,
            other => GoAwayStatus::Other(other),
        }
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A frame as it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        slot: u8,
        fin: bool,
        unidirectional: bool,
        headers: Vec<(String, String)>,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    RstStream {
        stream_id: u32,
        status: RstStatus,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    WindowUpdate {
        /// 0 is the whole session's window (SPDY/3.1).
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
}

/// Why the byte stream is not SPDY/3: each of these is a session error.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("control frame type {frame_type} has an invalid length of {len}")]
    BadLength { frame_type: u16, len: usize },
    #[error("control frame type {frame_type} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        frame_type: u16,
        len: usize,
        max: usize,
    },
    #[error("frame type {0} names stream 0")]
    ZeroStream(u16),
    #[error("payload of {0} bytes does not fit SPDY's 24-bit length")]
    TooLong(usize),
    #[error("header block")]
    Headers(#[source] HeaderError),
}

pub(super) fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub(super) fn control_head(frame_type: u16, flags: u8, len: usize) -> Result<[u8; 8], FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    let first = 0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(frame_type);
    let second = (u32::from(flags) << 24) | len as u32;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&first.to_be_bytes());
    head[4..].copy_from_slice(&second.to_be_bytes());
    Ok(head)
}

/// The 8-byte head of a DATA frame carrying `len` bytes.
pub fn data_head(stream_id: u32, fin: bool, len: usize) -> Result<[u8; 8], FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    if stream_id & STREAM_ID_MASK == 0 {
        return Err(FrameError::ZeroStream(0));
    }
    let flags = if fin { FLAG_FIN } else { 0 };
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
    head[4..].copy_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
    Ok(head)
}

/// Encodes frames; owns the session's sending compression context, so every header-bearing frame of a
/// session must go through the same encoder, in wire order.
pub struct Encoder {
    headers: HeaderCompressor,
}

impl Encoder {
    pub fn new() -> Result<Self, FrameError> {
        Ok(Encoder {
            headers: HeaderCompressor::new().map_err(FrameError::Headers)?,
        })
    }

    /// Appends `frame` to `dst`.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                let block = self.block(headers)?;
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                dst.extend_from_slice(&control_head(TYPE_SYN_STREAM, flags, 10 + block.len())?);
                dst.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                dst.extend_from_slice(&(associated_to & STREAM_ID_MASK).to_be_bytes());
                dst.extend_from_slice(&[(priority & 0x07) << 5, *slot]);
                dst.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => self.stream_headers(TYPE_SYN_REPLY, *stream_id, *fin, headers, dst)?,
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => self.stream_headers(TYPE_HEADERS, *stream_id, *fin, headers, dst)?,
            Frame::RstStream { stream_id, status } => {
                dst.extend_from_slice(&control_head(TYPE_RST_STREAM, 0, 8)?);
                dst.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                dst.extend_from_slice(&status.code().to_be_bytes());
            }
            Frame::Settings { clear, entries } => {
                let flags = flag(*clear, FLAG_SETTINGS_CLEAR);
                dst.extend_from_slice(&control_head(TYPE_SETTINGS, flags, 4 + 8 * entries.len())?);
                dst.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for entry in entries {
                    let flags_id = (u32::from(entry.flags) << 24) | (entry.id & 0xff_ffff);
                    dst.extend_from_slice(&flags_id.to_be_bytes());
                    dst.extend_from_slice(&entry.value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                dst.extend_from_slice(&control_head(TYPE_PING, 0, 4)?);
                dst.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                dst.extend_from_slice(&control_head(TYPE_GOAWAY, 0, 8)?);
                dst.extend_from_slice(&(last_good_stream_id & STREAM_ID_MASK).to_be_bytes());
                dst.extend_from_slice(&status.code().to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                dst.extend_from_slice(&control_head(TYPE_WINDOW_UPDATE, 0, 8)?);
                dst.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                dst.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                dst.extend_from_slice(&data_head(*stream_id, *fin, data.len())?);
                dst.extend_from_slice(data);
            }
        }
        Ok(())
    }

    fn block(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, FrameError> {
        let raw = headers::encode_block(headers).map_err(FrameError::Headers)?;
        self.headers.compress(&raw).map_err(FrameError::Headers)
    }

    fn stream_headers(
        &mut self,
        frame_type: u16,
        stream_id: u32,
        fin: bool,
        headers: &[(String, String)],
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let block = self.block(headers)?;
        dst.extend_from_slice(&control_head(
            frame_type,
            flag(fin, FLAG_FIN),
            4 + block.len(),
        )?);
        dst.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
        dst.extend_from_slice(&block);
        Ok(())
    }
}

fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
