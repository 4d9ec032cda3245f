//! `crius serve`: the lock, the socket, the gRPC server and a graceful stop that leaves pods running.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use crius_proto::v1::image_service_server::ImageServiceServer;
use crius_proto::v1::runtime_service_server::RuntimeServiceServer;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::grpc::Cri;
use crate::runtime::Runtime;

/// kubelet's limit, both ways (tonic's default of 4 MiB is too small for big ListContainers answers).
const MAX_MESSAGE: usize = 16 << 20;
/// How long a stopping crius waits for in-flight RPCs.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve(config: Config) -> anyhow::Result<()> {
    for dir in [&config.root, &config.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _lock = lock_root(&config.root)?;
    let runtime = Arc::new(
        Runtime::new(config.clone())
            .await
            .map_err(|e| anyhow::anyhow!(crate::error::chain(&e)))?,
    );
    // Says now, in the log, what is not ready and why (kubelet's first Status may be a while away).
    let _ = runtime.status(false);
    let streaming =
        crate::streaming::Streaming::start(&config.streaming, Arc::clone(&runtime)).await?;
    let _metrics = crate::metrics::MetricsServer::start(&config.metrics, Arc::clone(&runtime))
        .await
        .map_err(|e| anyhow::anyhow!(crate::error::chain(&e)))?;
    let listener = bind_socket(&config.listen)?;
    let cri = Cri::new(Arc::clone(&runtime), streaming);
    tracing::info!(
        socket = %config.listen.display(),
        root = %config.root.display(),
        state = %config.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "crius is serving CRI v1"
    );
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                RuntimeServiceServer::new(cri.clone())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                ImageServiceServer::new(cri)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping; pods keep running"),
        _ = int.recv() => tracing::info!("SIGINT: stopping; pods keep running"),
    }
    let _ = stop_tx.send(());
    // In-flight RPCs get a moment to finish; kubelet keeps its connection open forever, so the wait is bounded.
    // Work cut short here is recorded as in progress and finished or undone at the next start.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(result)) => result.context("gRPC server failed")?,
        Ok(Err(join)) => return Err(join).context("gRPC server task failed"),
        Err(_) => {
            tracing::info!(grace = ?SHUTDOWN_GRACE, "clients still connected after the grace period; exiting")
        }
    }
    let _ = std::fs::remove_file(&config.listen);
    tracing::info!("stopped");
    Ok(())
}

/// One crius per root: an exclusive flock on `<root>/crius.lock`, held for the life of the process.
fn lock_root(root: &Path) -> anyhow::Result<Flock<File>> {
    let path = root.join("crius.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
            "another crius is already running with root {} (lock file {} is held)",
            root.display(),
            path.display()
        ),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Binds the CRI socket: a stale socket file is replaced, a live one (another process serving it) is refused.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() || path.symlink_metadata().is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("socket {} is in use by another process", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        tracing::info!(socket = %path.display(), "replaced a stale socket");
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(listener)
}
