//! [`FaultProxy`]: a plain-HTTP proxy on 127.0.0.1 in front of a [`Registry`] (or any loopback HTTP server)
//! that corrupts or stalls chosen blobs and records every request with its headers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Registry, lock};

/// What [`FaultProxy`] does to `GET .../blobs/<digest>` answers for one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve the blob with its last byte flipped (same length, same headers).
    Corrupt(String),
    /// Send the headers and the first half of the body, then nothing more until the proxy is dropped.
    Stall(String),
}

/// A plain-HTTP proxy on 127.0.0.1 in front of a [`Registry`]: point a client at [`FaultProxy::host`] instead
/// of the registry. One request per connection (`Connection: close` both ways); requests with a body must
/// carry Content-Length. Blobs named in the faults are corrupted or stalled on GET; everything else passes
/// through byte for byte. Every request is recorded, headers included ([`FaultProxy::recorded`]). Drop stops
/// it and joins its threads.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: SocketAddr,
    faults: Vec<Fault>,
    stop: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    pub fn start(registry: &Registry, faults: Vec<Fault>) -> FaultProxy {
        FaultProxy::start_for(registry.addr(), faults)
    }

    /// A proxy in front of any HTTP server on loopback.
    pub fn start_for(upstream: SocketAddr, faults: Vec<Fault>) -> FaultProxy {
        let (listener, addr) = bind_loopback(ProxyShared::NAME);
        let shared = Arc::new(ProxyShared {
            upstream,
            faults,
            stop: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::spawn(move || accept_loop(&listener, &accept_shared));
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, as `"METHOD /path?query"`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests)
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }

    /// Every request so far with its headers, in arrival order.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many `method` requests had a path containing `needle` (e.g. a blob digest).
    pub fn count(&self, method: &str, needle: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.method == method && r.target.contains(needle))
            .count()
    }
}

/// One request as the proxy received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent (`/v2/busybox/manifests/latest?ns=docker.io`).
    pub target: String,
    /// Header lines in arrival order; names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Authorization` header, if the request carried one.
    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }

    /// `GET .../manifests/...` or `GET .../blobs/...` (HEAD too): a request for content, not the `/v2/` probe.
    pub fn is_content(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "HEAD")
            && (self.target.contains("/manifests/") || self.target.contains("/blobs/"))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        shut_down(&*self.shared, self.accept.take());
    }
}

impl Server for ProxyShared {
    const NAME: &'static str = "fault proxy";

    fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    fn workers(&self) -> &Mutex<Vec<JoinHandle<()>>> {
        &self.workers
    }

    fn serve(&self, client: TcpStream) -> anyhow::Result<()> {
        serve_one(client, self)
    }
}

/// A small HTTP server on loopback as the accept loop sees it (the fault proxy, the token server): a stop
/// flag, the worker threads (one per connection) and how to serve one connection.
pub(super) trait Server: Send + Sync + Sized + 'static {
    /// For error messages.
    const NAME: &'static str;
    fn stop_flag(&self) -> &AtomicBool;
    fn workers(&self) -> &Mutex<Vec<JoinHandle<()>>>;
    fn serve(&self, client: TcpStream) -> anyhow::Result<()>;
}

/// A nonblocking listener on 127.0.0.1 and a free port; panics naming `name` if there is none.
pub(super) fn bind_loopback(name: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("{name}: bind 127.0.0.1:0: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{name}: local_addr: {e}"));
    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("{name}: nonblocking: {e}"));
    (listener, addr)
}

/// Accepts connections until the stop flag is set, each served on its own thread.
pub(super) fn accept_loop<S: Server>(listener: &TcpListener, shared: &Arc<S>) {
    while !shared.stop_flag().load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let worker_shared = Arc::clone(shared);
                let worker = thread::spawn(move || {
                    if let Err(e) = worker_shared.serve(client)
                        && !worker_shared.stop_flag().load(Ordering::SeqCst)
                    {
                        eprintln!("{}: {e:#}", S::NAME);
                    }
                });
                lock(shared.workers()).push(worker);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("{}: accept: {e}", S::NAME);
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Sets the stop flag, then joins the accept thread and every worker.
pub(super) fn shut_down<S: Server>(shared: &S, accept: Option<JoinHandle<()>>) {
    shared.stop_flag().store(true, Ordering::SeqCst);
    if let Some(accept) = accept {
        let _ = accept.join();
    }
    let workers = std::mem::take(&mut *lock(shared.workers()));
    for worker in workers {
        let _ = worker.join();
    }
}

/// Reads an HTTP head (up to the blank line), giving up when the server stops.
pub(super) fn read_head(reader: &mut impl BufRead, stop: &AtomicBool) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            bail!("stopped");
        }
        match reader.read_until(b'\n', &mut head) {
            Ok(0) => bail!("connection closed before the end of the HTTP head"),
            Ok(_) if head.ends_with(b"\r\n\r\n") || head == b"\r\n" => return Ok(head),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if head.len() > 64 * 1024 {
            bail!("HTTP head longer than 64 KiB");
        }
    }
}

/// Rewrites a head's header lines: drops hop-by-hop ones, adds `Connection: close`.
fn rewrite_head(head: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(head).context("HTTP head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let mut out = format!("{first}\r\n");
    let mut length = None;
    let mut chunked = false;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "connection" | "keep-alive" | "proxy-connection" => continue,
            "content-length" => length = value.trim().parse().ok(),
            "transfer-encoding" => chunked = true,
            _ => {}
        }
        headers.push((lower, value.trim().to_string()));
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(Head {
        first,
        bytes: out.into_bytes(),
        length,
        chunked,
        headers,
    })
}

struct Head {
    /// The request or status line.
    first: String,
    /// The rewritten head, blank line included.
    bytes: Vec<u8>,
    length: Option<u64>,
    chunked: bool,
    /// The header lines kept, names in lower case (hop-by-hop ones are not kept).
    headers: Vec<(String, String)>,
}

fn serve_one(client: TcpStream, shared: &ProxyShared) -> anyhow::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_millis(200)))?;
    client.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let head = read_head(&mut from_client, &shared.stop)?;
    let request = rewrite_head(&head)?;
    if request.chunked {
        bail!("chunked request bodies are not supported by the fault proxy");
    }
    let mut parts = request.first.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    lock(&shared.requests).push(RecordedRequest {
        method: method.clone(),
        target: path.clone(),
        headers: request.headers.clone(),
    });

    let mut upstream = TcpStream::connect(shared.upstream).context("connect to the registry")?;
    upstream.write_all(&request.bytes)?;
    if let Some(length) = request.length {
        from_client
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        let copied = std::io::copy(&mut (&mut from_client).take(length), &mut upstream)?;
        if copied != length {
            bail!("request body ended after {copied} of {length} bytes");
        }
    }
    let mut from_upstream = BufReader::new(upstream);
    let never_stop = AtomicBool::new(false);
    let response_head = read_head(&mut from_upstream, &never_stop)?;
    let response = rewrite_head(&response_head)?;
    let fault = (method == "GET" && response.first.split(' ').nth(1) == Some("200"))
        .then(|| {
            shared.faults.iter().find(|f| match f {
                Fault::Corrupt(d) | Fault::Stall(d) => path.ends_with(&format!("/blobs/{d}")),
            })
        })
        .flatten();
    if fault.is_some() && response.chunked {
        bail!("cannot corrupt or stall a chunked response ({method} {path})");
    }
    to_client.write_all(&response.bytes)?;
    match fault {
        None => {
            std::io::copy(&mut from_upstream, &mut to_client)?;
        }
        Some(Fault::Corrupt(_)) => {
            let mut body = Vec::new();
            from_upstream.read_to_end(&mut body)?;
            if let Some(last) = body.last_mut() {
                *last ^= 1;
            }
            to_client.write_all(&body)?;
        }
        Some(Fault::Stall(_)) => {
            let mut body = Vec::new();
            from_upstream.read_to_end(&mut body)?;
            to_client.write_all(&body[..body.len() / 2])?;
            to_client.flush()?;
            while !shared.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    to_client.flush()?;
    Ok(())
}
