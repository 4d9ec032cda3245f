//! What a test can ask of its `crius serve`: [`Options`], and how the harness turns them into a config file
//! with a private network slot (bridge name + /24 subnet) that no other running instance uses.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

/// The cgroup driver crius is configured with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Driver {
    #[default]
    Cgroupfs,
    Systemd,
}

impl Driver {
    /// The config value (`cgroup.driver`).
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }
}

/// Options for [`crate::Crius::start`]. Every string given here (override values, conflists, plugin scripts)
/// may use placeholders that the harness replaces once the instance's names are known:
///
/// | placeholder | replaced by |
/// |---|---|
/// | `@DIR@` | the instance's private temp dir |
/// | `@BRIDGE@` | its unique bridge name |
/// | `@SUBNET@` | its unique `10.2xx.y.0/24` |
/// | `@GATEWAY@` | `10.2xx.y.1` |
/// | `@IPAM_DIR@` | its host-local data dir |
/// | `@PLUGIN_DIR@` | its private CNI plugin dir (first in `plugin_dirs` when [`Options::plugin`] was used) |
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub(crate) driver: Driver,
    pub(crate) base_config: Option<String>,
    pub(crate) overrides: Vec<(String, String)>,
    pub(crate) conflists: Vec<(String, String)>,
    pub(crate) plugins: Vec<(String, String)>,
    pub(crate) stale_socket: bool,
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cgroup driver (default cgroupfs).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = driver;
        self
    }

    /// Sets a config key (dotted, e.g. `pod.shm_size`) to a raw TOML value (e.g. `"\"32Mi\""`, `["@DIR@/x"]`),
    /// after the harness' own keys, so it wins over them. A key crius does not know is written as given.
    pub fn set(mut self, key: &str, toml_value: &str) -> Self {
        self.overrides
            .push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Starts from this TOML text (e.g. `crius config default`) instead of an empty file; the harness' keys and
    /// [`Options::set`] overrides are then applied on top.
    pub fn base_config(mut self, toml_text: &str) -> Self {
        self.base_config = Some(toml_text.to_string());
        self
    }

    /// Writes a CNI conflist file into the instance's (otherwise empty) `network.conf_dir`.
    pub fn conflist(mut self, file_name: &str, text: &str) -> Self {
        self.conflists
            .push((file_name.to_string(), text.to_string()));
        self
    }

    /// Installs an executable (a shell script, say) as CNI plugin `name` in the instance's private plugin dir,
    /// which then comes first in `network.plugin_dirs`.
    pub fn plugin(mut self, name: &str, script: &str) -> Self {
        self.plugins.push((name.to_string(), script.to_string()));
        self
    }

    /// Leaves a stale socket file (bound, then closed) at the listen path before crius starts.
    pub fn stale_socket(mut self) -> Self {
        self.stale_socket = true;
        self
    }
}

/// A conflist for a bridge network on the instance's own bridge, subnet and IPAM dir (placeholders, see
/// [`Options`]), followed by `extra_plugins` (JSON objects, e.g. `{"type": "portmap", ...}`).
pub fn bridge_conflist(network_name: &str, extra_plugins: &[serde_json::Value]) -> String {
    let mut plugins = vec![serde_json::json!({
        "type": "bridge",
        "bridge": "@BRIDGE@",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": "@IPAM_DIR@",
            "ranges": [[{"subnet": "@SUBNET@", "gateway": "@GATEWAY@"}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })];
    plugins.extend(extra_plugins.iter().cloned());
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network_name,
        "plugins": plugins,
    })
    .to_string()
}

/// The values that replace the placeholders.
#[derive(Debug, Clone)]
pub(crate) struct Placeholders {
    pub dir: PathBuf,
    pub bridge: String,
    pub subnet: String,
    pub gateway: String,
    pub ipam_dir: PathBuf,
    pub plugin_dir: PathBuf,
}

impl Placeholders {
    pub fn apply(&self, text: &str) -> String {
        text.replace("@DIR@", &self.dir.to_string_lossy())
            .replace("@BRIDGE@", &self.bridge)
            .replace("@SUBNET@", &self.subnet)
            .replace("@GATEWAY@", &self.gateway)
            .replace("@IPAM_DIR@", &self.ipam_dir.to_string_lossy())
            .replace("@PLUGIN_DIR@", &self.plugin_dir.to_string_lossy())
    }
}

/// Sets `dotted` (e.g. `network.default_bridge`) in `table`, creating intermediate tables.
pub(crate) fn set_key(
    table: &mut toml::Table,
    dotted: &str,
    value: toml::Value,
) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().context("empty config key")?;
    let mut cur = table;
    for part in parts {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            other => bail!(
                "config key {dotted}: {part} is a {}, not a table",
                other.type_str()
            ),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// Parses a raw TOML value such as `"\"64Mi\""` or `["/a", "/b"]`.
pub(crate) fn parse_value(raw: &str) -> anyhow::Result<toml::Value> {
    let mut t: toml::Table = toml::from_str(&format!("v = {raw}"))
        .with_context(|| format!("{raw:?} is not a TOML value"))?;
    t.remove("v").context("parsed value vanished")
}

/// A network slot: bridge name and /24 subnet, reserved host-wide with a lock file for as long as it lives.
#[derive(Debug)]
pub(crate) struct NetSlot {
    pub bridge: String,
    /// The second and third octet: the subnet is `10.<a>.<b>.0/24`.
    pub octets: (u8, u8),
    _lock: Flock<File>,
}

const SLOTS: u32 = 50 * 256;
const LOCK_DIR: &str = "/tmp/crius-e2e-slots";

impl NetSlot {
    /// Picks a free slot, starting from one derived from the pid and instance serial: locked by no other
    /// running test process, and with neither the bridge nor a route overlapping the subnet on the host.
    pub fn reserve(serial: u32) -> anyhow::Result<NetSlot> {
        std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("cannot create {LOCK_DIR}"))?;
        let start = (std::process::id().wrapping_mul(97)).wrapping_add(serial) % SLOTS;
        let routes = ipv4_routes();
        for i in 0..SLOTS {
            let s = (start + i) % SLOTS;
            let a = u8::try_from(200 + s / 256).context("slot out of range")?;
            let b = u8::try_from(s % 256).context("slot out of range")?;
            let path = Path::new(LOCK_DIR).join(format!("10.{a}.{b}"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let bridge = format!("ce{a}x{b}");
            if Path::new("/sys/class/net").join(&bridge).exists() {
                continue;
            }
            let net = u32::from_be_bytes([10, a, b, 0]);
            if routes
                .iter()
                .any(|&(dst, mask)| overlaps(dst, mask, net, 0xffff_ff00))
            {
                continue;
            }
            return Ok(NetSlot {
                bridge,
                octets: (a, b),
                _lock: lock,
            });
        }
        bail!("no free 10.2xx.y.0/24 slot for a test network")
    }

    pub fn subnet(&self) -> String {
        format!("10.{}.{}.0/24", self.octets.0, self.octets.1)
    }

    pub fn gateway(&self) -> String {
        format!("10.{}.{}.1", self.octets.0, self.octets.1)
    }
}

fn overlaps(dst: u32, mask: u32, net: u32, net_mask: u32) -> bool {
    // The default route (mask 0) overlaps everything but says nothing about a subnet being in use.
    mask != 0 && (dst & mask & net_mask) == (net & mask & net_mask)
}

/// (destination, mask) of every IPv4 route, host byte order, from /proc/net/route.
fn ipv4_routes() -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // The file prints the kernel's big-endian values as native (little-endian) hex words.
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?.swap_bytes();
            Some((dst, mask))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn set_key_nests_tables() {
        let mut t = toml::Table::new();
        set_key(
            &mut t,
            "network.default_bridge",
            toml::Value::String("x".into()),
        )
        .unwrap();
        set_key(&mut t, "log_level", parse_value("\"debug\"").unwrap()).unwrap();
        set_key(
            &mut t,
            "network.plugin_dirs",
            parse_value("[\"/a\"]").unwrap(),
        )
        .unwrap();
        let text = toml::to_string(&t).unwrap();
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back["network"]["default_bridge"].as_str(), Some("x"));
        assert_eq!(back["network"]["plugin_dirs"][0].as_str(), Some("/a"));
        assert_eq!(back["log_level"].as_str(), Some("debug"));
    }

    #[test]
    fn route_overlap() {
        let net = u32::from_be_bytes([10, 200, 3, 0]);
        assert!(overlaps(
            u32::from_be_bytes([10, 0, 0, 0]),
            0xff00_0000,
            net,
            0xffff_ff00
        ));
        assert!(!overlaps(
            u32::from_be_bytes([10, 200, 4, 0]),
            0xffff_ff00,
            net,
            0xffff_ff00
        ));
        assert!(!overlaps(0, 0, net, 0xffff_ff00));
    }

    #[test]
    fn two_slots_differ() {
        let a = NetSlot::reserve(1000).unwrap();
        let b = NetSlot::reserve(1000).unwrap();
        assert_ne!(a.subnet(), b.subnet());
        assert_ne!(a.bridge, b.bridge);
        assert!(a.bridge.len() <= 15);
    }
}
