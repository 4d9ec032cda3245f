//! The container benchmark: N pods, each RunPodSandbox with the bridge CNI on a private bridge and subnet and
//! one busybox `sleep` container (CreateContainer + StartContainer), on crius and on a private containerd +
//! runc, in one run. Reports each RPC's latency (p50/p95/p99), the full pod start (runp + create + start),
//! the teardown (and each of its RPCs), and the memory (RSS and PSS) of each runtime's own per-pod processes and of its daemon at 0
//! and N pods; then checks that nothing is left: processes, mounts, cgroups, interfaces, IP reservations.
//!
//! Per-pod processes: crius' `crius-pause` (the pid in PodSandboxStatus' verbose info, its exe checked to be
//! the `crius-pause` next to the crius binary) and `crius-monitor` (exe next to the crius binary, started with
//! `--dir <state>/pods/<id>`); containerd's `containerd-shim-runc-v2` (`-address <its socket> -id <pod id>`)
//! and the pause container's process (the verbose pid, a child of that shim). The workload `sleep` is not
//! counted: it is the same busybox process on both.
//!
//! containerd gets what it must have on this machine (`host`): pods with an absolute cgroup_parent created
//! here in every hierarchy (v1 and the v2 tree), a memory cgroup of their own for the shims,
//! `restrict_oom_score_adj`, and a sandbox image (busybox `sleep 2147483647`) built here and served by the
//! local registry.
//!
//! Its pieces are also the CRI benchmark's ([`super::cri`]): `Shared` (the registry, the images, the host as
//! it was), `Instance` (a runtime started with what it needs, or an endpoint already running, and the checks
//! once it is done), `Side` (what differs between them), `start_pod`, `teardown` and `measure_pod`.

mod endpoint;
mod host;
pub(crate) mod report;
mod runtimes;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crius_proto::v1::runtime_service_client::RuntimeServiceClient;
use crius_proto::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    PodSandboxConfig, PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

pub use self::endpoint::EndpointSpec;
pub use self::report::{json, table};
pub(crate) use self::runtimes::{Instance, Side};
use super::containerd;
use super::measure;
use crate::images::{Compression, ImageBuilder, LayerBuilder};
use crate::registry::Registry;
use crate::{client, reaper};

/// Whose pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Crius,
    Containerd,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Crius => "crius",
            Runtime::Containerd => "containerd",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Runtime> {
        match s {
            "crius" => Ok(Runtime::Crius),
            "containerd" => Ok(Runtime::Containerd),
            other => bail!("unknown runtime {other:?} (crius, containerd)"),
        }
    }

    /// The per-pod process next to the pause: crius' monitor, containerd's shim.
    pub fn helper(self) -> &'static str {
        match self {
            Runtime::Crius => "crius-monitor",
            Runtime::Containerd => containerd::SHIM_NAME,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ContainerParams {
    /// Pods per runtime.
    pub pods: usize,
    /// Busybox `sleep` containers per pod (at least one).
    pub containers: usize,
    pub runtimes: Vec<Runtime>,
}

/// Samples in start order: one per pod (run_pod, stop_pod, remove_pod, pod_start, teardown) or one per
/// container (create, start, create_start, stop, remove).
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    pub run_pod: Vec<Duration>,
    pub create: Vec<Duration>,
    pub start: Vec<Duration>,
    /// CreateContainer + StartContainer, back to back (crius forks the container at create, runc at start).
    pub create_start: Vec<Duration>,
    /// RunPodSandbox + CreateContainer + StartContainer of a pod's first container, back to back.
    pub pod_start: Vec<Duration>,
    /// StopContainer (timeout 0).
    pub stop: Vec<Duration>,
    pub remove: Vec<Duration>,
    pub stop_pod: Vec<Duration>,
    pub remove_pod: Vec<Duration>,
    /// StopContainer (timeout 0) + RemoveContainer of each container + StopPodSandbox + RemovePodSandbox.
    pub teardown: Vec<Duration>,
}

impl Latencies {
    /// Adds the samples of one pod's start.
    pub(crate) fn add_start(&mut self, up: &StartTimes) {
        self.run_pod.push(up.run_pod);
        for (&create, &start) in up.create.iter().zip(&up.start) {
            self.create.push(create);
            self.start.push(start);
            self.create_start.push(create + start);
        }
        self.pod_start.extend(up.pod_start());
    }

    /// Adds the samples of one pod's teardown.
    pub(crate) fn add_teardown(&mut self, down: &TeardownTimes) {
        self.stop.extend(&down.stop);
        self.remove.extend(&down.remove);
        self.stop_pod.push(down.stop_pod);
        self.remove_pod.push(down.remove_pod);
        let containers: Duration = down.stop.iter().chain(&down.remove).sum();
        self.teardown
            .push(containers + down.stop_pod + down.remove_pod);
    }
}

/// Memory of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub pid: i32,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl Mem {
    pub fn of(pid: i32) -> anyhow::Result<Mem> {
        let rss_kib = measure::sample(pid)?.rss_kib;
        let pss_kib = measure::pss_kib(pid).with_context(|| format!("no PSS for pid {pid}"))?;
        Ok(Mem {
            pid,
            rss_kib,
            pss_kib,
        })
    }
}

/// The runtime's own processes of one pod, with N pods running.
#[derive(Debug, Clone)]
pub struct PodProcesses {
    pub pod_id: String,
    pub pause: Mem,
    /// crius-monitor or containerd-shim-runc-v2.
    pub helper: Mem,
    /// The workload (`sleep`, one per container), not counted; the pids are for the leak check.
    pub container_pids: Vec<i32>,
}

impl PodProcesses {
    /// Every pid recorded: pause, monitor or shim, the containers (for the checks that they are gone).
    pub fn pids(&self) -> Vec<i32> {
        [self.pause.pid, self.helper.pid]
            .into_iter()
            .chain(self.container_pids.iter().copied())
            .collect()
    }
}

/// Everything measured on one runtime.
#[derive(Debug, Clone)]
pub struct RuntimeRun {
    pub runtime: Runtime,
    /// The bridge its pods were on (deleted by the end of the run).
    pub bridge: String,
    pub latencies: Latencies,
    /// The daemon (crius serve, containerd) with the images pulled and no pod.
    pub daemon_idle: Mem,
    /// The daemon with N pods running.
    pub daemon_loaded: Mem,
    pub pods: Vec<PodProcesses>,
    /// Where the first pod's processes live (`/proc/<pid>/cgroup`) and which cgroup dirs the run made.
    pub cgroups: Vec<String>,
    /// Rules broken (a process in a cgroup it must not be in) and things left behind; empty when clean.
    pub problems: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Report {
    pub pods: usize,
    pub containers: usize,
    pub bench_pid: u32,
    pub runs: Vec<RuntimeRun>,
    /// This process' own cgroups (not a hierarchy root): nothing may appear below them.
    pub own_cgroups: Vec<PathBuf>,
    /// What is left on the host after every runtime is gone; empty when clean.
    pub left: Vec<String>,
}

impl Report {
    /// Every problem of every run and of the host, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.problems
                    .iter()
                    .map(|p| format!("{}: {p}", r.runtime.name()))
            })
            .collect();
        all.extend(self.left.iter().map(|l| format!("host: {l}")));
        all
    }
}

/// What every runtime's run shares: the images, and the host as it was before.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    /// The workload image (busybox, `sleep 3600`) in the registry.
    pub(crate) image: String,
    /// containerd's sandbox image.
    pub(crate) pause_image: String,
    pub(crate) hierarchies: Vec<host::Hierarchy>,
    pub(crate) own_cgroups: Vec<PathBuf>,
    own_before: BTreeSet<PathBuf>,
}

impl Shared {
    /// Starts the local registry, pushes the images and records this process' own cgroups as they are.
    pub(crate) fn prepare() -> anyhow::Result<Shared> {
        // Shims, monitors and pauses orphaned on an error path must re-parent to us (PID 1 here does not reap).
        reaper::install();
        let hierarchies = host::hierarchies();
        let own_cgroups = host::own_cgroup_dirs(&hierarchies);
        let shared = Shared {
            registry: Registry::try_start(None).context("cannot start docker-registry")?,
            image: String::new(),
            pause_image: String::new(),
            own_before: host::tree(&own_cgroups),
            own_cgroups,
            hierarchies,
        };
        push_images(shared)
    }

    /// The directories that appeared or went below this process' own cgroups since [`Shared::prepare`].
    pub(crate) fn own_changes(&self) -> Vec<PathBuf> {
        host::tree(&self.own_cgroups)
            .symmetric_difference(&self.own_before)
            .cloned()
            .collect()
    }

    /// What is left on the host once every runtime is gone: top-level cgroups named after this process,
    /// changes below our own cgroups.
    pub(crate) fn left(&self) -> Vec<String> {
        let mut left = Vec::new();
        let pid = std::process::id();
        for prefix in [format!("crius-bench-{pid}-"), format!("crius-e2e-{pid}-")] {
            for d in host::top_level_named(&self.hierarchies, &prefix) {
                left.push(format!("cgroup left: {}", d.display()));
            }
        }
        for d in self.own_changes() {
            left.push(format!("changed below our own cgroup: {}", d.display()));
        }
        left
    }
}

/// Runs every runtime in turn, each on a fresh instance, and checks the host after each.
pub async fn run(params: &ContainerParams) -> anyhow::Result<Report> {
    if params.pods == 0 || params.containers == 0 || params.runtimes.is_empty() {
        bail!("need at least one pod, one container per pod and one runtime");
    }
    let shared = Shared::prepare()?;
    let mut runs = Vec::new();
    for &runtime in &params.runtimes {
        eprintln!(
            "container: {} with {} pods of {} containers",
            runtime.name(),
            params.pods,
            params.containers
        );
        let instance = Instance::start(&shared, runtime).await?;
        let mut run = drive(&instance.side(), instance.channel(), &shared, params)
            .await
            .with_context(|| instance.log())
            .with_context(|| format!("{} container benchmark", runtime.name()))?;
        let recorded: Vec<i32> = run.pods.iter().flat_map(PodProcesses::pids).collect();
        run.problems.extend(instance.finish(&recorded).await);
        runs.push(run);
    }
    Ok(Report {
        pods: params.pods,
        containers: params.containers,
        bench_pid: std::process::id(),
        runs,
        own_cgroups: shared.own_cgroups.clone(),
        left: shared.left(),
    })
}

/// Builds and pushes the workload image (busybox, `sleep 3600`) and containerd's sandbox image (busybox
/// `sleep 2147483647`: like the pause image, a process that sleeps until killed).
fn push_images(mut shared: Shared) -> anyhow::Result<Shared> {
    let image = ImageBuilder::new()
        .layer(LayerBuilder::busybox().build(Compression::Gzip))
        .env("PATH=/bin")
        .cmd(&["sleep", "3600"])
        .build();
    image.push(&shared.registry, "bench/busybox", "1")?;
    let pause = ImageBuilder::new()
        .layer(LayerBuilder::busybox_with(&["sleep"]).build(Compression::Gzip))
        .entrypoint(&["/bin/sleep", "2147483647"])
        .build();
    pause.push(&shared.registry, "bench/pause", "1")?;
    let host = shared.registry.host();
    shared.image = format!("{host}/bench/busybox:1");
    shared.pause_image = format!("{host}/bench/pause:1");
    Ok(shared)
}

/// A bridge conflist for a private bridge and subnet, with no route out of the subnet and no masquerading:
/// pod traffic stays on the bridge.
fn conflist(name: &str, bridge: &str, subnet: &str, gateway: &str, ipam_dir: &str) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": subnet, "gateway": gateway}]],
            },
        }],
    })
    .to_string()
}

/// PullImage, not timed.
async fn pull(channel: Channel, image: &str) -> anyhow::Result<()> {
    client::images(channel)
        .pull_image(PullImageRequest {
            image: Some(spec(image)),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot pull {image}"))?;
    Ok(())
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// A pod the benchmark started: what to tear down.
#[derive(Debug, Clone)]
pub(crate) struct Started {
    pub(crate) pod_id: String,
    pub(crate) container_ids: Vec<String>,
}

/// The RPC latencies of one pod start.
#[derive(Debug, Clone, Default)]
pub(crate) struct StartTimes {
    pub(crate) run_pod: Duration,
    /// CreateContainer and StartContainer of each container, in turn.
    pub(crate) create: Vec<Duration>,
    pub(crate) start: Vec<Duration>,
}

impl StartTimes {
    /// RunPodSandbox + CreateContainer + StartContainer of the first container: what kubelet waits for
    /// before the pod runs.
    pub(crate) fn pod_start(&self) -> Option<Duration> {
        Some(self.run_pod + *self.create.first()? + *self.start.first()?)
    }
}

/// What [`start_pod`] made and measured; on an error, what it made before it (to tear down).
pub(crate) struct PodStart {
    pub(crate) made: Option<Started>,
    pub(crate) result: anyhow::Result<StartTimes>,
}

/// RunPodSandbox with `config`, then CreateContainer + StartContainer of `containers` busybox `sleep`s, one
/// after the other. Stops at the first error.
pub(crate) async fn start_pod(
    mut rt: RuntimeServiceClient<Channel>,
    config: PodSandboxConfig,
    image: &str,
    containers: usize,
) -> PodStart {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let t0 = Instant::now();
    let request = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let pod_id = match rt.run_pod_sandbox(request).await {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(e) => {
            return PodStart {
                made: None,
                result: Err(anyhow::Error::new(e).context(format!("RunPodSandbox {name}"))),
            };
        }
    };
    let mut times = StartTimes {
        run_pod: t0.elapsed(),
        ..Default::default()
    };
    let mut made = Started {
        pod_id,
        container_ids: Vec::new(),
    };
    for k in 0..containers {
        let container = sleep_container(image, k);
        let pod_id = made.pod_id.clone();
        let r = create_and_start(
            &mut rt,
            &pod_id,
            &config,
            container,
            &mut made.container_ids,
        );
        match r.await {
            Ok((create, start)) => {
                times.create.push(create);
                times.start.push(start);
            }
            Err(e) => {
                return PodStart {
                    made: Some(made),
                    result: Err(e.context(format!("container {k} of pod {name}"))),
                };
            }
        }
    }
    PodStart {
        made: Some(made),
        result: Ok(times),
    }
}

/// CreateContainer then StartContainer; the id goes into `created` as soon as it exists (so a failed start
/// still leaves it to remove). Returns both latencies.
pub(crate) async fn create_and_start(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    sandbox: &PodSandboxConfig,
    config: ContainerConfig,
    created: &mut Vec<String>,
) -> anyhow::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let container_id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let t1 = Instant::now();
    created.push(container_id.clone());
    rt.start_container(StartContainerRequest { container_id })
        .await
        .context("StartContainer")?;
    Ok((t1 - t0, t1.elapsed()))
}

/// The RPC latencies of one pod's teardown.
#[derive(Debug, Clone, Default)]
pub(crate) struct TeardownTimes {
    /// StopContainer and RemoveContainer of each container, in turn.
    pub(crate) stop: Vec<Duration>,
    pub(crate) remove: Vec<Duration>,
    pub(crate) stop_pod: Duration,
    pub(crate) remove_pod: Duration,
}

/// StopContainer (timeout 0) + RemoveContainer of each container, then StopPodSandbox + RemovePodSandbox.
pub(crate) async fn teardown(
    rt: &mut RuntimeServiceClient<Channel>,
    s: &Started,
) -> anyhow::Result<TeardownTimes> {
    let mut times = TeardownTimes::default();
    for id in &s.container_ids {
        let (stop, remove) = stop_and_remove(rt, id).await?;
        times.stop.push(stop);
        times.remove.push(remove);
    }
    let t0 = Instant::now();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: s.pod_id.clone(),
    })
    .await
    .context("StopPodSandbox")?;
    let t1 = Instant::now();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: s.pod_id.clone(),
    })
    .await
    .context("RemovePodSandbox")?;
    times.stop_pod = t1 - t0;
    times.remove_pod = t1.elapsed();
    Ok(times)
}

/// StopContainer (timeout 0: SIGKILL) then RemoveContainer; returns both latencies.
pub(crate) async fn stop_and_remove(
    rt: &mut RuntimeServiceClient<Channel>,
    container_id: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    rt.stop_container(StopContainerRequest {
        container_id: container_id.to_string(),
        timeout: 0,
    })
    .await
    .with_context(|| format!("StopContainer {container_id}"))?;
    let t1 = Instant::now();
    rt.remove_container(RemoveContainerRequest {
        container_id: container_id.to_string(),
    })
    .await
    .with_context(|| format!("RemoveContainer {container_id}"))?;
    Ok((t1 - t0, t1.elapsed()))
}

/// The runtime's own processes of a running pod (the pause from its verbose status, the monitor or shim)
/// and its containers' pids, with the placement rules they break.
pub(crate) async fn measure_pod(
    side: &Side<'_>,
    rt: &mut RuntimeServiceClient<Channel>,
    shared: &Shared,
    s: &Started,
) -> anyhow::Result<(PodProcesses, Vec<String>)> {
    let status = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: s.pod_id.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    let pause =
        verbose_pid(&status.info).with_context(|| format!("no pause pid for pod {}", s.pod_id))?;
    let mut container_pids = Vec::new();
    for id in &s.container_ids {
        let status = rt
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        container_pids
            .push(verbose_pid(&status.info).with_context(|| format!("no pid for container {id}"))?);
    }
    let helper = side.helper(&s.pod_id, pause)?;
    let p = PodProcesses {
        pod_id: s.pod_id.clone(),
        pause: Mem::of(pause)?,
        helper: Mem::of(helper)?,
        container_pids,
    };
    let problems = side.cgroup_problems(shared, &p);
    Ok((p, problems))
}

/// Where `first`'s processes live (`/proc/<pid>/cgroup`) and which cgroup dirs the pods made, for the report.
pub(crate) fn cgroup_report(
    side: &Side<'_>,
    shared: &Shared,
    first: Option<&PodProcesses>,
) -> Vec<String> {
    let mut cgroups = Vec::new();
    if let Some(p) = first {
        let own = [("pause", p.pause.pid), (side.helper_name(), p.helper.pid)];
        let workload = p
            .container_pids
            .iter()
            .take(1)
            .map(|&pid| ("container", pid));
        for (what, pid) in own.into_iter().chain(workload) {
            cgroups.extend(
                host::cgroups_of(pid)
                    .into_iter()
                    .map(|l| format!("{what} {pid}: {l}")),
            );
        }
    }
    cgroups.extend(side.cgroup_summary(shared));
    cgroups
}

/// Starts the pods one after the other (each with its containers one after the other), measures, tears them
/// down.
async fn drive(
    side: &Side<'_>,
    channel: Channel,
    shared: &Shared,
    params: &ContainerParams,
) -> anyhow::Result<RuntimeRun> {
    let pods = params.pods;
    let runtime = side
        .runtime()
        .context("the container benchmark runs the runtimes it starts")?;
    let mut rt = client::runtime(channel);
    let daemon = side.daemon_pid().context("the daemon is not running")?;
    let daemon_idle = Mem::of(daemon)?;
    let mut lat = Latencies::default();
    let mut started = Vec::new();
    for i in 0..pods {
        let PodStart { made, result } = start_pod(
            rt.clone(),
            side.pod_config(i),
            &shared.image,
            params.containers,
        )
        .await;
        lat.add_start(&result?);
        started.extend(made);
    }
    // Let the daemons' background work after the last start (event handling, GC of buffers) settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut procs = Vec::new();
    let mut problems = Vec::new();
    for s in &started {
        let (p, broken) = measure_pod(side, &mut rt, shared, s).await?;
        problems.extend(broken);
        procs.push(p);
    }
    let daemon_loaded = Mem::of(daemon)?;
    let cgroups = cgroup_report(side, shared, procs.first());
    for d in shared.own_changes() {
        problems.push(format!(
            "with {pods} pods, changed below our own cgroup: {}",
            d.display()
        ));
    }
    for s in &started {
        let down = teardown(&mut rt, s)
            .await
            .with_context(|| format!("teardown of pod {}", s.pod_id))?;
        lat.add_teardown(&down);
    }
    Ok(RuntimeRun {
        runtime,
        bridge: side.bridge().to_string(),
        latencies: lat,
        daemon_idle,
        daemon_loaded,
        pods: procs,
        cgroups,
        problems,
    })
}

/// The `k`th container of a pod: `sleep`, `sleep-1`, ...
pub(crate) fn sleep_container(image: &str, k: usize) -> ContainerConfig {
    let name = if k == 0 {
        "sleep".to_string()
    } else {
        format!("sleep-{k}")
    };
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        }),
        image: Some(spec(image)),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// The `pid` of a verbose status' `info["info"]` JSON (crius and containerd both put it there).
fn verbose_pid(info: &std::collections::HashMap<String, String>) -> Option<i32> {
    let v: Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("pid")?
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .filter(|&p| p > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn conflist_keeps_traffic_on_the_bridge() {
        let text = conflist("n", "br0", "10.250.1.0/24", "10.250.1.1", "/tmp/ipam");
        let v: Value = serde_json::from_str(&text).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["bridge"], "br0");
        assert_eq!(bridge["ipMasq"], false);
        assert!(bridge["ipam"].get("routes").is_none(), "{text}");
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/ipam");
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn verbose_pid_is_read_from_the_info_json() {
        let info = std::collections::HashMap::from([(
            "info".to_string(),
            r#"{"pid": 42, "x": 1}"#.to_string(),
        )]);
        assert_eq!(verbose_pid(&info), Some(42));
        assert_eq!(verbose_pid(&Default::default()), None);
    }
}
