//! CRI clients over a unix socket, with kubelet's 16 MiB message limits.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crius_proto::v1::image_service_client::ImageServiceClient;
use crius_proto::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// kubelet's limit, each way.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Upper bound for any one RPC, so that a hung crius fails a test instead of hanging it.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(90);

/// The runtime that drives the harness' connections. Channels are connected here, not on the test's runtime,
/// so that their HTTP/2 connections keep being served while a test blocks its own thread (e.g. in
/// [`crate::Crius::stop`], where crius' graceful shutdown waits for clients to close their connections).
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("crius-e2e-io")
            .enable_all()
            .build()
            .expect("cannot build the harness' I/O runtime")
    })
}

/// Connects a gRPC channel to the unix socket at `socket`. The connection is driven by a runtime of the
/// harness, so the channel works from any runtime (or none) and survives the caller blocking.
pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    let path = socket.to_path_buf();
    io_runtime().spawn(connect_here(path)).await?
}

async fn connect_here(path: std::path::PathBuf) -> anyhow::Result<Channel> {
    // The URI is required by tonic but unused: the connector below ignores it and dials the socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(channel)
}

/// A RuntimeService client on `channel` with 16 MiB limits.
pub fn runtime(channel: Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// An ImageService client on `channel` with 16 MiB limits.
pub fn images(channel: Channel) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}
