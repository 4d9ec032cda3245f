//! Network configuration lists: parsing (.conflist and single-plugin .conf), the config
//! directory, the embedded default network and the loopback network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::CniError;
use crate::version::{Version, pick_version};

/// A network configuration list (CNI spec section 1), with the plugins' raw JSON kept as given.
///
/// Serialized (e.g. into the agent's records) as `{source, config}`; deserializing parses
/// `config` again, so a stored list is validated exactly like a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredList", into = "StoredList")]
pub struct NetworkConfigList {
    pub name: String,
    /// The version this client uses with the plugins: `cniVersion`, or the highest supported entry
    /// of `cniVersions` (spec 1.1) when that is given.
    pub cni_version: String,
    /// `cniVersions` as given (spec 1.1); empty when absent.
    pub cni_versions: Vec<String>,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConf>,
    /// The file it was read from; `None` for the embedded default and other built-in lists.
    pub source: Option<PathBuf>,
    /// The whole list as a JSON object (a single-plugin .conf converted to list form).
    pub raw: Map<String, Value>,
}

/// One plugin of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// `type`: the executable's name.
    pub plugin_type: String,
    /// `capabilities`: which runtimeConfig keys the plugin wants.
    pub capabilities: BTreeMap<String, bool>,
    /// The plugin object exactly as configured; unknown fields stay untouched.
    pub raw: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct StoredList {
    source: Option<PathBuf>,
    config: Value,
}

impl From<NetworkConfigList> for StoredList {
    fn from(l: NetworkConfigList) -> StoredList {
        StoredList {
            source: l.source,
            config: Value::Object(l.raw),
        }
    }
}

impl TryFrom<StoredList> for NetworkConfigList {
    type Error = CniError;
    fn try_from(s: StoredList) -> Result<NetworkConfigList, CniError> {
        let what = describe(s.source.as_deref());
        parse_value(s.config, s.source, &what)
    }
}

impl NetworkConfigList {
    /// The list as JSON text (what is cached for DEL).
    pub fn to_json(&self) -> String {
        Value::Object(self.raw.clone()).to_string()
    }
}

/// Parses a network configuration list, or a single-plugin network configuration (which is
/// converted to a one-plugin list, as libcni does).
pub fn parse_conflist(bytes: &[u8], source: Option<&Path>) -> Result<NetworkConfigList, CniError> {
    let what = describe(source);
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| CniError::config(&what, format!("not valid JSON: {e}")))?;
    parse_value(value, source.map(Path::to_path_buf), &what)
}

fn describe(source: Option<&Path>) -> String {
    match source {
        Some(p) => p.display().to_string(),
        None => "(built-in)".into(),
    }
}

fn parse_value(
    value: Value,
    source: Option<PathBuf>,
    what: &str,
) -> Result<NetworkConfigList, CniError> {
    let bad = |reason: String| CniError::config(what, reason);
    let Value::Object(mut obj) = value else {
        return Err(bad("not a JSON object".into()));
    };
    if !obj.contains_key("plugins") {
        // A single-plugin .conf: the plugin object itself, with name and cniVersion.
        if !obj.contains_key("type") {
            return Err(bad(
                "neither \"plugins\" (a list) nor \"type\" (a single plugin) is present".into(),
            ));
        }
        let mut list = Map::new();
        for key in ["cniVersion", "name", "disableCheck"] {
            if let Some(v) = obj.get(key) {
                list.insert(key.into(), v.clone());
            }
        }
        list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
        obj = list;
    }

    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("\"name\" is not a string".into())),
        None => return Err(bad("\"name\" is missing".into())),
    };
    validate_name(&name).map_err(|r| bad(format!("\"name\" {r}")))?;

    let declared = match obj.get("cniVersion") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("\"cniVersion\" is not a string".into())),
        None => None,
    };
    let cni_versions = match obj.get("cniVersions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("\"cniVersions\" is not a list of strings".into()))?,
        Some(_) => return Err(bad("\"cniVersions\" is not a list".into())),
    };
    let cni_version = pick_version(declared.as_deref(), &cni_versions).map_err(bad)?;

    let disable_check = flag(&obj, "disableCheck").map_err(bad)?;
    let disable_gc = flag(&obj, "disableGC").map_err(bad)?;

    let plugins = match obj.get("plugins") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(bad("\"plugins\" is empty".into())),
        _ => return Err(bad("\"plugins\" is not a list".into())),
    };
    let plugins = plugins
        .iter()
        .enumerate()
        .map(|(i, p)| parse_plugin(p).map_err(|r| bad(format!("plugins[{i}]: {r}"))))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(NetworkConfigList {
        name,
        cni_version,
        cni_versions,
        disable_check,
        disable_gc,
        plugins,
        source,
        raw: obj,
    })
}

fn parse_plugin(p: &Value) -> Result<PluginConf, String> {
    let Value::Object(raw) = p else {
        return Err("not a JSON object".into());
    };
    let plugin_type = match raw.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err("\"type\" is missing or not a string".into()),
    };
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
    {
        return Err(format!(
            "\"type\" {plugin_type:?} is not a plugin executable name"
        ));
    }
    let capabilities = match raw.get("capabilities") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(c)) => c
            .iter()
            .map(|(k, v)| {
                v.as_bool()
                    .map(|b| (k.clone(), b))
                    .ok_or_else(|| format!("capabilities.{k} is not a boolean"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"capabilities\" is not an object".into()),
    };
    Ok(PluginConf {
        plugin_type,
        capabilities,
        raw: raw.clone(),
    })
}

/// A boolean that libcni also accepts as the strings "true"/"false".
fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(format!("{key:?} is not a boolean")),
    }
}

/// The spec's rule for network names and container ids: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub(crate) fn validate_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("{s:?} must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!(
            "{s:?} contains {c:?} (allowed: letters, digits, '_', '.', '-')"
        ));
    }
    Ok(())
}

/// The lexically first valid configuration among `*.conflist`, `*.conf` and `*.json` in `dir`.
/// Invalid files are skipped with a warning; a missing directory (or none valid) is `Ok(None)`.
pub fn load_from_dir(dir: &Path) -> Result<Option<NetworkConfigList>, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CniError::io(
                format!("read cni config dir {}", dir.display()),
                e,
            ));
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| CniError::io(format!("read cni config dir {}", dir.display()), e))?;
        let path = entry.path();
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        );
        if wanted {
            files.push(path);
        }
    }
    files.sort();
    for path in files {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping unreadable cni config");
                continue;
            }
        };
        match parse_conflist(&bytes, Some(&path)) {
            Ok(list) => return Ok(Some(list)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping invalid cni config")
            }
        }
    }
    Ok(None)
}

/// The parameters of the embedded default network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultNetwork {
    pub bridge: String,
    pub subnet: String,
    pub masquerade: bool,
    /// host-local's `dataDir`; `None` = the plugin's default (/var/lib/cni/networks).
    pub ipam_data_dir: Option<PathBuf>,
}

/// The network crius uses when the config dir has none: bridge + host-local, portmap, bandwidth.
pub fn default_network(d: &DefaultNetwork) -> NetworkConfigList {
    let default_route = if d.subnet.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    let mut ipam = json!({
        "type": "host-local",
        "ranges": [[{ "subnet": d.subnet }]],
        "routes": [{ "dst": default_route }],
    });
    if let (Some(dir), Some(obj)) = (&d.ipam_data_dir, ipam.as_object_mut()) {
        obj.insert("dataDir".into(), Value::String(dir.display().to_string()));
    }
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "crius",
        "plugins": [
            {
                "type": "bridge",
                "bridge": d.bridge,
                "isGateway": true,
                "ipMasq": d.masquerade,
                "hairpinMode": true,
                "ipam": ipam,
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "bandwidth", "capabilities": { "bandwidth": true } },
        ],
    });
    built_in(config)
}

/// A list with the single `loopback` plugin (the agent attaches it as `lo`).
pub fn loopback_network(cni_version: &str) -> NetworkConfigList {
    // An unusable version falls back to the newest one loopback plugins everywhere speak.
    let version = if Version::parse(cni_version).is_some_and(|v| v.supported()) {
        cni_version
    } else {
        "1.0.0"
    };
    built_in(json!({
        "cniVersion": version,
        "name": "cni-loopback",
        "plugins": [{ "type": "loopback" }],
    }))
}

fn built_in(config: Value) -> NetworkConfigList {
    match parse_value(config, None, "(built-in)") {
        Ok(list) => list,
        // The built-in lists are valid by construction (the tests parse each one); a bad
        // bridge name or subnet is reported by the plugin when it runs.
        Err(e) => unreachable!("built-in cni config is invalid: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIST: &str = r#"{
        "cniVersion": "1.0.0", "name": "net1", "disableCheck": true, "topLevelExtra": 1,
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "x": [1, 2]}, "vendorField": {"a": null}},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
        ]}"#;

    #[test]
    fn parses_list_and_keeps_unknown_fields() {
        let l = parse_conflist(LIST.as_bytes(), Some(Path::new("/etc/x.conflist"))).unwrap();
        assert_eq!(l.name, "net1");
        assert_eq!(l.cni_version, "1.0.0");
        assert!(l.disable_check);
        assert!(!l.disable_gc);
        assert_eq!(l.source.as_deref(), Some(Path::new("/etc/x.conflist")));
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert_eq!(l.plugins[0].raw["vendorField"], json!({"a": null}));
        assert_eq!(l.plugins[0].raw["ipam"]["x"], json!([1, 2]));
        assert_eq!(l.raw["topLevelExtra"], json!(1));
        assert_eq!(l.plugins[1].capabilities.get("portMappings"), Some(&true));
        assert_eq!(l.plugins[1].capabilities.get("bandwidth"), Some(&false));
    }

    #[test]
    fn single_plugin_conf_becomes_a_list() {
        let conf = r#"{"cniVersion": "0.4.0", "name": "single", "type": "ptp", "mtu": 1400}"#;
        let l = parse_conflist(conf.as_bytes(), None).unwrap();
        assert_eq!(l.name, "single");
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].plugin_type, "ptp");
        assert_eq!(l.plugins[0].raw["mtu"], json!(1400));
        assert_eq!(l.raw["plugins"][0]["type"], json!("ptp"));
    }

    #[test]
    fn rejects_invalid_configs() {
        let cases = [
            ("[]", "not a JSON object"),
            ("{", "not valid JSON"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"a"}]}"#,
                "\"name\" is missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-bad","plugins":[{"type":"a"}]}"#,
                "must start with",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"a"}]}"#,
                "contains '/'",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"ipam":{}}]}"#,
                "plugins[0]: \"type\" is missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "not a plugin executable",
            ),
            (
                r#"{"cniVersion":"9.0.0","name":"n","plugins":[{"type":"a"}]}"#,
                "unsupported",
            ),
            (r#"{"name":"n","plugins":[{"type":"a"}]}"#, "cniVersion"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","disableCheck":3,"plugins":[{"type":"a"}]}"#,
                "disableCheck",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a","capabilities":{"x":1}}]}"#,
                "capabilities.x",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "neither"),
        ];
        for (text, want) in cases {
            let err = parse_conflist(text.as_bytes(), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want),
                "{text}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn string_flags_and_cni_versions() {
        let text = r#"{"cniVersion":"0.4.0","cniVersions":["0.3.1","1.1.0","7.0.0"],"name":"n",
                      "disableCheck":"true","disableGC":"False","plugins":[{"type":"a"}]}"#;
        let l = parse_conflist(text.as_bytes(), None).unwrap();
        assert_eq!(l.cni_version, "1.1.0");
        assert_eq!(l.cni_versions, ["0.3.1", "1.1.0", "7.0.0"]);
        assert!(l.disable_check);
        assert!(!l.disable_gc);
    }

    #[test]
    fn dir_picks_lexically_first_valid_and_skips_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let list = |name: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"a"}}]}}"#)
        };
        write("00-broken.conflist", "{not json");
        write(
            "05-noplugins.conflist",
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
        );
        write("07-ignored.txt", &list("txt"));
        write("10-second.conf", &list("second"));
        write("09-first.json", &list("first"));
        write("20-third.conflist", &list("third"));
        let l = load_from_dir(dir.path()).unwrap().unwrap();
        assert_eq!(l.name, "first");
        assert_eq!(l.source, Some(dir.path().join("09-first.json")));

        std::fs::remove_file(dir.path().join("09-first.json")).unwrap();
        assert_eq!(load_from_dir(dir.path()).unwrap().unwrap().name, "second");
    }

    #[test]
    fn dir_missing_or_without_valid_files_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_from_dir(&dir.path().join("nope")).unwrap().is_none());
        std::fs::write(dir.path().join("a.conflist"), "{}").unwrap();
        assert!(load_from_dir(dir.path()).unwrap().is_none());
    }

    #[test]
    fn default_network_shape() {
        let d = DefaultNetwork {
            bridge: "br9".into(),
            subnet: "10.9.0.0/24".into(),
            masquerade: false,
            ipam_data_dir: Some("/tmp/ipam".into()),
        };
        let l = default_network(&d);
        assert_eq!(
            (l.name.as_str(), l.cni_version.as_str(), l.source.as_ref()),
            ("crius", "1.0.0", None)
        );
        let types: Vec<_> = l.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap", "bandwidth"]);
        let br = &l.plugins[0].raw;
        assert_eq!(br["bridge"], json!("br9"));
        assert_eq!(br["isGateway"], json!(true));
        assert_eq!(br["ipMasq"], json!(false));
        assert_eq!(br["hairpinMode"], json!(true));
        assert_eq!(br["ipam"]["type"], json!("host-local"));
        assert_eq!(br["ipam"]["ranges"], json!([[{"subnet": "10.9.0.0/24"}]]));
        assert_eq!(br["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(br["ipam"]["dataDir"], json!("/tmp/ipam"));
        assert_eq!(
            l.plugins[1].capabilities,
            BTreeMap::from([("portMappings".to_owned(), true)])
        );
        assert_eq!(
            l.plugins[2].capabilities,
            BTreeMap::from([("bandwidth".to_owned(), true)])
        );

        let v6 = default_network(&DefaultNetwork {
            subnet: "fd00::/64".into(),
            ipam_data_dir: None,
            ..d
        });
        assert_eq!(
            v6.plugins[0].raw["ipam"]["routes"],
            json!([{"dst": "::/0"}])
        );
        assert!(v6.plugins[0].raw["ipam"].get("dataDir").is_none());
    }

    /// deploy/10-crius.conflist is the embedded default with the default bridge and subnet, so installing it
    /// changes nothing but where the config lives.
    #[test]
    fn deployed_conflist_is_the_embedded_default() {
        let deployed: Value =
            serde_json::from_str(include_str!("../../deploy/10-crius.conflist")).unwrap();
        let embedded = default_network(&DefaultNetwork {
            bridge: "crius0".into(),
            subnet: "10.85.0.0/16".into(),
            masquerade: true,
            ipam_data_dir: None,
        });
        assert_eq!(deployed, Value::Object(embedded.raw));
    }

    #[test]
    fn loopback_network_shape() {
        let l = loopback_network("0.4.0");
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].plugin_type, "loopback");
        assert_eq!(loopback_network("bogus").cni_version, "1.0.0");
    }

    #[test]
    fn serde_round_trip_reparses() {
        let l = parse_conflist(LIST.as_bytes(), Some(Path::new("/etc/x.conflist"))).unwrap();
        let text = serde_json::to_string(&l).unwrap();
        let back: NetworkConfigList = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
        let bad = r#"{"source":null,"config":{"name":"n"}}"#;
        assert!(serde_json::from_str::<NetworkConfigList>(bad).is_err());
    }
}
