//! The CRI gRPC services: thin wrappers that convert, call the domain, convert back.

mod container_out;
mod convert;
mod convert_container;
mod convert_image;
mod convert_stats;
mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crius_proto::v1::{
    self, image_service_server::ImageService, runtime_service_server::RuntimeService,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::Error;
use crate::metrics;
use crate::runtime::Runtime;
use crate::streaming::{Pending, Streaming};
use crate::telemetry::{self, rpc_span};

/// Both CRI services on one value (they share the runtime and the streaming server).
#[derive(Clone)]
pub struct Cri {
    rt: Arc<Runtime>,
    streaming: Arc<Streaming>,
}

impl Cri {
    pub fn new(rt: Arc<Runtime>, streaming: Arc<Streaming>) -> Cri {
        Cri { rt, streaming }
    }
}

type R<T> = Result<Response<T>, Status>;

/// Runs one RPC about a pod (or none) inside its span: method, ids, latency and outcome are logged once here,
/// counted in the metrics and, when exporting, traced.
async fn rpc<T, F>(method: &'static str, pod: &str, fut: F) -> R<T>
where
    F: Future<Output = Result<T, Error>>,
{
    in_span(method, rpc_span!(method, pod = %pod), fut).await
}

/// [`rpc`] for an RPC about a container: its span carries the container id.
async fn rpc_container<T, F>(method: &'static str, container: &str, fut: F) -> R<T>
where
    F: Future<Output = Result<T, Error>>,
{
    in_span(method, rpc_span!(method, container = %container), fut).await
}

async fn in_span<T, F>(method: &'static str, span: tracing::Span, fut: F) -> R<T>
where
    F: Future<Output = Result<T, Error>>,
{
    telemetry::name_rpc_span(&span, method);
    let timer = metrics::RpcTimer::start(method);
    let out = fut.instrument(span.clone()).await;
    let _e = span.enter();
    let ms = timer.elapsed().as_secs_f64() * 1000.0;
    match out {
        Ok(v) => {
            timer.finish(tonic::Code::Ok);
            telemetry::end_rpc_span(&span, None);
            tracing::debug!(latency_ms = ms, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            let status = status::to_status(&e);
            timer.finish(status.code());
            telemetry::end_rpc_span(&span, Some(&status));
            match status.code() {
                tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::DeadlineExceeded => {
                    tracing::error!(latency_ms = ms, code = ?status.code(), error = %status.message(), "failed")
                }
                _ => {
                    tracing::info!(latency_ms = ms, code = ?status.code(), error = %status.message(), "rejected")
                }
            }
            Err(status)
        }
    }
}

fn unimplemented<T>(method: &'static str) -> R<T> {
    tracing::debug!(method, "unimplemented RPC called");
    metrics::rpc(
        method,
        tonic::Code::Unimplemented,
        std::time::Duration::ZERO,
    );
    Err(status::to_status(&Error::Unimplemented(method)))
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, _req: Request<v1::VersionRequest>) -> R<v1::VersionResponse> {
        rpc("Version", "", async {
            Ok(v1::VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "crius".into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: "v1".into(),
            })
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<v1::RunPodSandboxRequest>,
    ) -> R<v1::RunPodSandboxResponse> {
        let req = req.into_inner();
        let name = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .unwrap_or_default();
        rpc("RunPodSandbox", &name, async {
            let spec = convert::pod_spec(req)?;
            let id = self.rt.run_pod(spec).await?;
            Ok(v1::RunPodSandboxResponse { pod_sandbox_id: id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<v1::StopPodSandboxRequest>,
    ) -> R<v1::StopPodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        rpc("StopPodSandbox", &id, async {
            self.rt.stop_pod(&id).await?;
            Ok(v1::StopPodSandboxResponse {})
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<v1::RemovePodSandboxRequest>,
    ) -> R<v1::RemovePodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        rpc("RemovePodSandbox", &id, async {
            self.rt.remove_pod(&id).await?;
            Ok(v1::RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<v1::PodSandboxStatusRequest>,
    ) -> R<v1::PodSandboxStatusResponse> {
        let req = req.into_inner();
        rpc("PodSandboxStatus", &req.pod_sandbox_id, async {
            let rec = self.rt.pods.get(&req.pod_sandbox_id)?;
            Ok(v1::PodSandboxStatusResponse {
                status: Some(convert::pod_status(&rec)),
                info: if req.verbose {
                    convert::pod_info(&rec)
                } else {
                    Default::default()
                },
                containers_statuses: Vec::new(),
                timestamp: crate::pod::now_nanos(),
            })
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<v1::ListPodSandboxRequest>,
    ) -> R<v1::ListPodSandboxResponse> {
        let filter = convert::pod_filter(req.into_inner().filter);
        rpc("ListPodSandbox", "", async {
            let pods = self.rt.pods.list(&filter);
            Ok(v1::ListPodSandboxResponse {
                items: pods.iter().map(convert::pod_sandbox).collect(),
            })
        })
        .await
    }

    async fn status(&self, req: Request<v1::StatusRequest>) -> R<v1::StatusResponse> {
        let verbose = req.into_inner().verbose;
        rpc("Status", "", async { Ok(self.rt.status(verbose)) }).await
    }

    async fn runtime_config(
        &self,
        _req: Request<v1::RuntimeConfigRequest>,
    ) -> R<v1::RuntimeConfigResponse> {
        rpc("RuntimeConfig", "", async {
            let driver = match self.rt.config.cgroup.driver {
                crate::config::Driver::Systemd => v1::CgroupDriver::Systemd,
                crate::config::Driver::Cgroupfs => v1::CgroupDriver::Cgroupfs,
            };
            Ok(v1::RuntimeConfigResponse {
                linux: Some(v1::LinuxRuntimeConfiguration {
                    cgroup_driver: driver as i32,
                }),
            })
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        req: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> R<v1::UpdateRuntimeConfigResponse> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        rpc("UpdateRuntimeConfig", "", async {
            // Pod addressing comes from the CNI config; the CIDR kubelet hands out is only noted.
            tracing::info!(pod_cidr = %cidr, "kubelet announced the node's pod CIDR");
            Ok(v1::UpdateRuntimeConfigResponse {})
        })
        .await
    }

    async fn create_container(
        &self,
        req: Request<v1::CreateContainerRequest>,
    ) -> R<v1::CreateContainerResponse> {
        let req = req.into_inner();
        let pod = req.pod_sandbox_id.clone();
        rpc("CreateContainer", &pod, async {
            let (pod_id, config) = convert_container::create_request(req)?;
            let id = self.rt.containers.create(&pod_id, config).await?;
            Ok(v1::CreateContainerResponse { container_id: id })
        })
        .await
    }
    async fn start_container(
        &self,
        req: Request<v1::StartContainerRequest>,
    ) -> R<v1::StartContainerResponse> {
        let id = req.into_inner().container_id;
        rpc_container("StartContainer", &id, async {
            self.rt.containers.start(&id).await?;
            Ok(v1::StartContainerResponse {})
        })
        .await
    }
    async fn stop_container(
        &self,
        req: Request<v1::StopContainerRequest>,
    ) -> R<v1::StopContainerResponse> {
        let req = req.into_inner();
        rpc_container("StopContainer", &req.container_id, async {
            let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
            self.rt.containers.stop(&req.container_id, timeout).await?;
            Ok(v1::StopContainerResponse {})
        })
        .await
    }
    async fn remove_container(
        &self,
        req: Request<v1::RemoveContainerRequest>,
    ) -> R<v1::RemoveContainerResponse> {
        let id = req.into_inner().container_id;
        rpc_container("RemoveContainer", &id, async {
            self.rt.containers.remove(&id).await?;
            Ok(v1::RemoveContainerResponse {})
        })
        .await
    }
    async fn list_containers(
        &self,
        req: Request<v1::ListContainersRequest>,
    ) -> R<v1::ListContainersResponse> {
        let req = req.into_inner();
        rpc("ListContainers", "", async {
            let filter = container_out::filter(req.filter.as_ref());
            let records = self.rt.containers.list(&filter).await?;
            Ok(v1::ListContainersResponse {
                containers: records.iter().map(container_out::container).collect(),
            })
        })
        .await
    }
    async fn container_status(
        &self,
        req: Request<v1::ContainerStatusRequest>,
    ) -> R<v1::ContainerStatusResponse> {
        let req = req.into_inner();
        rpc_container("ContainerStatus", &req.container_id, async {
            let rec = self.rt.containers.status(&req.container_id).await?;
            Ok(v1::ContainerStatusResponse {
                status: Some(container_out::status(&rec)),
                info: if req.verbose {
                    container_out::info(&rec)
                } else {
                    Default::default()
                },
            })
        })
        .await
    }
    async fn update_container_resources(
        &self,
        req: Request<v1::UpdateContainerResourcesRequest>,
    ) -> R<v1::UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        rpc_container("UpdateContainerResources", &req.container_id, async {
            let linux = req.linux.as_ref().ok_or_else(|| {
                Error::invalid("linux", "is required (crius runs Linux containers)")
            })?;
            let resources = convert_container::container_resources(linux, "linux")?;
            self.rt
                .containers
                .update_resources(&req.container_id, resources)
                .await?;
            Ok(v1::UpdateContainerResourcesResponse {})
        })
        .await
    }
    async fn reopen_container_log(
        &self,
        req: Request<v1::ReopenContainerLogRequest>,
    ) -> R<v1::ReopenContainerLogResponse> {
        let id = req.into_inner().container_id;
        rpc_container("ReopenContainerLog", &id, async {
            self.rt.containers.reopen_log(&id).await?;
            Ok(v1::ReopenContainerLogResponse {})
        })
        .await
    }
    async fn exec_sync(&self, req: Request<v1::ExecSyncRequest>) -> R<v1::ExecSyncResponse> {
        let req = req.into_inner();
        rpc_container("ExecSync", &req.container_id, async {
            let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
            let out = self
                .rt
                .containers
                .exec_sync(&req.container_id, &req.cmd, timeout)
                .await?;
            Ok(v1::ExecSyncResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.exit_code,
            })
        })
        .await
    }
    async fn exec(&self, req: Request<v1::ExecRequest>) -> R<v1::ExecResponse> {
        let req = req.into_inner();
        rpc_container("Exec", &req.container_id, async {
            convert::stream_flags(req.tty, req.stdin, req.stdout, req.stderr)?;
            let id = self
                .rt
                .containers
                .check_exec(&req.container_id, &req.cmd)
                .await?;
            let url = self.streaming.url(Pending::Exec {
                container_id: id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })?;
            Ok(v1::ExecResponse { url })
        })
        .await
    }
    async fn attach(&self, req: Request<v1::AttachRequest>) -> R<v1::AttachResponse> {
        let req = req.into_inner();
        rpc_container("Attach", &req.container_id, async {
            let rec = self
                .rt
                .containers
                .check_attach(&req.container_id, req.stdin)
                .await?;
            // The container's terminal setting decides the streams (containerd does the same).
            let tty = rec.config.tty;
            convert::stream_flags(tty, req.stdin, req.stdout, req.stderr && !tty)?;
            let url = self.streaming.url(Pending::Attach {
                container_id: rec.id,
                tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr && !tty,
            })?;
            Ok(v1::AttachResponse { url })
        })
        .await
    }
    async fn port_forward(
        &self,
        req: Request<v1::PortForwardRequest>,
    ) -> R<v1::PortForwardResponse> {
        let req = req.into_inner();
        rpc("PortForward", &req.pod_sandbox_id, async {
            let ports = convert::ports(&req.port)?;
            let pod = self.rt.pods.get(&req.pod_sandbox_id)?;
            if pod.observed_state() != crate::pod::record::PodState::Ready {
                return Err(Error::FailedPrecondition(format!(
                    "pod sandbox {} is not ready",
                    pod.id
                )));
            }
            let url = self.streaming.url(Pending::PortForward {
                pod_id: pod.id,
                ports,
            })?;
            Ok(v1::PortForwardResponse { url })
        })
        .await
    }
    async fn container_stats(
        &self,
        r: Request<v1::ContainerStatsRequest>,
    ) -> R<v1::ContainerStatsResponse> {
        let id = r.into_inner().container_id;
        rpc_container("ContainerStats", &id, async {
            let s = self.rt.stats.container(&id).await?;
            Ok(v1::ContainerStatsResponse {
                stats: Some(convert_stats::container_stats(&s)),
            })
        })
        .await
    }
    async fn list_container_stats(
        &self,
        r: Request<v1::ListContainerStatsRequest>,
    ) -> R<v1::ListContainerStatsResponse> {
        let filter = convert_stats::container_filter(r.into_inner().filter);
        rpc("ListContainerStats", "", async {
            let stats = self.rt.stats.list_containers(&filter).await?;
            Ok(v1::ListContainerStatsResponse {
                stats: stats.iter().map(convert_stats::container_stats).collect(),
            })
        })
        .await
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<v1::PodSandboxStatsRequest>,
    ) -> R<v1::PodSandboxStatsResponse> {
        let id = r.into_inner().pod_sandbox_id;
        rpc("PodSandboxStats", &id, async {
            let s = self.rt.stats.pod(&id).await?;
            Ok(v1::PodSandboxStatsResponse {
                stats: Some(convert_stats::pod_stats(&s)),
            })
        })
        .await
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<v1::ListPodSandboxStatsRequest>,
    ) -> R<v1::ListPodSandboxStatsResponse> {
        let filter = convert_stats::pod_filter(r.into_inner().filter);
        rpc("ListPodSandboxStats", "", async {
            let stats = self.rt.stats.list_pods(&filter).await?;
            Ok(v1::ListPodSandboxStatsResponse {
                stats: stats.iter().map(convert_stats::pod_stats).collect(),
            })
        })
        .await
    }
    async fn checkpoint_container(
        &self,
        _r: Request<v1::CheckpointContainerRequest>,
    ) -> R<v1::CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<v1::ContainerEventResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn get_container_events(
        &self,
        _r: Request<v1::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        let rx = self.rt.containers.subscribe();
        let rt = self.rt.clone();
        tracing::debug!("GetContainerEvents subscriber joined");
        let stream = futures_util::stream::unfold((rx, rt), |(mut rx, rt)| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let item = container_out::event(&rt, &ev);
                        return Some((Ok(item), (rx, rt)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            lost = n,
                            "a GetContainerEvents subscriber fell behind; events lost"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
    async fn list_metric_descriptors(
        &self,
        _r: Request<v1::ListMetricDescriptorsRequest>,
    ) -> R<v1::ListMetricDescriptorsResponse> {
        rpc("ListMetricDescriptors", "", async {
            Ok(v1::ListMetricDescriptorsResponse {
                descriptors: self
                    .rt
                    .stats
                    .descriptors()
                    .iter()
                    .map(convert_stats::descriptor)
                    .collect(),
            })
        })
        .await
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> R<v1::ListPodSandboxMetricsResponse> {
        rpc("ListPodSandboxMetrics", "", async {
            let pods = self.rt.stats.pod_metrics().await?;
            Ok(v1::ListPodSandboxMetricsResponse {
                pod_metrics: pods.iter().map(convert_stats::pod_metrics).collect(),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(&self, r: Request<v1::ListImagesRequest>) -> R<v1::ListImagesResponse> {
        let filter = convert_image::list_filter(r.get_ref());
        rpc("ListImages", "", async {
            let images = self.rt.images.list(filter.as_deref())?;
            Ok(v1::ListImagesResponse {
                images: images.iter().map(convert_image::image).collect(),
            })
        })
        .await
    }
    async fn image_status(&self, r: Request<v1::ImageStatusRequest>) -> R<v1::ImageStatusResponse> {
        let req = r.into_inner();
        rpc("ImageStatus", "", async {
            let spec = convert_image::image_spec(req.image.as_ref(), "image.image")?;
            let rec = self.rt.images.status(&spec)?;
            Ok(v1::ImageStatusResponse {
                image: rec.as_ref().map(convert_image::image),
                info: match (&rec, req.verbose) {
                    (Some(rec), true) => convert_image::image_info(rec),
                    _ => Default::default(),
                },
            })
        })
        .await
    }
    async fn pull_image(&self, r: Request<v1::PullImageRequest>) -> R<v1::PullImageResponse> {
        let req = r.into_inner();
        let image = req
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        rpc("PullImage", "", async {
            let (reference, credentials) = convert_image::pull(&req)?;
            tracing::info!(image = %image, "pull requested");
            let id = self.rt.images.pull(reference, credentials).await?;
            Ok(v1::PullImageResponse { image_ref: id })
        })
        .await
    }
    async fn remove_image(&self, r: Request<v1::RemoveImageRequest>) -> R<v1::RemoveImageResponse> {
        let req = r.into_inner();
        rpc("RemoveImage", "", async {
            let spec = convert_image::image_spec(req.image.as_ref(), "image.image")?;
            self.rt.images.remove(&spec).await?;
            Ok(v1::RemoveImageResponse {})
        })
        .await
    }
    async fn image_fs_info(
        &self,
        _r: Request<v1::ImageFsInfoRequest>,
    ) -> R<v1::ImageFsInfoResponse> {
        rpc("ImageFsInfo", "", async {
            let images = self.rt.images.clone();
            let containers = self.rt.config.root.join("containers");
            let (img, ctr) = tokio::task::spawn_blocking(move || {
                let img = convert_image::fs_usage(images.root(), images.usage());
                let (bytes, inodes) = crate::image::content::usage(&containers);
                let ctr = convert_image::fs_usage(
                    &containers,
                    crate::image::service::Usage { bytes, inodes },
                );
                (img, ctr)
            })
            .await
            .map_err(|e| Error::sandbox("measure the image filesystem", e))?;
            Ok(v1::ImageFsInfoResponse {
                image_filesystems: vec![img],
                container_filesystems: vec![ctr],
            })
        })
        .await
    }
}
