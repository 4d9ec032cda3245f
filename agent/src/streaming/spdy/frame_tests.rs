//! Frame codec tests: round trips of every frame type and byte vectors derived from the draft.

use super::super::decode::{DecodeLimits, Decoded, Decoder};
use super::*;

const LIMITS: DecodeLimits = DecodeLimits {
    max_control: 64 * 1024,
    max_header_block: 64 * 1024,
    max_piece: 16 * 1024,
};

fn h(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Vec<Decoded> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(d) = dec.decode(&mut buf).unwrap() {
        out.push(d);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "error"), ("x-multi", "a"), ("x-multi", "b")]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 7,
            slot: 2,
            fin: true,
            unidirectional: true,
            headers: h(&[("streamtype", "stdout")]),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: vec![],
        },
        Frame::Headers {
            stream_id: 1,
            fin: true,
            headers: h(&[("status", "200")]),
        },
        Frame::RstStream {
            stream_id: 5,
            status: RstStatus::Cancel,
        },
        Frame::RstStream {
            stream_id: 5,
            status: RstStatus::Other(99),
        },
        Frame::Settings {
            clear: true,
            entries: vec![Setting {
                flags: 1,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: 65536,
            }],
        },
        Frame::Ping { id: 0xdead_beef },
        Frame::GoAway {
            last_good_stream_id: 7,
            status: GoAwayStatus::ProtocolError,
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        },
    ]
}

#[test]
fn every_frame_type_round_trips() {
    let mut enc = Encoder::new().unwrap();
    let mut dec = Decoder::new(LIMITS);
    let frames = all_frames();
    let mut wire = BytesMut::new();
    for f in &frames {
        enc.encode(f, &mut wire).unwrap();
    }
    enc.encode(
        &Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"hello"),
        },
        &mut wire,
    )
    .unwrap();
    let decoded = decode_all(&mut dec, &wire);
    assert_eq!(decoded.len(), frames.len() + 1);
    for (f, d) in frames.iter().zip(&decoded) {
        match d {
            Decoded::Frame(got) => assert_eq!(got, f),
            other => panic!("expected {f:?}, got {other:?}"),
        }
    }
    match decoded.last().unwrap() {
        Decoded::Data {
            stream_id: 1,
            data,
            fin: true,
            frame_end: true,
        } => assert_eq!(&data[..], b"hello"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn decoding_byte_by_byte_gives_the_same_frames() {
    let mut enc = Encoder::new().unwrap();
    let mut wire = BytesMut::new();
    for f in &all_frames() {
        enc.encode(f, &mut wire).unwrap();
    }
    let mut dec = Decoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(Decoded::Frame(f)) = dec.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, all_frames());
}

#[test]
fn ping_bytes_match_the_draft() {
    // |1|version 3|type 6|, flags 0, length 4, then the 32-bit id.
    let wire: &[u8] = &[
        0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
    ];
    let mut enc = Encoder::new().unwrap();
    let mut buf = BytesMut::new();
    enc.encode(&Frame::Ping { id: 1 }, &mut buf).unwrap();
    assert_eq!(&buf[..], wire);
    let mut dec = Decoder::new(LIMITS);
    match &decode_all(&mut dec, wire)[..] {
        [Decoded::Frame(Frame::Ping { id: 1 })] => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn fixed_control_frames_decode() {
    let mut dec = Decoder::new(LIMITS);
    #[rustfmt::skip]
    let wire: &[u8] = &[
        // RST_STREAM stream 1, CANCEL (5)
        0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05,
        // GOAWAY last good 3, OK
        0x80, 0x03, 0x00, 0x07, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
        // WINDOW_UPDATE stream 1, +32768
        0x80, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x80, 0x00,
        // SETTINGS: 1 entry, flags 0, id 7 (INITIAL_WINDOW_SIZE), value 65536
        0x80, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x07, 0x00, 0x01, 0x00, 0x00,
        // DATA stream 1, FIN, "abc"
        0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x03, b'a', b'b', b'c',
        // an unknown control type 10 (CREDENTIAL) with 2 bytes of payload, skipped
        0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x02, 0xaa, 0xbb,
    ];
    let got = decode_all(&mut dec, wire);
    assert!(matches!(
        got[0],
        Decoded::Frame(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::Cancel
        })
    ));
    assert!(matches!(
        got[1],
        Decoded::Frame(Frame::GoAway {
            last_good_stream_id: 3,
            status: GoAwayStatus::Ok
        })
    ));
    assert!(matches!(
        got[2],
        Decoded::Frame(Frame::WindowUpdate {
            stream_id: 1,
            delta: 32768
        })
    ));
    match &got[3] {
        Decoded::Frame(Frame::Settings {
            clear: false,
            entries,
        }) => {
            assert_eq!(
                entries,
                &[Setting {
                    flags: 0,
                    id: 7,
                    value: 65536
                }]
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&got[4], Decoded::Data { stream_id: 1, data, fin: true, frame_end: true } if &data[..] == b"abc")
    );
    assert!(matches!(got[5], Decoded::Unknown { frame_type: 10 }));
}

#[test]
fn hand_built_syn_stream_decodes() {
    // A SYN_STREAM whose header block is a zlib stream built by hand: the zlib header 0x78 0xbb (deflate,
    // FDICT set, (0x78bb % 31) == 0), the SPDY/3 dictionary id, then one non-final *stored* deflate block
    // (type 00, LEN 14, NLEN !14) holding the raw block {count 1, "a" = "b"}.
    #[rustfmt::skip]
    let wire: &[u8] = &[
        0x80, 0x03, 0x00, 0x01, // control, version 3, SYN_STREAM
        0x01, 0x00, 0x00, 0x23, // FLAG_FIN, length 35
        0x00, 0x00, 0x00, 0x01, // stream 1
        0x00, 0x00, 0x00, 0x00, // associated-to 0
        0x00, 0x00,             // priority 0, slot 0
        0x78, 0xbb, 0xe3, 0xc6, 0xa7, 0xc2,
        0x00, 0x0e, 0x00, 0xf1, 0xff,
        0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x01, b'a',
        0x00, 0x00, 0x00, 0x01, b'b',
    ];
    let mut dec = Decoder::new(LIMITS);
    match &decode_all(&mut dec, wire)[..] {
        [
            Decoded::Frame(Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                fin: true,
                unidirectional: false,
                headers,
                ..
            }),
        ] => assert_eq!(headers, &h(&[("a", "b")])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn syn_stream_head_matches_the_draft() {
    let mut enc = Encoder::new().unwrap();
    let mut buf = BytesMut::new();
    let f = Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 2,
        slot: 0,
        fin: true,
        unidirectional: false,
        headers: h(&[("streamtype", "data")]),
    };
    enc.encode(&f, &mut buf).unwrap();
    let len = buf.len() - 8;
    assert_eq!(&buf[..4], &[0x80, 0x03, 0x00, 0x01]);
    assert_eq!(buf[4], FLAG_FIN);
    assert_eq!(&buf[5..8], &(len as u32).to_be_bytes()[1..]);
    assert_eq!(&buf[8..18], &[0, 0, 0, 1, 0, 0, 0, 0, 2 << 5, 0]);
    // zlib header with FDICT and the dictionary id.
    assert_ne!(buf[19] & 0x20, 0);
    assert_eq!(&buf[20..24], &[0xe3, 0xc6, 0xa7, 0xc2]);
}

#[test]
fn large_data_comes_in_bounded_pieces() {
    let mut enc = Encoder::new().unwrap();
    let mut wire = BytesMut::new();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    enc.encode(
        &Frame::Data {
            stream_id: 9,
            fin: true,
            data: Bytes::from(payload.clone()),
        },
        &mut wire,
    )
    .unwrap();
    let mut dec = Decoder::new(LIMITS);
    let mut got = Vec::new();
    let pieces = decode_all(&mut dec, &wire);
    for (i, p) in pieces.iter().enumerate() {
        match p {
            Decoded::Data {
                stream_id: 9,
                data,
                fin,
                frame_end,
            } => {
                assert!(data.len() <= LIMITS.max_piece);
                assert_eq!(*fin, i == pieces.len() - 1);
                assert_eq!(*frame_end, *fin);
                got.extend_from_slice(data);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, payload);
}

#[test]
fn malformed_frames_are_session_errors() {
    let cases: &[(&[u8], &str)] = &[
        (&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1], "version"),
        (
            &[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 5, 0, 0, 0, 1, 0],
            "ping length",
        ),
        (
            &[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 4, 0, 0, 0, 1],
            "rst length",
        ),
        (
            &[0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0, 0, 0, 9],
            "settings count",
        ),
        (&[0, 0, 0, 0, 0, 0, 0, 1, 0], "data on stream 0"),
        (
            &[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
            "rst on stream 0",
        ),
        // A SYN_STREAM whose header block is not zlib data.
        (
            &[
                0x80, 0x03, 0x00, 0x01, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ],
            "bad zlib",
        ),
    ];
    for (wire, what) in cases {
        let mut dec = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(*wire);
        assert!(dec.decode(&mut buf).is_err(), "{what} accepted");
    }
}

#[test]
fn oversized_control_frames_are_refused_before_buffering() {
    let mut dec = Decoder::new(LIMITS);
    // A HEADERS frame announcing 16 MiB - 1: refused from its head alone, nothing reserved for it.
    let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x08, 0x00, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(buf.capacity() < 1024);
}

#[test]
fn bad_header_content_is_a_stream_error() {
    // An upper-case name: the block is decompressed (zlib stays in step) and reported for the stream.
    let mut hc = HeaderCompressor::new().unwrap();
    let raw = b"\0\0\0\x01\0\0\0\x01A\0\0\0\x01b";
    let z = hc.compress(raw).unwrap();
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&control_head(TYPE_SYN_STREAM, 0, 10 + z.len()).unwrap());
    wire.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    wire.extend_from_slice(&z);
    let mut enc = Encoder { headers: hc };
    enc.encode(&Frame::Ping { id: 3 }, &mut wire).unwrap();
    let mut dec = Decoder::new(LIMITS);
    let got = decode_all(&mut dec, &wire);
    assert!(matches!(
        got[0],
        Decoded::BadHeaders {
            frame_type: TYPE_SYN_STREAM,
            stream_id: 1,
            error: HeaderError::NotLowerCase(_)
        }
    ));
    assert!(matches!(got[1], Decoded::Frame(Frame::Ping { id: 3 })));
}
