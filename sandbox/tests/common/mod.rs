//! What the monitor tests share: a busybox layer, a running `crius-monitor` in a temp dir (shut down, reaped
//! and removed on drop, its log printed when a test fails), its JSON-lines calls and the CRI log it writes.
#![allow(dead_code)] // each test crate uses its own part

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius_sandbox::container::Rootfs;
use crius_sandbox::monitor::{ContainerState, Request, Response, Status, short_socket_path};
use serde_json::{Value, json};

pub const BUSYBOX: &str = "/bin/busybox";

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create namespaces, mounts and cgroups: run them as root"
    );
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
}

/// How a container's stdio is set up.
#[derive(Clone, Copy)]
pub struct Io {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

pub const NO_STDIN: Io = Io {
    stdin: false,
    stdin_once: false,
    tty: false,
};

/// A busybox layer with `applets` and a running monitor; dropped: monitor shut down and reaped, dir gone.
pub struct Fixture {
    dir: tempfile::TempDir,
    monitor: Option<Child>,
}

impl Fixture {
    pub fn new(prefix: &str, applets: &[&str]) -> Fixture {
        require_root();
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let layer = dir.path().join("layer");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            std::fs::create_dir_all(layer.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, layer.join("bin/busybox")).unwrap();
        for applet in applets {
            std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
        }
        std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let pod = dir.path().join("pod");
        std::fs::create_dir_all(&pod).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_crius-monitor"))
            .arg("--dir")
            .arg(&pod)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("monitor.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "monitor did not start");
        Fixture {
            dir,
            monitor: Some(child),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A connection to the monitor's socket.
    pub fn connect(&self) -> UnixStream {
        let (_d, short) = short_socket_path(&self.path("pod"), "monitor.sock").unwrap();
        UnixStream::connect(short).unwrap()
    }

    pub fn call(&self, req: &Request) -> Response {
        let mut s = self.connect();
        let mut line = serde_json::to_string(req).unwrap();
        line.push('\n');
        s.write_all(line.as_bytes()).unwrap();
        let mut out = String::new();
        BufReader::new(&s).read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap()
    }

    /// Writes `<bundle>/config.json` from `spec` (its root and, with a tty, its terminal set here) and asks
    /// the monitor to create container `id` with `io`, logging to `<dir>/<id>.log`.
    pub fn create_with(&self, id: &str, mut spec: Value, io: Io) -> Response {
        let bundle = self.path(&format!("c-{id}"));
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(bundle.join(d)).unwrap();
        }
        spec["root"] = json!({"path": bundle.join("rootfs")});
        if io.tty {
            spec["process"]["terminal"] = json!(true);
        }
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        self.call(&Request::Create {
            id: id.into(),
            bundle: bundle.clone(),
            rootfs: Rootfs {
                lower: vec![self.path("layer")],
                upper: bundle.join("upper"),
                work: bundle.join("work"),
            },
            cgroup_dir: None,
            log_path: Some(self.path(&format!("{id}.log"))),
            stdin: io.stdin,
            stdin_once: io.stdin_once,
            tty: io.tty,
        })
    }

    pub fn state(&self, id: &str) -> ContainerState {
        match self.call(&Request::State) {
            Response::State { containers } => containers.into_iter().find(|c| c.id == id).unwrap(),
            other => panic!("State: {other:?}"),
        }
    }

    pub fn wait_exited(&self, id: &str) -> ContainerState {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.state(id);
            if s.status == Status::Exited {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The CRI log's records as (stream, tag, content).
    pub fn log(&self, id: &str) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(self.path(&format!("{id}.log"))).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let _ts = parts.next().unwrap();
                (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The monitor's pid.
    pub fn monitor_pid(&self) -> u32 {
        self.monitor.as_ref().map(Child::id).unwrap()
    }

    pub fn monitor_log(&self) -> String {
        std::fs::read_to_string(self.path("monitor.log")).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut m) = self.monitor.take() {
            let _ = short_socket_path(&self.path("pod"), "monitor.sock")
                .and_then(|(_d, p)| UnixStream::connect(p))
                .and_then(|mut s| {
                    s.write_all(b"{\"op\":\"shutdown\"}\n")?;
                    let mut out = String::new();
                    BufReader::new(&s).read_line(&mut out)?;
                    Ok(())
                });
            let deadline = Instant::now() + Duration::from_secs(10);
            while m.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = m.kill();
            let _ = m.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- monitor log ---\n{}", self.monitor_log());
        }
    }
}
