//! What the runtime passes per attachment: ids, netns, CNI_ARGS and the capability arguments,
//! and how they become a plugin's environment and stdin config.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::config::{NetworkConfigList, PluginConf, validate_name};
use crate::error::CniError;

/// One (network, container, interface) attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// CNI_CONTAINERID: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
    pub container_id: String,
    /// CNI_NETNS: the path of the network namespace (may be empty for DEL when it is gone).
    pub netns: PathBuf,
    /// CNI_IFNAME: the interface inside the namespace.
    pub ifname: String,
    /// CNI_ARGS pairs, passed after `IgnoreUnknown=1`.
    pub args: Vec<(String, String)>,
    pub runtime_config: RuntimeConfig,
}

/// The capability arguments the runtime offers; each goes to plugins that declare it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    pub dns: Option<Dns>,
}

/// The `portMappings` capability entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp", "udp" or "sctp" (sent lower-case).
    pub protocol: String,
    /// Empty = all host addresses.
    pub host_ip: String,
}

/// The `bandwidth` capability: rates in bits per second, bursts in bits; 0 = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// The `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl RuntimeConfig {
    /// The offered capability arguments by capability name; empty offers are left out.
    pub(crate) fn offers(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if !self.port_mappings.is_empty() {
            let pms = self
                .port_mappings
                .iter()
                .map(|p| {
                    let mut o = json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol.to_ascii_lowercase(),
                    });
                    if let (false, Some(obj)) = (p.host_ip.is_empty(), o.as_object_mut()) {
                        obj.insert("hostIP".into(), Value::String(p.host_ip.clone()));
                    }
                    o
                })
                .collect();
            m.insert("portMappings".into(), Value::Array(pms));
        }
        if let Some(b) = self.bandwidth.filter(|b| *b != Bandwidth::default()) {
            m.insert(
                "bandwidth".into(),
                json!({
                    "ingressRate": b.ingress_rate,
                    "ingressBurst": b.ingress_burst,
                    "egressRate": b.egress_rate,
                    "egressBurst": b.egress_burst,
                }),
            );
        }
        if let Some(d) = self.dns.as_ref().filter(|d| **d != Dns::default()) {
            m.insert(
                "dns".into(),
                json!({ "servers": d.servers, "searches": d.searches, "options": d.options }),
            );
        }
        m
    }
}

impl Attachment {
    /// Checks the spec's rules for the container id and interface name, and that ADD/CHECK have a netns.
    pub(crate) fn validate(&self, needs_netns: bool) -> Result<(), CniError> {
        validate_name(&self.container_id).map_err(|reason| CniError::InvalidAttachment {
            field: "container id",
            reason,
        })?;
        validate_ifname(&self.ifname).map_err(|reason| CniError::InvalidAttachment {
            field: "ifname",
            reason,
        })?;
        if needs_netns && self.netns.as_os_str().is_empty() {
            return Err(CniError::InvalidAttachment {
                field: "netns",
                reason: "is empty".into(),
            });
        }
        for (k, v) in &self.args {
            let bad = |c: char| c == ';' || c == '=';
            if k.is_empty() || k.contains(bad) || v.contains(';') {
                return Err(CniError::InvalidAttachment {
                    field: "args",
                    reason: format!(
                        "{k:?}={v:?} cannot be passed in CNI_ARGS (no ';', no '=' in keys)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// CNI_ARGS: `IgnoreUnknown=1;K=V;...`, so plugins that do not know a key ignore it.
    pub(crate) fn cni_args(&self) -> String {
        let mut s = String::from("IgnoreUnknown=1");
        for (k, v) in &self.args {
            s.push(';');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }
}

/// Interface names: non-empty, shorter than 16 bytes, not "." or "..", no '/', ':' or whitespace.
pub(crate) fn validate_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() >= 16 {
        return Err(format!("{s:?} is longer than 15 bytes"));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not allowed"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("{s:?} contains {c:?}"));
    }
    Ok(())
}

/// The JSON a plugin reads on stdin: its own object plus `cniVersion` and `name` from the list,
/// `prevResult` when given, and `runtimeConfig` with the offered capabilities it declares.
pub(crate) fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConf,
    offers: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Value {
    let mut conf = plugin.raw.clone();
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    conf.insert("name".into(), Value::String(list.name.clone()));
    match prev_result {
        Some(prev) => conf.insert("prevResult".into(), prev.clone()),
        None => conf.remove("prevResult"),
    };
    let rc: Map<String, Value> = plugin
        .capabilities
        .iter()
        .filter(|(_, on)| **on)
        .filter_map(|(cap, _)| offers.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect();
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::parse_conflist;

    fn full_offer() -> RuntimeConfig {
        RuntimeConfig {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: String::new(),
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: 1000,
                ingress_burst: 2000,
                egress_rate: 0,
                egress_burst: 0,
            }),
            dns: Some(Dns {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["svc".into()],
                options: vec![],
            }),
        }
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let list = parse_conflist(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"a","runtimeConfig":{"stale":1}},
                {"type":"b","capabilities":{"portMappings":true,"dns":false,"mac":true}},
                {"type":"c","capabilities":{"bandwidth":true,"dns":true},"prevResult":{"old":1}}]}"#,
            None,
        )
        .unwrap();
        let offers = full_offer().offers();
        let a = plugin_stdin(&list, &list.plugins[0], &offers, None);
        assert_eq!(
            a["runtimeConfig"],
            json!({"stale": 1}),
            "no declared capability: left as configured"
        );
        assert_eq!(a["cniVersion"], json!("1.0.0"));
        assert_eq!(a["name"], json!("n"));
        assert!(a.get("prevResult").is_none());

        let b = plugin_stdin(&list, &list.plugins[1], &offers, None);
        assert_eq!(
            b["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );

        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let c = plugin_stdin(&list, &list.plugins[2], &offers, Some(&prev));
        assert_eq!(
            c["runtimeConfig"],
            json!({
                "bandwidth": {"ingressRate": 1000, "ingressBurst": 2000, "egressRate": 0, "egressBurst": 0},
                "dns": {"servers": ["10.0.0.10"], "searches": ["svc"], "options": []},
            })
        );
        assert_eq!(c["prevResult"], prev);
    }

    #[test]
    fn empty_offers_are_not_injected() {
        let list = parse_conflist(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"b","capabilities":{"portMappings":true,"bandwidth":true,"dns":true}}]}"#,
            None,
        )
        .unwrap();
        let rc = RuntimeConfig {
            port_mappings: vec![],
            bandwidth: Some(Bandwidth::default()),
            dns: Some(Dns::default()),
        };
        let conf = plugin_stdin(&list, &list.plugins[0], &rc.offers(), None);
        assert!(conf.get("runtimeConfig").is_none(), "{conf}");
    }

    #[test]
    fn host_ip_is_sent_when_set() {
        let rc = RuntimeConfig {
            port_mappings: vec![PortMapping {
                host_port: 1,
                container_port: 2,
                protocol: "udp".into(),
                host_ip: "127.0.0.1".into(),
            }],
            ..Default::default()
        };
        assert_eq!(rc.offers()["portMappings"][0]["hostIP"], json!("127.0.0.1"));
    }

    #[test]
    fn cni_args_format() {
        let mut a = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        assert_eq!(a.cni_args(), "IgnoreUnknown=1");
        a.args = vec![
            ("K8S_POD_NAME".into(), "web".into()),
            ("K8S_POD_NAMESPACE".into(), "default".into()),
        ];
        assert_eq!(
            a.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"
        );
    }

    #[test]
    fn attachment_validation() {
        let ok = Attachment {
            container_id: "abc_1.2-x".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        ok.validate(true).unwrap();
        let field = |a: Attachment, netns: bool| match a.validate(netns) {
            Err(CniError::InvalidAttachment { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(
                Attachment {
                    container_id: "_x".into(),
                    ..ok.clone()
                },
                true
            ),
            "container id"
        );
        assert_eq!(
            field(
                Attachment {
                    container_id: "".into(),
                    ..ok.clone()
                },
                true
            ),
            "container id"
        );
        assert_eq!(
            field(
                Attachment {
                    container_id: "a b".into(),
                    ..ok.clone()
                },
                true
            ),
            "container id"
        );
        for bad in ["", "0123456789abcdef", "a/b", "a:b", "a b", ".", ".."] {
            assert_eq!(
                field(
                    Attachment {
                        ifname: bad.into(),
                        ..ok.clone()
                    },
                    true
                ),
                "ifname",
                "{bad:?}"
            );
        }
        Attachment {
            ifname: "0123456789abcde".into(),
            ..ok.clone()
        }
        .validate(true)
        .unwrap();
        assert_eq!(
            field(
                Attachment {
                    netns: "".into(),
                    ..ok.clone()
                },
                true
            ),
            "netns"
        );
        Attachment {
            netns: "".into(),
            ..ok.clone()
        }
        .validate(false)
        .unwrap();
        assert_eq!(
            field(
                Attachment {
                    args: vec![("a;b".into(), "c".into())],
                    ..ok.clone()
                },
                true
            ),
            "args"
        );
        assert_eq!(
            field(
                Attachment {
                    args: vec![("a".into(), "c;d".into())],
                    ..ok
                },
                true
            ),
            "args"
        );
    }
}
