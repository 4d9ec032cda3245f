//! Privileged tests: real clone3 into new namespaces, real mounts. They need root and fail
//! loudly without it. Each test touches only what it creates and cleans up (processes reaped,
//! mounts and files gone). A process-wide lock serialises them so "no child left" checks see
//! only their own children.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crius_sandbox::mount::{self, MountError};
use crius_sandbox::ns::{self, NsKind};
use crius_sandbox::pause::{self, PauseError, PauseProcess, PauseSpec};
use crius_sandbox::process::{self, ExitStatusLike, OomScoreAdj, Pidfd, Signal};

static LOCK: Mutex<()> = Mutex::new(());

fn privileged() -> MutexGuard<'static, ()> {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests clone namespaces and mount: run them as root"
    );
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn base_spec() -> PauseSpec {
    PauseSpec {
        ready_timeout: Duration::from_secs(10),
        ..PauseSpec::new(env!("CARGO_BIN_EXE_crius-pause"))
    }
}

/// Kills and reaps the pause if a test panics before stopping it.
struct Guard(Option<PauseProcess>);

impl Guard {
    fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().pid
    }
    fn pidfd(&self) -> &Pidfd {
        &self.0.as_ref().unwrap().pidfd
    }
    /// SIGTERM through the pidfd, then reap through the pidfd.
    fn stop(mut self) -> ExitStatusLike {
        let p = self.0.take().unwrap();
        p.pidfd.signal(Signal::SIGTERM).unwrap();
        wait_exit(&p.pidfd)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.pidfd.signal(Signal::SIGKILL);
            let _ = p.pidfd.reap_blocking();
        }
    }
}

fn wait_exit(pidfd: &Pidfd) -> ExitStatusLike {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = pidfd.try_reap().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "process did not exit in 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ns_inode(pid: &str, kind: &str) -> u64 {
    fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .ino()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn status_field(pid: i32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Pids of our own (the test process's) children, across all threads.
fn my_children() -> Vec<i32> {
    let mut out = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap() {
        let p = task.unwrap().path().join("children");
        if let Ok(s) = fs::read_to_string(p) {
            out.extend(s.split_whitespace().map(|x| x.parse::<i32>().unwrap()));
        }
    }
    out
}

#[test]
fn all_namespaces_hostname_and_sysctls() {
    let _l = privileged();
    let host_port_start =
        fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let hostname = format!("crius-test-{}", std::process::id());
    let spec = PauseSpec {
        new_net: true,
        new_ipc: true,
        new_uts: true,
        new_pid: true,
        hostname: Some(hostname.clone()),
        sysctls: vec![
            ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
            ("net/ipv4/ping_group_range".into(), "0 2147483647".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ],
        ..base_spec()
    };
    let p = Guard(Some(pause::spawn(&spec).unwrap()));
    let pid = p.pid();
    let pid_s = pid.to_string();
    let st = p.0.as_ref().unwrap().start_time;
    assert_eq!(process::start_time(pid), Some(st));
    assert!(process::is_alive(pid, st));

    for kind in ["net", "ipc", "uts", "pid"] {
        assert_ne!(
            ns_inode(&pid_s, kind),
            ns_inode("self", kind),
            "{kind} namespace not new"
        );
    }
    assert_eq!(
        ns_inode(&pid_s, "mnt"),
        ns_inode("self", "mnt"),
        "mount ns must be shared"
    );
    assert_eq!(run("nsenter", &["-t", &pid_s, "-u", "hostname"]), hostname);
    let cat = |ns: &str, key: &str| {
        run(
            "nsenter",
            &["-t", &pid_s, ns, "cat", &format!("/proc/sys/{key}")],
        )
    };
    assert_eq!(cat("-n", "net/ipv4/ip_unprivileged_port_start"), "0");
    assert_eq!(cat("-n", "net/ipv4/ping_group_range"), "0\t2147483647");
    assert_eq!(cat("-i", "kernel/shm_rmid_forced"), "1");
    // --lo: loopback is up in the pod netns.
    let lo = run(
        "nsenter",
        &["-t", &pid_s, "-n", "ip", "-o", "link", "show", "lo"],
    );
    assert!(lo.contains("UP"), "lo not up: {lo}");
    // PID 1 of its own PID namespace.
    let nspid = status_field(pid, "NSpid");
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");
    // The host is untouched.
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(),
        host_port_start
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );

    // Stray signals do not kill it; SIGTERM ends it with 0.
    p.pidfd().signal(Signal::SIGPIPE).unwrap();
    p.pidfd().signal(Signal::SIGHUP).unwrap();
    p.pidfd().signal(Signal::SIGUSR1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        p.pidfd().try_reap().unwrap(),
        None,
        "pause died from a stray signal"
    );
    // Memory: VmRSS is dominated by shared file pages (glibc, the binary); what the pause
    // itself allocates is RssAnon.
    let kb = |v: String| -> u64 { v.trim_end_matches("kB").trim().parse().unwrap() };
    let (rss, anon, file) = (
        kb(status_field(pid, "VmRSS")),
        kb(status_field(pid, "RssAnon")),
        kb(status_field(pid, "RssFile")),
    );
    let pss = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:").map(|v| v.trim().to_string()))
        .unwrap();
    eprintln!(
        "crius-pause memory: VmRSS {rss} kB (RssAnon {anon} kB, RssFile {file} kB), Pss {pss}"
    );
    assert!(
        anon < 512,
        "pause has {anon} kB of private anonymous memory"
    );
    // Only stdio (on /dev/null) is open: fd 3 was closed after "ok", nothing else leaked.
    let mut fds: Vec<(String, PathBuf)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read_link(e.path()).unwrap(),
            )
        })
        .collect();
    fds.sort();
    let null = PathBuf::from("/dev/null");
    assert_eq!(
        fds,
        [
            ("0".into(), null.clone()),
            ("1".into(), null.clone()),
            ("2".into(), null)
        ]
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    // Its own session, not the agent's.
    let sid = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let sid: i32 = sid[sid.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sid, pid);

    assert_eq!(p.stop(), ExitStatusLike::Exited(0));
    assert!(!process::is_alive(pid, st));
    assert!(!my_children().contains(&pid));
}

#[test]
fn without_new_pid_it_is_not_pid_1() {
    let _l = privileged();
    let spec = PauseSpec {
        new_net: true,
        ..base_spec()
    };
    let p = Guard(Some(pause::spawn(&spec).unwrap()));
    let pid = p.pid();
    assert_eq!(status_field(pid, "NSpid"), pid.to_string());
    let pid_s = pid.to_string();
    assert_eq!(ns_inode(&pid_s, "pid"), ns_inode("self", "pid"));
    assert_eq!(ns_inode(&pid_s, "uts"), ns_inode("self", "uts"));
    assert_ne!(ns_inode(&pid_s, "net"), ns_inode("self", "net"));
    // SIGINT also ends it cleanly.
    p.pidfd().signal(Signal::SIGINT).unwrap();
    let mut p = p;
    let inner = p.0.take().unwrap();
    assert_eq!(wait_exit(&inner.pidfd), ExitStatusLike::Exited(0));
}

#[test]
fn bad_sysctl_reports_the_error_and_leaves_no_process() {
    let _l = privileged();
    let key = format!("net.ipv4.crius_no_such_key_{}", std::process::id());
    let spec = PauseSpec {
        new_net: true,
        new_pid: true,
        sysctls: vec![(key.clone(), "1".into())],
        ..base_spec()
    };
    let before = my_children();
    let err = pause::spawn(&spec).unwrap_err();
    match &err {
        PauseError::Setup { message } => {
            assert!(message.contains("crius_no_such_key_"), "{message}");
            assert!(message.contains("No such file or directory"), "{message}");
        }
        other => panic!("expected Setup error, got {other:?}"),
    }
    assert_eq!(my_children(), before, "the failed pause was not reaped");
}

#[test]
fn missing_binary_reports_execve_error() {
    let _l = privileged();
    let before = my_children();
    let spec = PauseSpec {
        new_uts: true,
        ..PauseSpec::new("/nonexistent/crius-pause")
    };
    match pause::spawn(&spec).unwrap_err() {
        PauseError::Setup { message } => {
            assert!(
                message.starts_with("execve: No such file or directory"),
                "{message}"
            )
        }
        other => panic!("expected Setup error, got {other:?}"),
    }
    assert_eq!(my_children(), before);
}

#[test]
fn early_exit_without_ok_is_reported_with_status() {
    let _l = privileged();
    let before = my_children();
    // `sleep` with no operand exits 1 (its usage message goes to /dev/null) without a word on fd 3.
    match pause::spawn(&PauseSpec::new("/bin/sleep")).unwrap_err() {
        PauseError::Exited { status } => assert_eq!(status, ExitStatusLike::Exited(1)),
        other => panic!("expected Exited error, got {other:?}"),
    }
    assert_eq!(my_children(), before);
}

#[test]
fn silent_binary_times_out_and_is_killed() {
    let _l = privileged();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let script = dir.path().join("silent-pause");
    // Keeps fd 3 open and never writes to it.
    fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = my_children();
    let spec = PauseSpec {
        ready_timeout: Duration::from_millis(300),
        ..PauseSpec::new(&script)
    };
    let started = Instant::now();
    let err = pause::spawn(&spec).unwrap_err();
    assert!(matches!(err, PauseError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        my_children(),
        before,
        "the silent process was not killed and reaped"
    );
}

#[test]
fn bound_netns_outlives_the_pause_and_unbinds() {
    let _l = privileged();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(format!("netns/pod-{}", std::process::id()));
    let spec = PauseSpec {
        new_net: true,
        sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "7".into())],
        ..base_spec()
    };
    let p = Guard(Some(pause::spawn(&spec).unwrap()));
    ns::bind(p.pid(), NsKind::Net, &target).unwrap();
    ns::bind(p.pid(), NsKind::Net, &target).unwrap(); // same namespace again: no-op
    assert!(mount::is_mountpoint(&target));
    assert!(matches!(
        ns::bind(std::process::id() as i32, NsKind::Net, &target),
        Err(ns::NsError::AlreadyBound { .. })
    ));

    assert_eq!(p.stop(), ExitStatusLike::Exited(0));
    let net = format!("--net={}", target.display());
    assert_eq!(
        run(
            "nsenter",
            &[&net, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        ),
        "7",
        "the pinned netns must still be the pod's after the pause is gone"
    );
    run("nsenter", &[&net, "true"]);

    ns::unbind(&target).unwrap();
    assert!(!mount::is_mountpoint(&target));
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(target.to_str().unwrap()));
    assert!(!target.exists());
    ns::unbind(&target).unwrap(); // idempotent
}

#[test]
fn pause_reaps_orphans_in_its_pid_namespace() {
    let _l = privileged();
    let spec = PauseSpec {
        new_pid: true,
        ..base_spec()
    };
    let p = Guard(Some(pause::spawn(&spec).unwrap()));
    let pid_s = p.pid().to_string();
    let children_of_pause =
        || fs::read_to_string(format!("/proc/{pid_s}/task/{pid_s}/children")).unwrap_or_default();
    // `sleep 1` is orphaned when the shell (exec'd into `sleep 0.1`) exits, so it is
    // re-parented to the pause (PID 1 of that namespace), which must reap it when it exits.
    run(
        "nsenter",
        &[
            "-t",
            &pid_s,
            "-p",
            "--",
            "sh",
            "-c",
            "sleep 1 >/dev/null 2>&1 & exec sleep 0.1",
        ],
    );
    let orphans: Vec<String> = children_of_pause()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        orphans.len(),
        1,
        "expected the orphaned sleep under pause: {orphans:?}"
    );
    let orphan = PathBuf::from(format!("/proc/{}", orphans[0]));
    let deadline = Instant::now() + Duration::from_secs(10);
    // A zombie keeps its /proc entry; only reaping removes it.
    while orphan.exists() {
        assert!(
            Instant::now() < deadline,
            "orphan {} not reaped by pause",
            orphans[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(children_of_pause().trim().is_empty());
    assert_eq!(p.stop(), ExitStatusLike::Exited(0));
}

#[test]
fn starts_in_the_given_cgroup2() {
    let _l = privileged();
    let root = Path::new("/sys/fs/cgroup/unified");
    assert!(
        root.join("cgroup.procs").exists(),
        "no cgroup2 hierarchy at {} on this machine",
        root.display()
    );
    let name = format!("crius-pause-test-{}", std::process::id());
    let cg = root.join(&name);
    fs::create_dir(&cg).unwrap();
    let spec = PauseSpec {
        new_uts: true,
        cgroup: Some(cg.clone()),
        ..base_spec()
    };
    let result = pause::spawn(&spec);
    let in_cgroup = result
        .as_ref()
        .map(|p| {
            let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap();
            let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap();
            (cgroups, procs)
        })
        .map_err(|e| format!("{e:?}"));
    let pid = result.as_ref().map(|p| p.pid).unwrap_or(0);
    if let Ok(p) = result {
        assert_eq!(Guard(Some(p)).stop(), ExitStatusLike::Exited(0));
    }
    fs::remove_dir(&cg).unwrap();
    let (cgroups, procs) = in_cgroup.unwrap();
    assert!(
        cgroups.lines().any(|l| l == format!("0::/{name}")),
        "{cgroups}"
    );
    assert_eq!(procs.trim(), pid.to_string());
}

#[test]
fn oom_score_adj_is_set_or_clamped() {
    let _l = privileged();
    let p = Guard(Some(pause::spawn(&base_spec()).unwrap()));
    let got = process::set_oom_score_adj(p.pid(), -998).unwrap();
    let now: i32 = fs::read_to_string(format!("/proc/{}/oom_score_adj", p.pid()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("set_oom_score_adj(-998) -> {got:?}");
    match got {
        OomScoreAdj::Set(v) => assert_eq!((v, now), (-998, -998)),
        OomScoreAdj::Clamped { wanted, actual, .. } => assert_eq!((wanted, actual), (-998, now)),
    }
    assert_eq!(p.stop(), ExitStatusLike::Exited(0));
}

#[test]
fn pidfd_of_a_process_that_is_not_our_child() {
    let _l = privileged();
    // PID 1 is not our child: try_reap must not claim it exited, and never wait on it.
    let init = Pidfd::open(1).unwrap();
    assert_eq!(init.try_reap().unwrap(), None);
    // After our own child is reaped, signalling its pidfd says so.
    let p = Guard(Some(pause::spawn(&base_spec()).unwrap()));
    let mut p = p;
    let inner = p.0.take().unwrap();
    inner.pidfd.signal(Signal::SIGKILL).unwrap();
    assert_eq!(
        wait_exit(&inner.pidfd),
        ExitStatusLike::Signaled {
            signal: 9,
            core_dumped: false
        }
    );
    assert!(matches!(
        inner.pidfd.signal(Signal::SIGTERM),
        Err(process::ProcessError::NoSuchProcess)
    ));
}

#[test]
fn tmpfs_round_trip() {
    let _l = privileged();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shm");
    mount::mount_tmpfs(&target, 1 << 20, 0o1777).unwrap();
    let unmount_guard = scopeguard(&target);
    assert!(mount::is_mountpoint(&target));
    mount::mount_tmpfs(&target, 1 << 20, 0o1777).unwrap(); // already tmpfs: no-op, no stacking
    let line = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
        .map(String::from)
        .collect::<Vec<_>>();
    assert_eq!(line.len(), 1, "{line:?}");
    for opt in ["nosuid", "nodev", "noexec"] {
        assert!(
            line[0]
                .split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == opt),
            "{opt} missing: {}",
            line[0]
        );
    }
    assert!(
        line[0].contains(" - tmpfs ") && line[0].contains("size=1024k"),
        "{}",
        line[0]
    );
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o1777);
    mount::write_file_atomic(&target.join("f"), b"hello", 0o644).unwrap();
    assert_eq!(fs::read(target.join("f")).unwrap(), b"hello");
    // A tmpfs over another filesystem type is refused.
    assert!(matches!(
        mount::mount_tmpfs(Path::new("/proc"), 1 << 20, 0o755),
        Err(MountError::AlreadyMounted { .. })
    ));

    mount::unmount(&target).unwrap();
    drop(unmount_guard);
    assert!(!mount::is_mountpoint(&target));
    assert!(!target.join("f").exists());
    mount::unmount(&target).unwrap();
    mount::unmount(&dir.path().join("never-existed")).unwrap();
}

/// Unmounts on drop so a failing assertion does not leak the mount.
fn scopeguard(target: &Path) -> impl Drop + '_ {
    struct U<'a>(&'a Path);
    impl Drop for U<'_> {
        fn drop(&mut self) {
            let _ = mount::unmount(self.0);
        }
    }
    U(target)
}
