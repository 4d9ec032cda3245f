//! The writer task: drains the session's bounded frame queue onto the connection, in order, and flushes
//! whenever the queue runs empty. It owns the sending header-compression context, so header blocks are
//! compressed in exactly the order they go on the wire.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Encoder, Frame};
use super::shared::{Out, SessionShared};

const WRITE_BUFFER: usize = 64 * 1024;

/// Writes until `Out::Close`, an error, or `kill`. On `Close` everything queued before it is written, the
/// connection flushed and its write side shut down.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    wr: W,
    mut queue: mpsc::Receiver<Out>,
    shared: Arc<SessionShared>,
    kill: CancellationToken,
) -> io::Result<()> {
    let mut encoder = Encoder::new().map_err(io::Error::other)?;
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    let work = async {
        let mut control = BytesMut::with_capacity(256);
        loop {
            let out = match queue.try_recv() {
                Ok(out) => out,
                Err(TryRecvError::Empty) => {
                    wr.flush().await?;
                    match queue.recv().await {
                        Some(out) => out,
                        None => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match out {
                Out::Close => break,
                Out::Frame(Frame::Data {
                    stream_id,
                    fin,
                    data,
                }) => {
                    let head =
                        frame::data_head(stream_id, fin, data.len()).map_err(io::Error::other)?;
                    wr.write_all(&head).await?;
                    wr.write_all(&data).await?;
                }
                Out::Frame(frame) => {
                    control.clear();
                    encoder
                        .encode(&frame, &mut control)
                        .map_err(io::Error::other)?;
                    wr.write_all(&control).await?;
                }
            }
            shared.touch();
        }
        wr.flush().await?;
        wr.shutdown().await
    };
    tokio::select! {
        result = work => result,
        _ = kill.cancelled() => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "spdy: closing the connection took too long",
        )),
    }
}
