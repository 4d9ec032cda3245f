//! Container helpers for the end-to-end tests: a registry holding busybox images and a crius that has pulled
//! them, container configs, the container RPCs (panicking wrappers where a test only wants the happy path),
//! ExecSync, and the CRI log files.
//!
//! ```no_run
//! # async fn example() {
//! use crius_e2e::containers::{Fixture, busybox_image};
//! let f = Fixture::start(&[("busybox", busybox_image().cmd(&["sh"]).build())]).await;
//! let pod = f.pod(f.c.pod_config("web")).await;
//! let done = f.run(&pod, f.config("busybox", "hello", &["echo", "hi"])).await;
//! assert_eq!((done.exit_code, done.stdout.as_str()), (0, "hi\n"));
//! f.c.stop_and_remove(&pod.id).await;
//! f.c.assert_no_leaks().await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_proto::v1::{
    self, ContainerConfig, ContainerMetadata, ContainerState, CreateContainerRequest, ImageSpec,
    PodSandboxConfig, PullImageRequest,
};
use tonic::Status;

use crate::images::{Compression, DEFAULT_APPLETS, Image, ImageBuilder, LayerBuilder};
use crate::instance::Crius;
use crate::registry::Registry;
use crate::{Options, namespaces, wait_until};

/// Applets linked into [`busybox_image`] on top of [`DEFAULT_APPLETS`].
pub const EXTRA_APPLETS: &[&str] = &["cut", "readlink", "sort", "tr", "tty", "uniq", "unshare"];

/// How long a container gets to reach a state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(20);

/// An image of one busybox layer ([`DEFAULT_APPLETS`] + [`EXTRA_APPLETS`]) with `PATH=/bin` only.
pub fn busybox_image() -> ImageBuilder {
    ImageBuilder::new()
        .config("Env", serde_json::json!(["PATH=/bin"]))
        .layer(busybox_layer().build(Compression::Gzip))
}

/// The base layer of [`busybox_image`], to build images with more layers on it.
pub fn busybox_layer() -> LayerBuilder {
    let applets: Vec<&str> = DEFAULT_APPLETS
        .iter()
        .chain(EXTRA_APPLETS)
        .copied()
        .collect();
    LayerBuilder::busybox_with(&applets)
}

/// A registry with named images (tag `1`) and a crius that has pulled each of them.
pub struct Fixture {
    pub c: Crius,
    /// name → the reference crius pulled (`127.0.0.1:<port>/<name>:1`).
    images: BTreeMap<String, String>,
    _registry: Registry,
}

/// A running pod and the config it was run with (CreateContainer wants both).
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Pod {
    /// The pod's log directory.
    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }
}

/// A container that ran to its end: its status and its CRI log split by stream.
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit_code: i32,
    /// The stdout records joined as the lines they make (`F` ends a line, `P` continues it).
    pub stdout: String,
    pub stderr: String,
    pub records: Vec<LogRecord>,
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub stream: String,
    /// `P` (partial) or `F` (final piece of a line).
    pub tag: String,
    pub content: String,
}

impl Fixture {
    /// Starts a registry, pushes `images` as `<name>:1`, starts crius and pulls them all.
    pub async fn start(images: &[(&str, Image)]) -> Fixture {
        Fixture::start_with(Options::new(), images).await
    }

    /// [`Fixture::start`] with crius started with `opts`.
    pub async fn start_with(opts: Options, images: &[(&str, Image)]) -> Fixture {
        let registry = Registry::start();
        let mut refs = BTreeMap::new();
        for (name, image) in images {
            image
                .push(&registry, name, "1")
                .unwrap_or_else(|e| panic!("push {name}: {e:#}"));
            refs.insert(name.to_string(), format!("{}/{name}:1", registry.host()));
        }
        let c = Crius::start(opts).await;
        for reference in refs.values() {
            c.images()
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: reference.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
        }
        Fixture {
            c,
            images: refs,
            _registry: registry,
        }
    }

    /// The reference of an image given to [`Fixture::start`].
    pub fn image(&self, name: &str) -> &str {
        self.images
            .get(name)
            .unwrap_or_else(|| panic!("no image {name} in the fixture"))
    }

    /// RunPodSandbox with `config`; panics on an error.
    pub async fn pod(&self, config: PodSandboxConfig) -> Pod {
        let id = self
            .c
            .run_pod(config.clone())
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.c.log()));
        Pod { id, config }
    }

    /// A container config: `name` (attempt 0), the fixture's image `image`, `command` (empty: the image's),
    /// log path `<name>.log`.
    pub fn config(&self, image: &str, name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image(image).to_string(),
                ..Default::default()
            }),
            command: strings(command),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    pub async fn create(&self, pod: &Pod, config: ContainerConfig) -> Result<String, Status> {
        self.c
            .runtime()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Status> {
        self.c
            .runtime()
            .start_container(v1::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    /// Create + Start, then waits until it is Running; panics on an error.
    pub async fn spawn(&self, pod: &Pod, config: ContainerConfig) -> String {
        let name = config.metadata.as_ref().map(|m| m.name.clone());
        let id = self
            .create(pod, config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name:?}: {e}"));
        self.start_container(&id)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name:?}: {e}"));
        self.wait_state(&id, ContainerState::ContainerRunning).await;
        id
    }

    /// Create + Start, waits for the exit and for its log to be complete, then removes the container.
    pub async fn run(&self, pod: &Pod, config: ContainerConfig) -> Finished {
        let log = pod.log_dir().join(&config.log_path);
        let name = config.metadata.as_ref().map(|m| m.name.clone());
        let id = self
            .create(pod, config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name:?}: {e}"));
        self.start_container(&id)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name:?}: {e}"));
        let st = self.wait_state(&id, ContainerState::ContainerExited).await;
        let records = settled_log(&log).await;
        self.remove(&id).await;
        Finished {
            exit_code: st.exit_code,
            stdout: joined(&records, "stdout"),
            stderr: joined(&records, "stderr"),
            records,
        }
    }

    pub async fn status(&self, id: &str) -> v1::ContainerStatus {
        self.status_verbose(id).await.0
    }

    /// ContainerStatus(verbose): the status and `info["info"]` as JSON.
    pub async fn status_verbose(&self, id: &str) -> (v1::ContainerStatus, serde_json::Value) {
        let r = self
            .c
            .runtime()
            .container_status(v1::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner();
        let info = r
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        (r.status.expect("ContainerStatus without a status"), info)
    }

    /// The container's pid on the host, from the verbose status.
    pub async fn pid(&self, id: &str) -> i32 {
        let (_, info) = self.status_verbose(id).await;
        info["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no pid in the verbose status of {id}: {info}"))
    }

    pub async fn wait_state(&self, id: &str, want: ContainerState) -> v1::ContainerStatus {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let st = self.status(id).await;
            if st.state == want as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {want:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// StopContainer; panics on an error.
    pub async fn stop(&self, id: &str, timeout: i64) {
        self.c
            .runtime()
            .stop_container(v1::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    /// RemoveContainer; panics on an error.
    pub async fn remove(&self, id: &str) {
        self.c
            .runtime()
            .remove_container(v1::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    /// Stop (no grace) and Remove.
    pub async fn stop_and_remove(&self, id: &str) {
        self.stop(id, 0).await;
        self.remove(id).await;
    }

    pub async fn list(&self) -> Vec<v1::Container> {
        self.c
            .runtime()
            .list_containers(v1::ListContainersRequest { filter: None })
            .await
            .unwrap_or_else(|e| panic!("ListContainers: {e}"))
            .into_inner()
            .containers
    }

    pub async fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<v1::ExecSyncResponse, Status> {
        self.c
            .runtime()
            .exec_sync(v1::ExecSyncRequest {
                container_id: id.into(),
                cmd: strings(cmd),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// ExecSync (10 s timeout) that must succeed with exit code 0; returns its stdout.
    pub async fn exec_ok(&self, id: &str, cmd: &[&str]) -> String {
        let r = self
            .exec(id, cmd, 10)
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}"));
        assert_eq!(
            r.exit_code,
            0,
            "{cmd:?} in {id} failed: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    pub async fn reopen_log(&self, id: &str) -> Result<(), Status> {
        self.c
            .runtime()
            .reopen_container_log(v1::ReopenContainerLogRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }
}

/// The records of a CRI log file (none when it does not exist). Panics on a malformed line.
pub fn log_records(path: &Path) -> Vec<LogRecord> {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .split_terminator('\n')
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap_or("");
            assert!(
                ts.ends_with('Z') && ts.contains('T'),
                "bad timestamp in {l:?} of {}",
                path.display()
            );
            let stream = p.next().unwrap_or("").to_string();
            let tag = p.next().unwrap_or("").to_string();
            assert!(
                ["stdout", "stderr"].contains(&stream.as_str())
                    && ["P", "F"].contains(&tag.as_str()),
                "bad record {l:?} in {}",
                path.display()
            );
            LogRecord {
                stream,
                tag,
                content: p.next().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// The lines one stream's records make: `P` pieces joined to the `F` that ends them, each line ending in `\n`.
pub fn joined(records: &[LogRecord], stream: &str) -> String {
    let mut out = String::new();
    for r in records.iter().filter(|r| r.stream == stream) {
        out.push_str(&r.content);
        if r.tag == "F" {
            out.push('\n');
        }
    }
    out
}

/// Waits until `path` has a record satisfying `pred` (10 s at most); returns the records read last.
pub async fn wait_log(path: &Path, pred: impl Fn(&[LogRecord]) -> bool) -> Vec<LogRecord> {
    let mut last = Vec::new();
    wait_until(Duration::from_secs(10), async || {
        last = log_records(path);
        pred(&last)
    })
    .await;
    last
}

/// The log of a container that has exited: read until it stops changing. The monitor records an exit and then
/// drains what is left in the pipes, so a status of Exited can come a moment before the last record.
pub async fn settled_log(path: &Path) -> Vec<LogRecord> {
    let mut last: Option<Vec<u8>> = None;
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stable < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = std::fs::read(path).unwrap_or_default();
        if last.as_ref() == Some(&now) {
            stable += 1;
        } else {
            stable = 0;
        }
        last = Some(now);
    }
    log_records(path)
}

/// `key:\tvalue` lines of a `/proc/<pid>/status` text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// A capability mask (`CapEff` & co., hex) as a number.
pub fn cap_mask(hex: &str) -> u64 {
    u64::from_str_radix(hex.trim(), 16)
        .unwrap_or_else(|e| panic!("bad capability mask {hex:?}: {e}"))
}

/// `&str`s as the `Vec<String>` the CRI messages hold.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The container's security context, created when missing.
pub fn security(c: &mut ContainerConfig) -> &mut v1::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// Sets the container's seccomp profile type.
pub fn seccomp(c: &mut ContainerConfig, profile: v1::security_profile::ProfileType) {
    security(c).seccomp = Some(v1::SecurityProfile {
        profile_type: profile as i32,
        ..Default::default()
    });
}

/// Sets the container's capability changes.
pub fn caps(c: &mut ContainerConfig, add: &[&str], drop: &[&str]) {
    security(c).capabilities = Some(v1::Capability {
        add_capabilities: strings(add),
        drop_capabilities: strings(drop),
        ..Default::default()
    });
}

/// Sets the container's namespace modes: network and IPC the pod's, PID `pid`.
pub fn pid_mode(c: &mut ContainerConfig, pid: v1::NamespaceMode) {
    security(c).namespace_options = Some(namespaces(
        v1::NamespaceMode::Pod,
        pid,
        v1::NamespaceMode::Pod,
    ));
}

/// A CRI bind mount of `host` at `container`.
pub fn bind(
    host: &Path,
    container: &str,
    readonly: bool,
    propagation: v1::MountPropagation,
) -> v1::Mount {
    v1::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// [`Crius::pod_config`] with the pod-level PID namespace mode `pid`.
pub fn pod_with_pid(c: &Crius, name: &str, pid: v1::NamespaceMode) -> PodSandboxConfig {
    let mut config = c.pod_config(name);
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.namespace_options = Some(namespaces(
            v1::NamespaceMode::Pod,
            pid,
            v1::NamespaceMode::Pod,
        ));
    }
    config
}

/// A mount the test makes on the host (`mount <args> <target>`), lazily unmounted when dropped, also when the
/// test fails.
pub struct HostMount(PathBuf);

impl HostMount {
    pub fn new(args: &[&str], target: &Path) -> HostMount {
        let target_str = target.to_string_lossy();
        let mut all: Vec<&str> = args.to_vec();
        all.push(&target_str);
        crate::procfs::run("mount", &all).unwrap_or_else(|e| panic!("mount {all:?}: {e:#}"));
        HostMount(target.to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = crate::procfs::run("umount", &["-l", &self.0.to_string_lossy()]);
    }
}
