//! The agent's configuration: `/etc/crius/config.toml`, every key with a default.
//!
//! Unknown keys and bad values stop startup with a message naming them (serde's `deny_unknown_fields` plus typed
//! values). `crius config default` prints [`DEFAULT_TOML`], which a unit test keeps identical to `Config::default()`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// tracing filter when RUST_LOG is unset: error, warn, info, debug, trace.
    pub log_level: LogLevel,
    /// Persistent state: the state store, images, CNI cache.
    pub root: PathBuf,
    /// Runtime state: socket, namespaces, pod files (a tmpfs on real nodes).
    pub state: PathBuf,
    /// The CRI socket.
    pub listen: PathBuf,
    /// The pause binary; empty means `crius-pause` next to the crius executable.
    pub pause_binary: PathBuf,
    /// A pull that receives nothing for this long is cancelled.
    pub image_pull_progress_timeout: HumanDuration,
    /// Layers of one pull downloaded at the same time.
    pub max_concurrent_downloads: usize,
    pub cgroup: CgroupConfig,
    pub network: NetworkConfig,
    pub pod: PodConfig,
    pub streaming: StreamingConfig,
    pub metrics: MetricsConfig,
    pub tracing: TracingConfig,
    /// Per-registry settings, keyed by registry host (`docker.io`, `registry.k8s.io`, `localhost:5000`).
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// How to reach one registry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Endpoints tried in order before the registry itself ("http://127.0.0.1:5000", "https://mirror.example").
    pub mirrors: Vec<String>,
    /// Talk plain HTTP to the registry itself (localhost and 127.0.0.0/8 always may).
    pub insecure: bool,
    /// PEM CA certificates trusted for this registry, besides the system roots.
    pub ca_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    /// "cgroupfs" or "systemd"; reported to kubelet by RuntimeConfig.
    pub driver: Driver,
    /// The cgroup2 mount; empty means detect (/sys/fs/cgroup, else /sys/fs/cgroup/unified).
    pub mount: PathBuf,
    /// Parent of pod cgroups for pods that come without a cgroup_parent.
    pub default_parent: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Where CNI network configurations live; the lexically first valid one is used.
    pub conf_dir: PathBuf,
    /// Where CNI plugins are looked up, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// CNI results and configs cached for DEL; empty means `<root>/cni`.
    pub cache_dir: PathBuf,
    /// Upper bound for one plugin call.
    pub plugin_timeout: HumanDuration,
    /// The embedded default network, used when conf_dir holds no valid config.
    pub default_bridge: String,
    pub default_subnet: String,
    pub default_masquerade: bool,
    /// host-local's dataDir for the default network; empty means the plugin's own default.
    pub default_ipam_data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodConfig {
    /// Size of each pod's /dev/shm tmpfs.
    pub shm_size: ByteSize,
    /// The resolv.conf pods get when the request carries no DNS config.
    pub resolv_conf: PathBuf,
    /// oom_score_adj wanted for pause (clamped when the host does not allow lowering it).
    pub pause_oom_score_adj: i32,
}

/// The streaming server (Exec, Attach, PortForward URLs).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// The address it listens on; 127.0.0.1 keeps it to this node (kubelet proxies to it).
    pub address: String,
    /// Its port; 0 picks a free one at startup.
    pub port: u16,
    /// PEM certificate chain and key for HTTPS; both empty means plain HTTP.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// A stream with no traffic either way for this long is closed.
    pub idle_timeout: HumanDuration,
    /// How long a SPDY client may take to open the streams of a session after the upgrade.
    pub stream_creation_timeout: HumanDuration,
    /// URLs handed out and not yet used, at most (a further Exec/Attach/PortForward is refused).
    pub max_outstanding_tokens: usize,
}

/// The Prometheus endpoint (`GET /metrics`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ip:port` to serve it on ("127.0.0.1:9090"); empty means off; port 0 picks a free one (logged).
    pub address: String,
}

/// OpenTelemetry traces of the CRI RPCs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// An OTLP/gRPC collector (`http://host:4317`); empty means off.
    pub otlp_endpoint: String,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".into(),
            port: 0,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            idle_timeout: HumanDuration(Duration::from_secs(4 * 3600)),
            stream_creation_timeout: HumanDuration(Duration::from_secs(30)),
            max_outstanding_tokens: 1000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: LogLevel::Info,
            root: PathBuf::from("/var/lib/crius"),
            state: PathBuf::from("/run/crius"),
            listen: PathBuf::from("/run/crius/crius.sock"),
            pause_binary: PathBuf::new(),
            image_pull_progress_timeout: HumanDuration(Duration::from_secs(300)),
            max_concurrent_downloads: 3,
            cgroup: CgroupConfig::default(),
            network: NetworkConfig::default(),
            pod: PodConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
            registries: BTreeMap::new(),
        }
    }
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            driver: Driver::Cgroupfs,
            mount: PathBuf::new(),
            default_parent: "/crius".into(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            plugin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cache_dir: PathBuf::new(),
            plugin_timeout: HumanDuration(Duration::from_secs(60)),
            default_bridge: "crius0".into(),
            default_subnet: "10.85.0.0/16".into(),
            default_masquerade: true,
            default_ipam_data_dir: PathBuf::new(),
        }
    }
}

impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            shm_size: ByteSize(64 << 20),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            pause_oom_score_adj: -998,
        }
    }
}

/// The default configuration file, every key commented. Kept equal to `Config::default()` by a test.
pub const DEFAULT_TOML: &str = include_str!("../../deploy/config.toml");

impl Config {
    /// Loads `path`; a missing file is an error only when `required` (an explicit --config).
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let absolute = [
            ("root", &self.root),
            ("state", &self.state),
            ("listen", &self.listen),
            ("network.conf_dir", &self.network.conf_dir),
        ];
        for (key, path) in absolute {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{} is not an absolute path", path.display()),
                });
            }
        }
        if self.network.plugin_dirs.is_empty() {
            return Err(ConfigError::Invalid {
                key: "network.plugin_dirs",
                reason: "at least one plugin directory is needed".into(),
            });
        }
        let bridge = &self.network.default_bridge;
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ' ', ':']) {
            return Err(ConfigError::Invalid {
                key: "network.default_bridge",
                reason: format!("{bridge:?} is not a valid interface name (1-15 characters)"),
            });
        }
        if !valid_cidr(&self.network.default_subnet) {
            return Err(ConfigError::Invalid {
                key: "network.default_subnet",
                reason: format!("{:?} is not a CIDR subnet", self.network.default_subnet),
            });
        }
        if self.network.plugin_timeout.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "network.plugin_timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if self.image_pull_progress_timeout.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "image_pull_progress_timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if self.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid {
                key: "max_concurrent_downloads",
                reason: "must be at least 1".into(),
            });
        }
        for (host, r) in &self.registries {
            for m in &r.mirrors {
                crate::image::registry::parse_endpoint(m, false).map_err(|reason| {
                    ConfigError::Invalid {
                        key: "registries.*.mirrors",
                        reason: format!("{host}: {reason}"),
                    }
                })?;
            }
        }
        let st = &self.streaming;
        if st.address.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "streaming.address",
                reason: format!("{:?} is not an IP address", st.address),
            });
        }
        if st.tls_cert_file.as_os_str().is_empty() != st.tls_key_file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "streaming.tls_cert_file",
                reason: "tls_cert_file and tls_key_file go together".into(),
            });
        }
        if st.idle_timeout.0.is_zero() || st.stream_creation_timeout.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "streaming.idle_timeout",
                reason: "idle_timeout and stream_creation_timeout must be greater than zero".into(),
            });
        }
        if st.max_outstanding_tokens == 0 {
            return Err(ConfigError::Invalid {
                key: "streaming.max_outstanding_tokens",
                reason: "must be at least 1".into(),
            });
        }
        let m = &self.metrics.address;
        if !m.is_empty() && m.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "metrics.address",
                reason: format!("{m:?} is not an ip:port address (\"\" turns metrics off)"),
            });
        }
        let otlp = &self.tracing.otlp_endpoint;
        if !otlp.is_empty() && !valid_http_endpoint(otlp) {
            return Err(ConfigError::Invalid {
                key: "tracing.otlp_endpoint",
                reason: format!(
                    "{otlp:?} is not an http://host:port collector address (\"\" turns tracing off)"
                ),
            });
        }
        if !self.cgroup.default_parent.starts_with('/')
            && !self.cgroup.default_parent.ends_with(".slice")
        {
            return Err(ConfigError::Invalid {
                key: "cgroup.default_parent",
                reason: "must be an absolute cgroup path or a systemd slice name".into(),
            });
        }
        Ok(())
    }

    /// The CNI cache directory after defaults.
    pub fn cni_cache_dir(&self) -> PathBuf {
        if self.network.cache_dir.as_os_str().is_empty() {
            self.root.join("cni")
        } else {
            self.network.cache_dir.clone()
        }
    }

    /// The pause binary after defaults: configured, else next to our own executable.
    pub fn pause_binary(&self) -> PathBuf {
        if !self.pause_binary.as_os_str().is_empty() {
            return self.pause_binary.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("crius-pause")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/crius-pause"))
    }
}

/// The pod monitor binary: next to our own executable (where `make release` and the install script put it).
pub fn monitor_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("crius-monitor")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/crius-monitor"))
}

/// `http://host:port` with nothing after but an optional `/` (TLS to the collector is not built in).
fn valid_http_endpoint(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("http://") else {
        return false;
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains(['/', '@', ' ']) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    match (addr.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

/// Log levels accepted in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        };
        f.write_str(s)
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            other => Err(format!(
                "unknown log level {other:?} (error, warn, info, debug, trace)"
            )),
        }
    }
}

/// The cgroup driver kubelet must be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// A duration written like "10s", "500ms", "5m", "1h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like \"10s\", \"500ms\", \"5m\""))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(format!("{s:?} has no unit (ms, s, m, h)")),
        };
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A size written as a byte count or like "64Mi", "1Gi", "512Ki".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size like \"64Mi\""))?;
        let mult = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (Ki, Mi, Gi)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default_config() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).expect("default config parses");
        assert_eq!(parsed, Config::default());
        parsed.validate().expect("default config is valid");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let parsed: Config = toml::from_str("").expect("empty parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = toml::from_str::<Config>("[network]\nconf_dirr = \"/x\"\n").unwrap_err();
        assert!(err.to_string().contains("conf_dirr"), "{err}");
        let err = toml::from_str::<Config>("bogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = toml::from_str::<Config>("[cgroup]\ndriver = \"systemdd\"\n").unwrap_err();
        assert!(err.to_string().contains("systemdd"), "{err}");
        let err = toml::from_str::<Config>("[network]\nplugin_timeout = \"10\"\n").unwrap_err();
        assert!(err.to_string().contains("no unit"), "{err}");
        let err = toml::from_str::<Config>("[pod]\nshm_size = \"64Mb\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let c: Config =
            toml::from_str("[network]\ndefault_subnet = \"10.1.2.3\"\n").expect("parses");
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("network.default_subnet"), "{err}");
        let c: Config = toml::from_str("root = \"relative\"\n").expect("parses");
        assert!(c.validate().unwrap_err().to_string().contains("root"));
        let c: Config =
            toml::from_str("[network]\ndefault_bridge = \"abcdefghijklmnop\"\n").expect("parses");
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("default_bridge")
        );
    }

    #[test]
    fn metrics_and_tracing_addresses() {
        let c: Config = toml::from_str(
            "[metrics]\naddress = \"127.0.0.1:9090\"\n\
             [tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.metrics.address, "127.0.0.1:9090");
        let c: Config = toml::from_str("[metrics]\naddress = \"[::1]:0\"\n").expect("parses");
        c.validate().expect("an IPv6 address and port 0 are valid");
        for bad in ["9090", "localhost:9090", "127.0.0.1"] {
            let c: Config =
                toml::from_str(&format!("[metrics]\naddress = {bad:?}\n")).expect("parses");
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("metrics.address"), "{bad}: {err}");
        }
        for bad in [
            "127.0.0.1:4317",
            "https://c:4317",
            "http://c",
            "http://:4317",
            "http://c:4317/v1/traces",
        ] {
            let c: Config =
                toml::from_str(&format!("[tracing]\notlp_endpoint = {bad:?}\n")).expect("parses");
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("tracing.otlp_endpoint"), "{bad}: {err}");
        }
        assert!(toml::from_str::<Config>("[metrics]\nport = 1\n").is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(HumanDuration(Duration::from_secs(120)).to_string(), "2m");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        assert!("m".parse::<HumanDuration>().is_err());
        assert_eq!("64Mi".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("99999999999999999999Gi".parse::<ByteSize>().is_err());
        let c: Config = toml::from_str("[pod]\nshm_size = 1048576\n").expect("numeric size");
        assert_eq!(c.pod.shm_size.0, 1 << 20);
    }

    #[test]
    fn registries_mirror_shape() {
        let c: Config = toml::from_str(
            "image_pull_progress_timeout = \"2s\"\n\
             [registries.\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n\
             [registries.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n",
        )
        .expect("the mirror shape parses");
        c.validate().expect("and is valid");
        assert_eq!(c.image_pull_progress_timeout.0, Duration::from_secs(2));
        assert_eq!(
            c.registries["registry.k8s.io"].mirrors,
            vec!["http://127.0.0.1:5000".to_string()]
        );
        let c: Config = toml::from_str("[registries.\"x.io\"]\nmirrors = [\"ftp://m\"]\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("x.io"));
        assert!(toml::from_str::<Config>("[registries.\"x.io\"]\nmirror = []\n").is_err());
    }

    #[test]
    fn missing_optional_file_is_default() {
        let c = Config::load(Path::new("/nonexistent/crius.toml"), false).expect("defaults");
        assert_eq!(c, Config::default());
        assert!(Config::load(Path::new("/nonexistent/crius.toml"), true).is_err());
    }
}
