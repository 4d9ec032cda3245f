//! An independent check against Go's moby/spdystream (what kubectl, crictl and kubelet use): the Go client in
//! agent/tests/spdy_go/client.go, built in GOPATH mode against Debian's golang-github-docker-spdystream-dev,
//! talks to `serve` over TCP on 127.0.0.1. (agent is a binary crate without a library target, so this test
//! lives here rather than in agent/tests/.)

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

use super::{Ended, Session, SessionOptions, Stream, StreamReader, StreamWriter, serve};

const GOPATH: &str = "/usr/share/gocode";
const SPDYSTREAM: &str = "/usr/share/gocode/src/github.com/docker/spdystream";
const SETUP: &str =
    "run `make setup` (it installs golang-go and golang-github-docker-spdystream-dev)";

/// What the server saw, for the assertions.
#[derive(Default)]
struct Seen {
    headers: Vec<Vec<(String, String)>>,
    big_bytes: usize,
    big_sha256: String,
    resets: usize,
}

async fn build_client(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spdy_go/client.go");
    let bin = dir.join("spdy-client");
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("go is not installed: {SETUP}")
        }
        Err(e) => panic!("running go build: {e}"),
    };
    assert!(
        output.status.success(),
        "go build failed ({SETUP} if spdystream is missing):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    bin
}

async fn handle(stream: Stream, seen: Arc<Mutex<Seen>>) {
    let kind = stream.header("streamtype").unwrap_or_default().to_owned();
    seen.lock().unwrap().headers.push(stream.headers().to_vec());
    let summary = ["streamtype", "x-index"]
        .iter()
        .map(|n| format!("{n}={}", stream.header(n).unwrap_or("")))
        .chain(std::iter::once(format!(
            "x-multi={}",
            stream
                .headers()
                .iter()
                .filter(|(n, _)| n == "x-multi")
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )))
        .collect::<Vec<_>>()
        .join(" ");
    let (r, w): (StreamReader, StreamWriter) = stream.split();
    match kind.as_str() {
        "echo" => echo(r, w, format!("{summary}\n")).await,
        "big" => {
            let (n, sha) = copy_hashing(r, w).await;
            let mut seen = seen.lock().unwrap();
            seen.big_bytes = n;
            seen.big_sha256 = sha;
        }
        "reset" => {
            let mut r = r;
            let mut buf = [0u8; 12];
            r.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"please reset");
            w.reset();
            seen.lock().unwrap().resets += 1;
        }
        other => panic!("unexpected stream type {other:?}"),
    }
}

async fn echo(mut r: StreamReader, mut w: StreamWriter, prefix: String) {
    let mut data = Vec::new();
    r.read_to_end(&mut data).await.unwrap();
    w.write_all(prefix.as_bytes()).await.unwrap();
    w.write_all(&data).await.unwrap();
    w.shutdown().await.unwrap();
}

/// Echoes while reading (the client reads concurrently), hashing what passes.
async fn copy_hashing(mut r: StreamReader, mut w: StreamWriter) -> (usize, String) {
    let mut hash = Sha256::new();
    let mut total = 0;
    while let Some(chunk) = r.recv().await.unwrap() {
        hash.update(&chunk);
        total += chunk.len();
        w.write_all(&chunk).await.unwrap();
    }
    w.shutdown().await.unwrap();
    let sha = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (total, sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spdystream_client_interoperates() {
    assert!(
        Path::new(SPDYSTREAM).is_dir(),
        "{SPDYSTREAM} is missing: {SETUP}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = build_client(dir.path()).await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (session_tx, session_rx) = tokio::sync::oneshot::channel::<Session>();
    let server = tokio::spawn({
        let seen = seen.clone();
        async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (session, mut streams) = serve(tcp, SessionOptions::default());
            let _ = session_tx.send(session);
            let mut handlers = Vec::new();
            while let Some(stream) = streams.recv().await {
                handlers.push(tokio::spawn(handle(stream, seen.clone())));
            }
            for h in handlers {
                h.await.unwrap();
            }
        }
    });

    let mut child = Command::new(&bin)
        .arg(addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut s = String::new();
        stdout.read_to_string(&mut s).await.unwrap();
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        stderr.read_to_string(&mut s).await.unwrap();
        s
    });
    let status = tokio::select! {
        status = child.wait() => status.unwrap(),
        _ = tokio::time::sleep(Duration::from_secs(120)) => {
            child.kill().await.unwrap();
            panic!("the Go client did not finish in 120 s; stderr so far is lost with it");
        }
    };
    let (out, err) = (out.await.unwrap(), err.await.unwrap());
    assert!(
        status.success(),
        "Go client failed ({status}):\n{err}\nstdout:\n{out}"
    );

    // What the Go side saw.
    let lines: Vec<&str> = out.lines().collect();
    for i in 0..5 {
        let want = format!(
            "echo {i} ok {}",
            format!("small-{i};").len() * 100 * (i + 1)
        );
        assert!(lines.contains(&want.as_str()), "no {want:?} in {lines:?}");
    }
    let big = lines
        .iter()
        .find(|l| l.starts_with("big ok "))
        .expect("no big line");
    assert_eq!(
        lines.iter().filter(|l| **l == "ping ok").count(),
        2,
        "{lines:?}"
    );
    assert!(
        lines.contains(&"reset ok") && lines.last() == Some(&"closed"),
        "{lines:?}"
    );

    // What the server saw.
    let session = session_rx.await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), session.ended())
        .await
        .unwrap();
    assert_eq!(ended, Ended::PeerClosed);
    assert_eq!(session.open_streams(), 0);
    server.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.headers.len(), 7);
    assert_eq!(seen.resets, 1);
    assert_eq!(seen.big_bytes, 10 << 20);
    assert_eq!(*big, format!("big ok {} {}", 10 << 20, seen.big_sha256));
    let echo_headers: Vec<_> = seen
        .headers
        .iter()
        .filter(|h| h.iter().any(|(n, v)| n == "streamtype" && v == "echo"))
        .collect();
    assert_eq!(echo_headers.len(), 5);
    for h in echo_headers {
        let multi: Vec<_> = h
            .iter()
            .filter(|(n, _)| n == "x-multi")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(multi, ["a", "b"], "{h:?}");
    }
}
