//! Pod networking through CNI: which network config is in use, ADD on run, DEL on stop.

use std::net::IpAddr;
use std::path::PathBuf;

use crius_cni::{Attachment, Bandwidth, Cni, CniResult, DefaultNetwork, Dns, NetworkConfigList};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics;
use crate::pod::spec::PodSpec;

pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// The network side of the runtime.
pub struct Network {
    cni: Cni,
    conf_dir: PathBuf,
    default: DefaultNetwork,
}

/// Which network configuration would be used now, and whether it can work.
pub struct NetworkChoice {
    pub list: NetworkConfigList,
    /// Where it came from, for `crius check` and Status: a file path or "embedded default".
    pub origin: String,
    pub missing_plugins: Vec<String>,
    /// When the embedded default is used although conf_dir holds config files: each one and why it is not valid.
    pub ignored: Vec<String>,
}

impl Network {
    pub fn new(config: &Config) -> Network {
        let n = &config.network;
        let data_dir = (!n.default_ipam_data_dir.as_os_str().is_empty())
            .then(|| n.default_ipam_data_dir.clone());
        Network {
            cni: Cni::new(
                n.plugin_dirs.clone(),
                config.cni_cache_dir(),
                n.plugin_timeout.0,
            ),
            conf_dir: n.conf_dir.clone(),
            default: DefaultNetwork {
                bridge: n.default_bridge.clone(),
                subnet: n.default_subnet.clone(),
                masquerade: n.default_masquerade,
                ipam_data_dir: data_dir,
            },
        }
    }

    /// The lexically first valid conflist in the conf dir, else the embedded default.
    pub fn choose(&self) -> Result<NetworkChoice> {
        let loaded = crius_cni::load_from_dir(&self.conf_dir).map_err(|source| Error::Network {
            op: "config load",
            pod: String::new(),
            source,
        })?;
        let (list, origin, ignored) = match loaded {
            Some(list) => {
                let origin = list
                    .source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| self.conf_dir.display().to_string());
                (list, origin, Vec::new())
            }
            None => (
                crius_cni::default_network(&self.default),
                format!(
                    "embedded default (bridge {}, subnet {})",
                    self.default.bridge, self.default.subnet
                ),
                self.invalid_configs(),
            ),
        };
        let mut missing_plugins = self.cni.missing_plugins(&list);
        if self.cni.find_plugin("loopback").is_none() {
            missing_plugins.push("loopback".into());
        }
        Ok(NetworkChoice {
            list,
            origin,
            missing_plugins,
            ignored,
        })
    }

    /// The config files in conf_dir, each with why it cannot be used (when none could).
    fn invalid_configs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.conf_dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .map(|p| {
                let why = match std::fs::read(&p) {
                    Ok(bytes) => match crius_cni::parse_conflist(&bytes, Some(&p)) {
                        Ok(_) => "valid now".to_owned(),
                        Err(e) => crate::error::chain(&e),
                    },
                    Err(e) => format!("unreadable: {e}"),
                };
                format!("{}: {why}", p.display())
            })
            .collect();
        out.sort();
        out
    }

    /// NetworkReady: `Ok(origin)` or `Err((reason, message))`.
    pub fn readiness(&self) -> std::result::Result<String, (String, String)> {
        match self.choose() {
            Err(e) => Err(("NetworkConfigInvalid".into(), crate::error::chain(&e))),
            Ok(c) if !c.missing_plugins.is_empty() => Err((
                "NetworkPluginNotFound".into(),
                format!(
                    "CNI plugins {} needed by network {:?} ({}) not found in {}",
                    c.missing_plugins.join(", "),
                    c.list.name,
                    c.origin,
                    self.cni_dirs()
                ),
            )),
            Ok(c) if !c.ignored.is_empty() => Ok(format!(
                "{} ({}), as no config in {} is valid: {}",
                c.list.name,
                c.origin,
                self.conf_dir.display(),
                c.ignored.join("; ")
            )),
            Ok(c) => Ok(format!("{} ({})", c.list.name, c.origin)),
        }
    }

    pub fn cni_dirs(&self) -> String {
        self.cni
            .plugin_dirs()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The attachments of a pod: loopback first, then the pod network on eth0.
    pub fn attachments(
        &self,
        id: &str,
        spec: &PodSpec,
        netns: PathBuf,
    ) -> Result<(Attachment, Attachment)> {
        let args = vec![
            ("K8S_POD_NAMESPACE".to_owned(), spec.namespace.clone()),
            ("K8S_POD_NAME".to_owned(), spec.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), id.to_owned()),
            ("K8S_POD_UID".to_owned(), spec.uid.clone()),
        ];
        let lo = Attachment {
            container_id: id.to_owned(),
            netns: netns.clone(),
            ifname: "lo".into(),
            args: args.clone(),
            runtime_config: Default::default(),
        };
        let rc = crius_cni::RuntimeConfig {
            port_mappings: spec
                .ports
                .iter()
                .filter(|p| p.host_port != 0)
                .map(|p| crius_cni::PortMapping {
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: p.protocol.as_cni().into(),
                    host_ip: p.host_ip.clone(),
                })
                .collect(),
            bandwidth: bandwidth(spec)?,
            dns: spec.dns.as_ref().map(|d| Dns {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
        };
        let eth0 = Attachment {
            container_id: id.to_owned(),
            netns,
            ifname: "eth0".into(),
            args,
            runtime_config: rc,
        };
        Ok((lo, eth0))
    }

    /// ADD: loopback, then the pod network. Returns the pod network's result.
    pub async fn add(
        &self,
        id: &str,
        list: &NetworkConfigList,
        lo: &Attachment,
        eth0: &Attachment,
    ) -> Result<CniResult> {
        let err = |source| Error::Network {
            op: "setup",
            pod: id.to_owned(),
            source,
        };
        let start = std::time::Instant::now();
        let lo_net = crius_cni::loopback_network(&list.cni_version);
        let out = match self.cni.add(&lo_net, lo).await {
            Ok(_) => self.cni.add(list, eth0).await.map_err(err),
            Err(e) => Err(err(e)),
        };
        metrics::cni(metrics::CniOp::Add, out.is_ok(), start.elapsed());
        out
    }

    /// DEL in reverse order; idempotent. Both DELs are attempted; the first error is returned.
    pub async fn del(
        &self,
        id: &str,
        list: &NetworkConfigList,
        lo: &Attachment,
        eth0: &Attachment,
    ) -> Result<()> {
        let err = |source| Error::Network {
            op: "teardown",
            pod: id.to_owned(),
            source,
        };
        let start = std::time::Instant::now();
        let main = self.cni.del(list, eth0).await.map_err(err);
        let lo_net = crius_cni::loopback_network(&list.cni_version);
        let lo = self.cni.del(&lo_net, lo).await.map_err(err);
        let out = main.and(lo);
        metrics::cni(metrics::CniOp::Del, out.is_ok(), start.elapsed());
        out
    }
}

/// The IPs a CNI result gives the pod's eth0, IPv4 first.
pub fn pod_ips(result: &CniResult) -> Vec<IpAddr> {
    result.pod_ips("eth0")
}

pub fn bandwidth(spec: &PodSpec) -> Result<Option<Bandwidth>> {
    let parse = |key: &str| -> Result<Option<u64>> {
        spec.annotations
            .get(key)
            .map(|v| {
                crate::pod::spec::parse_bandwidth(v).map_err(|reason| {
                    Error::invalid(format!("config.annotations[{key:?}]"), reason)
                })
            })
            .transpose()
    };
    let ingress = parse(INGRESS_ANNOTATION)?;
    let egress = parse(EGRESS_ANNOTATION)?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    // The burst kubelet's own shaping and other runtimes use when none is given.
    const BURST: u64 = i32::MAX as u64;
    Ok(Some(Bandwidth {
        ingress_rate: ingress.unwrap_or(0),
        ingress_burst: if ingress.is_some() { BURST } else { 0 },
        egress_rate: egress.unwrap_or(0),
        egress_burst: if egress.is_some() { BURST } else { 0 },
    }))
}
