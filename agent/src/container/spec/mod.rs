//! CRI ContainerConfig + the pod sandbox + the image config -> the OCI runtime spec, which the executor applies
//! as it is. Validation that needs the image or the host (users, host paths, devices, capabilities the agent holds,
//! seccomp profile files) happens here; the rest was done by [`ContainerConfig::validate`].

mod image;
mod linux;
mod mounts;
mod process;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, Root, Spec};

pub use self::image::{ImageConfig, parse_signal};
use super::caps;
use super::config::ContainerConfig;
use super::user::UserDb;
use crate::error::Result;
use crate::image::ImageRecord;
use crate::pod::spec::PodSpec;

/// The OCI runtime spec version crius writes.
pub const OCI_VERSION: &str = "1.2.0";

/// What the sandbox contributes to a container's spec.
#[derive(Debug, Clone, Copy)]
pub struct SandboxView<'a> {
    pub pod_id: &'a str,
    /// Namespace modes, hostname, labels, ...
    pub pod: &'a PodSpec,
    /// Bind-mounted namespace files of the pod by kind ("net", "ipc", "uts", "pid"), as in `PodRecord.namespaces`;
    /// a kind absent here is the host's namespace (no entry in linux.namespaces).
    pub namespaces: &'a BTreeMap<String, PathBuf>,
    /// The pod's directory with the files the container mounts: hostname, resolv.conf, hosts.
    pub pod_dir: &'a Path,
    /// The pod's /dev/shm (`PodRecord.shm`); `None` for a pod in the host's IPC namespace (the host's /dev/shm is
    /// then bound, as containerd does) or, otherwise, a private tmpfs.
    pub shm: Option<&'a Path>,
    /// For pid TARGET mode: the target container's init pid (its /proc/<pid>/ns/pid is joined).
    pub target_pid: Option<i32>,
}

/// Everything [`build`] needs.
pub struct SpecInputs<'a> {
    pub id: &'a str,
    pub config: &'a ContainerConfig,
    /// The image's config JSON: Entrypoint, Cmd, Env, WorkingDir, User, StopSignal (Volumes are ignored).
    pub image: &'a ImageRecord,
    pub sandbox: SandboxView<'a>,
    /// Where the executor mounts the overlay rootfs (spec.root.path).
    pub rootfs: &'a Path,
    /// The container's cgroup, absolute from the cgroup2 root ("/kubepods/pod<uid>/crius-<id>").
    pub cgroup_path: &'a str,
    /// /etc/passwd and /etc/group of the image (usually a [`super::user::LayerUsers`]).
    pub users: &'a dyn UserDb,
}

/// What the spec depends on from the host the agent runs on; a seam so tests need no particular host.
pub(crate) trait Host {
    /// The capabilities the agent itself holds (its bounding set): what a container can be given at most.
    fn capabilities(&self) -> BTreeSet<&'static str>;
    /// The node's host name (HOSTNAME of host-network containers).
    fn hostname(&self) -> String;
    /// /proc/self/mountinfo, for propagation checks.
    fn mountinfo(&self) -> io::Result<String>;
}

/// The machine the agent runs on.
struct RealHost;

impl Host for RealHost {
    fn capabilities(&self) -> BTreeSet<&'static str> {
        // Unreadable /proc: assume everything known and let the executor say what it cannot grant.
        caps::host_bounding().unwrap_or_else(|| caps::all_names().collect())
    }

    fn hostname(&self) -> String {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    }

    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }
}

/// Builds the container's OCI runtime spec.
pub fn build(inputs: &SpecInputs) -> Result<Spec> {
    build_on(inputs, &RealHost)
}

pub(crate) fn build_on(inputs: &SpecInputs, host: &dyn Host) -> Result<Spec> {
    let config = inputs.config;
    tracing::debug!(
        container = inputs.id,
        pod = inputs.sandbox.pod_id,
        "building the OCI spec"
    );
    let image = ImageConfig::of(inputs.image)?;
    let caps = process::capabilities(config, host)?;
    let process = process::process(inputs, &image, &caps, host)?;
    let plan = mounts::mounts(inputs, host)?;
    let (devices, device_rules) = mounts::devices(config)?;
    let seccomp = linux::seccomp(config, &caps.effective_names())?;
    let (masked, readonly) = linux::masked_and_readonly(config);

    let mut root = Root::default();
    root.set_path(inputs.rootfs.to_path_buf());
    root.set_readonly(Some(config.security.readonly_rootfs));

    // Linux::default() carries youki's defaults: every field is set.
    let mut lx = Linux::default();
    lx.set_uid_mappings(None);
    lx.set_gid_mappings(None);
    // The pod's sysctls were applied to its namespaces when it was created.
    lx.set_sysctl(None);
    lx.set_resources(Some(linux::resources(config, device_rules)));
    // Empty when the agent manages no cgroups on this host.
    lx.set_cgroups_path(
        (!inputs.cgroup_path.is_empty()).then(|| PathBuf::from(inputs.cgroup_path)),
    );
    lx.set_namespaces(Some(linux::namespaces(inputs)?));
    lx.set_devices(Some(devices));
    lx.set_seccomp(seccomp);
    lx.set_rootfs_propagation(Some(plan.rootfs_propagation.to_owned()));
    lx.set_masked_paths(Some(masked));
    lx.set_readonly_paths(Some(readonly));
    lx.set_mount_label(None);
    lx.set_intel_rdt(None);
    lx.set_personality(None);

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_owned());
    spec.set_root(Some(root));
    spec.set_mounts(Some(plan.mounts));
    spec.set_process(Some(process));
    // The UTS namespace is the pod's: its host name is already set.
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(Some(annotations(inputs)));
    spec.set_linux(Some(lx));
    Ok(spec)
}

/// The annotations containerd puts on a container's spec (they help when debugging at the OCI level).
fn annotations(inputs: &SpecInputs) -> HashMap<String, String> {
    let pod = inputs.sandbox.pod;
    [
        ("io.kubernetes.cri.container-type", "container"),
        (
            "io.kubernetes.cri.container-name",
            inputs.config.name.as_str(),
        ),
        (
            "io.kubernetes.cri.image-name",
            inputs.config.image.image.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-id", inputs.sandbox.pod_id),
        ("io.kubernetes.cri.sandbox-name", pod.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            pod.namespace.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-uid", pod.uid.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The container's cgroup limits (the agent applies them; the spec only records them).
pub fn resources(config: &ContainerConfig) -> crius_sandbox::cgroup::Resources {
    config.cgroup_resources()
}

/// The image's StopSignal by its canonical name ("SIGQUIT"); `None` when the image sets none, or sets something
/// that is not a signal (Docker would refuse to build that; the caller then uses SIGTERM, as Kubernetes expects).
pub fn stop_signal(image: &ImageRecord) -> Option<String> {
    let config = ImageConfig::of(image).ok()?;
    config.stop_signal.as_deref().and_then(parse_signal)
}
