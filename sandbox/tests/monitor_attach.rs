//! Privileged tests of attach: the real `crius-monitor` binary driven over its socket (an attach request, then
//! binary frames both ways), with containers on an overlay of a busybox layer (Debian's busybox-static) as in
//! monitor_real.rs. They need root and fail loudly without it. Each test removes what it made: the monitor is shut
//! down (it kills and reaps its containers) and reaped, the directory removed.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Fixture, Io, NO_STDIN};
use crius_sandbox::monitor::{FRAME_HEADER, Frame, Request, Response, Status};
use serde_json::{Value, json};

/// How long any one read from the monitor may take before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

const STDIN: Io = Io {
    stdin: true,
    stdin_once: false,
    tty: false,
};

fn fixture() -> Fixture {
    Fixture::new(
        "crius-attach-test-",
        &["sh", "echo", "cat", "sleep", "true", "stty", "seq"],
    )
}

/// The attach tests' own calls on the shared monitor fixture.
trait AttachFixture {
    fn create(&self, id: &str, args: &[&str], io: Io);
    fn start(&self, id: &str);
    fn run(&self, id: &str, args: &[&str], io: Io);
    fn wait_logged(&self, id: &str, content: &str);
    fn attach(&self, id: &str, stdin: bool) -> Result<Session, String>;
}

impl AttachFixture for Fixture {
    /// Creates container `id` running `args` (not started).
    fn create(&self, id: &str, args: &[&str], io: Io) {
        let created = self.create_with(id, spec(args), io);
        assert!(
            matches!(created, Response::Created { .. }),
            "create {id}: {created:?}"
        );
    }

    fn start(&self, id: &str) {
        assert_eq!(self.call(&Request::Start { id: id.into() }), Response::Ok);
    }

    /// Creates and starts.
    fn run(&self, id: &str, args: &[&str], io: Io) {
        self.create(id, args, io);
        self.start(id);
    }

    /// Waits until the log holds a record of `content`.
    fn wait_logged(&self, id: &str, content: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log(id).iter().any(|(_, _, c)| c == content) {
            assert!(
                Instant::now() < deadline,
                "{content:?} never logged: {:?}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn attach(&self, id: &str, stdin: bool) -> Result<Session, String> {
        let conn = self.connect();
        conn.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut line = serde_json::to_vec(&Request::Attach {
            id: id.into(),
            stdin,
        })
        .unwrap();
        line.push(b'\n');
        (&conn).write_all(&line).unwrap();
        // The reader keeps whatever follows the answer: the frames.
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        match serde_json::from_str(&answer).unwrap() {
            Response::Ok => Ok(Session {
                conn,
                reader,
                seen: Seen::default(),
            }),
            Response::Error { message } => Err(message),
            other => panic!("attach answered {other:?}"),
        }
    }
}

/// What a session received so far.
#[derive(Default)]
struct Seen {
    stdout: String,
    stderr: String,
    exit: Option<i32>,
    /// The monitor closed the connection.
    closed: bool,
}

/// At most the last 300 bytes of each stream: a failure must stay readable.
impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = |s: &str| {
            let cut = s.len().saturating_sub(300);
            let cut = (cut..=s.len())
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(0);
            format!("{} bytes, ending {:?}", s.len(), &s[cut..])
        };
        f.debug_struct("Seen")
            .field("stdout", &tail(&self.stdout))
            .field("stderr", &tail(&self.stderr))
            .field("exit", &self.exit)
            .field("closed", &self.closed)
            .finish()
    }
}

/// The test's side of an attach connection.
struct Session {
    conn: UnixStream,
    reader: BufReader<UnixStream>,
    seen: Seen,
}

impl Session {
    fn send(&mut self, frame: Frame<'_>) {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        (&self.conn).write_all(&buf).unwrap();
    }

    fn stdin(&mut self, text: &str) {
        self.send(Frame::Stdin(text.as_bytes()));
    }

    /// Reads one frame into `seen`; false at the end of the connection.
    fn read_one(&mut self) -> bool {
        let mut header = [0u8; FRAME_HEADER];
        match self.reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.seen.closed = true;
                return false;
            }
            Err(e) => panic!("reading the session: {e}; seen {:?}", self.seen),
        }
        let (kind, len) = Frame::decode_header(header).unwrap();
        let mut payload = vec![0u8; len];
        self.reader.read_exact(&mut payload).unwrap();
        assert!(
            self.seen.exit.is_none(),
            "a frame after the exit: {kind} {payload:?}"
        );
        match Frame::from_parts(kind, &payload).unwrap() {
            Frame::Stdout(d) => self.seen.stdout.push_str(&String::from_utf8_lossy(d)),
            Frame::Stderr(d) => self.seen.stderr.push_str(&String::from_utf8_lossy(d)),
            Frame::Exit(code) => self.seen.exit = Some(code),
            other => panic!("the monitor sent {other:?}"),
        }
        true
    }

    /// Reads until `done` holds (or the connection ends, which fails the test unless `done` then holds).
    fn until(&mut self, done: impl Fn(&Seen) -> bool) -> &Seen {
        while !done(&self.seen) {
            if !self.read_one() {
                break;
            }
        }
        assert!(done(&self.seen), "not seen before the end: {:?}", self.seen);
        &self.seen
    }

    fn until_stdout(&mut self, text: &str) -> &Seen {
        self.until(|s| s.stdout.contains(text))
    }

    /// Reads to the end of the connection.
    fn read_to_end(&mut self) -> &Seen {
        while self.read_one() {}
        &self.seen
    }
}

/// A minimal container spec (as in monitor_real.rs): new namespaces, the usual mounts.
fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true
        },
        "root": {"path": "/nonexistent"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}
            ]
        }
    })
}

#[test]
fn a_shell_gets_stdin_and_its_stdout_and_stderr_come_back_apart() {
    let f = fixture();
    f.run("sh", &["sh", "-c", "echo before; exec sh"], STDIN);
    f.wait_logged("sh", "before");
    let mut s = f.attach("sh", true).unwrap();
    s.stdin("echo hello\n");
    s.until_stdout("hello\n");
    s.stdin("echo oops >&2\n");
    s.until(|s| s.stderr.contains("oops\n"));
    s.stdin("exit 7\n");
    let seen = s.read_to_end();
    assert_eq!(seen.exit, Some(7), "{seen:?}");
    // Live output only: what was logged before the attach is not replayed; each stream stays itself.
    assert_eq!(seen.stdout, "hello\n", "{seen:?}");
    assert_eq!(seen.stderr, "oops\n", "{seen:?}");
    // The log got everything, as without attach.
    let log = f.log("sh");
    for (stream, text) in [
        ("stdout", "before"),
        ("stdout", "hello"),
        ("stderr", "oops"),
    ] {
        assert!(
            log.iter()
                .any(|(s, t, c)| s == stream && t == "F" && c == text),
            "{stream} {text}: {log:?}"
        );
    }
    assert_eq!(f.wait_exited("sh").exit.unwrap().exit_code, 7);
}

#[test]
fn output_written_before_the_exit_is_all_delivered_before_the_exit_frame() {
    let f = fixture();
    // Attached before the start: the session sees everything, more than a pipe holds.
    f.create("seq", &["sh", "-c", "seq 1 20000; exit 5"], NO_STDIN);
    let mut s = f.attach("seq", false).unwrap();
    f.start("seq");
    let seen = s.read_to_end();
    assert_eq!(seen.exit, Some(5));
    let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(
        seen.stdout == want,
        "{} bytes of {}",
        seen.stdout.len(),
        want.len()
    );
}

#[test]
fn with_stdin_once_the_end_of_the_session_stdin_is_the_container_eof() {
    let f = fixture();
    let once = Io {
        stdin: true,
        stdin_once: true,
        tty: false,
    };
    f.run("cat", &["cat"], once);
    let mut s = f.attach("cat", true).unwrap();
    s.stdin("abc\n");
    s.until_stdout("abc\n");
    s.send(Frame::StdinEof);
    // cat sees EOF and exits 0; the session hears it.
    let seen = s.read_to_end();
    assert_eq!((seen.exit, seen.stdout.as_str()), (Some(0), "abc\n"));
    // A session that just goes away ends the stdin as well.
    f.run("cat2", &["cat"], once);
    let mut s = f.attach("cat2", true).unwrap();
    s.stdin("xyz\n");
    s.until_stdout("xyz\n");
    drop(s);
    assert_eq!(f.wait_exited("cat2").exit.unwrap().exit_code, 0);
    assert!(f.log("cat2").iter().any(|(_, _, c)| c == "xyz"));
}

#[test]
fn without_stdin_once_a_second_session_can_still_write() {
    let f = fixture();
    f.run("cat", &["cat"], STDIN);
    let mut first = f.attach("cat", true).unwrap();
    first.stdin("one\n");
    first.until_stdout("one\n");
    first.send(Frame::StdinEof);
    drop(first);
    let mut second = f.attach("cat", true).unwrap();
    second.stdin("two\n");
    let seen = second.until(|s| s.stdout.contains("two\n") || s.exit.is_some());
    assert_eq!((seen.stdout.as_str(), seen.exit), ("two\n", None));
    assert_eq!(f.state("cat").status, Status::Running);
    assert_eq!(
        f.call(&Request::Signal {
            id: "cat".into(),
            signal: 9
        }),
        Response::Ok
    );
    assert_eq!(second.read_to_end().exit, Some(137));
}

#[test]
fn a_terminal_is_resized_and_its_output_is_one_stream() {
    let f = fixture();
    let tty = Io {
        stdin: true,
        stdin_once: false,
        tty: true,
    };
    // The trap is set before the command is read; the resize comes while the shell sleeps (a trapped signal
    // would cut a `read` short).
    let script = "trap 'echo winched $(stty size) >&2; exit 3' WINCH; \
        read cmd; eval \"$cmd\"; while :; do sleep 0.1; done";
    f.run("tty", &["sh", "-c", script], tty);
    let mut s = f.attach("tty", true).unwrap();
    // The quotes keep the terminal's echo of the line from matching.
    s.stdin("echo rea''dy\n");
    s.until_stdout("ready\r\n");
    s.send(Frame::Resize {
        width: 123,
        height: 45,
    });
    // The kernel told the foreground process group (the shell), which saw the new size; its stderr is the
    // terminal too.
    let seen = s.read_to_end();
    assert!(seen.stdout.ends_with("winched 45 123\r\n"), "{seen:?}");
    assert_eq!(seen.exit, Some(3));
    assert!(
        seen.stderr.is_empty(),
        "a terminal has one stream: {seen:?}"
    );
}

#[test]
fn every_session_gets_all_output_and_any_may_write() {
    let f = fixture();
    let script = "while read l; do echo \"got $l\"; done";
    f.run("multi", &["sh", "-c", script], STDIN);
    let mut a = f.attach("multi", true).unwrap();
    let mut b = f.attach("multi", false).unwrap();
    let mut c = f.attach("multi", true).unwrap();
    a.stdin("from-a\n");
    c.stdin("from-c\n");
    // A session without stdin writes nowhere.
    b.stdin("from-b\n");
    // Two sessions' writes reach the container in either order; each session sees both lines.
    for s in [&mut a, &mut b, &mut c] {
        s.until(|s| s.stdout.contains("got from-a\n") && s.stdout.contains("got from-c\n"));
    }
    // By the time this line is back, the monitor has long read (and dropped) b's.
    a.stdin("last\n");
    for s in [&mut a, &mut b, &mut c] {
        s.until_stdout("got last\n");
    }
    assert_eq!(
        f.call(&Request::Signal {
            id: "multi".into(),
            signal: 9
        }),
        Response::Ok
    );
    for s in [&mut a, &mut b, &mut c] {
        let seen = s.read_to_end();
        assert_eq!(seen.exit, Some(137));
        assert!(!seen.stdout.contains("from-b"), "{seen:?}");
    }
}

#[test]
fn a_client_that_never_reads_is_dropped_and_the_log_gets_everything() {
    const LINES: usize = 1_000_000;
    let f = fixture();
    // About 6.9 MB, well past the monitor's 4 MiB backlog and the socket's own buffer.
    f.create("flood", &["sh", "-c", &format!("seq 1 {LINES}")], NO_STDIN);
    // This one never reads until the end; the other reads as it goes.
    let mut stuck = f.attach("flood", false).unwrap();
    let mut reader = f.attach("flood", false).unwrap();
    f.start("flood");
    let want: String = (1..=LINES).map(|i| format!("{i}\n")).collect();
    let seen = reader.read_to_end();
    assert_eq!(seen.exit, Some(0));
    assert!(seen.stdout == want, "{seen:?}");
    assert_eq!(f.wait_exited("flood").exit.unwrap().exit_code, 0);
    let log = f.log("flood");
    assert_eq!(log.len(), LINES);
    assert!(
        log.iter()
            .zip(1..)
            .all(|((s, t, c), i)| s == "stdout" && t == "F" && *c == i.to_string())
    );
    // The slow client got the start of the output and no exit: it was disconnected.
    let seen = stuck.read_to_end();
    assert!(seen.closed && seen.exit.is_none(), "{seen:?}");
    assert!(
        seen.stdout.len() < want.len() && want.starts_with(&seen.stdout),
        "{seen:?}"
    );
    assert!(
        f.monitor_log().contains("fell more than"),
        "{}",
        f.monitor_log()
    );
}

#[test]
fn attaching_to_an_unknown_or_exited_container_or_to_absent_stdin_is_an_error() {
    let f = fixture();
    let err = f.attach("nope", false).err().unwrap();
    assert!(err.contains("no container nope"), "{err}");
    f.run("done", &["true"], NO_STDIN);
    f.wait_exited("done");
    let err = f.attach("done", false).err().unwrap();
    assert!(err.contains("exited"), "{err}");
    f.run("quiet", &["sleep", "100"], NO_STDIN);
    let err = f.attach("quiet", true).err().unwrap();
    assert!(err.contains("without stdin"), "{err}");
    // Without stdin it may attach.
    let mut s = f.attach("quiet", false).unwrap();
    assert_eq!(
        f.call(&Request::Signal {
            id: "quiet".into(),
            signal: 9
        }),
        Response::Ok
    );
    assert_eq!(s.read_to_end().exit, Some(137));
}
