//! [`TokenServer`]: the token realm of the bearer-token flow, for a [`super::Registry`] started with
//! [`super::Registry::start_with_token_auth`]. A plain HTTP/1.1 server on 127.0.0.1 that records every request
//! and answers `GET /token` the way a Docker token server does.
//!
//! ```no_run
//! use crius_e2e::registry::{Registry, TokenServer};
//! let tokens = TokenServer::start("tester", "s3cret");
//! let registry = Registry::start_with_token_auth(&tokens.realm());
//! // ... pull 127.0.0.1:<port>/repo:tag with AuthConfig tester/s3cret
//! let asked = &tokens.requests()[0];
//! assert_eq!(asked.query("scope").as_deref(), Some("repository:repo:pull"));
//! ```

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, bail};

use super::proxy::{Server, accept_loop, bind_loopback, read_head, shut_down};
use super::{basic_authorization, lock};

/// How long an issued token is valid (`expires_in`), in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// A token server on 127.0.0.1. `GET /token?service=...&scope=...` with the configured Basic credentials (or,
/// when anonymous access is allowed, with no Authorization header) gets
/// `200 {"token":"<random>","access_token":"<same>","expires_in":300}`; any other Authorization (wrong
/// credentials, another scheme) gets 401; other paths 404, other methods 405. One request per connection
/// (`Connection: close`). Every request is recorded before it is answered. Drop stops it and joins its threads.
pub struct TokenServer {
    addr: SocketAddr,
    shared: Arc<TokenShared>,
    accept: Option<JoinHandle<()>>,
}

struct TokenShared {
    /// The Authorization header value that earns a token.
    expected: String,
    allow_anonymous: bool,
    stop: AtomicBool,
    requests: Mutex<Vec<TokenRequest>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// One request the token server received, and how it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    /// Path and query, as sent (`/token?scope=repository%3Aapp%3Apull&service=...`).
    pub target: String,
    pub authorization: Option<String>,
    /// The status it was answered with.
    pub status: u16,
    /// The token issued (on 200).
    pub token: Option<String>,
}

impl TokenRequest {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| percent_decode(k) == name)
            .map(|(_, v)| percent_decode(v))
    }
}

impl TokenServer {
    /// Issues tokens to requests carrying `Authorization: Basic` with these credentials only.
    pub fn start(user: &str, password: &str) -> TokenServer {
        TokenServer::start_with(user, password, false)
    }

    /// Like [`TokenServer::start`], and also issues tokens to requests without an Authorization header (a
    /// public repository); wrong credentials still get 401.
    pub fn start_allowing_anonymous(user: &str, password: &str) -> TokenServer {
        TokenServer::start_with(user, password, true)
    }

    fn start_with(user: &str, password: &str, allow_anonymous: bool) -> TokenServer {
        let (listener, addr) = bind_loopback(TokenShared::NAME);
        let shared = Arc::new(TokenShared {
            expected: basic_authorization(user, password),
            allow_anonymous,
            stop: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::spawn(move || accept_loop(&listener, &accept_shared));
        TokenServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port>/token`, the realm to give the registry.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The tokens issued so far, in order.
    pub fn issued(&self) -> Vec<String> {
        lock(&self.shared.requests)
            .iter()
            .filter_map(|r| r.token.clone())
            .collect()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        shut_down(&*self.shared, self.accept.take());
    }
}

impl Server for TokenShared {
    const NAME: &'static str = "token server";

    fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    fn workers(&self) -> &Mutex<Vec<JoinHandle<()>>> {
        &self.workers
    }

    fn serve(&self, client: TcpStream) -> anyhow::Result<()> {
        client.set_nonblocking(false)?;
        client.set_read_timeout(Some(Duration::from_millis(200)))?;
        client.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(client.try_clone()?);
        let head = read_head(&mut reader, &self.stop)?;
        let head = std::str::from_utf8(&head).context("HTTP head is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let (method, target) = match (first.next(), first.next()) {
            (Some(m), Some(t)) if !m.is_empty() => (m.to_string(), t.to_string()),
            _ => bail!("bad request line in {head:?}"),
        };
        let mut authorization = None;
        let mut length = 0u64;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" if authorization.is_none() => {
                    authorization = Some(value.trim().to_string());
                }
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => bail!("chunked request bodies are not supported"),
                _ => {}
            }
        }
        // A token request has no body; one that comes anyway is read and dropped.
        reader
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;

        let mut request = TokenRequest {
            method,
            target,
            authorization,
            status: 0,
            token: None,
        };
        let allowed = match &request.authorization {
            Some(a) => *a == self.expected,
            None => self.allow_anonymous,
        };
        let (status, reason, body) = if request.method != "GET" {
            (405, "Method Not Allowed", error_body("method not allowed"))
        } else if request.path() != "/token" {
            (404, "Not Found", error_body("not found"))
        } else if !allowed {
            (401, "Unauthorized", error_body("invalid credentials"))
        } else {
            let token = random_token()?;
            let body = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECS,
            })
            .to_string();
            request.token = Some(token);
            (200, "OK", body)
        };
        request.status = status;
        lock(&self.requests).push(request);

        let challenge = if status == 401 {
            "WWW-Authenticate: Basic realm=\"crius-test-token\"\r\n"
        } else {
            ""
        };
        let mut out = client;
        write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             {challenge}Connection: close\r\n\r\n{body}",
            body.len()
        )?;
        out.flush()?;
        Ok(())
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]}).to_string()
}

/// 128 random bits from the kernel, as hex.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Decodes `%XX` escapes and `+` (a space in a query); an invalid escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let r = TokenRequest {
            method: "GET".into(),
            target: "/token?scope=repository%3Aa%2Fb%3Apull&service=crius+test&x".into(),
            authorization: None,
            status: 200,
            token: None,
        };
        assert_eq!(r.path(), "/token");
        assert_eq!(r.query("scope").as_deref(), Some("repository:a/b:pull"));
        assert_eq!(r.query("service").as_deref(), Some("crius test"));
        assert_eq!(r.query("x").as_deref(), Some(""));
        assert_eq!(r.query("nope"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%-1"), "%-1");
    }
}
