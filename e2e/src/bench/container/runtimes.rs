//! What differs between the runtimes: starting each with what it needs (crius through the harness;
//! containerd with the cgroups, network and images made for it), finding its per-pod processes, checking where
//! they live, and what each may leave behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crius_proto::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, PodSandboxConfig, PodSandboxMetadata,
};

use super::{
    ContainerParams, PodProcesses, Runtime, RuntimeRun, Shared, conflist, drive, host, pull,
};
use crate::bench::containerd::{self, Containerd, PodSettings};
use crate::config::NetSlot;
use crate::{Crius, Options, client, namespaces, procfs};

pub(super) async fn run_crius(
    shared: &Shared,
    params: &ContainerParams,
) -> anyhow::Result<RuntimeRun> {
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
    let side = Side::Crius(&crius);
    let mut run = drive(&side, channel, shared, params).await?;
    run.problems.extend(crius.leaks().await);
    drop(crius);
    run.problems.extend(gone(&run));
    Ok(run)
}

/// containerd and what it was given, torn down in field order: containerd (with its shims and mounts), then
/// the cgroups (killing whatever is still in them), the bridge, the IPAM dir, the network slot.
pub(super) struct ContainerdSetup {
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

pub(super) async fn run_containerd(
    shared: &Shared,
    params: &ContainerParams,
) -> anyhow::Result<RuntimeRun> {
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
    pull(channel.clone(), &shared.image).await?;
    let side = Side::Containerd(&setup);
    let mut run = drive(&side, channel, shared, params)
        .await
        .with_context(|| format!("containerd log:\n{}", setup.c.log()))?;
    run.problems.extend(containerd_leaks(&setup, &run).await);
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
        run.problems
            .push(format!("cannot remove cgroup {}", d.display()));
    }
    drop(bridge);
    drop(ipam);
    run.problems.extend(gone(&run));
    Ok(run)
}

/// What is still there once the runtime is gone: recorded per-pod pids alive, its bridge.
fn gone(run: &RuntimeRun) -> Vec<String> {
    let mut left: Vec<String> = run
        .pods
        .iter()
        .flat_map(|p| {
            [p.pause.pid, p.helper.pid]
                .into_iter()
                .chain(p.container_pids.clone())
        })
        .filter(|&pid| procfs::is_alive(pid))
        .map(|pid| {
            let comm = procfs::stat(pid).map(|s| s.comm).unwrap_or_default();
            format!("process {pid} ({comm}) still alive")
        })
        .collect();
    if std::path::Path::new("/sys/class/net")
        .join(&run.bridge)
        .exists()
    {
        left.push(format!("bridge {} left", run.bridge));
    }
    left
}

/// What containerd left once every pod was removed (it still runs).
async fn containerd_leaks(s: &ContainerdSetup, run: &RuntimeRun) -> Vec<String> {
    let mut leaks = Vec::new();
    let mut rt = client::runtime(s.c.channel());
    match rt.list_pod_sandbox(ListPodSandboxRequest::default()).await {
        Ok(r) => leaks.extend(
            r.into_inner()
                .items
                .iter()
                .map(|p| format!("pod {} still listed", p.id)),
        ),
        Err(e) => leaks.push(format!("ListPodSandbox failed: {e}")),
    }
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
    let recorded: Vec<i32> = run
        .pods
        .iter()
        .flat_map(|p| {
            [p.pause.pid, p.helper.pid]
                .into_iter()
                .chain(p.container_pids.clone())
        })
        .collect();
    containerd::reap(&recorded);
    leaks.extend(
        s.c.shims()
            .iter()
            .map(|(pid, id)| format!("shim {pid} (pod {id}) still alive")),
    );
    leaks.extend(
        s.pods_cg
            .procs()
            .iter()
            .map(|pid| format!("process {pid} still in the pods' cgroup")),
    );
    leaks.extend(
        s.shim_cg
            .procs()
            .iter()
            .map(|pid| format!("process {pid} still in the shims' cgroup")),
    );
    // Below `/<parent>/pod<uid>` runc made one cgroup per container and must have removed it; the pod level
    // is kubelet's to remove (here: ours, once containerd is gone).
    let depth = |p: &PathBuf| p.components().count();
    let base = s.pods_cg.tree().iter().map(depth).min().unwrap_or(0);
    leaks.extend(
        s.pods_cg
            .tree()
            .iter()
            .filter(|d| depth(d) >= base + 2)
            .map(|d| format!("container cgroup left: {}", d.display())),
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

/// The parts of a run that differ between the runtimes.
pub(super) enum Side<'a> {
    Crius(&'a Crius),
    Containerd(&'a ContainerdSetup),
}

impl Side<'_> {
    pub(super) fn runtime(&self) -> Runtime {
        match self {
            Side::Crius(_) => Runtime::Crius,
            Side::Containerd(_) => Runtime::Containerd,
        }
    }

    pub(super) fn bridge(&self) -> &str {
        match self {
            Side::Crius(c) => c.bridge(),
            Side::Containerd(s) => &s.bridge.0,
        }
    }

    pub(super) fn daemon_pid(&self) -> anyhow::Result<i32> {
        match self {
            Side::Crius(c) => c.pid().context("crius is not running"),
            Side::Containerd(s) => s.c.pid().context("containerd is not running"),
        }
    }

    /// A pod config as kubelet sends it: namespaces network POD, pid CONTAINER, ipc POD, an absolute
    /// cgroup_parent (crius: under its instance's parent; containerd: under the dirs made for it).
    pub(super) fn pod_config(&self, i: usize) -> PodSandboxConfig {
        let name = format!("bench{i}");
        match self {
            Side::Crius(c) => c.pod_config(&name),
            Side::Containerd(s) => {
                let uid = format!("{:x}b{i:05}", std::process::id());
                PodSandboxConfig {
                    metadata: Some(PodSandboxMetadata {
                        name: name.clone(),
                        uid: uid.clone(),
                        namespace: "bench".into(),
                        attempt: 0,
                    }),
                    hostname: name,
                    log_directory: s.c.dir().join("logs").join(&uid).display().to_string(),
                    linux: Some(LinuxPodSandboxConfig {
                        cgroup_parent: format!("{}/pod{uid}", s.pods_cg.path),
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
        }
    }

    /// The pod's monitor (crius) or shim (containerd), after checking that `pause` is the pause process.
    pub(super) fn helper(&self, pod_id: &str, pause: i32) -> anyhow::Result<i32> {
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
        }
    }

    /// The placement rules (containerd): the shim in its own memory cgroup, the pause and the container in
    /// every hierarchy (v1 and v2) below the pods' parent, none of them in (or below) this process' own cgroups.
    pub(super) fn cgroup_problems(&self, shared: &Shared, p: &PodProcesses) -> Vec<String> {
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
    pub(super) fn cgroup_summary(&self, shared: &Shared) -> Vec<String> {
        let prefix = match self {
            Side::Crius(c) => c.cgroup_parent().trim_start_matches('/').to_string(),
            Side::Containerd(s) => s.pods_cg.path.trim_start_matches('/').to_string(),
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
