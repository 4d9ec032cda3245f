//! The HTTP side of the metrics: `GET /metrics` on `[metrics] address`, HTTP/1.1 (hyper), nothing else served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::Snapshot;
use crate::config::MetricsConfig;
use crate::container::service::ContainerFilter;
use crate::pod::PodFilter;
use crate::runtime::Runtime;

/// What Prometheus asks for and prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.address {0:?} is not an ip:port address")]
    Address(String),
    #[error("cannot listen on {address} for metrics")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The running endpoint; dropping it stops the listener.
#[derive(Debug)]
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsServer {
    /// Binds the configured address and serves it in the background; `None` when metrics are off.
    pub async fn start(
        config: &MetricsConfig,
        rt: Arc<Runtime>,
    ) -> Result<Option<MetricsServer>, MetricsError> {
        if config.address.is_empty() {
            return Ok(None);
        }
        let address: SocketAddr = config
            .address
            .parse()
            .map_err(|_| MetricsError::Address(config.address.clone()))?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| MetricsError::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { address, source })?;
        // The real port when port 0 was asked for.
        tracing::info!(url = %format!("http://{address}/metrics"), "metrics endpoint listening");
        let task = tokio::spawn(accept_loop(listener, rt));
        Ok(Some(MetricsServer { task }))
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, rt: Arc<Runtime>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let rt = rt.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(respond(req, &rt).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn text(code: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into() + "\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn respond(req: Request<Incoming>, rt: &Runtime) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "only /metrics is served here");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let pods = rt.pods.list(&PodFilter::default());
    let containers = match rt.containers.list(&ContainerFilter::default()).await {
        Ok(c) => c,
        Err(e) => {
            let msg = crate::error::chain(&e);
            tracing::warn!(error = %msg, "metrics: cannot list containers");
            return text(StatusCode::INTERNAL_SERVER_ERROR, msg);
        }
    };
    match super::encode(&Snapshot::of(&pods, &containers)) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            r
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        ),
    }
}
