//! What differs between the runtimes: starting each with what it needs (crius through the harness;
//! containerd with the cgroups, network and images made for it; an endpoint as it is), finding its per-pod
//! processes, checking where they live, and what each may leave behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crius_proto::v1::runtime_service_client::RuntimeServiceClient;
use crius_proto::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, PodSandbox, PodSandboxConfig, PodSandboxMetadata,
};
use tonic::transport::Channel;

use super::endpoint::{Endpoint, EndpointSpec};
use super::{PodProcesses, Runtime, Shared, conflist, host, pull};
use crate::bench::containerd::{self, Containerd, PodSettings};
use crate::config::NetSlot;
use crate::{Crius, Options, client, namespaces, procfs};

/// A runtime the benchmark started (or an endpoint it was pointed at), with what was made for it.
/// [`Instance::finish`] checks what it left, stops it, removes what was made for it, and checks again.
pub(crate) enum Instance {
    Crius(Box<Crius>, Channel),
    Containerd(Box<ContainerdSetup>),
    Endpoint(Box<Endpoint>),
}

impl Instance {
    /// Starts `runtime` on fresh private directories with the bridge CNI, and pulls the images into it (not
    /// timed).
    pub(crate) async fn start(shared: &Shared, runtime: Runtime) -> anyhow::Result<Instance> {
        let instance = match runtime {
            Runtime::Crius => start_crius(shared).await,
            Runtime::Containerd => start_containerd(shared).await,
        };
        instance.with_context(|| format!("cannot start {}", runtime.name()))
    }

    /// Connects to an endpoint the benchmark did not start (see [`Endpoint`]).
    pub(crate) async fn endpoint(shared: &Shared, spec: &EndpointSpec) -> anyhow::Result<Instance> {
        Ok(Instance::Endpoint(Box::new(
            Endpoint::connect(shared, spec).await?,
        )))
    }

    pub(crate) fn side(&self) -> Side<'_> {
        match self {
            Instance::Crius(c, _) => Side::Crius(c),
            Instance::Containerd(s) => Side::Containerd(s),
            Instance::Endpoint(e) => Side::Endpoint(e),
        }
    }

    pub(crate) fn channel(&self) -> Channel {
        match self {
            Instance::Crius(_, channel) => channel.clone(),
            Instance::Containerd(s) => s.c.channel(),
            Instance::Endpoint(e) => e.channel(),
        }
    }

    /// containerd's log, for an error's context (crius prints its own when a test panics; an endpoint's is
    /// not ours).
    pub(crate) fn log(&self) -> String {
        match self {
            Instance::Containerd(s) => format!("containerd log:\n{}", s.c.log()),
            Instance::Crius(..) | Instance::Endpoint(_) => String::new(),
        }
    }

    /// Once every pod is removed: what the runtime still lists or left (processes, mounts, cgroups, network),
    /// then stops it and removes what was made for it, then which of the `recorded` pids (its per-pod
    /// processes and containers, seen during the run) are still alive and whether its bridge is left.
    pub(crate) async fn finish(self, recorded: &[i32]) -> Vec<String> {
        let bridge = self.side().bridge().to_string();
        let mut problems = match self {
            Instance::Crius(c, channel) => {
                let leaks = c.leaks().await;
                drop(channel);
                drop(c);
                leaks
            }
            Instance::Containerd(setup) => finish_containerd(*setup, recorded).await,
            Instance::Endpoint(e) => e.finish(recorded).await,
        };
        problems.extend(gone(recorded, &bridge));
        problems
    }
}

async fn start_crius(shared: &Shared) -> anyhow::Result<Instance> {
    let opts = Options::new().set("log_level", "\"warn\"").conflist(
        "10-bench.conflist",
        &conflist(
            "crius-bench",
            "@BRIDGE@",
            "@SUBNET@",
            "@GATEWAY@",
            "@IPAM_DIR@",
        ),
    );
    let crius = Crius::try_start(opts).await?;
    let channel = client::connect(&crius.paths().socket).await?;
    pull(channel.clone(), &shared.image).await?;
    Ok(Instance::Crius(Box::new(crius), channel))
}

/// containerd and what it was given, torn down in field order: containerd (with its shims and mounts), then
/// the cgroups (killing whatever is still in them), the bridge, the IPAM dir, the network slot.
pub(crate) struct ContainerdSetup {
    c: Containerd,
    pods_cg: host::CgroupDirs,
    shim_cg: host::CgroupDirs,
    bridge: Bridge,
    ipam: tempfile::TempDir,
    network: String,
    _net: NetSlot,
}

/// A bridge the CNI plugin creates for us, deleted on Drop.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        host::delete_link(&self.0);
    }
}

async fn start_containerd(shared: &Shared) -> anyhow::Result<Instance> {
    if !containerd::available() {
        bail!(
            "{} is missing (apt-get install containerd runc)",
            containerd::binary().display()
        );
    }
    let pid = std::process::id();
    let memory: Vec<&host::Hierarchy> = shared
        .hierarchies
        .iter()
        .filter(|h| !h.v2 && h.name.split(',').any(|n| n == "memory"))
        .collect();
    if memory.is_empty() {
        bail!("no cgroup v1 memory hierarchy: the shims' cgroup (ShimCgroup) needs one");
    }
    // runc (cgroupfs driver) on a hybrid host puts each container at the absolute path in every v1 hierarchy
    // and in the v2 tree as well, so the parent is made in all of them.
    let all: Vec<&host::Hierarchy> = shared.hierarchies.iter().collect();
    let pods_cg = host::CgroupDirs::create(&all, &format!("crius-bench-{pid}-pods"))?;
    let shim_cg = host::CgroupDirs::create(&memory, &format!("crius-bench-{pid}-shim"))?;
    let net = NetSlot::reserve(9000)?;
    let ipam = tempfile::Builder::new()
        .prefix("crius-bench-ipam-")
        .tempdir()?;
    let network = format!("crius-bench-{pid}");
    let settings = PodSettings {
        sandbox_image: shared.pause_image.clone(),
        shim_cgroup: shim_cg.path.clone(),
        conflist: conflist(
            &network,
            &net.bridge,
            &net.subnet(),
            &net.gateway(),
            &ipam.path().to_string_lossy(),
        ),
    };
    let c = Containerd::start_with(&[shared.registry.host()], Some(&settings)).await?;
    let setup = ContainerdSetup {
        c,
        pods_cg,
        shim_cg,
        bridge: Bridge(net.bridge.clone()),
        ipam,
        network,
        _net: net,
    };
    let channel = setup.c.channel();
    pull(channel.clone(), &shared.pause_image).await?;
    pull(channel, &shared.image).await?;
    Ok(Instance::Containerd(Box::new(setup)))
}

/// What containerd left, then containerd stopped and the cgroups, bridge and IPAM dir made for it removed.
async fn finish_containerd(setup: ContainerdSetup, recorded: &[i32]) -> Vec<String> {
    let mut problems = containerd_leaks(&setup, recorded).await;
    let ContainerdSetup {
        c,
        mut pods_cg,
        mut shim_cg,
        bridge,
        ipam,
        ..
    } = setup;
    drop(c);
    for d in pods_cg.remove().into_iter().chain(shim_cg.remove()) {
        problems.push(format!("cannot remove cgroup {}", d.display()));
    }
    drop(bridge);
    drop(ipam);
    problems
}

/// The command names a pod's processes have (`containerd-shim-runc-v2` is cut to 15 bytes; the workload and
/// containerd's sandbox are busybox `sleep`s).
const POD_COMMS: &[&str] = &["crius-pause", "crius-monitor", "containerd-shim", "sleep"];

/// What is still there once the runtime is gone: recorded pids alive, its bridge (if it had one of ours). A
/// recorded pid counts only while it is still a pod's kind of process: pids are reused (by another runtime's
/// threads, say, when runtimes run side by side).
fn gone(recorded: &[i32], bridge: &str) -> Vec<String> {
    let mut left: Vec<String> = recorded
        .iter()
        .copied()
        .filter(|&pid| procfs::is_alive(pid))
        .filter_map(|pid| {
            let comm = procfs::stat(pid)?.comm;
            POD_COMMS
                .contains(&comm.as_str())
                .then(|| format!("process {pid} ({comm}) still alive"))
        })
        .collect();
    if !bridge.is_empty() && std::path::Path::new("/sys/class/net").join(bridge).exists() {
        left.push(format!("bridge {bridge} left"));
    }
    left
}

/// What containerd left once every pod was removed (it still runs).
async fn containerd_leaks(s: &ContainerdSetup, recorded: &[i32]) -> Vec<String> {
    let mut rt = client::runtime(s.c.channel());
    let mut leaks = listed_pods(&mut rt, |_| true).await;
    match rt.list_containers(ListContainersRequest::default()).await {
        Ok(r) => leaks.extend(
            r.into_inner()
                .containers
                .iter()
                .map(|c| format!("container {} still listed", c.id)),
        ),
        Err(e) => leaks.push(format!("ListContainers failed: {e}")),
    }
    // A shim exits once its last container is deleted; give it a moment, then reap it (it is ours).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.c.shims().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    containerd::reap(recorded);
    leaks.extend(
        s.c.shims()
            .iter()
            .map(|(pid, id)| format!("shim {pid} (pod {id}) still alive")),
    );
    leaks.extend(pods_cgroup_leaks(&s.pods_cg));
    leaks.extend(
        s.shim_cg
            .procs()
            .iter()
            .map(|pid| format!("process {pid} still in the shims' cgroup")),
    );
    leaks.extend(
        procfs::mounts_under(s.c.dir())
            .iter()
            .map(|m| format!("mount left: {}", m.line)),
    );
    leaks.extend(
        host::bridge_ports(&s.bridge.0)
            .into_iter()
            .map(|l| format!("interface still on bridge {}: {l}", s.bridge.0)),
    );
    leaks.extend(
        host::files_under(s.ipam.path())
            .into_iter()
            .filter(|f| {
                let n = f.file_name().unwrap_or_default().to_string_lossy();
                n != "lock" && !n.starts_with("last_reserved_ip")
            })
            .map(|f| format!("IP reservation left: {}", f.display())),
    );
    leaks.extend(
        host::files_under(std::path::Path::new("/var/lib/cni/results"))
            .into_iter()
            .filter(|f| f.to_string_lossy().contains(&s.network))
            .map(|f| format!("CNI result cache left: {}", f.display())),
    );
    leaks
}

/// The pods ListPodSandbox still lists that `ours` says are ours, one line each.
pub(super) async fn listed_pods(
    rt: &mut RuntimeServiceClient<Channel>,
    ours: impl Fn(&PodSandbox) -> bool,
) -> Vec<String> {
    match rt.list_pod_sandbox(ListPodSandboxRequest::default()).await {
        Ok(r) => r
            .into_inner()
            .items
            .iter()
            .filter(|p| ours(p))
            .map(|p| format!("pod {} still listed", p.id))
            .collect(),
        Err(e) => vec![format!("ListPodSandbox failed: {e}")],
    }
}

/// What is left in the pods' cgroup parent made for runc (containerd's, an endpoint's) once every pod is
/// removed: processes, and the container cgroups runc made below `<parent>/pod<uid>` and must have removed
/// (the pod level is kubelet's to remove: here ours, with the parent).
pub(super) fn pods_cgroup_leaks(pods_cg: &host::CgroupDirs) -> Vec<String> {
    let mut leaks: Vec<String> = pods_cg
        .procs()
        .iter()
        .map(|pid| format!("process {pid} still in the pods' cgroup"))
        .collect();
    let depth = |p: &PathBuf| p.components().count();
    let tree = pods_cg.tree();
    let base = tree.iter().map(depth).min().unwrap_or(0);
    leaks.extend(
        tree.iter()
            .filter(|d| depth(d) >= base + 2)
            .map(|d| format!("container cgroup left: {}", d.display())),
    );
    leaks
}

/// The parts of a run that differ between the runtimes.
pub(crate) enum Side<'a> {
    Crius(&'a Crius),
    Containerd(&'a ContainerdSetup),
    Endpoint(&'a Endpoint),
}

impl Side<'_> {
    /// Which runtime the benchmark started; `None` for an endpoint.
    pub(crate) fn runtime(&self) -> Option<Runtime> {
        match self {
            Side::Crius(_) => Some(Runtime::Crius),
            Side::Containerd(_) => Some(Runtime::Containerd),
            Side::Endpoint(_) => None,
        }
    }

    /// The name in the report: the runtime's, or the one given with `--endpoint NAME=...`.
    pub(crate) fn name(&self) -> &str {
        match self {
            Side::Crius(_) => Runtime::Crius.name(),
            Side::Containerd(_) => Runtime::Containerd.name(),
            Side::Endpoint(e) => &e.spec.name,
        }
    }

    /// What the per-pod process next to the pause is called in the report.
    pub(crate) fn helper_name(&self) -> &'static str {
        match self {
            Side::Crius(_) => Runtime::Crius.helper(),
            Side::Containerd(_) => Runtime::Containerd.helper(),
            Side::Endpoint(_) => "helper",
        }
    }

    /// Whether the runtime's per-pod processes can be found ([`Side::helper`]): not for an endpoint.
    pub(crate) fn knows_pod_processes(&self) -> bool {
        self.runtime().is_some()
    }

    /// The bridge its pods are on; empty for an endpoint (its network is its own).
    pub(crate) fn bridge(&self) -> &str {
        match self {
            Side::Crius(c) => c.bridge(),
            Side::Containerd(s) => &s.bridge.0,
            Side::Endpoint(_) => "",
        }
    }

    /// The daemon (crius serve, containerd; an endpoint's when given `--pid`).
    pub(crate) fn daemon_pid(&self) -> Option<i32> {
        match self {
            Side::Crius(c) => c.pid(),
            Side::Containerd(s) => s.c.pid(),
            Side::Endpoint(e) => e.spec.pid,
        }
    }

    /// The workload image, as this runtime can pull it.
    pub(crate) fn image<'s>(&'s self, shared: &'s Shared) -> &'s str {
        match self {
            Side::Crius(_) | Side::Containerd(_) => &shared.image,
            Side::Endpoint(e) => e.image(),
        }
    }

    /// A pod config as kubelet sends it: namespaces network POD, pid CONTAINER, ipc POD, an absolute
    /// cgroup_parent (crius: under its instance's parent; containerd and an endpoint: under the dirs made for
    /// it).
    pub(crate) fn pod_config(&self, i: usize) -> PodSandboxConfig {
        let name = format!("bench{i}");
        let uid = format!("{:x}b{i:05}", std::process::id());
        match self {
            Side::Crius(c) => c.pod_config(&name),
            Side::Containerd(s) => kubelet_pod_config(
                &name,
                "bench",
                &uid,
                &s.c.dir().join("logs").join(&uid),
                &format!("{}/pod{uid}", s.pods_cg.path),
            ),
            Side::Endpoint(e) => e.pod_config(&name, &uid),
        }
    }

    /// The pod's monitor (crius) or shim (containerd), after checking that `pause` is the pause process.
    pub(crate) fn helper(&self, pod_id: &str, pause: i32) -> anyhow::Result<i32> {
        match self {
            Side::Crius(c) => {
                if procfs::exe(pause).as_deref() != Some(c.pause_binary()) {
                    bail!(
                        "pod {pod_id}: pid {pause} is not {}",
                        c.pause_binary().display()
                    );
                }
                host::find_process(&c.monitor_bin(), &c.pod_dir(pod_id).to_string_lossy())
            }
            Side::Containerd(s) => {
                let shims: Vec<i32> =
                    s.c.shims()
                        .into_iter()
                        .filter(|(_, id)| id == pod_id)
                        .map(|(pid, _)| pid)
                        .collect();
                let [shim] = shims[..] else {
                    bail!("pod {pod_id}: {} shims, not one", shims.len());
                };
                if procfs::stat(pause).map(|s| s.ppid) != Some(shim) {
                    bail!("pod {pod_id}: pause {pause} is not a child of its shim {shim}");
                }
                Ok(shim)
            }
            Side::Endpoint(e) => bail!(
                "pod {pod_id}: the per-pod processes of endpoint {} are not known",
                e.spec.name
            ),
        }
    }

    /// The placement rules (containerd): the shim in its own memory cgroup, the pause and the container in
    /// every hierarchy (v1 and v2) below the pods' parent, none of them in (or below) this process' own cgroups.
    pub(crate) fn cgroup_problems(&self, shared: &Shared, p: &PodProcesses) -> Vec<String> {
        let Side::Containerd(s) = self else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        if host::memory_cgroup(p.helper.pid).as_deref() != Some(s.shim_cg.path.as_str()) {
            problems.push(format!(
                "shim {} is in memory cgroup {:?}, not {}",
                p.helper.pid,
                host::memory_cgroup(p.helper.pid),
                s.shim_cg.path
            ));
        }
        for &pid in std::iter::once(&p.pause.pid).chain(&p.container_pids) {
            for line in host::cgroups_of(pid) {
                let Some((_, path)) = line.split_once(':') else {
                    continue;
                };
                if !path.starts_with(&format!("{}/", s.pods_cg.path)) {
                    problems.push(format!("process {pid} of pod {} is in {line}", p.pod_id));
                }
            }
        }
        for &pid in [p.helper.pid, p.pause.pid].iter().chain(&p.container_pids) {
            for dir in host::cgroup_dirs(&shared.hierarchies, &pid.to_string()) {
                if shared.own_cgroups.iter().any(|own| dir.starts_with(own)) {
                    problems.push(format!(
                        "process {pid} is in our own cgroup {}",
                        dir.display()
                    ));
                }
            }
        }
        problems
    }

    /// Which cgroup dirs the pods made, per hierarchy (for the report).
    pub(crate) fn cgroup_summary(&self, shared: &Shared) -> Vec<String> {
        let prefix = match self {
            Side::Crius(c) => c.cgroup_parent().trim_start_matches('/').to_string(),
            Side::Containerd(s) => s.pods_cg.path.trim_start_matches('/').to_string(),
            Side::Endpoint(e) => e.cgroup_parent().trim_start_matches('/').to_string(),
        };
        shared
            .hierarchies
            .iter()
            .filter_map(|h| {
                let top = h.mount.join(&prefix);
                let n = host::tree(std::slice::from_ref(&top)).len();
                (n > 0).then(|| format!("{}: {n} dirs at and below /{prefix}", h.name))
            })
            .collect()
    }
}

/// The pod config kubelet sends (cgroupfs driver): `cgroup_parent` absolute, namespaces network POD, pid
/// CONTAINER, ipc POD.
pub(super) fn kubelet_pod_config(
    name: &str,
    namespace: &str,
    uid: &str,
    log_directory: &Path,
    cgroup_parent: &str,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_directory.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(
                    NamespaceMode::Pod,
                    NamespaceMode::Container,
                    NamespaceMode::Pod,
                )),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
