//! A private containerd (Debian's `containerd` package) to compare against: its own root, state, socket and
//! config in a temp dir, talking CRI v1 on its socket. Dropping it stops it (SIGTERM, then SIGKILL, by pid),
//! unmounts whatever it left under its dir and removes the dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
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

/// One running containerd.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    socket: PathBuf,
    channel: Option<Channel>,
}

impl Containerd {
    /// Starts containerd with `plain_http` registries (`host:port`) reachable over HTTP, and waits until its
    /// CRI socket answers Version.
    pub async fn start(plain_http: &[String]) -> anyhow::Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("crius-bench-containerd-")
            .tempdir()
            .context("cannot create containerd's temp dir")?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::create_dir_all(dir.path().join("net.d"))?;
        std::fs::write(&config, config_toml(dir.path(), plain_http))?;
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
        for m in procfs::mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// containerd's config: everything under `dir` (its `opt` plugin would otherwise create /opt/containerd),
/// `restrict_oom_score_adj` (no CAP_SYS_RESOURCE here), Debian's CNI plugins, HTTP mirrors for the local
/// registries.
fn config_toml(dir: &Path, plain_http: &[String]) -> String {
    let d = dir.display();
    let mut text = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
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
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
"#
    );
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
        let text = config_toml(Path::new("/tmp/x"), &["127.0.0.1:5000".into()]);
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
    }
}
