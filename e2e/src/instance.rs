//! One `crius serve` under test: its private directories, config, process and clients.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crius_proto::v1::image_service_client::ImageServiceClient;
use crius_proto::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::config::{self, Driver, NetSlot, Options, Placeholders};
use crate::{binary, client, reaper};

/// How long crius gets to answer Version after it is started.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long crius gets to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// The files and directories of one instance, all inside its private temp dir.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The private temp dir holding everything below.
    pub dir: PathBuf,
    /// `--root`-equivalent: persistent state (store, CNI cache under `root/cni`).
    pub root: PathBuf,
    /// Runtime state: `netns/`, `ipcns/`, `utsns/`, `pidns/`, `pods/`.
    pub state: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    /// The config file crius is started with.
    pub config: PathBuf,
    /// `network.conf_dir` (empty unless [`Options::conflist`] was used: the embedded default network).
    pub conf_dir: PathBuf,
    /// host-local's data dir (`network.default_ipam_data_dir`, and `@IPAM_DIR@` in conflists).
    pub ipam_dir: PathBuf,
    /// Private CNI plugins ([`Options::plugin`]).
    pub plugin_dir: PathBuf,
    /// Where pod log directories go.
    pub log_dir: PathBuf,
    /// crius' stderr (appended across restarts).
    pub crius_log: PathBuf,
}

/// A running (or stopped) `crius serve` on private directories, a private bridge and subnet, and a private
/// cgroup parent. Dropping it kills crius (SIGKILL) if still running, then removes whatever is left: pause
/// processes in its cgroups, mounts under its dir, its bridge, its cgroup parent, its dir. Drop never hangs.
/// When the test is failing (panicking), Drop prints crius' log.
pub struct Crius {
    pub(crate) paths: Paths,
    pub(crate) bin: PathBuf,
    pub(crate) pause_bin: PathBuf,
    pub(crate) net: NetSlot,
    pub(crate) driver: Driver,
    /// `cgroup.default_parent` as configured (`/crius-e2e-<pid>-<n>` or `criuse2e<pid>n<n>.slice`).
    pub(crate) cgroup_parent: String,
    /// Its path in the cgroup v2 hierarchy (`/crius-e2e-<pid>-<n>` or `/criuse2e<pid>n<n>.slice`).
    pub(crate) cgroup_parent_path: String,
    pub(crate) cgroup_mount: PathBuf,
    pub(crate) serial: u32,
    pub(crate) child: Option<Child>,
    pub(crate) channel: Option<Channel>,
    pub(crate) pause_pids: Mutex<BTreeSet<i32>>,
    pub(crate) uids: AtomicU32,
    stale_socket: bool,
    _dir: TempDir,
}

impl Crius {
    /// Prepares an instance and starts `crius serve`, waiting until it answers Version. Panics (with crius'
    /// log) on failure: see [`Crius::try_start`] for a fallible version.
    pub async fn start(opts: Options) -> Crius {
        match Crius::try_start(opts).await {
            Ok(c) => c,
            Err(e) => panic!("cannot start crius: {e:#}"),
        }
    }

    /// [`Crius::prepare`] then [`Crius::launch`].
    pub async fn try_start(opts: Options) -> anyhow::Result<Crius> {
        let mut c = Crius::prepare(opts)?;
        c.launch().await?;
        Ok(c)
    }

    /// Creates the private dirs and the config file, without starting crius.
    pub fn prepare(opts: Options) -> anyhow::Result<Crius> {
        reaper::install();
        let bin = binary::crius()?;
        let pause_bin = binary::pause_next_to(&bin);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("crius-e2e-{pid}-{serial}-"))
            .tempdir()
            .context("cannot create the test's temp dir")?;
        let base = dir.path().to_path_buf();
        let paths = Paths {
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("crius.sock"),
            config: base.join("crius.toml"),
            conf_dir: base.join("cni"),
            ipam_dir: base.join("ipam"),
            plugin_dir: base.join("plugins"),
            log_dir: base.join("logs"),
            crius_log: base.join("crius.log"),
            dir: base,
        };
        for d in [
            &paths.conf_dir,
            &paths.ipam_dir,
            &paths.plugin_dir,
            &paths.log_dir,
        ] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let net = NetSlot::reserve(serial)?;
        let (cgroup_parent, cgroup_parent_path) = match opts.driver {
            Driver::Cgroupfs => {
                let p = format!("/crius-e2e-{pid}-{serial}");
                (p.clone(), p)
            }
            Driver::Systemd => {
                let p = format!("criuse2e{pid}n{serial}.slice");
                (p.clone(), format!("/{p}"))
            }
        };
        let ph = Placeholders {
            dir: paths.dir.clone(),
            bridge: net.bridge.clone(),
            subnet: net.subnet(),
            gateway: net.gateway(),
            ipam_dir: paths.ipam_dir.clone(),
            plugin_dir: paths.plugin_dir.clone(),
        };
        let mut table: toml::Table = match &opts.base_config {
            Some(text) => toml::from_str(text).context("the base config is not TOML")?,
            None => toml::Table::new(),
        };
        let mut plugin_dirs = Vec::new();
        if !opts.plugins.is_empty() {
            plugin_dirs.push(toml::Value::String(
                paths.plugin_dir.to_string_lossy().into(),
            ));
        }
        plugin_dirs.push(toml::Value::String("/opt/cni/bin".into()));
        plugin_dirs.push(toml::Value::String("/usr/lib/cni".into()));
        let s = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned());
        let keys: Vec<(&str, toml::Value)> = vec![
            ("log_level", toml::Value::String("debug".into())),
            ("root", s(&paths.root)),
            ("state", s(&paths.state)),
            ("listen", s(&paths.socket)),
            (
                "cgroup.driver",
                toml::Value::String(opts.driver.as_str().into()),
            ),
            (
                "cgroup.default_parent",
                toml::Value::String(cgroup_parent.clone()),
            ),
            ("network.conf_dir", s(&paths.conf_dir)),
            ("network.plugin_dirs", toml::Value::Array(plugin_dirs)),
            (
                "network.default_bridge",
                toml::Value::String(net.bridge.clone()),
            ),
            ("network.default_subnet", toml::Value::String(net.subnet())),
            ("network.default_masquerade", toml::Value::Boolean(false)),
            ("network.default_ipam_data_dir", s(&paths.ipam_dir)),
        ];
        for (k, v) in keys {
            config::set_key(&mut table, k, v)?;
        }
        for (k, raw) in &opts.overrides {
            config::set_key(&mut table, k, config::parse_value(&ph.apply(raw))?)?;
        }
        let text = toml::to_string(&table).context("cannot render the config")?;
        std::fs::write(&paths.config, text).context("cannot write the config")?;
        for (name, text) in &opts.conflists {
            std::fs::write(paths.conf_dir.join(name), ph.apply(text))
                .with_context(|| format!("cannot write conflist {name}"))?;
        }
        for (name, script) in &opts.plugins {
            write_executable(&paths.plugin_dir.join(name), &ph.apply(script))?;
        }
        let cgroup_mount = match table
            .get("cgroup")
            .and_then(|c| c.get("mount"))
            .and_then(|m| m.as_str())
        {
            Some(m) if !m.is_empty() => PathBuf::from(m),
            _ => detect_cgroup2_mount(),
        };
        Ok(Crius {
            paths,
            bin,
            pause_bin,
            net,
            driver: opts.driver,
            cgroup_parent,
            cgroup_parent_path,
            cgroup_mount,
            serial,
            child: None,
            channel: None,
            pause_pids: Mutex::new(BTreeSet::new()),
            uids: AtomicU32::new(0),
            stale_socket: opts.stale_socket,
            _dir: dir,
        })
    }

    /// Starts `crius serve --config <file>` (stderr appended to [`Paths::crius_log`]) and waits until the socket
    /// answers Version. Also used to start it again after [`Crius::stop`], on the same root and state.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("crius is already running");
        }
        if self.stale_socket {
            self.stale_socket = false;
            // Binding creates the socket file; dropping the listener closes it but leaves the file: stale.
            drop(
                std::os::unix::net::UnixListener::bind(&self.paths.socket)
                    .context("cannot create stale socket")?,
            );
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.crius_log)
            .context("cannot open the crius log")?;
        writeln!(log, "=== e2e harness: starting crius serve ===")?;
        let child = self
            .serve_command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        reaper::protect(child.id() as i32);
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                reaper::unprotect(child.id() as i32);
                self.child = None;
                bail!(
                    "crius serve exited ({status}) before answering:\n{}",
                    self.log()
                );
            }
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), client::connect(&self.paths.socket))
                    .await;
            if let Ok(Ok(channel)) = attempt {
                let mut rt = client::runtime(channel.clone());
                let version = tokio::time::timeout(
                    Duration::from_secs(2),
                    rt.version(crius_proto::v1::VersionRequest {
                        version: "v1".into(),
                    }),
                )
                .await;
                if let Ok(Ok(_)) = version {
                    self.channel = Some(channel);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "crius serve did not answer Version within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for crius to exit; returns its exit status. Pods keep running. Panics if crius
    /// is not running or does not exit within [`STOP_TIMEOUT`] (it is then killed).
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM)
    }

    /// Like [`Crius::stop`] with another signal (e.g. SIGINT).
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        self.channel = None;
        let mut child = self.child.take().expect("crius is not running");
        let pid = child.id() as i32;
        kill(Pid::from_raw(pid), signal).expect("cannot signal crius");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    reaper::unprotect(pid);
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    reaper::unprotect(pid);
                    panic!(
                        "crius did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// SIGKILLs crius if it runs and reaps it (bounded wait).
    pub fn kill(&mut self) {
        self.channel = None;
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        let _ = child.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        reaper::unprotect(pid);
    }

    /// `crius serve --config <this instance's config>`, not started: for tests that run a second instance.
    pub fn serve_command(&self) -> Command {
        let mut cmd = self.command();
        cmd.arg("serve").arg("--config").arg(&self.paths.config);
        // crius' own debug logs without the HTTP/2 frame chatter, and no colour codes in the log file.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env(
                "RUST_LOG",
                "info,crius=debug,crius_sandbox=debug,crius_cni=debug",
            );
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// The crius binary as a command with no arguments (e.g. for `crius check --config ...`).
    pub fn command(&self) -> Command {
        Command::new(&self.bin)
    }

    /// A RuntimeService client on the socket. Panics when crius is not running.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        client::runtime(self.channel.clone().expect("crius is not running"))
    }

    /// An ImageService client on the socket. Panics when crius is not running.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        client::images(self.channel.clone().expect("crius is not running"))
    }

    /// Whether the crius serve process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The pid of the crius serve process, when running.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The `crius` binary under test.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// The pause binary crius uses (`crius-pause` next to `crius`).
    /// `crius-monitor`, next to crius (where crius looks for it).
    pub fn monitor_bin(&self) -> PathBuf {
        self.bin.with_file_name("crius-monitor")
    }

    pub fn pause_binary(&self) -> &Path {
        &self.pause_bin
    }

    /// This instance's bridge (`network.default_bridge`, `@BRIDGE@`).
    pub fn bridge(&self) -> &str {
        &self.net.bridge
    }

    /// This instance's subnet, `10.2xx.y.0/24`.
    pub fn subnet(&self) -> String {
        self.net.subnet()
    }

    /// The bridge's (gateway) address, `10.2xx.y.1`.
    pub fn gateway(&self) -> String {
        self.net.gateway()
    }

    /// Whether `ip` (an IPv4 address) lies in this instance's subnet.
    pub fn in_subnet(&self, ip: &str) -> bool {
        let Ok(addr) = ip.parse::<std::net::Ipv4Addr>() else {
            return false;
        };
        let o = addr.octets();
        o[0] == 10 && (o[1], o[2]) == self.net.octets
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// `cgroup.default_parent` as configured.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The cgroup2 mount the harness checks (detected like crius does, or `cgroup.mount` when overridden).
    pub fn cgroup_mount(&self) -> &Path {
        &self.cgroup_mount
    }

    /// The absolute directory of the cgroup parent on the cgroup2 mount (it may not exist).
    pub fn cgroup_dir(&self) -> PathBuf {
        self.cgroup_mount
            .join(self.cgroup_parent_path.trim_start_matches('/'))
    }

    /// Everything crius wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.paths.crius_log).unwrap_or_default()
    }

    /// Remembers a pause pid so that the leak check and Drop look after it.
    pub fn track_pause_pid(&self, pid: i32) {
        if let Ok(mut pids) = self.pause_pids.lock() {
            pids.insert(pid);
        }
    }

    /// The pause pids seen so far.
    pub fn pause_pids(&self) -> Vec<i32> {
        self.pause_pids
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Drop for Crius {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        self.kill();
        if failing {
            eprintln!(
                "----- crius log ({}) -----\n{}----- end of crius log -----",
                self.paths.crius_log.display(),
                self.log()
            );
        }
        crate::cleanup::everything(self);
    }
}

/// The cgroup2 mount: `/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn detect_cgroup2_mount() -> PathBuf {
    let pure = Path::new("/sys/fs/cgroup");
    if pure.join("cgroup.controllers").exists() {
        pure.to_path_buf()
    } else {
        pure.join("unified")
    }
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o755)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
