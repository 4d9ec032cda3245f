//! Privileged tests of the pod monitor and the container init: the real `crius-monitor` binary driven over its
//! socket, creating containers from OCI specs on an overlay of a busybox layer (Debian's busybox-static), with new
//! namespaces, real mounts and a real cgroup2 directory. They need root and fail loudly without it. Each test
//! removes what it made: processes reaped, mounts gone (they live in the containers' mount namespaces), dirs.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Fixture, NO_STDIN};
use crius_sandbox::container::Rootfs;
use crius_sandbox::monitor::{Request, Response, Status};
use serde_json::{Value, json};

fn fixture() -> Fixture {
    Fixture::new(
        "crius-monitor-test-",
        &[
            "sh", "echo", "cat", "sleep", "ls", "id", "grep", "stat", "test", "touch", "mkdir",
        ],
    )
}

/// The monitor tests' own calls on the shared fixture.
trait MonitorFixture {
    fn create(&self, id: &str, spec: Value) -> Response;
    fn log_lines(&self, id: &str, n: usize) -> Vec<(String, String, String)>;
}

impl MonitorFixture for Fixture {
    /// Writes `<bundle>/config.json` for `spec` and creates the container (no stdin, no tty).
    fn create(&self, id: &str, spec: Value) -> Response {
        self.create_with(id, spec, NO_STDIN)
    }

    /// Waits until the log holds `n` records (the monitor drains the pipes after the exit).
    fn log_lines(&self, id: &str, n: usize) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.log(id);
            if l.len() >= n || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A minimal container spec: new mount, PID, IPC, UTS, network and cgroup namespaces, the usual mounts.
fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": args,
            "env": ["PATH=/bin", "GREETING=hi"],
            "cwd": "/work/dir",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL"],
                "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_CHOWN", "CAP_KILL"]
            },
            "noNewPrivileges": true
        },
        "root": {"path": "/nonexistent"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}, {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[test]
fn a_container_runs_logs_and_its_exit_is_recorded() {
    let f = fixture();
    let script = "echo hello; echo oops >&2; echo $GREETING; pwd; echo pid $$; exit 3";
    let created = f.create("c1", spec(&["sh", "-c", script]));
    let Response::Created { pid } = created else {
        panic!("create: {created:?}")
    };
    assert_eq!(f.state("c1").status, Status::Created);
    // Created but not started: it has run nothing yet.
    assert!(f.log("c1").is_empty());
    assert_eq!(f.call(&Request::Start { id: "c1".into() }), Response::Ok);
    let s = f.wait_exited("c1");
    assert_eq!(s.pid, pid);
    let exit = s.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (3, None));
    assert!(s.started_at > 0 && exit.finished_at >= s.started_at);
    // The exit is on disk too, for an agent that asks after the monitor is gone.
    let rec: Value =
        serde_json::from_slice(&std::fs::read(f.path("pod/exits/c1")).unwrap()).unwrap();
    assert_eq!(rec["exit_code"], 3);
    let log = f.log_lines("c1", 5);
    let has = |stream: &str, text: &str| {
        log.iter()
            .any(|(s, t, c)| s == stream && t == "F" && c == text)
    };
    assert!(has("stdout", "hello"), "{log:?}");
    assert!(has("stderr", "oops"), "{log:?}");
    assert!(has("stdout", "hi"), "env not passed: {log:?}");
    assert!(
        has("stdout", "/work/dir"),
        "cwd not created/entered: {log:?}"
    );
    // PID 1 of its own PID namespace.
    assert!(has("stdout", "pid 1"), "{log:?}");
}

#[test]
fn the_container_sees_its_own_root_masks_and_capabilities() {
    let f = fixture();
    let script = "cat /proc/kcore | wc -c 2>/dev/null; \
        if touch /proc/sys/kernel/x 2>/dev/null; then echo sys-writable; else echo sys-ro; fi; \
        grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; \
        ls /dev; test -e /layer && echo host-visible; echo root $(ls /)";
    let mut s = spec(&["sh", "-c", script]);
    s["process"]["args"] = json!(["sh", "-c", script.replace("| wc -c", "")]);
    assert!(matches!(f.create("c2", s), Response::Created { .. }));
    assert_eq!(f.call(&Request::Start { id: "c2".into() }), Response::Ok);
    assert_eq!(f.wait_exited("c2").exit.unwrap().exit_code, 0);
    let log = f.log_lines("c2", 4);
    let out: Vec<&str> = log
        .iter()
        .filter(|(s, _, _)| s == "stdout")
        .map(|(_, _, c)| c.as_str())
        .collect();
    let text = out.join("\n");
    assert!(text.contains("sys-ro"), "{text}");
    // CAP_CHOWN (0) and CAP_KILL (5).
    assert!(text.contains("CapEff:\t0000000000000021"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    for node in ["null", "zero", "urandom", "tty", "pts", "shm"] {
        assert!(
            out.iter().any(|l| l.split_whitespace().any(|w| w == node)),
            "no /dev/{node}: {text}"
        );
    }
    assert!(!text.contains("host-visible"), "{text}");
    assert!(
        text.contains("root bin dev etc proc root sys tmp work"),
        "{text}"
    );
    // The masked /proc/kcore reads as empty (a /dev/null bind).
    assert!(
        !out.iter()
            .any(|l| l.starts_with("ELF") || l.contains("\u{7f}ELF")),
        "{text}"
    );
}

#[test]
fn a_missing_command_fails_start_and_shows_exited() {
    let f = fixture();
    assert!(matches!(
        f.create("c3", spec(&["no-such-command"])),
        Response::Created { .. }
    ));
    match f.call(&Request::Start { id: "c3".into() }) {
        Response::Error { message } => assert!(
            message.contains("no-such-command") && message.contains("not found"),
            "{message}"
        ),
        other => panic!("start of a missing command: {other:?}"),
    }
    let s = f.state("c3");
    assert_eq!(s.status, Status::Exited);
    assert_eq!(s.exit.unwrap().exit_code, 127);
}

#[test]
fn a_signal_ends_a_running_container_and_forget_removes_it() {
    let f = fixture();
    assert!(matches!(
        f.create("c4", spec(&["sleep", "100"])),
        Response::Created { .. }
    ));
    assert_eq!(f.call(&Request::Start { id: "c4".into() }), Response::Ok);
    assert_eq!(f.state("c4").status, Status::Running);
    assert_eq!(
        f.call(&Request::Signal {
            id: "c4".into(),
            signal: 9
        }),
        Response::Ok
    );
    let exit = f.wait_exited("c4").exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    assert_eq!(f.call(&Request::Forget { id: "c4".into() }), Response::Ok);
    match f.call(&Request::State) {
        Response::State { containers } => assert!(containers.is_empty(), "{containers:?}"),
        other => panic!("{other:?}"),
    }
    assert!(!f.path("pod/exits/c4").exists());
}

#[test]
fn a_bad_spec_is_an_error_and_leaves_no_process() {
    let f = fixture();
    let mut s = spec(&["true"]);
    s["mounts"] = json!([{"destination": "/x", "type": "bind", "source": "/nonexistent/source", "options": ["rbind"]}]);
    match f.create("c5", s) {
        Response::Error { message } => {
            assert!(message.contains("/nonexistent/source"), "{message}")
        }
        other => panic!("create with a missing bind source: {other:?}"),
    }
    match f.call(&Request::State) {
        Response::State { containers } => assert!(containers.is_empty(), "{containers:?}"),
        other => panic!("{other:?}"),
    }
    // No child of the monitor is left (the init was killed and reaped).
    let monitor = f.monitor_pid();
    let children =
        std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children")).unwrap();
    assert!(children.trim().is_empty(), "children left: {children}");
}

#[test]
fn a_seccomp_profile_in_the_spec_is_enforced() {
    let f = fixture();
    let mut s = spec(&[
        "sh",
        "-c",
        "if mkdir /made 2>/dev/null; then echo made; else echo refused; fi; echo still-running",
    ]);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    assert!(matches!(f.create("sc", s), Response::Created { .. }));
    assert_eq!(f.call(&Request::Start { id: "sc".into() }), Response::Ok);
    assert_eq!(f.wait_exited("sc").exit.unwrap().exit_code, 0);
    let out: Vec<String> = f
        .log_lines("sc", 2)
        .into_iter()
        .map(|(_, _, c)| c)
        .collect();
    assert_eq!(out, ["refused", "still-running"]);
}

#[test]
fn the_init_joins_its_cgroup_and_sees_it_as_its_root() {
    let f = fixture();
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| {
            p.join("cgroup.procs").exists()
                && std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .lines()
                    .any(|l| l.contains(&format!(" {} ", p.display())) && l.contains("cgroup2"))
        })
        .expect("no cgroup2 mount");
    // Our own cgroup at an absolute path (never the one this test runs in).
    let cg = mount.join(format!("crius-monitor-test-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _rm = Rm(cg.clone());
    let bundle = f.path("c-cg");
    for d in ["rootfs", "upper", "work"] {
        std::fs::create_dir_all(bundle.join(d)).unwrap();
    }
    let mut s = spec(&["sh", "-c", "cat /proc/self/cgroup; sleep 1000"]);
    s["root"] = json!({"path": bundle.join("rootfs")});
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&s).unwrap()).unwrap();
    let created = f.call(&Request::Create {
        id: "cg".into(),
        bundle: bundle.clone(),
        rootfs: Rootfs {
            lower: vec![f.path("layer")],
            upper: bundle.join("upper"),
            work: bundle.join("work"),
        },
        cgroup_dir: Some(cg.clone()),
        log_path: Some(f.path("cg.log")),
        stdin: false,
        stdin_once: false,
        tty: false,
    });
    let Response::Created { pid } = created else {
        panic!("create: {created:?}")
    };
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "pid {pid} not in {procs}"
    );
    assert_eq!(f.call(&Request::Start { id: "cg".into() }), Response::Ok);
    let out: Vec<String> = f
        .log_lines("cg", 1)
        .into_iter()
        .map(|(_, _, c)| c)
        .collect();
    // Its cgroup namespace is rooted at its own cgroup.
    assert!(out.iter().any(|l| l == "0::/"), "{out:?}");
    // cgroup.kill ends everything in it.
    std::fs::write(cg.join("cgroup.kill"), "1").unwrap();
    assert_eq!(f.wait_exited("cg").exit.unwrap().signal, Some(9));
}
