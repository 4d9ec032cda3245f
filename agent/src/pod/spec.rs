//! What a pod sandbox is asked to be, in crius' own terms (no protobuf types here).

use std::collections::BTreeMap;

use crius_sandbox::cgroup::Resources;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Namespace modes as the CRI defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsMode {
    Pod,
    Container,
    Node,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceModes {
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_cni(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    /// 0 means the port is not published on the host.
    pub host_port: u16,
    pub host_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A validated RunPodSandbox request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub ports: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub namespaces: NamespaceModes,
    pub sysctls: BTreeMap<String, String>,
    pub resources: Option<Resources>,
    pub overhead: Option<Resources>,
    pub runtime_handler: String,
}

/// The identity kubelet reuses when it retries a RunPodSandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

impl PodSpec {
    pub fn key(&self) -> PodKey {
        PodKey {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            attempt: self.attempt,
        }
    }

    /// The pod has its own network (and UTS) namespace.
    pub fn own_network(&self) -> bool {
        self.namespaces.network != NsMode::Node
    }

    /// Checks what the field-by-field conversion cannot: cross-field rules and sysctls.
    pub fn validate(&mut self) -> Result<()> {
        if [
            self.namespaces.network,
            self.namespaces.ipc,
            self.namespaces.pid,
        ]
        .contains(&NsMode::Target)
        {
            return Err(Error::invalid(
                "config.linux.security_context.namespace_options",
                "TARGET mode is only valid for containers",
            ));
        }
        if self.own_network() {
            if self.hostname.is_empty() {
                // kubelet always sends one; crictl users often do not. Derive one from the pod name.
                self.hostname = hostname_from(&self.name);
            }
            validate_hostname(&self.hostname)
                .map_err(|reason| Error::invalid("config.hostname", reason))?;
        }
        let ns = crius_sandbox::sysctl::SysctlNamespaces {
            host_network: !self.own_network(),
            host_ipc: self.namespaces.ipc == NsMode::Node,
        };
        for (k, v) in &self.sysctls {
            crius_sandbox::sysctl::validate(k, v, ns).map_err(|e| {
                Error::invalid(
                    format!("config.linux.sysctls[{k:?}]"),
                    crate::error::chain(&e),
                )
            })?;
        }
        if !self.log_directory.is_empty()
            && !std::path::Path::new(&self.log_directory).is_absolute()
        {
            return Err(Error::invalid(
                "config.log_directory",
                format!("{:?} is not an absolute path", self.log_directory),
            ));
        }
        // Checked before any work, for every pod (also host-network ones, where they are inert).
        crate::network::bandwidth(self)?;
        if let Some(dns) = &self.dns {
            for (i, s) in dns.servers.iter().enumerate() {
                if s.parse::<std::net::IpAddr>().is_err() {
                    return Err(Error::invalid(
                        format!("config.dns_config.servers[{i}]"),
                        format!("{s:?} is not an IP address"),
                    ));
                }
            }
            for (i, s) in dns.searches.iter().chain(dns.options.iter()).enumerate() {
                if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(Error::invalid(
                        format!("config.dns_config.searches/options[{i}]"),
                        format!("{s:?} is empty or contains whitespace"),
                    ));
                }
            }
        }
        for (i, p) in self.ports.iter().enumerate() {
            if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
                return Err(Error::invalid(
                    format!("config.port_mappings[{i}].host_ip"),
                    format!("{:?} is not an IP address", p.host_ip),
                ));
            }
        }
        Ok(())
    }
}

/// A valid host name made from a pod name: lower case, anything but [a-z0-9-] becomes '-', trimmed, at most 63.
fn hostname_from(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "pod".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// RFC 1123 host name: dot-separated labels of [A-Za-z0-9-], no label starting or ending with '-', at most 64
/// bytes in all (the kernel's limit).
pub fn validate_hostname(h: &str) -> std::result::Result<(), String> {
    if h.is_empty() {
        return Err("must not be empty".into());
    }
    if h.len() > 64 {
        return Err(format!("{h:?} is longer than 64 characters"));
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{h:?} is not a valid host name (RFC 1123 labels of letters, digits and '-')"
            ));
        }
    }
    Ok(())
}

/// A Kubernetes quantity used by the bandwidth annotations ("10M", "1Gi", "500k") in bits per second.
pub fn parse_bandwidth(q: &str) -> std::result::Result<u64, String> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity like \"10M\""))?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(format!("{q:?} has an unknown suffix {suffix:?}")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{q:?} is too large"))?;
    // The same bounds kubelet's bandwidth shaping enforces: 1 kbit/s .. 1 Pbit/s.
    if !(1_000..=1_000_000_000_000_000).contains(&v) {
        return Err(format!("{q:?} is outside 1k..1P bits per second"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(validate_hostname("web-0").is_ok());
        assert!(validate_hostname("a.b.example").is_ok());
        assert!(validate_hostname("").is_err());
        assert!(validate_hostname("-web").is_err());
        assert!(validate_hostname("we_b").is_err());
        assert!(validate_hostname("a..b").is_err());
        assert!(validate_hostname("bad host").is_err());
        assert!(validate_hostname(&"a".repeat(65)).is_err());
    }

    #[test]
    fn derived_hostnames_are_valid() {
        assert_eq!(hostname_from("my_pod"), "my-pod");
        assert_eq!(hostname_from("__"), "pod");
        assert_eq!(hostname_from("Web.Server"), "web-server");
        assert!(validate_hostname(&hostname_from(&"x_".repeat(80))).is_ok());
    }

    #[test]
    fn bandwidth_quantities() {
        assert_eq!(parse_bandwidth("10M"), Ok(10_000_000));
        assert_eq!(parse_bandwidth("1Mi"), Ok(1 << 20));
        assert!(parse_bandwidth("10Q").is_err());
        assert!(parse_bandwidth("10").is_err());
        assert!(parse_bandwidth("x").is_err());
    }
}
