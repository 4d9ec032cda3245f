//! The Linux section's decisions: namespaces, masked and read-only paths, seccomp, and the resources as the OCI
//! spec writes them.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxResources,
    LinuxSeccomp,
};

use super::SpecInputs;
use crate::container::config::{ContainerConfig, SeccompProfile};
use crate::error::{Error, Result};
use crate::pod::spec::NsMode;

/// Paths a non-privileged container cannot read (containerd's and runc's defaults).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths a non-privileged container can only read.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const NS_FIELD: &str = "config.linux.security_context.namespace_options";

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path);
    n
}

/// The namespaces to join or create. An entry with a path joins that namespace, one without creates a new one, a
/// namespace without an entry is the host's.
///
/// - network, UTS, IPC: always the pod's (kubelet sends a container the same modes as its pod); a kind the pod has
///   no bind-mounted file for is the host's (NODE).
/// - PID: POD joins the pod's PID namespace when the pod has one; in a pod that is in the node's PID namespace it
///   is the node's, and in a pod with one namespace per container (pod mode CONTAINER) it is the container's own.
///   CONTAINER creates one, NODE is the host's, TARGET joins `/proc/<target_pid>/ns/pid`.
/// - mount and cgroup: always new (containerd keeps a cgroup namespace for privileged containers too).
pub(super) fn namespaces(inputs: &SpecInputs) -> Result<Vec<LinuxNamespace>> {
    let sb = &inputs.sandbox;
    let pod_ns = |kind: &str| sb.namespaces.get(kind).cloned();
    let mut out = Vec::new();
    let pid = &inputs.config.security.namespaces;
    match pid.pid {
        NsMode::Pod => match pod_ns("pid") {
            Some(path) => out.push(ns(LinuxNamespaceType::Pid, Some(path))),
            None if sb.pod.namespaces.pid == NsMode::Node => {}
            None => out.push(ns(LinuxNamespaceType::Pid, None)),
        },
        NsMode::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
        NsMode::Node => {}
        NsMode::Target => {
            let Some(target) = sb.target_pid.filter(|p| *p > 0) else {
                return Err(Error::FailedPrecondition(format!(
                    "{NS_FIELD}.target_id: container {:?} has no running process whose PID namespace could be joined",
                    pid.target_id
                )));
            };
            out.push(ns(
                LinuxNamespaceType::Pid,
                Some(PathBuf::from(format!("/proc/{target}/ns/pid"))),
            ));
        }
    }
    for (kind, typ) in [
        ("net", LinuxNamespaceType::Network),
        ("ipc", LinuxNamespaceType::Ipc),
        ("uts", LinuxNamespaceType::Uts),
    ] {
        if let Some(path) = pod_ns(kind) {
            out.push(ns(typ, Some(path)));
        }
    }
    out.push(ns(LinuxNamespaceType::Mount, None));
    out.push(ns(LinuxNamespaceType::Cgroup, None));
    Ok(out)
}

/// Masked and read-only paths: none for a privileged container, else the security context's lists when given
/// (the CRI: they "can be passed directly to the OCI spec"; an empty list cannot be told from an unset one in
/// protobuf, so empty means the defaults, as in containerd), else the defaults.
pub(super) fn masked_and_readonly(config: &ContainerConfig) -> (Vec<String>, Vec<String>) {
    let sc = &config.security;
    if sc.privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |given: &Vec<String>, default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|s| (*s).to_owned()).collect()
        } else {
            given.clone()
        }
    };
    (
        pick(&sc.masked_paths, MASKED_PATHS),
        pick(&sc.readonly_paths, READONLY_PATHS),
    )
}

/// The seccomp filter. Privileged or Unconfined (the CRI default): none. RuntimeDefault: crius' default profile
/// for the container's capabilities. Localhost: the JSON profile at the given absolute path.
pub(super) fn seccomp(
    config: &ContainerConfig,
    effective_caps: &[String],
) -> Result<Option<LinuxSeccomp>> {
    if config.security.privileged {
        return Ok(None);
    }
    match &config.security.seccomp {
        SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::RuntimeDefault => Ok(Some(crius_sandbox::seccomp::runtime_default(
            effective_caps,
        ))),
        SeccompProfile::Localhost(path) => {
            let field = "config.linux.security_context.seccomp.localhost_ref";
            let bytes = std::fs::read(path).map_err(|e| {
                Error::invalid(
                    field,
                    format!("cannot read the seccomp profile {path:?}: {e}"),
                )
            })?;
            crius_sandbox::seccomp::parse_profile(&bytes, effective_caps)
                .map(Some)
                .map_err(|e| {
                    Error::invalid(
                        field,
                        format!(
                            "the seccomp profile {path:?} is invalid: {}",
                            crate::error::chain(&e)
                        ),
                    )
                })
        }
    }
}

/// The container's limits as the OCI spec records them (ContainerStatus shows them; the agent writes the cgroup
/// itself from [`super::resources`]). `devices` are the device cgroup rules.
pub(super) fn resources(
    config: &ContainerConfig,
    devices: Vec<oci_spec::runtime::LinuxDeviceCgroup>,
) -> LinuxResources {
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));
    if let Some(r) = &config.resources {
        let mut cpu = LinuxCpu::default();
        cpu.set_period((r.cpu_period > 0).then_some(r.cpu_period as u64));
        cpu.set_quota((r.cpu_quota != 0).then_some(r.cpu_quota));
        cpu.set_shares((r.cpu_shares > 0).then_some(r.cpu_shares as u64));
        cpu.set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()));
        cpu.set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));
        out.set_cpu(Some(cpu));
        let mut mem = LinuxMemory::default();
        mem.set_limit((r.memory_limit_in_bytes != 0).then_some(r.memory_limit_in_bytes));
        mem.set_swap((r.memory_swap_limit_in_bytes != 0).then_some(r.memory_swap_limit_in_bytes));
        out.set_memory(Some(mem));
        if !r.hugepage_limits.is_empty() {
            out.set_hugepage_limits(Some(
                r.hugepage_limits
                    .iter()
                    .map(|h| {
                        let mut l = LinuxHugepageLimit::default();
                        l.set_page_size(h.page_size.clone());
                        l.set_limit(i64::try_from(h.limit).unwrap_or(i64::MAX));
                        l
                    })
                    .collect(),
            ));
        }
        if !r.unified.is_empty() {
            out.set_unified(Some(
                r.unified
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            ));
        }
    }
    out
}
