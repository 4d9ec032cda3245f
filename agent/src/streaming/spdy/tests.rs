//! In-memory session tests: a minimal client built from the frame codec talks to `serve` over a duplex pipe.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::decode::Decoded;
use super::frame::{Frame, GoAwayStatus, RstStatus};
use super::test_client::{Client, WAIT, start};
use super::*;

/// Echoes every stream: reads to EOF, writes back `<streamtype>:` and the data, then FIN.
fn echo(
    mut streams: mpsc::Receiver<Stream>,
) -> tokio::task::JoinHandle<Vec<Vec<(String, String)>>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(stream) = streams.recv().await {
            seen.push(stream.headers().to_vec());
            let kind = stream.header("StreamType").unwrap_or("none").to_owned();
            let (mut r, mut w) = stream.split();
            tokio::spawn(async move {
                let mut data = Vec::new();
                r.read_to_end(&mut data).await.unwrap();
                w.write_all(format!("{kind}:").as_bytes()).await.unwrap();
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
        seen
    })
}

async fn wait_for_empty(session: &Session) {
    timeout(WAIT, async {
        while session.open_streams() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("streams left in the table");
}

#[tokio::test]
async fn streams_exchange_data_both_ways() {
    let (mut c, session, streams) = start(SessionOptions::default());
    let server = echo(streams);
    let a = c
        .open(
            &[("streamtype", "stdout"), ("x-multi", "1"), ("x-multi", "2")],
            false,
        )
        .await;
    let b = c.open(&[("streamtype", "stderr")], false).await;
    let e = c.open(&[("streamtype", "error")], false).await;
    for id in [a, b, e] {
        c.expect_reply(id).await;
    }
    c.data(a, b"hello ", false).await;
    c.data(b, b"to b", true).await;
    c.data(a, b"world", true).await;
    c.data(e, b"", true).await;
    let got = c.collect(&[a, b, e]).await;
    assert_eq!(got[&a], b"stdout:hello world");
    assert_eq!(got[&b], b"stderr:to b");
    assert_eq!(got[&e], b"error:");
    wait_for_empty(&session).await;

    c.ping(1).await;
    drop(c);
    assert_eq!(session.ended().await, Ended::PeerClosed);
    let seen = server.await.unwrap();
    let multi: Vec<_> = seen[0]
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["1", "2"]);
}

#[tokio::test]
async fn ping_is_answered_with_the_same_id() {
    let (mut c, _session, _streams) = start(SessionOptions::default());
    c.ping(1).await;
    c.ping(0x7fff_ffff).await;
    // An even id is the server's own kind: not answered, so the next answer is for 5.
    c.send(Frame::Ping { id: 4 }).await;
    c.ping(5).await;
}

#[tokio::test]
async fn peer_reset_ends_both_halves() {
    let (mut c, session, mut streams) = start(SessionOptions::default());
    let id = c.open(&[("streamtype", "stdin")], false).await;
    let (mut r, mut w) = streams.recv().await.unwrap().split();
    assert_eq!((r.id(), w.id()), (id, id));
    c.data(id, b"abc", false).await;
    c.send(Frame::RstStream {
        stream_id: id,
        status: RstStatus::Cancel,
    })
    .await;
    let mut buf = [0u8; 3];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"abc");
    let err = r.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        w.write(b"x").await.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    wait_for_empty(&session).await;
}

#[tokio::test]
async fn server_reset_reaches_the_client() {
    let (mut c, session, mut streams) = start(SessionOptions::default());
    let id = c.open(&[], false).await;
    let (mut r, w) = streams.recv().await.unwrap().split();
    assert!(matches!(c.control().await, Frame::SynReply { .. }));
    w.reset();
    assert_eq!(
        c.control().await,
        Frame::RstStream {
            stream_id: id,
            status: RstStatus::Cancel
        }
    );
    assert_eq!(
        r.recv().await.unwrap_err().kind(),
        io::ErrorKind::ConnectionAborted
    );
    assert_eq!(session.open_streams(), 0);
}

#[tokio::test]
async fn dropped_writer_sends_fin_and_fin_on_syn_stream_is_eof() {
    let (mut c, session, mut streams) = start(SessionOptions::default());
    let id = c.open(&[("streamtype", "error")], true).await;
    let (mut r, w) = streams.recv().await.unwrap().split();
    assert_eq!(r.recv().await.unwrap(), None);
    drop(w);
    let got = c.collect(&[id]).await;
    assert_eq!(got.get(&id).map(Vec::len).unwrap_or(0), 0);
    wait_for_empty(&session).await;
}

#[tokio::test]
async fn frames_for_unknown_streams_get_rst_and_the_session_lives_on() {
    let (mut c, session, streams) = start(SessionOptions::default());
    let _server = echo(streams);
    c.data(99, b"nobody", false).await;
    assert_eq!(
        c.control().await,
        Frame::RstStream {
            stream_id: 99,
            status: RstStatus::InvalidStream
        }
    );
    c.send(Frame::Headers {
        stream_id: 41,
        fin: false,
        headers: vec![],
    })
    .await;
    c.expect_rst(41, RstStatus::InvalidStream).await;
    // Even ids are not the client's; a lower id than one already seen is refused too.
    c.next_id = 4;
    let even = c.open(&[], false).await;
    c.expect_rst(even, RstStatus::ProtocolError).await;
    c.next_id = 9;
    let nine = c.open(&[], false).await;
    c.expect_reply(nine).await;
    c.next_id = 7;
    let seven = c.open(&[], false).await;
    c.expect_rst(seven, RstStatus::ProtocolError).await;
    c.ping(3).await;
    assert_eq!(session.open_streams(), 1);
}

#[tokio::test]
async fn new_streams_are_refused_after_goaway_and_beyond_the_limit() {
    let opts = SessionOptions {
        max_concurrent_streams: 2,
        ..Default::default()
    };
    let (mut c, _session, _streams) = start(opts);
    let a = c.open(&[], false).await;
    let b = c.open(&[], false).await;
    let over = c.open(&[], false).await;
    c.expect_reply(a).await;
    c.expect_reply(b).await;
    c.expect_rst(over, RstStatus::RefusedStream).await;
    c.data(a, b"", true).await;
    c.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: GoAwayStatus::Ok,
    })
    .await;
    let late = c.open(&[], false).await;
    c.expect_rst(late, RstStatus::RefusedStream).await;
}

#[tokio::test]
async fn malformed_frames_get_goaway_protocol_error() {
    // A PING five bytes long.
    let (mut c, session, _streams) = start(SessionOptions::default());
    c.wr.write_all(&[0x80, 3, 0, 6, 0, 0, 0, 5, 0, 0, 0, 1, 0])
        .await
        .unwrap();
    assert!(matches!(
        c.control().await,
        Frame::GoAway {
            status: GoAwayStatus::ProtocolError,
            ..
        }
    ));
    assert!(c.next().await.is_none());
    assert_eq!(session.ended().await, Ended::ProtocolError);

    // A SYN_STREAM whose header block is not zlib.
    let (mut c, session, _streams) = start(SessionOptions::default());
    c.wr.write_all(&[
        0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9,
    ])
    .await
    .unwrap();
    assert!(matches!(
        c.control().await,
        Frame::GoAway {
            status: GoAwayStatus::ProtocolError,
            ..
        }
    ));
    assert_eq!(session.ended().await, Ended::ProtocolError);

    // A control frame claiming 16 MiB.
    let (mut c, session, _streams) = start(SessionOptions::default());
    c.wr.write_all(&[0x80, 3, 0, 8, 0, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(matches!(
        c.control().await,
        Frame::GoAway {
            status: GoAwayStatus::ProtocolError,
            ..
        }
    ));
    assert_eq!(session.ended().await, Ended::ProtocolError);
}

#[tokio::test]
async fn a_thousand_streams_leave_an_empty_table() {
    let (mut c, session, streams) = start(SessionOptions::default());
    let server = echo(streams);
    for batch in 0..20 {
        let mut ids = Vec::new();
        for i in 0..50 {
            let id = c.open(&[("streamtype", "data")], false).await;
            c.data(id, format!("{batch}/{i}").as_bytes(), true).await;
            ids.push(id);
        }
        let got = c.collect(&ids).await;
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(got[id], format!("data:{batch}/{i}").as_bytes());
        }
    }
    wait_for_empty(&session).await;
    c.ping(1).await;
    drop(c);
    assert_eq!(session.ended().await, Ended::PeerClosed);
    assert_eq!(server.await.unwrap().len(), 1000);
}

#[tokio::test]
async fn ten_mib_arrive_intact_and_in_order() {
    const TOTAL: usize = 10 << 20;
    let (c, session, streams) = start(SessionOptions::default());
    let _server = echo(streams);
    let Client {
        mut inb,
        mut wr,
        mut enc,
        ..
    } = c;
    let payload: Vec<u8> = (0..TOTAL as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = Sha256::digest([b"big:".as_slice(), &payload].concat());
    let sender = tokio::spawn(async move {
        let mut out = BytesMut::new();
        let open = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: vec![("streamtype".into(), "big".into())],
        };
        enc.encode(&open, &mut out).unwrap();
        // Frames of varied sizes, one of them 1 MiB (spdystream sends a whole Write as one frame).
        let mut at = 0;
        for size in [1, 100, 16 * 1024, 1 << 20].iter().cycle() {
            if at == TOTAL {
                break;
            }
            let n = (*size).min(TOTAL - at);
            let data = Bytes::copy_from_slice(&payload[at..at + n]);
            at += n;
            enc.encode(
                &Frame::Data {
                    stream_id: 1,
                    fin: at == TOTAL,
                    data,
                },
                &mut out,
            )
            .unwrap();
            wr.write_all(&out).await.unwrap();
            out.clear();
        }
        wr
    });
    let mut hash = Sha256::new();
    let (mut received, mut window_updates) = (0, 0);
    loop {
        match inb.next().await.unwrap() {
            Decoded::Data { data, fin, .. } => {
                hash.update(&data);
                received += data.len();
                if fin {
                    break;
                }
            }
            Decoded::Frame(Frame::WindowUpdate { .. }) => window_updates += 1,
            Decoded::Frame(Frame::SynReply { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(received, TOTAL + 4);
    assert_eq!(hash.finalize(), expected);
    assert!(
        window_updates > 100,
        "only {window_updates} WINDOW_UPDATEs for 10 MiB"
    );
    sender.await.unwrap();
    wait_for_empty(&session).await;
}

#[tokio::test]
async fn a_slow_client_holds_the_writer_back() {
    let opts = SessionOptions {
        write_queue: 4,
        ..Default::default()
    };
    let (mut c, _session, mut streams) = start(opts);
    let id = c.open(&[], false).await;
    let (_r, mut w) = streams.recv().await.unwrap().split();
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 32 * 1024];
        for i in 1..=320 {
            w.write_all(&chunk).await.unwrap();
            progress_tx.send_replace(i * chunk.len());
        }
        w.shutdown().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queue (4 x 32 KiB) + the write buffer (64 KiB) + the pipe (256 KiB) + one frame in hand, no more.
    let queued = *progress.borrow_and_update();
    assert!(
        queued <= 640 * 1024,
        "{queued} bytes accepted while the client reads nothing"
    );
    assert!(!writer.is_finished());
    let got = c.collect(&[id]).await;
    assert_eq!(got[&id].len(), 320 * 32 * 1024);
    writer.await.unwrap();
}

#[tokio::test]
async fn a_stream_nobody_reads_holds_the_client_back() {
    let opts = SessionOptions {
        window_updates: false,
        ..Default::default()
    };
    let (c, _session, mut streams) = start(opts);
    let Client {
        inb,
        mut wr,
        mut enc,
        ..
    } = c;
    let mut out = BytesMut::new();
    let open = Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers: vec![],
    };
    enc.encode(&open, &mut out).unwrap();
    let (progress_tx, progress) = tokio::sync::watch::channel(0usize);
    let sender = tokio::spawn(async move {
        wr.write_all(&out).await.unwrap();
        for i in 1..=64 {
            out.clear();
            let data = Bytes::from(vec![1u8; 32 * 1024]);
            enc.encode(
                &Frame::Data {
                    stream_id: 1,
                    fin: i == 64,
                    data,
                },
                &mut out,
            )
            .unwrap();
            wr.write_all(&out).await.unwrap();
            progress_tx.send_replace(i * 32 * 1024);
        }
        (inb, wr)
    });
    let (mut r, _w) = streams.recv().await.unwrap().split();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The stream's window (64 KiB) + the session's read buffer + the pipe (256 KiB).
    let sent = *progress.borrow();
    assert!(
        sent <= 512 * 1024,
        "{sent} bytes taken for a stream nobody reads"
    );
    let mut all = Vec::new();
    r.read_to_end(&mut all).await.unwrap();
    assert_eq!(all.len(), 64 * 32 * 1024);
    sender.await.unwrap();
}

#[tokio::test]
async fn shutdown_writes_queued_data_then_goaway() {
    let (mut c, session, mut streams) = start(SessionOptions::default());
    let id = c.open(&[], false).await;
    let (_r, mut w) = streams.recv().await.unwrap().split();
    w.write_all(b"last words").await.unwrap();
    session.shutdown();
    assert!(matches!(c.control().await, Frame::SynReply { .. }));
    match c.next().await {
        Some(Decoded::Data {
            stream_id, data, ..
        }) if stream_id == id => assert_eq!(&data[..], b"last words"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.control().await,
        Frame::GoAway {
            last_good_stream_id: id,
            status: GoAwayStatus::Ok
        }
    );
    assert!(c.next().await.is_none());
    session.closed().await;
    assert_eq!(session.ended().await, Ended::Shutdown);
    assert!(streams.recv().await.is_none());
    assert_eq!(
        w.write(b"more").await.unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[tokio::test]
async fn idle_sessions_time_out() {
    let opts = SessionOptions {
        idle_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (mut c, session, _streams) = start(opts);
    c.ping(1).await;
    assert!(matches!(
        c.control().await,
        Frame::GoAway {
            status: GoAwayStatus::Ok,
            ..
        }
    ));
    assert_eq!(session.ended().await, Ended::IdleTimeout);
}

#[tokio::test]
async fn dropping_every_handle_ends_the_session() {
    let (mut c, session, mut streams) = start(SessionOptions::default());
    c.open(&[], false).await;
    let stream = streams.recv().await.unwrap();
    assert!(matches!(c.control().await, Frame::SynReply { .. }));
    drop(session);
    drop(streams);
    c.ping(1).await; // the stream keeps it alive
    drop(stream);
    loop {
        match c.next().await {
            Some(Decoded::Frame(Frame::GoAway {
                status: GoAwayStatus::Ok,
                ..
            })) => break,
            Some(_) => {}
            None => panic!("closed without GOAWAY"),
        }
    }
    assert!(c.next().await.is_none());
}
