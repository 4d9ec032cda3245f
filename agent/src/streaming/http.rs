//! The listener and the routes: `GET|POST /{exec,attach,portforward}/<token>` upgraded to SPDY/3.1
//! (`Upgrade: SPDY/3.1`, protocol from `X-Stream-Protocol-Version`) or to a WebSocket (`Upgrade: websocket`,
//! protocol from `Sec-WebSocket-Protocol`). An unknown, used or expired token is a 404; a request that is no
//! upgrade a 400; no common protocol a 403 naming ours (as kubelet answers).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::ops::{self, AttachParams, ExecParams};
use super::portforward::{self, Target};
use super::remotecommand::{self, StatusFormat, Streams, Wanted};
use super::spdy;
use super::tokens::{Pending, TOKEN_TTL, Tokens};
use super::websocket::{self, Channels};
use crate::config::StreamingConfig;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";
const PORTFORWARD_SPDY: [&str; 1] = ["portforward.k8s.io"];

/// The running streaming server.
pub struct Streaming {
    base: String,
    tokens: Tokens,
    idle: Duration,
    creation: Duration,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("base", &self.base)
            .finish()
    }
}

impl Streaming {
    /// Binds the listener (so URLs can be handed out at once) and serves it in the background.
    pub async fn start(
        config: &StreamingConfig,
        rt: Arc<Runtime>,
    ) -> anyhow::Result<Arc<Streaming>> {
        let ip: std::net::IpAddr = config
            .address
            .parse()
            .with_context(|| format!("streaming.address {:?}", config.address))?;
        let listener = tokio::net::TcpListener::bind((ip, config.port))
            .await
            .with_context(|| format!("cannot listen on {ip} port {} for streaming", config.port))?;
        let addr = listener.local_addr()?;
        let tls = tls_acceptor(config)?;
        // An unspecified address serves every interface; the URL needs one that reaches us: loopback.
        let host = match ip {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(Streaming {
            base: format!("{scheme}://{host}:{}", addr.port()),
            tokens: Tokens::new(TOKEN_TTL, config.max_outstanding_tokens),
            idle: config.idle_timeout.0,
            creation: config.stream_creation_timeout.0,
        });
        tracing::info!(url = %server.base, "streaming server listening");
        tokio::spawn(accept_loop(listener, tls, server.clone(), rt));
        Ok(server)
    }

    /// A URL for `what`, valid once within a minute.
    pub fn url(&self, what: Pending) -> Result<String> {
        let kind = what.kind();
        let token = self
            .tokens
            .insert(what)
            .map_err(|e| Error::ResourceExhausted(e.to_string()))?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }
}

fn tls_acceptor(config: &StreamingConfig) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if config.tls_cert_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.tls_cert_file)
        .and_then(|it| it.collect())
        .with_context(|| format!("cannot read {}", config.tls_cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&config.tls_key_file)
        .with_context(|| format!("cannot read {}", config.tls_key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("streaming TLS certificate and key")?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Arc<Streaming>,
    rt: Arc<Runtime>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (server, rt, tls) = (server.clone(), rt.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(s) => connection(s, server, rt).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "streaming TLS handshake failed"),
                },
                None => connection(tcp, server, rt).await,
            }
        });
    }
}

async fn connection<IO>(io: IO, server: Arc<Streaming>, rt: Arc<Runtime>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (server, rt) = (server.clone(), rt.clone());
        async move { Ok::<_, Infallible>(route(req, server, rt)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "streaming connection ended");
    }
}

fn reply(code: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Header values, comma-separated lists flattened.
fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn has_token(h: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    values(h, name.as_str())
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

fn route(
    req: Request<Incoming>,
    server: Arc<Streaming>,
    rt: Arc<Runtime>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/')
    {
        return reply(
            StatusCode::NOT_FOUND,
            format!("no such streaming endpoint {path}"),
        );
    }
    let Some(pending) = server.tokens.take(token, kind) else {
        return reply(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming token",
        );
    };
    let h = req.headers();
    let websocket = has_token(h, UPGRADE, "websocket") && h.contains_key("sec-websocket-key");
    let spdy = has_token(h, UPGRADE, "SPDY/3.1");
    if !(has_token(h, CONNECTION, "upgrade") && (websocket || spdy)) {
        return reply(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        );
    }
    // Port-forward needs the pod's network namespace: found now, so a pod gone since is a plain error.
    let target = match &pending {
        Pending::PortForward { pod_id, ports } => match rt.pods.get(pod_id) {
            Ok(pod) => Some(Target {
                pod_id: pod.id.clone(),
                netns: pod.netns().cloned(),
                ports: ports.clone(),
            }),
            Err(e) => return reply(StatusCode::NOT_FOUND, e.to_string()),
        },
        _ => None,
    };
    if websocket {
        upgrade_websocket(req, server, rt, pending, target)
    } else {
        upgrade_spdy(req, server, rt, pending, target)
    }
}

fn switching(upgrade: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(upgrade));
    r
}

fn upgrade_spdy(
    req: Request<Incoming>,
    server: Arc<Streaming>,
    rt: Arc<Runtime>,
    pending: Pending,
    target: Option<Target>,
) -> Response<Full<Bytes>> {
    let ours: &[&str] = if target.is_some() {
        &PORTFORWARD_SPDY
    } else {
        &remotecommand::PROTOCOLS
    };
    let asked = values(req.headers(), PROTOCOL_HEADER);
    // A client that names no protocol gets the oldest (kubelet's fallback); one that names only others, a 403.
    let protocol = if asked.is_empty() {
        ours[ours.len() - 1].to_string()
    } else {
        match asked.iter().find(|p| ours.contains(&p.as_str())) {
            Some(p) => p.clone(),
            None => {
                let mut r = reply(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {asked:?}, server accepts {ours:?}"
                    ),
                );
                for p in ours {
                    r.headers_mut()
                        .append(ACCEPTED_HEADER, HeaderValue::from_static(p));
                }
                return r;
            }
        }
    };
    crate::metrics::streaming_session(pending.kind(), false);
    let mut resp = switching("SPDY/3.1");
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        resp.headers_mut().insert(PROTOCOL_HEADER, v);
    }
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "SPDY upgrade failed"),
        };
        let opts = spdy::SessionOptions {
            idle_timeout: server.idle,
            ..Default::default()
        };
        let (session, mut incoming) = spdy::serve(TokioIo::new(upgraded), opts);
        match (pending, target) {
            (_, Some(target)) => {
                portforward::serve_spdy(target, incoming, server.creation).await;
            }
            (pending, None) => {
                let wanted = wanted(&pending);
                match remotecommand::spdy_streams(&mut incoming, &protocol, wanted, server.creation)
                    .await
                {
                    Ok(streams) => run(&rt, pending, streams, session.closed()).await,
                    Err(e) => tracing::debug!(error = %e, "SPDY session without its streams"),
                }
            }
        }
        session.shutdown();
    });
    resp
}

fn upgrade_websocket(
    req: Request<Incoming>,
    server: Arc<Streaming>,
    rt: Arc<Runtime>,
    pending: Pending,
    target: Option<Target>,
) -> Response<Full<Bytes>> {
    let ours: &[&str] = if target.is_some() {
        &websocket::PORTFORWARD_PROTOCOLS
    } else {
        &websocket::EXEC_PROTOCOLS
    };
    let Some(protocol) =
        websocket::negotiate(&values(req.headers(), "sec-websocket-protocol"), ours)
    else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: none of the requested subprotocols is one of {ours:?}"),
        );
    };
    let ports = match &target {
        Some(t) if t.ports.is_empty() => match query_ports(req.uri().query().unwrap_or("")) {
            Ok(p) => p,
            Err(e) => return reply(StatusCode::BAD_REQUEST, e),
        },
        Some(t) => t.ports.clone(),
        None => Vec::new(),
    };
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    crate::metrics::streaming_session(pending.kind(), true);
    let mut resp = switching("websocket");
    if let Ok(v) = HeaderValue::from_str(&key) {
        resp.headers_mut().insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(&protocol)
    {
        resp.headers_mut().insert("sec-websocket-protocol", v);
    }
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "WebSocket upgrade failed"),
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        match target {
            Some(target) => {
                let readable: Vec<u8> = (0..ports.len()).map(|i| (2 * i) as u8).collect();
                let (ch, writer) = Channels::open(ws, &protocol, &readable, server.idle);
                portforward::serve_websocket(target, ch, ports).await;
                let _ = writer.await;
            }
            None => {
                let w = wanted(&pending);
                let mut readable = vec![4];
                if w.stdin {
                    readable.push(0);
                }
                let (mut ch, writer) = Channels::open(ws, &protocol, &readable, server.idle);
                // The first (empty) message tells the client the session is up, as kubelet does.
                let first = if w.stdout {
                    1
                } else if w.stderr {
                    2
                } else {
                    3
                };
                ch.send(first, Vec::new()).await;
                let streams = Streams {
                    stdin: ch.reader(0).map(|r| Box::pin(r) as remotecommand::Reader),
                    stdout: w
                        .stdout
                        .then(|| Box::pin(ch.writer(1)) as remotecommand::Writer),
                    stderr: w
                        .stderr
                        .then(|| Box::pin(ch.writer(2)) as remotecommand::Writer),
                    resize: ch
                        .reader(4)
                        .filter(|_| w.tty)
                        .map(|r| remotecommand::resize_events(Box::pin(r))),
                    error: Some(Box::pin(ch.writer(3))),
                    format: if protocol.is_empty() {
                        StatusFormat::Text
                    } else {
                        StatusFormat::of(&protocol)
                    },
                };
                let gone = ch.gone.clone();
                drop(ch);
                run(&rt, pending, streams, gone.cancelled()).await;
                let _ = writer.await;
            }
        }
    });
    resp
}

/// The `port` query parameters of a WebSocket port-forward (`?port=80&port=8080,9090`).
fn query_ports(query: &str) -> std::result::Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&') {
        let Some(("port", value)) = pair.split_once('=') else {
            continue;
        };
        for p in value.split(',') {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("unable to parse {p:?} as a port")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

fn wanted(p: &Pending) -> Wanted {
    match p {
        Pending::Exec {
            tty,
            stdin,
            stdout,
            stderr,
            ..
        }
        | Pending::Attach {
            tty,
            stdin,
            stdout,
            stderr,
            ..
        } => Wanted {
            stdin: *stdin,
            stdout: *stdout,
            stderr: *stderr && !*tty,
            tty: *tty,
        },
        Pending::PortForward { .. } => Wanted {
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        },
    }
}

async fn run(
    rt: &Runtime,
    pending: Pending,
    streams: Streams,
    gone: impl std::future::Future<Output = ()>,
) {
    match pending {
        Pending::Exec {
            container_id,
            cmd,
            tty,
            stdin,
            stdout,
            stderr,
        } => {
            let p = ExecParams {
                container_id,
                cmd,
                tty,
                stdin,
                stdout,
                stderr,
            };
            let span = tracing::info_span!("stream", op = "exec", container = %p.container_id);
            tracing::Instrument::instrument(ops::exec(&rt.containers, &p, streams, gone), span)
                .await
        }
        Pending::Attach {
            container_id,
            stdin,
            ..
        } => {
            let p = AttachParams {
                container_id,
                stdin,
            };
            let span = tracing::info_span!("stream", op = "attach", container = %p.container_id);
            tracing::Instrument::instrument(ops::attach(&rt.containers, &p, streams, gone), span)
                .await
        }
        Pending::PortForward { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_ports_come_from_the_query() {
        assert_eq!(
            query_ports("port=80&port=8080,9090"),
            Ok(vec![80, 8080, 9090])
        );
        assert!(query_ports("").is_err());
        assert!(query_ports("port=0").is_err());
        assert!(query_ports("port=x").is_err());
    }
}
