//! CRI messages to domain types and back. Field names in errors are the protobuf paths.

use std::collections::BTreeMap;

use crius_proto::v1;
use crius_sandbox::cgroup::Resources;

use crate::error::{Error, Result};
use crate::pod::PodFilter;
use crate::pod::record::{PodRecord, PodState};
use crate::pod::spec::{DnsConfig, NamespaceModes, NsMode, PodSpec, PortMapping, Protocol};

pub fn pod_spec(req: v1::RunPodSandboxRequest) -> Result<PodSpec> {
    let config = req
        .config
        .ok_or_else(|| Error::invalid("config", "is required"))?;
    let meta = config
        .metadata
        .ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    for (field, value) in [
        ("config.metadata.name", &meta.name),
        ("config.metadata.namespace", &meta.namespace),
        ("config.metadata.uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if value.contains(['/', '\0', '\n']) || value.len() > 253 {
            return Err(Error::invalid(
                field,
                format!("{value:?} contains '/', NUL or a newline, or is too long"),
            ));
        }
    }
    if !crate::runtime::RUNTIME_HANDLERS.contains(&req.runtime_handler.as_str()) {
        return Err(Error::invalid(
            "runtime_handler",
            format!(
                "unknown runtime handler {:?} (crius has only the default handler)",
                req.runtime_handler
            ),
        ));
    }
    let linux = config.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let nso = sc.namespace_options.unwrap_or_default();
    let namespaces = NamespaceModes {
        network: ns_mode(
            nso.network,
            "config.linux.security_context.namespace_options.network",
        )?,
        pid: ns_mode(
            nso.pid,
            "config.linux.security_context.namespace_options.pid",
        )?,
        ipc: ns_mode(
            nso.ipc,
            "config.linux.security_context.namespace_options.ipc",
        )?,
    };
    if let Some(userns) = &nso.userns_options
        && userns.mode != v1::NamespaceMode::Node as i32
    {
        return Err(Error::invalid(
            "config.linux.security_context.namespace_options.userns_options",
            "user namespaces for pods are not supported by crius yet",
        ));
    }
    if sc
        .selinux_options
        .as_ref()
        .is_some_and(|s| !s.r#type.is_empty() || !s.level.is_empty())
    {
        return Err(Error::invalid(
            "config.linux.security_context.selinux_options",
            "SELinux is not available on this host",
        ));
    }
    if sc
        .apparmor
        .as_ref()
        .is_some_and(|p| p.profile_type == v1::security_profile::ProfileType::Localhost as i32)
    {
        return Err(Error::invalid(
            "config.linux.security_context.apparmor",
            "AppArmor is not available on this host",
        ));
    }
    let mut ports = Vec::new();
    for (i, p) in config.port_mappings.iter().enumerate() {
        let protocol = match v1::Protocol::try_from(p.protocol) {
            Ok(v1::Protocol::Tcp) => Protocol::Tcp,
            Ok(v1::Protocol::Udp) => Protocol::Udp,
            Ok(v1::Protocol::Sctp) => Protocol::Sctp,
            Err(_) => {
                return Err(Error::invalid(
                    format!("config.port_mappings[{i}].protocol"),
                    format!("unknown protocol {}", p.protocol),
                ));
            }
        };
        let container_port = port(p.container_port, false)
            .map_err(|r| Error::invalid(format!("config.port_mappings[{i}].container_port"), r))?;
        let host_port = port(p.host_port, true)
            .map_err(|r| Error::invalid(format!("config.port_mappings[{i}].host_port"), r))?;
        ports.push(PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip: p.host_ip.clone(),
        });
    }
    let dns = config.dns_config.map(|d| DnsConfig {
        servers: d.servers,
        searches: d.searches,
        options: d.options,
    });
    Ok(PodSpec {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        attempt: meta.attempt,
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns,
        ports,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        namespaces,
        sysctls: linux.sysctls.into_iter().collect(),
        resources: linux.resources.as_ref().map(resources),
        overhead: linux.overhead.as_ref().map(resources),
        runtime_handler: req.runtime_handler,
    })
}

fn port(p: i32, zero_ok: bool) -> std::result::Result<u16, String> {
    match p {
        0 if zero_ok => Ok(0),
        1..=65535 => Ok(p as u16),
        _ => Err(format!("{p} is not a port number (1-65535)")),
    }
}

fn ns_mode(v: i32, field: &str) -> Result<NsMode> {
    match v1::NamespaceMode::try_from(v) {
        Ok(v1::NamespaceMode::Pod) => Ok(NsMode::Pod),
        Ok(v1::NamespaceMode::Container) => Ok(NsMode::Container),
        Ok(v1::NamespaceMode::Node) => Ok(NsMode::Node),
        Ok(v1::NamespaceMode::Target) => Ok(NsMode::Target),
        Err(_) => Err(Error::invalid(field, format!("unknown namespace mode {v}"))),
    }
}

pub fn resources(r: &v1::LinuxContainerResources) -> Resources {
    let pos = |v: i64| (v > 0).then_some(v);
    Resources {
        cpu_period: (r.cpu_period > 0).then_some(r.cpu_period as u64),
        cpu_quota: (r.cpu_quota != 0).then_some(r.cpu_quota),
        cpu_shares: (r.cpu_shares > 0).then_some(r.cpu_shares as u64),
        memory_limit: pos(r.memory_limit_in_bytes),
        memory_swap_limit: (r.memory_swap_limit_in_bytes != 0)
            .then_some(r.memory_swap_limit_in_bytes),
        cpuset_cpus: (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()),
        cpuset_mems: (!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()),
        pids_limit: None,
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn state(s: PodState) -> i32 {
    match s {
        PodState::Ready => v1::PodSandboxState::SandboxReady as i32,
        PodState::NotReady | PodState::Creating => v1::PodSandboxState::SandboxNotready as i32,
    }
}

fn metadata(rec: &PodRecord) -> v1::PodSandboxMetadata {
    v1::PodSandboxMetadata {
        name: rec.spec.name.clone(),
        uid: rec.spec.uid.clone(),
        namespace: rec.spec.namespace.clone(),
        attempt: rec.spec.attempt,
    }
}

fn ns_mode_out(m: NsMode) -> i32 {
    (match m {
        NsMode::Pod => v1::NamespaceMode::Pod,
        NsMode::Container => v1::NamespaceMode::Container,
        NsMode::Node => v1::NamespaceMode::Node,
        NsMode::Target => v1::NamespaceMode::Target,
    }) as i32
}

pub fn pod_status(rec: &PodRecord) -> v1::PodSandboxStatus {
    let ips = rec.ips();
    let network = ips.first().map(|first| v1::PodSandboxNetworkStatus {
        ip: first.to_string(),
        additional_ips: ips[1..]
            .iter()
            .map(|ip| v1::PodIp { ip: ip.to_string() })
            .collect(),
    });
    let ns = rec.spec.namespaces;
    v1::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        state: state(rec.observed_state()),
        created_at: rec.created_at,
        network: Some(network.unwrap_or_default()),
        linux: Some(v1::LinuxPodSandboxStatus {
            namespaces: Some(v1::Namespace {
                options: Some(v1::NamespaceOption {
                    network: ns_mode_out(ns.network),
                    pid: ns_mode_out(ns.pid),
                    ipc: ns_mode_out(ns.ipc),
                    target_id: String::new(),
                    userns_options: None,
                }),
            }),
        }),
        labels: rec.spec.labels.clone().into_iter().collect(),
        annotations: rec.spec.annotations.clone().into_iter().collect(),
        runtime_handler: rec.spec.runtime_handler.clone(),
    }
}

pub fn pod_sandbox(rec: &PodRecord) -> v1::PodSandbox {
    v1::PodSandbox {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        state: state(rec.observed_state()),
        created_at: rec.created_at,
        labels: rec.spec.labels.clone().into_iter().collect(),
        annotations: rec.spec.annotations.clone().into_iter().collect(),
        runtime_handler: rec.spec.runtime_handler.clone(),
    }
}

/// The verbose info of PodSandboxStatus: one JSON object under "info".
pub fn pod_info(rec: &PodRecord) -> std::collections::HashMap<String, String> {
    let cg = rec.cgroup.as_ref();
    let info = serde_json::json!({
        "id": rec.id,
        "pid": rec.pause.map(|p| p.pid),
        "netnsPath": rec.netns(),
        "namespaces": rec.namespaces,
        "podDir": rec.pod_dir,
        "cgroupPath": cg.map(|c| &c.pod_abs),
        "sandboxCgroupPath": cg.map(|c| &c.sandbox_abs),
        "cniNetwork": rec.network.as_ref().map(|n| &n.list.name),
        "cniConfigSource": rec.network.as_ref().map(|n| &n.origin),
        "cniResult": rec.network.as_ref().and_then(|n| n.result.clone()),
        "unenforcedLimits": rec.unenforced,
        "oomScoreAdj": rec.oom_score_adj,
        "shm": rec.shm,
        "sysctls": rec.spec.sysctls,
    });
    [("info".to_owned(), info.to_string())]
        .into_iter()
        .collect()
}

pub fn pod_filter(f: Option<v1::PodSandboxFilter>) -> PodFilter {
    let Some(f) = f else {
        return PodFilter::default();
    };
    PodFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state: f.state.map(|s| {
            if s.state == v1::PodSandboxState::SandboxReady as i32 {
                PodState::Ready
            } else {
                PodState::NotReady
            }
        }),
        labels: f.label_selector.into_iter().collect(),
    }
}

/// The streams an Exec or Attach asks for: at least one, and no stderr beside a terminal (its output is one
/// stream).
pub fn stream_flags(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
    if !(stdin || stdout || stderr) {
        return Err(Error::invalid(
            "stdin",
            "one of stdin, stdout and stderr must be true",
        ));
    }
    if tty && stderr {
        return Err(Error::invalid(
            "stderr",
            "must be false with tty: a terminal's output is one stream",
        ));
    }
    Ok(())
}

/// PortForward's ports: each 1-65535.
pub fn ports(ports: &[i32]) -> Result<Vec<u16>> {
    ports
        .iter()
        .map(|&p| {
            u16::try_from(p)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| Error::invalid("port", format!("{p} is not a port (1-65535)")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<()>) -> String {
        match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn streams_need_one_of_three_and_no_stderr_beside_a_terminal() {
        assert!(stream_flags(false, false, true, false).is_ok());
        assert!(stream_flags(true, true, true, false).is_ok());
        assert_eq!(field(stream_flags(false, false, false, false)), "stdin");
        assert_eq!(field(stream_flags(true, false, true, true)), "stderr");
    }

    #[test]
    fn forwarded_ports_are_1_to_65535() {
        assert_eq!(ports(&[80, 65535]).ok(), Some(vec![80, 65535]));
        for bad in [0, -1, 65536] {
            assert!(
                matches!(ports(&[bad]), Err(Error::InvalidArgument { ref field, .. }) if field == "port"),
                "{bad}"
            );
        }
    }

    fn request() -> v1::RunPodSandboxRequest {
        v1::RunPodSandboxRequest {
            config: Some(v1::PodSandboxConfig {
                metadata: Some(v1::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u1".into(),
                    namespace: "default".into(),
                    attempt: 1,
                }),
                hostname: "web".into(),
                port_mappings: vec![v1::PortMapping {
                    protocol: v1::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                }],
                linux: Some(v1::LinuxPodSandboxConfig {
                    cgroup_parent: "/kubepods/podu1".into(),
                    resources: Some(v1::LinuxContainerResources {
                        cpu_quota: 50_000,
                        cpu_period: 100_000,
                        memory_limit_in_bytes: 1 << 27,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        }
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn converts_a_full_request() {
        let spec = pod_spec(request()).unwrap();
        assert_eq!((spec.name.as_str(), spec.attempt), ("web", 1));
        assert_eq!(spec.ports[0].protocol, Protocol::Udp);
        assert_eq!(
            (spec.ports[0].container_port, spec.ports[0].host_port),
            (53, 5353)
        );
        assert_eq!(spec.namespaces.pid, NsMode::Pod);
        let r = spec.resources.unwrap();
        assert_eq!(
            (r.cpu_quota, r.cpu_period, r.memory_limit),
            (Some(50_000), Some(100_000), Some(1 << 27))
        );
        assert_eq!(r.cpu_shares, None);
    }

    #[test]
    fn names_the_bad_field() {
        let mut r = request();
        r.config.as_mut().unwrap().metadata = None;
        assert_eq!(field_of(pod_spec(r).unwrap_err()), "config.metadata");
        for (i, field) in ["name", "namespace", "uid"].into_iter().enumerate() {
            let mut r = request();
            let m = r.config.as_mut().unwrap().metadata.as_mut().unwrap();
            [&mut m.name, &mut m.namespace, &mut m.uid][i].clear();
            assert_eq!(
                field_of(pod_spec(r).unwrap_err()),
                format!("config.metadata.{field}")
            );
        }
        let mut r = request();
        r.config.as_mut().unwrap().port_mappings[0].container_port = 0;
        assert_eq!(
            field_of(pod_spec(r).unwrap_err()),
            "config.port_mappings[0].container_port"
        );
        let mut r = request();
        r.config.as_mut().unwrap().port_mappings[0].host_port = 70000;
        assert_eq!(
            field_of(pod_spec(r).unwrap_err()),
            "config.port_mappings[0].host_port"
        );
        let mut r = request();
        r.config.as_mut().unwrap().port_mappings[0].protocol = 7;
        assert_eq!(
            field_of(pod_spec(r).unwrap_err()),
            "config.port_mappings[0].protocol"
        );
        let mut r = request();
        r.runtime_handler = "kata".into();
        assert_eq!(field_of(pod_spec(r).unwrap_err()), "runtime_handler");
        assert_eq!(
            field_of(pod_spec(v1::RunPodSandboxRequest::default()).unwrap_err()),
            "config"
        );
    }

    #[test]
    fn spec_validation_names_the_field() {
        let mut spec = pod_spec(request()).unwrap();
        spec.hostname = "bad_host".into();
        assert_eq!(field_of(spec.validate().unwrap_err()), "config.hostname");
        let mut spec = pod_spec(request()).unwrap();
        spec.sysctls
            .insert("kernel.core_pattern".into(), "|/x".into());
        assert!(field_of(spec.validate().unwrap_err()).starts_with("config.linux.sysctls"));
        let mut spec = pod_spec(request()).unwrap();
        spec.sysctls
            .insert("net.ipv4.ip_forward".into(), "1\nnet.x=1".into());
        assert!(field_of(spec.validate().unwrap_err()).starts_with("config.linux.sysctls"));
        let mut spec = pod_spec(request()).unwrap();
        spec.hostname.clear();
        spec.validate().unwrap();
        assert_eq!(spec.hostname, "web");
        let mut spec = pod_spec(request()).unwrap();
        spec.namespaces.pid = NsMode::Target;
        assert_eq!(
            field_of(spec.validate().unwrap_err()),
            "config.linux.security_context.namespace_options"
        );
        let mut spec = pod_spec(request()).unwrap();
        spec.namespaces.network = NsMode::Node;
        spec.annotations
            .insert("kubernetes.io/ingress-bandwidth".into(), "lots".into());
        assert_eq!(
            field_of(spec.validate().unwrap_err()),
            "config.annotations[\"kubernetes.io/ingress-bandwidth\"]"
        );
    }

    #[test]
    fn filters() {
        let f = pod_filter(Some(v1::PodSandboxFilter {
            id: "abc".into(),
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxNotready as i32,
            }),
            label_selector: [("app".to_owned(), "web".to_owned())].into_iter().collect(),
        }));
        assert_eq!(f.id.as_deref(), Some("abc"));
        assert_eq!(f.state, Some(PodState::NotReady));
        assert_eq!(f.labels.get("app").map(String::as_str), Some("web"));
        assert!(pod_filter(None).id.is_none());
    }
}
