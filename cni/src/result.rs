//! ADD results: parsing the 0.1/0.2, 0.3/0.4 and 1.x result formats into one shape.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::version::{self, Version};

/// A plugin's ADD result. `raw` is the JSON exactly as printed (it is what chained plugins and
/// DEL get as `prevResult`); the other fields are the parts the runtime reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: ResultDns,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The netns path for sandbox interfaces; `None` for host interfaces.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address in CIDR notation, as given.
    pub address: String,
    pub ip: IpAddr,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: String,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultDns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl From<CniResult> for Value {
    fn from(r: CniResult) -> Value {
        r.raw
    }
}

impl TryFrom<Value> for CniResult {
    type Error = String;
    fn try_from(v: Value) -> Result<CniResult, String> {
        CniResult::parse(v, None)
    }
}

impl CniResult {
    /// Parses a result; `requested` is the version asked for, used when the result omits its own.
    pub fn parse(raw: Value, requested: Option<&str>) -> Result<CniResult, String> {
        let obj = raw.as_object().ok_or("not a JSON object")?;
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => requested.ok_or("\"cniVersion\" is missing")?.to_owned(),
            Some(_) => return Err("\"cniVersion\" is not a string".into()),
        };
        let v = Version::parse(&cni_version)
            .ok_or_else(|| format!("cniVersion {cni_version:?} is not a version"))?;
        let mut r = if v < Version::V0_3_0 {
            parse_legacy(obj)?
        } else {
            parse_current(obj)?
        };
        r.cni_version = cni_version;
        r.raw = raw;
        Ok(r)
    }

    /// The pod's addresses: those on the sandbox interface named `ifname` (all addresses when
    /// the result says nothing about interfaces), IPv4 first.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let have_interface_info =
            !self.interfaces.is_empty() && self.ips.iter().any(|ip| ip.interface.is_some());
        let on_pod_if = |ip: &&IpConfig| {
            if !have_interface_info {
                return true;
            }
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|intf| {
                    intf.name == ifname && intf.sandbox.as_deref().is_some_and(|s| !s.is_empty())
                })
        };
        let mut ips: Vec<IpAddr> = self.ips.iter().filter(on_pod_if).map(|ip| ip.ip).collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }

    /// Whether this result can be passed as `prevResult` for DEL/CHECK with this list version.
    pub(crate) fn prev_result_allowed(list_version: &str) -> bool {
        version::of(list_version) >= Version::V0_4_0
    }
}

fn empty() -> CniResult {
    CniResult {
        cni_version: String::new(),
        interfaces: Vec::new(),
        ips: Vec::new(),
        routes: Vec::new(),
        dns: ResultDns::default(),
        raw: Value::Null,
    }
}

type Obj = serde_json::Map<String, Value>;

fn parse_current(obj: &Obj) -> Result<CniResult, String> {
    let mut r = empty();
    for (i, intf) in list(obj, "interfaces")?.iter().enumerate() {
        let o = intf
            .as_object()
            .ok_or_else(|| format!("interfaces[{i}] is not an object"))?;
        r.interfaces.push(Interface {
            name: string(o, "name")?.ok_or_else(|| format!("interfaces[{i}].name is missing"))?,
            mac: string(o, "mac")?,
            mtu: o
                .get("mtu")
                .and_then(Value::as_u64)
                .and_then(|m| u32::try_from(m).ok()),
            sandbox: string(o, "sandbox")?,
        });
    }
    for (i, ip) in list(obj, "ips")?.iter().enumerate() {
        let o = ip
            .as_object()
            .ok_or_else(|| format!("ips[{i}] is not an object"))?;
        let address =
            string(o, "address")?.ok_or_else(|| format!("ips[{i}].address is missing"))?;
        let interface = match o.get("interface") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let idx = v
                    .as_u64()
                    .ok_or_else(|| format!("ips[{i}].interface is not an index"))?;
                let idx = usize::try_from(idx)
                    .map_err(|_| format!("ips[{i}].interface is out of range"))?;
                if idx >= r.interfaces.len() {
                    return Err(format!(
                        "ips[{i}].interface {idx} does not name one of the interfaces"
                    ));
                }
                Some(idx)
            }
        };
        r.ips.push(IpConfig {
            ip: cidr_ip(&address).map_err(|e| format!("ips[{i}].address: {e}"))?,
            gateway: opt_ip(o, "gateway").map_err(|e| format!("ips[{i}].gateway: {e}"))?,
            address,
            interface,
        });
    }
    r.routes = routes(obj)?;
    r.dns = dns(obj)?;
    Ok(r)
}

/// 0.1.0/0.2.0: `ip4`/`ip6` objects with `ip`, `gateway` and `routes`, no interfaces.
fn parse_legacy(obj: &Obj) -> Result<CniResult, String> {
    let mut r = empty();
    for key in ["ip4", "ip6"] {
        let Some(v) = obj.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let o = v
            .as_object()
            .ok_or_else(|| format!("{key} is not an object"))?;
        let address = string(o, "ip")?.ok_or_else(|| format!("{key}.ip is missing"))?;
        r.ips.push(IpConfig {
            ip: cidr_ip(&address).map_err(|e| format!("{key}.ip: {e}"))?,
            gateway: opt_ip(o, "gateway").map_err(|e| format!("{key}.gateway: {e}"))?,
            address,
            interface: None,
        });
        r.routes
            .extend(routes(o).map_err(|e| format!("{key}.{e}"))?);
    }
    r.dns = dns(obj)?;
    Ok(r)
}

fn list<'a>(obj: &'a Obj, key: &str) -> Result<&'a [Value], String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{key:?} is not a list")),
    }
}

fn string(obj: &Obj, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key:?} is not a string")),
    }
}

fn strings(obj: &Obj, key: &str) -> Result<Vec<String>, String> {
    list(obj, key)?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{key:?} is not a list of strings"))
        })
        .collect()
}

fn opt_ip(obj: &Obj, key: &str) -> Result<Option<IpAddr>, String> {
    match string(obj, key)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an IP address")),
    }
}

/// The address part of `a.b.c.d/len` (a bare address is accepted too).
fn cidr_ip(cidr: &str) -> Result<IpAddr, String> {
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (cidr, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{cidr:?} is not an address in CIDR notation"))?;
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => return Err(format!("{cidr:?} has an invalid prefix length")),
        }
    }
    Ok(ip)
}

fn routes(obj: &Obj) -> Result<Vec<Route>, String> {
    list(obj, "routes")?
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let o = r
                .as_object()
                .ok_or_else(|| format!("routes[{i}] is not an object"))?;
            Ok(Route {
                dst: string(o, "dst")?.ok_or_else(|| format!("routes[{i}].dst is missing"))?,
                gw: opt_ip(o, "gw").map_err(|e| format!("routes[{i}].gw: {e}"))?,
            })
        })
        .collect()
}

fn dns(obj: &Obj) -> Result<ResultDns, String> {
    let Some(v) = obj.get("dns").filter(|v| !v.is_null()) else {
        return Ok(ResultDns::default());
    };
    let o = v.as_object().ok_or("\"dns\" is not an object")?;
    Ok(ResultDns {
        nameservers: strings(o, "nameservers")?,
        domain: string(o, "domain")?,
        search: strings(o, "search")?,
        options: strings(o, "options")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bridge_result(version: &str, with_version_field: bool) -> Value {
        let mut ip6 = json!({"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2});
        let mut ip4 = json!({"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2});
        let mut host = json!({"address": "192.168.9.9/32", "interface": 0});
        if with_version_field {
            ip6["version"] = json!("6");
            ip4["version"] = json!("4");
            host["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x", "mtu": 1500}
            ],
            "ips": [ip6, host, ip4],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}],
            "dns": {"nameservers": ["10.1.0.1"], "domain": "example", "search": ["a.example"], "options": ["ndots:5"]}
        })
    }

    #[test]
    fn parses_0_3_1_0_4_0_and_1_0_0() {
        for (version, field) in [
            ("0.3.1", true),
            ("0.4.0", true),
            ("1.0.0", false),
            ("1.1.0", false),
        ] {
            let raw = bridge_result(version, field);
            let r = CniResult::parse(raw.clone(), None).unwrap();
            assert_eq!(r.cni_version, version);
            assert_eq!(r.raw, raw);
            assert_eq!(r.interfaces.len(), 3);
            assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/x"));
            assert_eq!(r.interfaces[2].mtu, Some(1500));
            assert_eq!(r.interfaces[0].sandbox, None);
            assert_eq!(r.ips.len(), 3);
            assert_eq!(r.ips[2].address, "10.1.0.5/24");
            assert_eq!(r.ips[2].ip, "10.1.0.5".parse::<IpAddr>().unwrap());
            assert_eq!(r.ips[2].gateway, Some("10.1.0.1".parse().unwrap()));
            assert_eq!(r.ips[2].interface, Some(2));
            assert_eq!(
                r.routes[0],
                Route {
                    dst: "0.0.0.0/0".into(),
                    gw: Some("10.1.0.1".parse().unwrap())
                }
            );
            assert_eq!(r.routes[1].gw, None);
            assert_eq!(r.dns.nameservers, ["10.1.0.1"]);
            assert_eq!(r.dns.domain.as_deref(), Some("example"));
            assert_eq!(r.dns.options, ["ndots:5"]);
            // only eth0's addresses (not the host-side one), IPv4 first
            let want: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
            assert_eq!(r.pod_ips("eth0"), want);
            assert!(r.pod_ips("eth1").is_empty());
        }
    }

    #[test]
    fn pod_ips_without_interface_info_are_all_ips() {
        let r = CniResult::parse(
            json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::7/64"}, {"address": "10.2.0.7/16"}]}),
            None,
        )
        .unwrap();
        let want: Vec<IpAddr> = vec!["10.2.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        assert_eq!(r.pod_ips("eth0"), want);
    }

    #[test]
    fn parses_legacy_0_2_0() {
        let r = CniResult::parse(
            json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.2/16", "gateway": "10.3.0.1",
                   "routes": [{"dst": "0.0.0.0/0"}]}, "dns": {}}),
            None,
        )
        .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].gateway, Some("10.3.0.1".parse().unwrap()));
        assert_eq!(r.routes.len(), 1);
        assert_eq!(
            r.pod_ips("eth0"),
            vec!["10.3.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn missing_version_uses_requested() {
        let r = CniResult::parse(json!({"ips": []}), Some("1.0.0")).unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert!(CniResult::parse(json!({"ips": []}), None).is_err());
    }

    #[test]
    fn rejects_invalid_results() {
        let cases = [
            (json!([]), "not a JSON object"),
            (json!({"cniVersion": "x"}), "not a version"),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}),
                "ips[0].address",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/33"}]}),
                "prefix length",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/8", "interface": 0}]}),
                "does not name",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/8", "gateway": "x"}]}),
                "gateway",
            ),
            (
                json!({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}),
                "name is missing",
            ),
            (
                json!({"cniVersion": "1.0.0", "routes": [{}]}),
                "dst is missing",
            ),
            (
                json!({"cniVersion": "1.0.0", "dns": {"nameservers": [1]}}),
                "nameservers",
            ),
        ];
        for (raw, want) in cases {
            let err = CniResult::parse(raw.clone(), None).unwrap_err();
            assert!(err.contains(want), "{raw}: {err:?} should contain {want:?}");
        }
    }

    #[test]
    fn serde_round_trip_is_the_raw_json() {
        let raw = bridge_result("1.0.0", false);
        let r = CniResult::parse(raw.clone(), None).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), raw);
        let back: CniResult = serde_json::from_value(raw).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn prev_result_on_del_from_0_4_0() {
        assert!(!CniResult::prev_result_allowed("0.3.1"));
        assert!(CniResult::prev_result_allowed("0.4.0"));
        assert!(CniResult::prev_result_allowed("1.0.0"));
    }
}
