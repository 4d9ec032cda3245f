//! CRI container messages to domain types and back. Field names in errors are the protobuf paths
//! (`config.linux.security_context.run_as_user`).
// The container RPCs are wired up in the next steps of issue 4; until then only the tests use these.
#![cfg_attr(not(test), allow(dead_code))]

use crius_proto::v1;

use crate::container::caps;
use crate::container::config::{
    CapabilityChanges, ContainerConfig, ContainerNamespaces, ContainerResources, Device, EnvVar,
    GroupsPolicy, HugepageLimit, ImageRef, Mount, Propagation, SeccompProfile, SecurityContext,
    id_from, normalize_container_path,
};
use crate::error::{Error, Result};
use crate::pod::spec::NsMode;

const SC: &str = "config.linux.security_context";

/// CreateContainer: the pod sandbox id and the validated config.
pub fn create_request(req: v1::CreateContainerRequest) -> Result<(String, ContainerConfig)> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Error::invalid("pod_sandbox_id", "must not be empty"));
    }
    let config = req
        .config
        .ok_or_else(|| Error::invalid("config", "is required"))?;
    Ok((req.pod_sandbox_id, container_config(config)?))
}

/// A CRI ContainerConfig as crius' domain type, validated as far as that needs neither the image nor the host.
pub fn container_config(c: v1::ContainerConfig) -> Result<ContainerConfig> {
    let meta = c
        .metadata
        .ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    let image = c
        .image
        .ok_or_else(|| Error::invalid("config.image", "is required"))?;
    if !c.cdi_devices.is_empty() {
        return Err(Error::invalid(
            "config.CDI_devices",
            "CDI devices are not supported by crius",
        ));
    }
    let mounts = c
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| mount(i, m))
        .collect::<Result<Vec<_>>>()?;
    let linux = c.linux.unwrap_or_default();
    let resources = linux
        .resources
        .as_ref()
        .map(|r| container_resources(r, "config.linux.resources"))
        .transpose()?;
    let security = security_context(linux.security_context.unwrap_or_default())?;
    let config = ContainerConfig {
        name: meta.name,
        attempt: meta.attempt,
        image: ImageRef {
            image: image.image,
            user_specified_image: image.user_specified_image,
            annotations: image.annotations.into_iter().collect(),
        },
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c
            .envs
            .into_iter()
            .map(|kv| EnvVar {
                key: kv.key,
                value: kv.value,
            })
            .collect(),
        mounts,
        devices: c
            .devices
            .into_iter()
            .map(|d| Device {
                container_path: normalize_container_path(&d.container_path),
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        log_path: c.log_path,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources,
        security,
    };
    config.validate()?;
    Ok(config)
}

fn mount(i: usize, m: &v1::Mount) -> Result<Mount> {
    let field = |f: &str| format!("config.mounts[{i}].{f}");
    if m.image.as_ref().is_some_and(|img| !img.image.is_empty()) {
        return Err(Error::invalid(
            field("image"),
            "image volume mounts are not supported by crius yet",
        ));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(Error::invalid(
            field("uidMappings"),
            "id-mapped mounts need user namespaces, which crius does not support yet",
        ));
    }
    let propagation = match v1::MountPropagation::try_from(m.propagation) {
        Ok(v1::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(v1::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(v1::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(Error::invalid(
                field("propagation"),
                format!("unknown propagation {}", m.propagation),
            ));
        }
    };
    Ok(Mount {
        container_path: normalize_container_path(&m.container_path),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation,
        recursive_read_only: m.recursive_read_only,
    })
}

/// LinuxContainerResources, validated; `prefix` is the message's protobuf path ("config.linux.resources" in
/// CreateContainer, "linux" in UpdateContainerResources).
pub fn container_resources(
    r: &v1::LinuxContainerResources,
    prefix: &str,
) -> Result<ContainerResources> {
    let out = ContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    out.validate(prefix)?;
    Ok(out)
}

/// The resources back as CRI reports them (ContainerStatus).
pub fn resources_out(r: &ContainerResources) -> v1::LinuxContainerResources {
    v1::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| v1::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// The mounts back as CRI reports them (ContainerStatus).
pub fn mounts_out(mounts: &[Mount]) -> Vec<v1::Mount> {
    mounts
        .iter()
        .map(|m| v1::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: match m.propagation {
                Propagation::Private => v1::MountPropagation::PropagationPrivate,
                Propagation::HostToContainer => v1::MountPropagation::PropagationHostToContainer,
                Propagation::Bidirectional => v1::MountPropagation::PropagationBidirectional,
            } as i32,
            recursive_read_only: m.recursive_read_only,
            ..Default::default()
        })
        .collect()
}

fn security_context(sc: v1::LinuxContainerSecurityContext) -> Result<SecurityContext> {
    refuse_mac(&sc)?;
    let nso = sc.namespace_options.clone().unwrap_or_default();
    if let Some(userns) = &nso.userns_options
        && userns.mode != v1::NamespaceMode::Node as i32
    {
        return Err(Error::invalid(
            format!("{SC}.namespace_options.userns_options"),
            "user namespaces are not supported by crius yet",
        ));
    }
    let namespaces = ContainerNamespaces {
        network: ns_mode(nso.network, "network")?,
        pid: ns_mode(nso.pid, "pid")?,
        ipc: ns_mode(nso.ipc, "ipc")?,
        target_id: nso.target_id,
    };
    let caps = sc.capabilities.clone().unwrap_or_default();
    let capabilities = CapabilityChanges {
        add: cap_names(&caps.add_capabilities, "add_capabilities", true)?,
        drop: cap_names(&caps.drop_capabilities, "drop_capabilities", true)?,
        add_ambient: cap_names(
            &caps.add_ambient_capabilities,
            "add_ambient_capabilities",
            false,
        )?,
    };
    let supplemental_groups = sc
        .supplemental_groups
        .iter()
        .enumerate()
        .map(|(i, g)| id_from(*g, format!("{SC}.supplemental_groups[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    let supplemental_groups_policy =
        match v1::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
            Ok(v1::SupplementalGroupsPolicy::Merge) => GroupsPolicy::Merge,
            Ok(v1::SupplementalGroupsPolicy::Strict) => GroupsPolicy::Strict,
            Err(_) => {
                return Err(Error::invalid(
                    format!("{SC}.supplemental_groups_policy"),
                    format!("unknown policy {}", sc.supplemental_groups_policy),
                ));
            }
        };
    Ok(SecurityContext {
        privileged: sc.privileged,
        capabilities,
        namespaces,
        run_as_user: sc
            .run_as_user
            .map(|v| id_from(v.value, format!("{SC}.run_as_user")))
            .transpose()?,
        run_as_group: sc
            .run_as_group
            .map(|v| id_from(v.value, format!("{SC}.run_as_group")))
            .transpose()?,
        run_as_username: (!sc.run_as_username.is_empty()).then(|| sc.run_as_username.clone()),
        readonly_rootfs: sc.readonly_rootfs,
        supplemental_groups,
        supplemental_groups_policy,
        no_new_privs: sc.no_new_privs,
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        seccomp: seccomp(&sc)?,
    })
}

/// SELinux options and AppArmor profiles: these hosts have neither, so asking for a profile fails rather than
/// running the container unconfined. RuntimeDefault (the protobuf default of SecurityProfile, so also what an empty
/// message means) and Unconfined are accepted: on a host without AppArmor the runtime's default is no profile,
/// which is what containerd does too (it fails only a Localhost profile there).
fn refuse_mac(sc: &v1::LinuxContainerSecurityContext) -> Result<()> {
    if let Some(se) = &sc.selinux_options
        && [&se.user, &se.role, &se.r#type, &se.level]
            .iter()
            .any(|s| !s.is_empty())
    {
        return Err(Error::FailedPrecondition(format!(
            "{SC}.selinux_options: SELinux is not available on this host"
        )));
    }
    if let Some(p) = &sc.apparmor {
        match v1::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(
                v1::security_profile::ProfileType::RuntimeDefault
                | v1::security_profile::ProfileType::Unconfined,
            ) => {}
            Ok(v1::security_profile::ProfileType::Localhost) => {
                return Err(Error::FailedPrecondition(format!(
                    "{SC}.apparmor: apparmor is not available on this host (profile {:?} asked)",
                    p.localhost_ref
                )));
            }
            Err(_) => {
                return Err(Error::invalid(
                    format!("{SC}.apparmor.profile_type"),
                    format!("unknown profile type {}", p.profile_type),
                ));
            }
        }
        return Ok(());
    }
    #[allow(deprecated)]
    let deprecated = sc.apparmor_profile.as_str();
    match deprecated {
        "" | "runtime/default" | "unconfined" => Ok(()),
        p if p.starts_with("localhost/") => Err(Error::FailedPrecondition(format!(
            "{SC}.apparmor_profile: apparmor is not available on this host (profile {p:?} asked)"
        ))),
        p => Err(Error::invalid(
            format!("{SC}.apparmor_profile"),
            format!("{p:?} is not runtime/default, unconfined or localhost/<profile>"),
        )),
    }
}

/// The `seccomp` SecurityProfile, else the deprecated `seccomp_profile_path`, else Unconfined (the CRI default:
/// "", "which is identical with unconfined"; kubelet sends RuntimeDefault explicitly when a pod asks for it).
fn seccomp(sc: &v1::LinuxContainerSecurityContext) -> Result<SeccompProfile> {
    if let Some(p) = &sc.seccomp {
        return match v1::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(v1::security_profile::ProfileType::RuntimeDefault) => {
                Ok(SeccompProfile::RuntimeDefault)
            }
            Ok(v1::security_profile::ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
            Ok(v1::security_profile::ProfileType::Localhost) => {
                if p.localhost_ref.is_empty() {
                    Err(Error::invalid(
                        format!("{SC}.seccomp.localhost_ref"),
                        "must be set for a Localhost profile",
                    ))
                } else {
                    Ok(SeccompProfile::Localhost(p.localhost_ref.clone()))
                }
            }
            Err(_) => Err(Error::invalid(
                format!("{SC}.seccomp.profile_type"),
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(file) if file.starts_with('/') => Ok(SeccompProfile::Localhost(file.to_owned())),
            _ => Err(Error::invalid(
                format!("{SC}.seccomp_profile_path"),
                format!(
                    "{p:?} is not runtime/default, docker/default, unconfined or localhost/<absolute path>"
                ),
            )),
        },
    }
}

/// Capability names normalized to `CAP_*`; "ALL" only where the CRI allows it (add and drop).
fn cap_names(names: &[String], list: &str, all_ok: bool) -> Result<Vec<String>> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| match caps::normalize(n) {
            Some(caps::ALL) if !all_ok => Err(Error::invalid(
                format!("{SC}.capabilities.{list}[{i}]"),
                "ALL is not allowed here; name the ambient capabilities",
            )),
            Some(c) => Ok(c.to_owned()),
            None => Err(Error::invalid(
                format!("{SC}.capabilities.{list}[{i}]"),
                format!("unknown capability {n:?}"),
            )),
        })
        .collect()
}

fn ns_mode(v: i32, which: &str) -> Result<NsMode> {
    match v1::NamespaceMode::try_from(v) {
        Ok(v1::NamespaceMode::Pod) => Ok(NsMode::Pod),
        Ok(v1::NamespaceMode::Container) => Ok(NsMode::Container),
        Ok(v1::NamespaceMode::Node) => Ok(NsMode::Node),
        Ok(v1::NamespaceMode::Target) => Ok(NsMode::Target),
        Err(_) => Err(Error::invalid(
            format!("{SC}.namespace_options.{which}"),
            format!("unknown namespace mode {v}"),
        )),
    }
}

#[cfg(test)]
mod tests;
