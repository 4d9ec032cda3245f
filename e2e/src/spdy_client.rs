//! An independent SPDY/3.1 client of crius' streaming server: `e2e/independent/spdy/client.go`, built on Go's
//! docker/spdystream (the library under kubelet's, kubectl's and crictl's SPDY streams) and Go's standard
//! library only. Our server and a Rust client of ours could share a misunderstanding of the protocol; this
//! client cannot. It is built once per test process (`go build` in GOPATH mode against Debian's
//! golang-github-docker-spdystream-dev) into `<target>/debug/e2e-go/`; a missing Go toolchain fails the test
//! with what to install.
//!
//! ```no_run
//! use crius_e2e::spdy_client::{PortForward, RemoteCommand};
//! # fn example(exec_url: &str, pf_url: &str) {
//! let out = RemoteCommand::exec(exec_url).stdin(b"hi\n").run().unwrap();
//! assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"hi\n"[..], Some(0)));
//! let fwd = PortForward::new(pf_url, &[8080]).send(b"GET / HTTP/1.0\r\n\r\n").run().unwrap();
//! assert!(fwd.pairs[0].data.starts_with(b"HTTP/1.0 200"));
//! # }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tempfile::NamedTempFile;

use crate::procfs;

/// Where Debian's golang-github-docker-spdystream-dev puts the library (the GOPATH the client builds in).
pub const GOPATH: &str = "/usr/share/gocode";
/// The library's source, checked before building to say what is missing.
const SPDYSTREAM_SRC: &str = "/usr/share/gocode/src/github.com/moby/spdystream/connection.go";
/// How long `go build` may take (a cold build compiles the standard library's net/http).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// The client's own limit on a session when the test sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The built client. Builds it on first use; panics with the reason (and what to install) when it cannot.
pub fn binary() -> &'static Path {
    match BINARY.get_or_init(|| build().map_err(|e| format!("{e:#}"))) {
        Ok(path) => path,
        Err(e) => panic!("cannot build the Go SPDY client: {e}"),
    }
}

fn build() -> anyhow::Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("independent/spdy/client.go");
    match Command::new("go").arg("version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!(
            "`go version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => bail!(
            "go is missing ({e}): run `make setup` (Debian packages golang-go and \
             golang-github-docker-spdystream-dev)"
        ),
    }
    if !Path::new(SPDYSTREAM_SRC).is_file() {
        bail!(
            "{SPDYSTREAM_SRC} is missing: run `make setup` (Debian package \
             golang-github-docker-spdystream-dev)"
        );
    }
    // Next to the test binary (`<target>/debug/deps/..`): a stable place, so the Go build cache survives runs.
    let exe = std::env::current_exe().context("cannot find the test binary")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary has no parent directory")?
        .join("e2e-go");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Built under a private name, then renamed: test processes running at once each get a whole binary.
    let tmp = dir.join(format!("spdy-client.{}.tmp", std::process::id()));
    let out = procfs::output_with_timeout(
        Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&tmp)
            .arg(&source)
            .env("GO111MODULE", "off")
            .env("GOPATH", GOPATH)
            .env("GOCACHE", dir.join("cache"))
            .env("CGO_ENABLED", "0")
            .env_remove("GOFLAGS"),
        BUILD_TIMEOUT,
    )?;
    if !out.status.success() {
        bail!(
            "go build {} failed ({}):\n{}",
            source.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = dir.join("spdy-client");
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

/// An exec or attach session to run with the client (remotecommand over SPDY).
#[derive(Debug, Clone)]
pub struct RemoteCommand {
    mode: &'static str,
    url: String,
    method: &'static str,
    protocols: Option<Vec<String>>,
    stdin: Option<Vec<u8>>,
    stdin_hold: bool,
    tty: bool,
    resize: Option<(u16, u16)>,
    no_stdout: bool,
    no_stderr: bool,
    expect: Option<String>,
    timeout: Duration,
}

impl RemoteCommand {
    /// A session on the URL an Exec returned.
    pub fn exec(url: &str) -> RemoteCommand {
        RemoteCommand::new("exec", url)
    }

    /// A session on the URL an Attach returned.
    pub fn attach(url: &str) -> RemoteCommand {
        RemoteCommand::new("attach", url)
    }

    fn new(mode: &'static str, url: &str) -> RemoteCommand {
        RemoteCommand {
            mode,
            url: url.into(),
            method: "POST",
            protocols: None,
            stdin: None,
            stdin_hold: false,
            tty: false,
            resize: None,
            no_stdout: false,
            no_stderr: false,
            expect: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The upgrade request's method: POST (as kubectl and crictl send it, the default) or GET.
    pub fn method(mut self, method: &'static str) -> RemoteCommand {
        self.method = method;
        self
    }

    /// The `X-Stream-Protocol-Version`s offered, in order (default: v4, v3, v2, v1 as kubelet's client).
    pub fn protocols(mut self, protocols: &[&str]) -> RemoteCommand {
        self.protocols = Some(protocols.iter().map(|p| p.to_string()).collect());
        self
    }

    /// Opens a stdin stream, sends these bytes, then half-closes it (unless [`RemoteCommand::stdin_hold`]).
    pub fn stdin(mut self, bytes: &[u8]) -> RemoteCommand {
        self.stdin = Some(bytes.to_vec());
        self
    }

    /// Keeps stdin open after the bytes are sent, as an interactive user who has not typed ^D.
    pub fn stdin_hold(mut self) -> RemoteCommand {
        self.stdin_hold = true;
        self
    }

    /// A terminal session: no stderr stream, a resize stream (v3 and later).
    pub fn tty(mut self) -> RemoteCommand {
        self.tty = true;
        self
    }

    /// Sends this terminal size on the resize stream once the streams are open (implies nothing without tty).
    pub fn resize(mut self, width: u16, height: u16) -> RemoteCommand {
        self.resize = Some((width, height));
        self
    }

    pub fn no_stdout(mut self) -> RemoteCommand {
        self.no_stdout = true;
        self
    }

    pub fn no_stderr(mut self) -> RemoteCommand {
        self.no_stderr = true;
        self
    }

    /// Ends the session from the client's side once stdout contains `text` (for sessions the server does
    /// not end, such as an attach).
    pub fn expect(mut self, text: &str) -> RemoteCommand {
        self.expect = Some(text.into());
        self
    }

    /// The client's own limit on the session (it then reports what came so far, with `error` set).
    pub fn timeout(mut self, timeout: Duration) -> RemoteCommand {
        self.timeout = timeout;
        self
    }

    /// The client's command line, and the temp file holding stdin (to keep while it runs).
    fn command(&self) -> anyhow::Result<(Command, Option<NamedTempFile>)> {
        let mut cmd = Command::new(binary());
        cmd.arg(self.mode).arg("--url").arg(&self.url);
        cmd.arg("--method").arg(self.method);
        cmd.arg("--timeout")
            .arg(format!("{}ms", self.timeout.as_millis()));
        if let Some(p) = &self.protocols {
            cmd.arg("--protocol").arg(p.join(","));
        }
        let file = match &self.stdin {
            Some(bytes) => {
                let file = temp_file(bytes)?;
                cmd.arg("--stdin").arg(file.path());
                Some(file)
            }
            None => None,
        };
        let flags = [
            (self.stdin_hold, "--stdin-hold"),
            (self.tty, "--tty"),
            (self.no_stdout, "--no-stdout"),
            (self.no_stderr, "--no-stderr"),
        ];
        for (on, flag) in flags {
            if on {
                cmd.arg(flag);
            }
        }
        if let Some((w, h)) = self.resize {
            cmd.arg("--resize").arg(format!("{w}x{h}"));
        }
        if let Some(text) = &self.expect {
            cmd.arg("--expect").arg(text);
        }
        Ok((cmd, file))
    }

    /// Runs the session to its end (blocking) and returns what the client saw.
    pub fn run(&self) -> anyhow::Result<Session> {
        let (mut cmd, _stdin) = self.command()?;
        Session::parse(&run_client(&mut cmd, self.timeout)?)
    }

    /// Starts the client and returns it running (its output discarded), e.g. to kill it mid-session. The
    /// stdin temp file, if any, is returned too: keep it until the client is gone.
    pub fn spawn(&self) -> anyhow::Result<(Child, Option<NamedTempFile>)> {
        let (mut cmd, file) = self.command()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the Go SPDY client")?;
        Ok((child, file))
    }
}

/// A port-forward session: one (error, data) stream pair per port per connection, all at once.
#[derive(Debug, Clone)]
pub struct PortForward {
    url: String,
    ports: Vec<u16>,
    connections: usize,
    send: Vec<u8>,
    timeout: Duration,
}

impl PortForward {
    pub fn new(url: &str, ports: &[u16]) -> PortForward {
        PortForward {
            url: url.into(),
            ports: ports.to_vec(),
            connections: 1,
            send: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Opens `n` pairs for each port (default 1).
    pub fn connections(mut self, n: usize) -> PortForward {
        self.connections = n;
        self
    }

    /// The bytes sent on every data stream before it is half-closed.
    pub fn send(mut self, bytes: &[u8]) -> PortForward {
        self.send = bytes.to_vec();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> PortForward {
        self.timeout = timeout;
        self
    }

    /// Runs the session to its end (blocking).
    pub fn run(&self) -> anyhow::Result<Forwarded> {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let send = temp_file(&self.send)?;
        let mut cmd = Command::new(binary());
        cmd.arg("portforward")
            .arg("--url")
            .arg(&self.url)
            .arg("--ports")
            .arg(ports.join(","))
            .arg("--connections")
            .arg(self.connections.to_string())
            .arg("--send")
            .arg(send.path())
            .arg("--timeout")
            .arg(format!("{}ms", self.timeout.as_millis()));
        Forwarded::parse(&run_client(&mut cmd, self.timeout)?)
    }
}

/// What the client saw of an exec or attach session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The `X-Stream-Protocol-Version` of the server's answer (empty when it named none).
    pub protocol: String,
    pub http_status: u16,
    /// The body of a non-101 answer.
    pub http_body: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream as received.
    pub error_stream: String,
    /// From the v4 Status (Success: 0; NonZeroExitCode: its ExitCode cause); v1-v3: 0 on an empty error
    /// stream; otherwise none.
    pub exit_code: Option<i32>,
    /// The error stream parsed as JSON (v4 and later), when it was.
    pub status: Option<Value>,
    /// Whether the server ended the connection within 5 s of the error stream's end.
    pub server_closed: bool,
    /// A failure of the client (a stream refused, a timeout, a malformed 101).
    pub error: Option<String>,
}

impl Session {
    fn parse(v: &Value) -> anyhow::Result<Session> {
        Ok(Session {
            protocol: str_field(v, "protocol"),
            http_status: http_status(v)?,
            http_body: str_field(v, "http_body"),
            stdout: bytes_field(v, "stdout_b64")?,
            stderr: bytes_field(v, "stderr_b64")?,
            error_stream: str_field(v, "error_stream"),
            exit_code: v["exit_code"].as_i64().and_then(|n| i32::try_from(n).ok()),
            status: Some(v["status"].clone()).filter(|s| !s.is_null()),
            server_closed: v["server_closed"].as_bool().unwrap_or(false),
            error: v["error"].as_str().map(String::from),
        })
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// A short description for assertion messages (outputs cut to their first 300 bytes).
    pub fn summary(&self) -> String {
        format!(
            "http {} protocol {:?} body {:?} exit {:?} status {} error_stream {:?} server_closed {} \
             error {:?}\n  stdout ({} bytes) {:?}\n  stderr ({} bytes) {:?}",
            self.http_status,
            self.protocol,
            self.http_body,
            self.exit_code,
            self.status
                .as_ref()
                .map_or_else(|| "none".into(), Value::to_string),
            self.error_stream,
            self.server_closed,
            self.error,
            self.stdout.len(),
            cut(&self.stdout),
            self.stderr.len(),
            cut(&self.stderr),
        )
    }
}

/// What the client saw of a port-forward session.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    pub protocol: String,
    pub http_status: u16,
    pub http_body: String,
    /// In the order opened: `connections` rounds of the ports.
    pub pairs: Vec<Pair>,
    pub error: Option<String>,
}

/// One (error, data) stream pair of a port-forward session.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub port: u16,
    pub request_id: u32,
    /// Everything read from the data stream up to its end.
    pub data: Vec<u8>,
    /// Everything read from the error stream up to its end.
    pub error_stream: String,
    /// A failure of the client on this pair (a stream refused, `unfinished` at a timeout).
    pub error: Option<String>,
}

impl Forwarded {
    fn parse(v: &Value) -> anyhow::Result<Forwarded> {
        let mut pairs = Vec::new();
        for p in v["pairs"].as_array().map(Vec::as_slice).unwrap_or_default() {
            pairs.push(Pair {
                port: p["port"]
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .context("pair without a port")?,
                request_id: p["request_id"]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .context("pair without a request_id")?,
                data: bytes_field(p, "data_b64")?,
                error_stream: str_field(p, "error_stream"),
                error: p["error"].as_str().map(String::from),
            });
        }
        Ok(Forwarded {
            protocol: str_field(v, "protocol"),
            http_status: http_status(v)?,
            http_body: str_field(v, "http_body"),
            pairs,
            error: v["error"].as_str().map(String::from),
        })
    }

    /// A short description for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "http {} protocol {:?} body {:?} error {:?}",
            self.http_status, self.protocol, self.http_body, self.error
        );
        for p in &self.pairs {
            s.push_str(&format!(
                "\n  pair {} port {}: error_stream {:?} error {:?} data ({} bytes) {:?}",
                p.request_id,
                p.port,
                p.error_stream,
                p.error,
                p.data.len(),
                cut(&p.data)
            ));
        }
        s
    }
}

/// Runs the client, allowing it its own timeout plus a margin, and parses the JSON line it prints.
fn run_client(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Value> {
    let out = procfs::output_with_timeout(cmd, timeout + Duration::from_secs(15))?;
    if !out.status.success() {
        bail!(
            "the Go SPDY client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the Go SPDY client printed no JSON: {:?} (stderr {:?})",
            cut(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn temp_file(bytes: &[u8]) -> anyhow::Result<NamedTempFile> {
    let mut file = NamedTempFile::new().context("cannot create a temp file for the client")?;
    file.write_all(bytes)?;
    file.flush()?;
    Ok(file)
}

fn http_status(v: &Value) -> anyhow::Result<u16> {
    v["http_status"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .with_context(|| format!("no http_status in the client's output: {v}"))
}

fn str_field(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// A `[]byte` field: base64 (standard alphabet, padded) as Go's encoding/json writes it, or null for none.
fn bytes_field(v: &Value, key: &str) -> anyhow::Result<Vec<u8>> {
    match &v[key] {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => STANDARD
            .decode(s)
            .with_context(|| format!("{key} is not base64")),
        other => bail!("{key} is not a string: {other}"),
    }
}

/// The first 300 bytes, lossily as text.
fn cut(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn session_json() {
        // Go's encoding/json writes []byte as padded standard base64, and nil as null.
        let v = serde_json::json!({
            "protocol": "v4.channel.k8s.io", "http_status": 101, "http_body": "",
            "stdout_b64": "b3V0Cg==", "stderr_b64": null, "error_stream": "{}",
            "exit_code": 3, "status": {"status": "Failure"}, "server_closed": true,
        });
        let s = Session::parse(&v).unwrap();
        assert_eq!(s.stdout, b"out\n");
        assert_eq!(s.stderr, b"");
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.status.unwrap()["status"], "Failure");
        assert!(s.server_closed && s.error.is_none());
    }
}
