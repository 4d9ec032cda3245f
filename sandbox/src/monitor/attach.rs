//! Attach sessions inside the monitor's poll loop: each is a non-blocking connection from the agent that gets the
//! container's output as [`Frame`]s and may feed its stdin. Nothing here ever blocks: output waits for a slow
//! client in a bounded backlog (a client that falls [`MAX_BACKLOG`] behind is dropped, the container and its log go
//! on), and stdin waits for a slow container in a small buffer while no session of that container is read (the
//! clients then wait, in their sockets). Nothing is allocated for a container nobody is attached to.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::Frame;
use super::server::log;
use crate::crilog::Stream;

/// The most output that may wait for one client; past it the session is dropped.
pub(super) const MAX_BACKLOG: usize = 4 << 20;
/// How long a session of an exited container may take to read its last frames before it is closed anyway.
const LINGER: Duration = Duration::from_secs(30);
/// How much is read from a client at once (it bounds the stdin a busy container's buffer can hold).
const READ_CHUNK: usize = 16 * 1024;
/// A drained output buffer larger than this is given back.
const KEEP: usize = 256 * 1024;
/// What a pty's line discipline reads as end of file (VEOF, ^D, by default).
const TTY_EOF: u8 = 0x04;

/// The monitor's end of a container's stdin (a pipe, or the pty master), non-blocking. Bytes the container has
/// not taken yet wait in `pending`.
pub(super) struct Input {
    file: File,
    pending: Vec<u8>,
    /// Created `stdin_once`: the first session to end its stdin ends the container's.
    once: bool,
    tty: bool,
    /// Closes for good once `pending` is written.
    closing: bool,
}

impl Input {
    pub(super) fn new(file: File, once: bool, tty: bool) -> std::io::Result<Input> {
        set_nonblocking(file.as_fd())?;
        Ok(Input {
            file,
            pending: Vec::new(),
            once,
            tty,
            closing: false,
        })
    }

    /// Whether bytes wait for the container (then no session is read, and the descriptor is polled for POLLOUT).
    pub(super) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Writes what the container takes; false once this stdin is done with (closed for good, or the container
    /// closed its end).
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match (&self.file).write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                // EPIPE, EIO: nobody reads this stdin any more.
                Err(_) => return false,
            }
        }
        self.pending = Vec::new();
        !self.closing
    }
}

/// Writes what waits on the container's stdin; a finished stdin is dropped (the container sees EOF).
pub(super) fn flush_input(input: &mut Option<Input>) {
    if let Some(i) = input
        && !i.flush()
    {
        *input = None;
    }
}

fn write_input(input: &mut Option<Input>, data: &[u8]) {
    let Some(i) = input.as_mut().filter(|i| !i.closing) else {
        return;
    };
    // Straight through when nothing waits (no copy); whatever the container does not take now waits.
    let mut taken = 0;
    while i.pending.is_empty() && taken < data.len() {
        match (&i.file).write(&data[taken..]) {
            Ok(0) => break,
            Ok(n) => taken += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                *input = None;
                return;
            }
        }
    }
    i.pending.extend_from_slice(&data[taken..]);
    flush_input(input);
}

/// A session's stdin ended: a `stdin_once` container's stdin closes for good (a terminal's after an end-of-file
/// character, since the monitor keeps the pty master for the output); any other stays open for the next session.
fn end_input(input: &mut Option<Input>) {
    if let Some(i) = input
        && i.once
        && !i.closing
    {
        if i.tty {
            i.pending.push(TTY_EOF);
        }
        i.closing = true;
    }
    flush_input(input);
}

pub(super) fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// What a session may touch of its container.
pub(super) struct Io<'a> {
    pub stdin: &'a mut Option<Input>,
    /// The pty master, for resizes (none without a tty).
    pub pty: Option<BorrowedFd<'a>>,
}

struct Session {
    conn: UnixStream,
    container: String,
    /// Whether this session's stdin reaches the container, until the session ends it.
    stdin: bool,
    /// Still reading the client (false after its end of stream, or once the container exited).
    reading: bool,
    /// The start of a frame from the client.
    inbuf: Vec<u8>,
    /// Frames for the client; the first `sent` bytes are written.
    out: Vec<u8>,
    sent: usize,
    /// Set when the exit frame is queued: the session closes once it is written, or at this deadline.
    ended: Option<Instant>,
}

impl Session {
    fn backlog(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Writes what the client takes now.
    fn flush(&mut self) -> std::io::Result<()> {
        while self.sent < self.out.len() {
            match (&self.conn).write(&self.out[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        Ok(())
    }

    fn queue(&mut self, frame: Frame<'_>) {
        if self.sent > 0 && self.sent >= self.out.len() / 2 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        frame.encode(&mut self.out);
    }
}

/// Why a session goes; only the unusual reasons are logged.
enum Close {
    Quietly,
    Logged(String),
}

/// Every attach session of the monitor, by a number of their own.
#[derive(Default)]
pub(super) struct Sessions {
    next: u64,
    map: BTreeMap<u64, Session>,
}

impl Sessions {
    /// Takes over `conn` (whose request was answered `Ok`) as a session of `container`; `leftover` is what the
    /// client sent after its request line. Returns the session's number: [`Sessions::ready`] handles `leftover`.
    pub(super) fn add(
        &mut self,
        conn: UnixStream,
        container: &str,
        stdin: bool,
        leftover: Vec<u8>,
    ) -> std::io::Result<u64> {
        conn.set_nonblocking(true)?;
        conn.set_read_timeout(None)?;
        conn.set_write_timeout(None)?;
        let key = self.next;
        self.next += 1;
        self.map.insert(
            key,
            Session {
                conn,
                container: container.to_string(),
                stdin,
                reading: true,
                inbuf: leftover,
                out: Vec::new(),
                sent: 0,
                ended: None,
            },
        );
        Ok(key)
    }

    pub(super) fn container_of(&self, key: u64) -> Option<&str> {
        self.map.get(&key).map(|s| s.container.as_str())
    }

    /// The descriptors to poll and for what. A session whose container's stdin is busy is not read; with no
    /// output to write either, it is not polled at all (it would only report a hang-up, and that can wait).
    pub(super) fn interest<'a>(
        &'a self,
        busy: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (u64, BorrowedFd<'a>, PollFlags)> + 'a {
        self.map.iter().filter_map(move |(key, s)| {
            let paused = s.reading && busy(&s.container);
            let mut flags = PollFlags::empty();
            if s.reading && !paused {
                flags |= PollFlags::POLLIN;
            }
            if s.backlog() > 0 {
                flags |= PollFlags::POLLOUT;
            }
            // With no flags at all, poll still reports the client hanging up.
            (!(paused && flags.is_empty())).then(|| (*key, s.conn.as_fd(), flags))
        })
    }

    /// Handles what poll reported for session `key`; `io` is its container's (none: the container is gone).
    pub(super) fn ready(&mut self, key: u64, revents: PollFlags, io: Option<Io<'_>>) {
        let Some(io) = io else {
            self.close(key, Close::Quietly, None);
            return;
        };
        let Some(s) = self.map.get_mut(&key) else {
            return;
        };
        if revents.contains(PollFlags::POLLOUT) && s.flush().is_err() {
            self.close(key, Close::Quietly, Some(io.stdin));
            return;
        }
        if s.ended.is_some() && s.backlog() == 0 {
            self.close(key, Close::Quietly, None);
            return;
        }
        let hangup = revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
        let busy = io.stdin.as_ref().is_some_and(Input::busy);
        if s.reading
            && !busy
            && revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        {
            let mut buf = [0u8; READ_CHUNK];
            match (&s.conn).read(&mut buf) {
                Ok(0) => {
                    s.reading = false;
                    if std::mem::take(&mut s.stdin) {
                        end_input(io.stdin);
                    }
                }
                Ok(n) => s.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => {
                    self.close(key, Close::Quietly, Some(io.stdin));
                    return;
                }
            }
        }
        if let Err(why) = handle_frames(s, io.stdin, io.pty) {
            self.close(key, Close::Logged(why), Some(io.stdin));
            return;
        }
        // The client is gone: for good once it has nothing left to read (or it cannot be read now).
        if hangup && (!s.reading || busy) {
            self.close(key, Close::Quietly, Some(io.stdin));
        }
    }

    /// A chunk of `container`'s output, for each of its sessions; one too far behind is dropped.
    pub(super) fn output(
        &mut self,
        container: &str,
        stream: Stream,
        data: &[u8],
        stdin: &mut Option<Input>,
    ) {
        let frame = match stream {
            Stream::Stdout => Frame::Stdout(data),
            Stream::Stderr => Frame::Stderr(data),
        };
        let mut gone = Vec::new();
        for (key, s) in self.map.iter_mut() {
            if s.container != container || s.ended.is_some() {
                continue;
            }
            if s.backlog() + data.len() + super::FRAME_HEADER > MAX_BACKLOG {
                gone.push((
                    *key,
                    Close::Logged(format!(
                        "disconnected: its client fell more than {MAX_BACKLOG} bytes behind"
                    )),
                ));
                continue;
            }
            s.queue(frame);
            if s.flush().is_err() {
                gone.push((*key, Close::Quietly));
            }
        }
        for (key, why) in gone {
            self.close(key, why, Some(stdin));
        }
    }

    /// `container` exited with `code` and its output is drained: each session gets the exit frame, then closes.
    pub(super) fn exited(&mut self, container: &str, code: i32) {
        let mut done = Vec::new();
        for (key, s) in self.map.iter_mut() {
            if s.container != container || s.ended.is_some() {
                continue;
            }
            s.queue(Frame::Exit(code));
            s.ended = Some(Instant::now() + LINGER);
            s.reading = false;
            if s.flush().is_err() || s.backlog() == 0 {
                done.push(*key);
            }
        }
        for key in done {
            self.close(key, Close::Quietly, None);
        }
    }

    /// Closes every session of a container the monitor forgets.
    pub(super) fn forget(&mut self, container: &str) {
        self.map.retain(|_, s| s.container != container);
    }

    /// When the next lingering session must be closed.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.map.values().filter_map(|s| s.ended).min()
    }

    /// Closes the sessions whose client did not read their end in time.
    pub(super) fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, s)| s.ended.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            let why = format!("closed: its client did not read the exit within {LINGER:?}");
            self.close(key, Close::Logged(why), None);
        }
    }

    /// On shutdown: one last non-blocking try to hand each client what waits for it.
    pub(super) fn flush_all(&mut self) {
        for s in self.map.values_mut() {
            let _ = s.flush();
        }
        self.map.clear();
    }

    fn close(&mut self, key: u64, why: Close, stdin: Option<&mut Option<Input>>) {
        let Some(s) = self.map.remove(&key) else {
            return;
        };
        if let Close::Logged(why) = why {
            log(&format!(
                "attach session {key} of container {}: {why}",
                s.container
            ));
        }
        // A session that goes without ending its stdin ends it now.
        if s.stdin
            && let Some(input) = stdin
        {
            end_input(input);
        }
    }
}

/// Acts on the complete frames the client sent; an error (a malformed frame, or one only the monitor sends)
/// ends the session.
fn handle_frames(
    s: &mut Session,
    stdin: &mut Option<Input>,
    pty: Option<BorrowedFd<'_>>,
) -> Result<(), String> {
    let mut at = 0;
    let result = loop {
        let (frame, used) = match Frame::decode(&s.inbuf[at..]) {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("bad frame from the client: {e}")),
        };
        at += used;
        match frame {
            Frame::Stdin(data) if s.stdin => write_input(stdin, data),
            // A session without stdin (or whose stdin ended) writes nowhere.
            Frame::Stdin(_) => {}
            Frame::StdinEof => {
                if std::mem::take(&mut s.stdin) {
                    end_input(stdin);
                }
            }
            Frame::Resize { width, height } => {
                if let Some(pty) = pty
                    && let Err(e) = crate::pty::set_window_size(pty, width, height)
                {
                    log(&format!(
                        "container {}: cannot resize its terminal to {width}x{height}: {e}",
                        s.container
                    ));
                }
            }
            Frame::Stdout(_) | Frame::Stderr(_) | Frame::Exit(_) => {
                break Err(format!(
                    "the client sent a frame of kind {} (only the monitor sends those)",
                    frame.kind()
                ));
            }
        }
    };
    s.inbuf.drain(..at);
    if s.inbuf.is_empty() && s.inbuf.capacity() > READ_CHUNK {
        s.inbuf = Vec::new();
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pipe_input(once: bool, tty: bool) -> (Option<Input>, File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (
            Some(Input::new(File::from(w), once, tty).unwrap()),
            File::from(r),
        )
    }

    fn read_all(mut r: File) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn stdin_once_closes_the_container_stdin_when_the_session_ends_it() {
        let (mut input, r) = pipe_input(true, false);
        write_input(&mut input, b"abc");
        end_input(&mut input);
        assert!(input.is_none());
        assert_eq!(read_all(r), b"abc");
    }

    #[test]
    fn without_stdin_once_the_container_stdin_stays_open() {
        let (mut input, r) = pipe_input(false, false);
        write_input(&mut input, b"one");
        end_input(&mut input);
        write_input(&mut input, b"two");
        assert!(input.is_some());
        drop(input);
        assert_eq!(read_all(r), b"onetwo");
    }

    #[test]
    fn a_terminal_stdin_ends_with_an_eof_character() {
        let (mut input, r) = pipe_input(true, true);
        write_input(&mut input, b"x");
        end_input(&mut input);
        assert!(input.is_none());
        assert_eq!(read_all(r), [b'x', TTY_EOF]);
    }

    #[test]
    fn a_full_stdin_waits_and_is_written_when_the_container_reads() {
        let (mut input, mut r) = pipe_input(true, false);
        let data = vec![b'z'; 256 * 1024];
        write_input(&mut input, &data);
        assert!(
            input.as_ref().unwrap().busy(),
            "a pipe holds less than 256 KiB"
        );
        end_input(&mut input);
        // Still pending: the close waits for the data.
        assert!(input.is_some());
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while input.is_some() {
            let n = r.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            flush_input(&mut input);
        }
        got.extend(read_all(r));
        assert_eq!(got, data);
    }

    #[test]
    fn a_session_gets_output_and_its_stdin_reaches_the_container() {
        let (mut input, r) = pipe_input(true, false);
        let (monitor_end, mut client) = UnixStream::pair().unwrap();
        let mut sessions = Sessions::default();
        let mut hello = Vec::new();
        Frame::Stdin(b"hello").encode(&mut hello);
        let key = sessions.add(monitor_end, "c", true, hello).unwrap();
        fn io(stdin: &mut Option<Input>) -> Io<'_> {
            Io { stdin, pty: None }
        }
        sessions.ready(key, PollFlags::empty(), Some(io(&mut input)));
        sessions.output("c", Stream::Stderr, b"oops", &mut input);
        sessions.output("other", Stream::Stdout, b"not ours", &mut input);
        let mut eof = Vec::new();
        Frame::StdinEof.encode(&mut eof);
        client.write_all(&eof).unwrap();
        sessions.ready(key, PollFlags::POLLIN, Some(io(&mut input)));
        assert!(input.is_none(), "stdin_once: closed");
        assert_eq!(read_all(r), b"hello");
        sessions.exited("c", 3);
        assert_eq!(sessions.map.len(), 0);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        let mut want = Vec::new();
        Frame::Stderr(b"oops").encode(&mut want);
        Frame::Exit(3).encode(&mut want);
        assert_eq!(got, want);
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped_past_the_backlog_limit() {
        let (mut input, _r) = pipe_input(false, false);
        let (monitor_end, client) = UnixStream::pair().unwrap();
        let mut sessions = Sessions::default();
        sessions.add(monitor_end, "c", true, Vec::new()).unwrap();
        let chunk = vec![0u8; 32 * 1024];
        let mut sent = 0;
        while !sessions.map.is_empty() {
            sessions.output("c", Stream::Stdout, &chunk, &mut input);
            sent += chunk.len();
            assert!(sent < MAX_BACKLOG + (16 << 20), "never dropped");
        }
        assert!(sent > MAX_BACKLOG, "dropped after {sent} bytes");
        // The container's stdin was not stdin_once: it stays.
        assert!(input.is_some());
        drop(client);
    }

    #[test]
    fn a_client_sending_monitor_frames_is_dropped() {
        let (monitor_end, _client) = UnixStream::pair().unwrap();
        let mut sessions = Sessions::default();
        let mut bad = Vec::new();
        Frame::Exit(0).encode(&mut bad);
        let key = sessions.add(monitor_end, "c", false, bad).unwrap();
        let mut none = None;
        sessions.ready(
            key,
            PollFlags::empty(),
            Some(Io {
                stdin: &mut none,
                pty: None,
            }),
        );
        assert!(sessions.map.is_empty());
    }
}
