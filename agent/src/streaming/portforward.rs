//! Port-forward: each forwarded connection is a TCP connection to localhost:<port> inside the pod's network
//! namespace (made by a thread that joins it, `crius_sandbox::ns::connect_localhost_in`), its bytes copied
//! both ways. Over SPDY every connection is a pair of client streams (`data` and `error`, tied by their
//! `requestID` header and naming the `port`), any number at once; over WebSocket one connection per port in
//! the URL's request. A failure goes on that connection's error stream and ends only that connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy;
use super::websocket::Channels;

/// How long a connect in the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to forward to.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_id: String,
    /// The pod's network namespace (none: the host's, for a host-network pod).
    pub netns: Option<PathBuf>,
    /// The ports the request named; empty: any.
    pub ports: Vec<u16>,
}

impl Target {
    fn allowed(&self, port: u16) -> Result<(), String> {
        if self.ports.is_empty() || self.ports.contains(&port) {
            Ok(())
        } else {
            Err(format!(
                "port {port} was not in the PortForward request ({:?})",
                self.ports
            ))
        }
    }

    async fn connect(&self, port: u16) -> Result<tokio::net::TcpStream, String> {
        self.allowed(port)?;
        let netns = self.netns.clone();
        let std = tokio::task::spawn_blocking(move || {
            crius_sandbox::ns::connect_localhost_in(netns.as_deref(), port, CONNECT_TIMEOUT)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "error forwarding port {port} to pod {}: dial localhost:{port}: {e}",
                self.pod_id
            )
        })?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())
    }
}

/// Copies between the client's stream halves and the connection to the pod until both directions end.
async fn splice(
    mut from_client: impl AsyncRead + Unpin,
    mut to_client: impl AsyncWrite + Unpin,
    conn: tokio::net::TcpStream,
) {
    let (mut r, mut w) = conn.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut w).await;
        let _ = w.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut r, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}

/// A SPDY port-forward session: pairs the client's streams and forwards each pair, until the session ends.
pub async fn serve_spdy(
    target: Target,
    mut incoming: mpsc::Receiver<spdy::Stream>,
    creation_timeout: Duration,
) {
    struct Half {
        data: Option<spdy::Stream>,
        error: Option<spdy::Stream>,
        since: tokio::time::Instant,
    }
    let target = std::sync::Arc::new(target);
    let mut pending: HashMap<String, Half> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => match s { Some(s) => s, None => break },
            _ = sweep.tick() => {
                // A pair whose other half never came is dropped (its stream is reset as it drops).
                pending.retain(|_, h| h.since.elapsed() < creation_timeout);
                continue;
            }
        };
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        let request = match stream.header("requestid") {
            Some(r) => r.to_string(),
            // Old clients without request ids: kubelet derives one from the stream id the same way.
            None if kind == "data" => stream.id().saturating_sub(2).to_string(),
            None => stream.id().to_string(),
        };
        let half = pending.entry(request.clone()).or_insert_with(|| Half {
            data: None,
            error: None,
            since: tokio::time::Instant::now(),
        });
        match kind.as_str() {
            "data" if half.data.is_none() => half.data = Some(stream),
            "error" if half.error.is_none() => half.error = Some(stream),
            _ => {
                tracing::debug!(request, kind, "unexpected port-forward stream; reset");
                continue;
            }
        }
        if half.data.is_some() && half.error.is_some() {
            let Some(Half {
                data: Some(data),
                error: Some(error),
                ..
            }) = pending.remove(&request)
            else {
                continue;
            };
            let target = target.clone();
            tokio::spawn(async move { forward_pair(&target, data, error).await });
        }
    }
}

async fn forward_pair(target: &Target, data: spdy::Stream, error: spdy::Stream) {
    let port = data.header("port").and_then(|p| p.parse::<u16>().ok());
    let (_, mut err_w) = error.split();
    let (data_r, data_w) = data.split();
    let result = match port {
        Some(port) if port > 0 => target.connect(port).await,
        _ => Err("the data stream has no valid port header".to_string()),
    };
    match result {
        Ok(conn) => splice(data_r, data_w, conn).await,
        Err(message) => {
            tracing::debug!(pod = %target.pod_id, %message, "port-forward failed");
            // Plain text, as kubelet writes it (client-go prints it as it comes).
            let _ = err_w.write_all(message.as_bytes()).await;
            let mut data_w = data_w;
            let _ = data_w.shutdown().await;
        }
    }
    let _ = err_w.shutdown().await;
}

/// A WebSocket port-forward: one connection per port, channels 2i (data) and 2i+1 (error).
pub async fn serve_websocket(target: Target, mut ch: Channels, ports: Vec<u16>) {
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        ch.send(data, port.to_le_bytes().to_vec()).await;
        ch.send(error, port.to_le_bytes().to_vec()).await;
        let from_client = ch.reader(data);
        let to_client = ch.writer(data);
        let mut err_w = ch.writer(error);
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let Some(from_client) = from_client else {
                return;
            };
            match target.connect(port).await {
                Ok(conn) => splice(from_client, to_client, conn).await,
                Err(message) => {
                    let _ = err_w.write_all(message.as_bytes()).await;
                }
            }
        }));
    }
    let gone = ch.gone.clone();
    // Our writers are in the tasks; ours must go too, so the Close follows the last of them.
    drop(ch);
    let all = futures_util::future::join_all(tasks);
    tokio::select! {
        _ = all => {}
        () = gone.cancelled() => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_requested_ports_are_forwarded() {
        let t = Target {
            pod_id: "p".into(),
            netns: None,
            ports: vec![80],
        };
        assert!(t.allowed(80).is_ok());
        assert!(t.allowed(81).unwrap_err().contains("81"));
        let any = Target { ports: vec![], ..t };
        assert!(any.allowed(81).is_ok());
    }

    #[tokio::test]
    async fn a_connection_is_spliced_both_ways() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let echo = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let t = Target {
            pod_id: "p".into(),
            netns: None,
            ports: vec![],
        };
        let conn = t.connect(port).await.unwrap();
        let (mut client_w, server_r) = tokio::io::duplex(1024);
        let (server_w, mut client_r) = tokio::io::duplex(1024);
        let run = tokio::spawn(splice(server_r, server_w, conn));
        client_w.write_all(b"ping").await.unwrap();
        drop(client_w);
        let mut back = Vec::new();
        client_r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping");
        run.await.unwrap();
        echo.await.unwrap();
        let refused = t.connect(port).await.unwrap_err();
        assert!(refused.contains("dial localhost"), "{refused}");
    }
}
