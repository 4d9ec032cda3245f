//! A private containerd (Debian's `containerd` package) to compare against: its own root, state, socket and
//! config in a temp dir, talking CRI v1 on its socket. Dropping it stops it (SIGTERM, then SIGKILL, by pid),
//! kills the runc shims it started that are still alive (by pid, found by their `-address`), unmounts whatever
//! it left under its dir, removes the dir and the host dirs it caused to exist (emptied ones only).
//!
//! To run pods ([`PodSettings`]) it also needs a sandbox image, a memory cgroup for its shims and a CNI
//! conflist: see [`PodSettings`] for why each is there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::client;
use crate::procfs;

/// The containerd binary (`$CONTAINERD_BIN` overrides).
pub fn binary() -> PathBuf {
    std::env::var_os("CONTAINERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/containerd"))
}

/// Whether containerd is installed here.
pub fn available() -> bool {
    binary().is_file()
}

/// The shim binary the `io.containerd.runc.v2` runtime runs (next to containerd).
pub const SHIM_NAME: &str = "containerd-shim-runc-v2";

/// Host directories containerd 1.6 writes to whatever its config says: shim sockets go to
/// `/run/containerd/s/` and go-cni caches results under `/var/lib/cni/`. Those that did not exist before it
/// started are removed on Drop once empty.
const HOST_DIRS: &[&str] = &["/run/containerd", "/var/lib/cni"];

/// What a containerd that runs pods needs, beyond its private dirs.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// `sandbox_image`: the pause image, pulled from a local registry (nothing is fetched from outside).
    pub sandbox_image: String,
    /// runc's `ShimCgroup`: a path in the cgroup v1 memory hierarchy (e.g. `/crius-bench-<pid>-shim`) that the
    /// caller created and removes. Each shim moves itself there, so the shims and the runc processes they
    /// start are not charged to the memory cgroup the caller lives in.
    pub shim_cgroup: String,
    /// A CNI conflist (JSON) written into containerd's private `conf_dir`.
    pub conflist: String,
}

/// One running containerd.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    socket: PathBuf,
    channel: Option<Channel>,
    /// Those of [`HOST_DIRS`] that did not exist before it started.
    host_dirs_created: Vec<PathBuf>,
}

impl Containerd {
    /// Starts containerd with `plain_http` registries (`host:port`) reachable over HTTP, and waits until its
    /// CRI socket answers Version.
    pub async fn start(plain_http: &[String]) -> anyhow::Result<Containerd> {
        Containerd::start_with(plain_http, None).await
    }

    /// [`Containerd::start`], able to run pods when `pods` is given.
    pub async fn start_with(
        plain_http: &[String],
        pods: Option<&PodSettings>,
    ) -> anyhow::Result<Containerd> {
        // Only a containerd that runs pods starts shims and CNI plugins, which write there.
        let host_dirs_created = HOST_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|d| pods.is_some() && !d.exists())
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("crius-bench-containerd-")
            .tempdir()
            .context("cannot create containerd's temp dir")?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::create_dir_all(dir.path().join("net.d"))?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        if let Some(p) = pods {
            std::fs::write(dir.path().join("net.d/10-bench.conflist"), &p.conflist)?;
        }
        std::fs::write(&config, config_toml(dir.path(), plain_http, pods))?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary().display()))?;
        let mut me = Containerd {
            channel: None,
            dir,
            child: Some(child),
            socket,
            host_dirs_created,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("containerd exited ({status}):\n{}", me.log());
            }
            if me.socket.exists()
                && let Ok(channel) = client::connect(&me.socket).await
            {
                let mut rt = client::runtime(channel.clone());
                if rt
                    .version(crius_proto::v1::VersionRequest::default())
                    .await
                    .is_ok()
                {
                    me.channel = Some(channel);
                    return Ok(me);
                }
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer within 30 s:\n{}", me.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The CRI channel (connected once containerd answered).
    pub fn channel(&self) -> Channel {
        self.channel
            .clone()
            .expect("start() returns only once connected")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Its private temp dir (root, state, config, `logs/` for pod log directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The live shims of this containerd: `containerd-shim-runc-v2` processes whose `-address` is our socket,
    /// with the `-id` each was started for (the pod sandbox id under CRI).
    pub fn shims(&self) -> Vec<(i32, String)> {
        let socket = self.socket.to_string_lossy().into_owned();
        procfs::all_pids()
            .into_iter()
            .filter(|&pid| procfs::is_alive(pid))
            .filter(|&pid| {
                procfs::exe(pid).is_some_and(|e| e.file_name().is_some_and(|n| n == SHIM_NAME))
            })
            .filter_map(|pid| {
                let args = cmdline(pid);
                (flag(&args, "-address") == Some(socket.as_str()))
                    .then(|| (pid, flag(&args, "-id").unwrap_or_default().to_string()))
            })
            .collect()
    }
}

/// The arguments of a process (`/proc/<pid>/cmdline`), empty when it is gone.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value after `name` in `args` (`-id abc`).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).map(String::as_str)
}

/// SIGKILLs `pids` and waits (bounded) until each is gone, reaping those that are our children (this process
/// is a child subreaper when the harness is in use, so orphaned shims and their containers end up here).
pub fn kill_and_reap(pids: &[i32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        reap(pids);
        if pids.iter().all(|&p| !procfs::is_alive(p)) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(pids);
}

/// Reaps those of `pids` that are zombie children of this process.
pub fn reap(pids: &[i32]) {
    let me = std::process::id() as i32;
    for &pid in pids {
        if procfs::stat(pid).is_some_and(|s| s.state == 'Z' && s.ppid == me) {
            // WNOHANG: it is a zombie already; an error means someone else reaped it first.
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Removes the empty directories of the tree at `dir`, deepest first; a file anywhere keeps its ancestors.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // containerd leaves its shims running when it stops (by design); nothing of ours may outlive us.
        let shims: Vec<i32> = self.shims().into_iter().map(|(pid, _)| pid).collect();
        kill_and_reap(&shims);
        for m in procfs::mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
        for d in &self.host_dirs_created {
            remove_empty_dirs(d);
        }
    }
}

/// containerd's config: everything under `dir` (its `opt` plugin would otherwise create /opt/containerd,
/// runc's root would be /run/containerd/runc and pod netns files /var/run/netns), `restrict_oom_score_adj`
/// (no CAP_SYS_RESOURCE here), Debian's CNI plugins, HTTP mirrors for the local registries; for pods the
/// sandbox image and the shims' memory cgroup (cgroupfs driver: pods bring an absolute cgroup_parent).
fn config_toml(dir: &Path, plain_http: &[String], pods: Option<&PodSettings>) -> String {
    let d = dir.display();
    let mut text = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
"#
    );
    if let Some(p) = pods {
        text.push_str(&format!("  sandbox_image = {:?}\n", p.sandbox_image));
    }
    text.push_str(&format!(
        r#"  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{d}/runc"
    SystemdCgroup = false
"#
    ));
    if let Some(p) = pods {
        text.push_str(&format!("    ShimCgroup = {:?}\n", p.shim_cgroup));
    }
    for host in plain_http {
        text.push_str(&format!(
            "  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n    endpoint = [\"http://{host}\"]\n"
        ));
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_in_its_dir_and_names_the_mirrors() {
        let text = config_toml(Path::new("/tmp/x"), &["127.0.0.1:5000".into()], None);
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(v["root"].as_str(), Some("/tmp/x/root"));
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(
            cri["registry"]["mirrors"]["127.0.0.1:5000"]["endpoint"][0].as_str(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(
            v["plugins"]["io.containerd.internal.v1.opt"]["path"].as_str(),
            Some("/tmp/x/opt")
        );
        assert!(cri.get("sandbox_image").is_none());
    }

    #[test]
    fn pod_config_has_the_sandbox_image_the_shim_cgroup_and_private_runc_and_netns() {
        let pods = PodSettings {
            sandbox_image: "127.0.0.1:5000/bench/pause:1".into(),
            shim_cgroup: "/crius-bench-1-shim".into(),
            conflist: "{}".into(),
        };
        let text = config_toml(Path::new("/tmp/x"), &[], Some(&pods));
        let v: toml::Table = toml::from_str(&text).unwrap();
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("127.0.0.1:5000/bench/pause:1")
        );
        assert_eq!(cri["netns_mounts_under_state_dir"].as_bool(), Some(true));
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(
            runc["options"]["ShimCgroup"].as_str(),
            Some("/crius-bench-1-shim")
        );
        assert_eq!(runc["options"]["Root"].as_str(), Some("/tmp/x/runc"));
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(false));
        assert_eq!(v["temp"].as_str(), Some("/tmp/x/tmp"));
    }

    #[test]
    fn flags_are_read_from_the_command_line() {
        let args: Vec<String> = ["shim", "-id", "abc", "-address", "/x.sock"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag(&args, "-id"), Some("abc"));
        assert_eq!(flag(&args, "-address"), Some("/x.sock"));
        assert_eq!(flag(&args, "-namespace"), None);
    }
}
