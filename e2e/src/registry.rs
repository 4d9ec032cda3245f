//! A real OCI registry for the image tests: Debian's `docker-registry` (the CNCF distribution registry, package
//! `docker-registry`) on 127.0.0.1, a free port, private storage; plus [`FaultProxy`], a loopback HTTP proxy in
//! front of it that corrupts or stalls chosen blobs and records every request.
//!
//! ```no_run
//! use crius_e2e::registry::{Fault, FaultProxy, Registry};
//! let registry = Registry::start();                     // http://127.0.0.1:<port>, no auth
//! let digest = registry.push_blob("busybox", b"bytes").unwrap();
//! let proxy = FaultProxy::start(&registry, vec![Fault::Corrupt(digest.clone())]);
//! // ... pull through proxy.host(); proxy.count("GET", &digest) says how often the blob was fetched
//! ```
//!
//! The client side is `ureq` (blocking, plain HTTP only, no TLS stack compiled in): the fixture is used from
//! synchronous code (`Drop`, builders) and from async tests alike, and needs no runtime handle.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The registry binary (Debian package `docker-registry`); `CRIUS_TEST_REGISTRY` overrides it.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// How long the registry gets to answer `/v2/` after it is started.
pub const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `docker-registry` on 127.0.0.1. Dropping it kills (SIGKILL, by pid) and reaps the process and
/// removes its storage.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    credentials: Option<(String, String)>,
    http: ureq::Agent,
}

/// An HTTP answer, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Registry {
    /// Starts an anonymous registry; panics (naming the reason and the registry's log) if it cannot.
    pub fn start() -> Registry {
        Registry::try_start(None).unwrap_or_else(|e| panic!("cannot start docker-registry: {e:#}"))
    }

    /// Starts a registry that requires HTTP basic auth (an htpasswd file with one bcrypt entry). Anonymous
    /// requests get 401 with a `WWW-Authenticate: Basic realm=...` header; this fixture's own requests
    /// (pushes, [`Registry::get`]) send the credentials.
    pub fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Registry::try_start(Some((user.to_string(), password.to_string())))
            .unwrap_or_else(|e| panic!("cannot start docker-registry with htpasswd: {e:#}"))
    }

    pub fn try_start(credentials: Option<(String, String)>) -> anyhow::Result<Registry> {
        let binary = std::env::var_os("CRIUS_TEST_REGISTRY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(REGISTRY_BINARY));
        if !binary.exists() {
            bail!(
                "{} does not exist: install Debian's docker-registry package (apt-get install docker-registry)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("crius-registry-")
            .tempdir()
            .context("temp dir")?;
        if let Some((user, password)) = &credentials {
            // Cost 4 (the minimum) keeps each authenticated request cheap; the registry accepts any cost.
            let hash = bcrypt::hash(password, 4).context("bcrypt")?;
            fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
        }
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        // The free port is found by binding port 0 and releasing it; another process may take it in between,
        // so a registry that exits with "address already in use" is started again on a new port.
        let log_path = dir.path().join("registry.log");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                config_yaml(dir.path(), addr, credentials.is_some()),
            )?;
            let log = File::create(&log_path)?;
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", binary.display()))?;
            match wait_ready(&mut child, &http, addr) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        addr,
                        dir,
                        credentials,
                        http,
                    });
                }
                Err(e) => {
                    // SIGKILL to this pid only; wait reaps it (PID 1 here does not reap).
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    if !log.contains("address already in use") || attempts == 5 {
                        return Err(e.context(format!("registry log:\n{log}")));
                    }
                }
            }
        }
    }

    /// `127.0.0.1:<port>`, the registry host of image references (`127.0.0.1:<port>/busybox:latest`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The registry's private directory (config, log, `storage/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The credentials given to [`Registry::start_with_htpasswd`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// GET `path` (e.g. `/v2/busybox/manifests/latest`) with these Accept types, with the credentials if any.
    pub fn get(&self, path: &str, accept: &[&str]) -> anyhow::Result<Reply> {
        let accept = accept.join(", ");
        self.request("GET", &self.url(path), &[("Accept", &accept)], None, true)
    }

    /// GET without credentials.
    pub fn get_anonymous(&self, path: &str, accept: &[&str]) -> anyhow::Result<Reply> {
        let accept = accept.join(", ");
        self.request("GET", &self.url(path), &[("Accept", &accept)], None, false)
    }

    /// HEAD `path`, with the credentials if any.
    pub fn head(&self, path: &str) -> anyhow::Result<Reply> {
        self.request("HEAD", &self.url(path), &[], None, true)
    }

    /// Uploads `bytes` as a blob of `repository` (monolithic: POST, then PUT `?digest=`); returns its digest.
    /// Skips the upload when the registry already has it.
    pub fn push_blob(&self, repository: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let head = self.head(&format!("/v2/{repository}/blobs/{digest}"))?;
        if head.status == 200 {
            return Ok(digest);
        }
        let start = self.request(
            "POST",
            &self.url(&format!("/v2/{repository}/blobs/uploads/")),
            &[],
            Some(&[]),
            true,
        )?;
        if start.status != 202 {
            bail!(
                "starting a blob upload to {repository}: {}",
                describe(&start)
            );
        }
        let location = start
            .header("location")
            .context("blob upload answered without a Location")?;
        let location = if location.starts_with('/') {
            self.url(location)
        } else {
            location.to_string()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{location}{separator}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
            true,
        )?;
        if put.status != 201 {
            bail!(
                "uploading blob {digest} to {repository}: {}",
                describe(&put)
            );
        }
        Ok(digest)
    }

    /// PUTs a manifest under `reference` (a tag or its digest); returns the digest the registry reports.
    pub fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let put = self.request(
            "PUT",
            &self.url(&format!("/v2/{repository}/manifests/{reference}")),
            &[("Content-Type", media_type)],
            Some(bytes),
            true,
        )?;
        if put.status != 201 {
            bail!(
                "pushing manifest {repository}:{reference}: {}",
                describe(&put)
            );
        }
        let digest = sha256_digest(bytes);
        match put.header("docker-content-digest") {
            Some(d) if d == digest => Ok(digest),
            other => bail!("registry reports manifest digest {other:?}, expected {digest}"),
        }
    }

    /// Where the registry keeps the bytes of blob `digest` (filesystem storage driver layout).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        let prefix = hex.get(..2).unwrap_or(hex);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs")
            .join(algorithm)
            .join(prefix)
            .join(hex)
            .join("data")
    }

    /// Flips the last byte of the stored blob `digest`: the registry keeps serving it under that digest with
    /// the same size, and only a client that verifies the digest notices. (The registry verifies uploads, so
    /// a wrong blob can only be made behind its back.) On an uncompressed layer the last byte is tar padding,
    /// so the corrupt blob still unpacks cleanly; on a gzip layer it is the trailer's length field.
    pub fn corrupt_blob(&self, digest: &str) -> anyhow::Result<()> {
        let path = self.blob_data_path(digest);
        let mut bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let last = bytes.last_mut().context("empty blob")?;
        *last ^= 1;
        fs::write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        authenticate: bool,
    ) -> anyhow::Result<Reply> {
        let credentials = self.credentials.as_ref().filter(|_| authenticate);
        http_request(&self.http, credentials, method, url, headers, body)
    }
}

fn wait_ready(child: &mut Child, http: &ureq::Agent, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + REGISTRY_START_TIMEOUT;
    let url = format!("http://{addr}/v2/");
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("docker-registry exited during startup: {status}");
        }
        if let Ok(reply) = http_request(http, None, "GET", &url, &[], None)
            && matches!(reply.status, 200 | 401)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("docker-registry did not answer {url} within {REGISTRY_START_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn http_request(
    http: &ureq::Agent,
    credentials: Option<&(String, String)>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> anyhow::Result<Reply> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if let Some((user, password)) = credentials {
        builder = builder.header(
            "Authorization",
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
        );
    }
    let response = match body {
        Some(body) => http.run(builder.body(body)?),
        None => http.run(builder.body(())?),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = if method == "HEAD" {
        Vec::new()
    } else {
        response
            .into_body()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .with_context(|| format!("{method} {url}: body"))?
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

impl Drop for Registry {
    fn drop(&mut self) {
        // SIGKILL to this pid only; wait reaps it (PID 1 here does not reap).
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- docker-registry log ({}) ---\n{}",
                self.addr,
                self.log()
            );
        }
    }
}

fn describe(reply: &Reply) -> String {
    format!(
        "HTTP {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body).trim()
    )
}

fn config_yaml(dir: &Path, addr: SocketAddr, htpasswd: bool) -> String {
    let storage = dir.join("storage");
    let auth = if htpasswd {
        format!(
            "auth:\n  htpasswd:\n    realm: crius-test-registry\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    } else {
        String::new()
    };
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: crius-test-{port}
{auth}",
        storage = storage.display(),
        port = addr.port(),
    )
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

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
/// through byte for byte. Every request is recorded. Drop stops it and joins its threads.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: SocketAddr,
    faults: Vec<Fault>,
    stop: AtomicBool,
    requests: Mutex<Vec<String>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    pub fn start(registry: &Registry, faults: Vec<Fault>) -> FaultProxy {
        FaultProxy::start_for(registry.addr(), faults)
    }

    /// A proxy in front of any HTTP server on loopback.
    pub fn start_for(upstream: SocketAddr, faults: Vec<Fault>) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("fault proxy: bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fault proxy: local_addr: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("fault proxy: nonblocking: {e}"));
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
        lock(&self.shared.requests).clone()
    }

    /// How many `method` requests had a path containing `needle` (e.g. a blob digest).
    pub fn count(&self, method: &str, needle: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| {
                r.split_once(' ')
                    .is_some_and(|(m, path)| m == method && path.contains(needle))
            })
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ProxyShared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let worker_shared = Arc::clone(shared);
                let worker = thread::spawn(move || {
                    if let Err(e) = serve_one(client, &worker_shared)
                        && !worker_shared.stop.load(Ordering::SeqCst)
                    {
                        eprintln!("fault proxy: {e:#}");
                    }
                });
                lock(&shared.workers).push(worker);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("fault proxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Reads an HTTP head (up to the blank line), giving up when the proxy stops.
fn read_head(reader: &mut impl BufRead, stop: &AtomicBool) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            bail!("proxy stopped");
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
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "connection" | "keep-alive" | "proxy-connection" => continue,
            "content-length" => length = value.trim().parse().ok(),
            "transfer-encoding" => chunked = true,
            _ => {}
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(Head {
        first,
        bytes: out.into_bytes(),
        length,
        chunked,
    })
}

struct Head {
    /// The request or status line.
    first: String,
    /// The rewritten head, blank line included.
    bytes: Vec<u8>,
    length: Option<u64>,
    chunked: bool,
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
    lock(&shared.requests).push(format!("{method} {path}"));

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), encoded);
        }
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
