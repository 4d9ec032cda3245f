//! A real OCI registry for the image tests: Debian's `docker-registry` (the CNCF distribution registry, package
//! `docker-registry`) on 127.0.0.1, a free port, private storage; anonymous, htpasswd or bearer-token auth
//! (with [`TokenServer`] as the token realm); plus [`FaultProxy`], a loopback HTTP proxy in front of it that
//! corrupts or stalls chosen blobs and records every request with its headers.
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
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

mod proxy;
mod token;

pub use proxy::{Fault, FaultProxy, RecordedRequest};
pub use token::{TokenRequest, TokenServer};

/// The registry binary (Debian package `docker-registry`); `CRIUS_TEST_REGISTRY` overrides it.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// How long the registry gets to answer `/v2/` after it is started.
pub const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(20);
/// The `service` a [`Registry::start_with_token_auth`] registry names in its `WWW-Authenticate` challenge.
pub const TOKEN_SERVICE: &str = "crius-test-registry";

/// A running `docker-registry` on 127.0.0.1. Dropping it kills (SIGKILL, by pid) and reaps the process and
/// removes its storage.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    auth: Auth,
    http: ureq::Agent,
}

/// How the registry authenticates its clients.
#[derive(Debug, Clone)]
enum Auth {
    Anonymous,
    /// `auth: htpasswd`, one user.
    Htpasswd {
        user: String,
        password: String,
    },
    /// `auth: silly`: a request without an Authorization header gets 401 with
    /// `WWW-Authenticate: Bearer realm="<realm>",service="<service>",scope="repository:<name>:pull"`; any
    /// request with one is let through (the token is not checked).
    Token {
        realm: String,
        service: String,
    },
}

impl Auth {
    /// The Authorization header this fixture's own requests carry.
    fn authorization(&self) -> Option<String> {
        match self {
            Auth::Anonymous => None,
            Auth::Htpasswd { user, password } => Some(basic_authorization(user, password)),
            Auth::Token { .. } => Some("Bearer crius-test-fixture".to_string()),
        }
    }
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

    /// Starts a registry with the bearer-token flow (distribution's `silly` access controller) and `realm`
    /// (e.g. [`TokenServer::realm`]) as the token server: a request without an Authorization header gets 401
    /// with `WWW-Authenticate: Bearer realm="<realm>",service="<TOKEN_SERVICE>",scope="repository:<name>:pull"`;
    /// a request with any Authorization header is served. The token itself is not checked: what a client sends
    /// is seen through a [`FaultProxy`]. This fixture's own requests send `Bearer crius-test-fixture`.
    pub fn start_with_token_auth(realm: &str) -> Registry {
        Registry::try_start_with(Auth::Token {
            realm: realm.to_string(),
            service: TOKEN_SERVICE.to_string(),
        })
        .unwrap_or_else(|e| panic!("cannot start docker-registry with token auth: {e:#}"))
    }

    /// Anonymous (`None`) or htpasswd with these credentials.
    pub fn try_start(credentials: Option<(String, String)>) -> anyhow::Result<Registry> {
        Registry::try_start_with(match credentials {
            None => Auth::Anonymous,
            Some((user, password)) => Auth::Htpasswd { user, password },
        })
    }

    fn try_start_with(auth: Auth) -> anyhow::Result<Registry> {
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
        if let Auth::Htpasswd { user, password } = &auth {
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
            fs::write(&config, config_yaml(dir.path(), addr, &auth))?;
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
                        auth,
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
        match &self.auth {
            Auth::Htpasswd { user, password } => Some((user.as_str(), password.as_str())),
            Auth::Anonymous | Auth::Token { .. } => None,
        }
    }

    /// GET `path` (e.g. `/v2/busybox/manifests/latest`) with these Accept types, authenticated when the
    /// registry needs it.
    pub fn get(&self, path: &str, accept: &[&str]) -> anyhow::Result<Reply> {
        let accept = accept.join(", ");
        self.request("GET", &self.url(path), &[("Accept", &accept)], None, true)
    }

    /// GET without credentials.
    pub fn get_anonymous(&self, path: &str, accept: &[&str]) -> anyhow::Result<Reply> {
        let accept = accept.join(", ");
        self.request("GET", &self.url(path), &[("Accept", &accept)], None, false)
    }

    /// HEAD `path`, authenticated when the registry needs it.
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
        let authorization = self.auth.authorization().filter(|_| authenticate);
        http_request(
            &self.http,
            authorization.as_deref(),
            method,
            url,
            headers,
            body,
        )
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
    authorization: Option<&str>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> anyhow::Result<Reply> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if let Some(authorization) = authorization {
        builder = builder.header("Authorization", authorization);
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn describe(reply: &Reply) -> String {
    format!(
        "HTTP {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body).trim()
    )
}

fn config_yaml(dir: &Path, addr: SocketAddr, auth: &Auth) -> String {
    let storage = dir.join("storage");
    let auth = match auth {
        Auth::Anonymous => String::new(),
        Auth::Htpasswd { .. } => format!(
            "auth:\n  htpasswd:\n    realm: crius-test-registry\n    path: {}\n",
            dir.join("htpasswd").display()
        ),
        Auth::Token { realm, service } => {
            format!("auth:\n  silly:\n    realm: \"{realm}\"\n    service: \"{service}\"\n")
        }
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

/// `Basic <base64 of user:password>`, the Authorization header value of HTTP basic auth.
pub fn basic_authorization(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
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
