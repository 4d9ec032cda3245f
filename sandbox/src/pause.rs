//! Spawning the pod's pause process (`crius-pause`) from the multi-threaded agent.
//!
//! The pause is cloned straight into its new namespaces (clone3 with CLONE_NEW*, and
//! CLONE_INTO_CGROUP when a cgroup is given), sets the hostname and namespaced sysctls
//! itself, and reports on a readiness pipe (fd 3): `ok` or `error: <what failed: why>`.
//! It stays the agent's direct child; the agent reaps it through the returned pidfd.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::process::{self, ExitStatusLike, Pidfd, ProcessError};
use crate::sys::{self, ChildExec};

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseSpec {
    /// Path of the `crius-pause` binary.
    pub binary: PathBuf,
    pub new_net: bool,
    pub new_ipc: bool,
    pub new_uts: bool,
    pub new_pid: bool,
    /// Needs `new_uts` (it would otherwise rename the host).
    pub hostname: Option<String>,
    /// Namespaced sysctls only: `net.*` needs `new_net`; `kernel.shm*`, `kernel.msg*`,
    /// `kernel.sem`, `fs.mqueue.*` need `new_ipc`.
    pub sysctls: Vec<(String, String)>,
    /// Absolute cgroup2 directory the pause starts in.
    pub cgroup: Option<PathBuf>,
    /// How long to wait for the pause to report readiness.
    pub ready_timeout: Duration,
}

impl PauseSpec {
    /// A spec with no new namespaces, no hostname, no sysctls and a 10 s readiness timeout.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        PauseSpec {
            binary: binary.into(),
            new_net: false,
            new_ipc: false,
            new_uts: false,
            new_pid: false,
            hostname: None,
            sysctls: Vec::new(),
            cgroup: None,
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// A running, ready pause process.
#[derive(Debug)]
pub struct PauseProcess {
    pub pid: i32,
    /// /proc/<pid>/stat field 22, to recognise the process after an agent restart.
    pub start_time: u64,
    pub pidfd: Pidfd,
}

/// Errors from [`spawn`].
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("invalid hostname {hostname:?}: {reason}")]
    InvalidHostname {
        hostname: String,
        reason: &'static str,
    },
    #[error("sysctl refused")]
    InvalidSysctl(#[source] crate::sysctl::SysctlError),
    #[error("invalid argument for the pause binary: {0:?} contains a NUL byte")]
    NulByte(String),
    #[error("prepare to spawn pause: {what}")]
    Prepare {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("clone3 the pause process")]
    Clone(#[source] Errno),
    #[error("pause process failed to start: {message}")]
    Setup { message: String },
    #[error("pause process exited before reporting ready: {status}")]
    Exited { status: ExitStatusLike },
    #[error("pause process did not report ready within {0:?}")]
    Timeout(Duration),
    #[error("read the pause readiness pipe")]
    Readiness(#[source] io::Error),
    #[error("clean up the failed pause process")]
    Cleanup(#[source] ProcessError),
    #[error("pause process {pid} vanished right after start")]
    NoStartTime { pid: i32 },
}

/// Checks what the pause would otherwise apply to the host's namespaces.
fn validate(spec: &PauseSpec) -> Result<(), PauseError> {
    if let Some(h) = &spec.hostname {
        let reason = if !spec.new_uts {
            Some("setting a hostname needs a new UTS namespace")
        } else if h.is_empty() || h.len() > 64 {
            Some("must be 1 to 64 bytes")
        } else if h
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            Some("must not contain NUL, '/' or whitespace")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(PauseError::InvalidHostname {
                hostname: h.clone(),
                reason,
            });
        }
    }
    // One rule for what may be written, shared with the agent's request validation: crate::sysctl.
    let ns = crate::sysctl::SysctlNamespaces {
        host_network: !spec.new_net,
        host_ipc: !spec.new_ipc,
    };
    for (key, value) in &spec.sysctls {
        crate::sysctl::validate(key, value, ns).map_err(PauseError::InvalidSysctl)?;
        // kernel.hostname/domainname would rename the host without a UTS namespace of our own.
        if !spec.new_uts
            && crate::sysctl::namespace_of(key).map_err(PauseError::InvalidSysctl)?
                == crate::sysctl::SysctlNamespace::Uts
        {
            return Err(PauseError::InvalidHostname {
                hostname: key.clone(),
                reason: "UTS sysctls need a new UTS namespace",
            });
        }
    }
    Ok(())
}

/// argv for the pause binary: `crius-pause [--hostname NAME] [--sysctl K=V]... [--lo]`.
/// Sysctl keys are passed in the slashed form (the path under /proc/sys), which is unambiguous.
fn build_argv(spec: &PauseSpec) -> Vec<Vec<u8>> {
    let mut argv = vec![b"crius-pause".to_vec()];
    if let Some(h) = &spec.hostname {
        argv.push(b"--hostname".to_vec());
        argv.push(h.as_bytes().to_vec());
    }
    for (k, v) in &spec.sysctls {
        let path = crate::sysctl::components(k).map_or_else(|_| k.clone(), |p| p.join("/"));
        argv.push(b"--sysctl".to_vec());
        argv.push(format!("{path}={v}").into_bytes());
    }
    if spec.new_net {
        argv.push(b"--lo".to_vec());
    }
    argv
}

fn clone_flags(spec: &PauseSpec) -> u64 {
    let mut flags = 0;
    for (wanted, flag) in [
        (spec.new_net, sys::CLONE_NEWNET),
        (spec.new_ipc, sys::CLONE_NEWIPC),
        (spec.new_uts, sys::CLONE_NEWUTS),
        (spec.new_pid, sys::CLONE_NEWPID),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    flags
}

fn cstring(bytes: &[u8]) -> Result<CString, PauseError> {
    CString::new(bytes)
        .map_err(|_| PauseError::NulByte(String::from_utf8_lossy(bytes).into_owned()))
}

fn prepare<T>(what: &'static str, r: Result<T, impl Into<io::Error>>) -> Result<T, PauseError> {
    r.map_err(|e| PauseError::Prepare {
        what,
        source: e.into(),
    })
}

/// What the pause (or the child before execve) said on the readiness pipe.
#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    Ok,
    Error(String),
    /// EOF or anything else: the process died or misbehaved.
    Nothing,
}

/// Interprets the first line of the readiness pipe. The pre-exec child reports
/// `error: <step>: errno <n>`, rendered here as the OS error text.
fn parse_readiness(buf: &[u8]) -> Readiness {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    if line == "ok" {
        return Readiness::Ok;
    }
    let Some(msg) = line.strip_prefix("error: ") else {
        return Readiness::Nothing;
    };
    if let Some((step, n)) = msg.rsplit_once(": errno ")
        && let Ok(n) = n.parse::<i32>()
    {
        return Readiness::Error(format!("{step}: {}", io::Error::from_raw_os_error(n)));
    }
    Readiness::Error(msg.to_string())
}

/// Reads the readiness pipe until a full line or EOF, within `deadline`.
fn read_readiness(
    pipe: &mut File,
    deadline: Instant,
    timeout: Duration,
) -> Result<Readiness, PauseError> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PauseError::Timeout(timeout));
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        match sys::poll_readable(pipe.as_fd(), ms) {
            Ok(false) => return Err(PauseError::Timeout(timeout)),
            Ok(true) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(PauseError::Readiness(e.into())),
        }
        match pipe.read(&mut chunk) {
            Ok(0) => return Ok(parse_readiness(&buf)),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 4096 {
                    return Ok(parse_readiness(&buf));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PauseError::Readiness(e)),
        }
    }
}

/// Kills (if still running) and reaps a pause that failed to start.
fn kill_and_reap(pidfd: &Pidfd) -> Result<ExitStatusLike, PauseError> {
    match pidfd.signal(Signal::SIGKILL) {
        Ok(()) | Err(ProcessError::NoSuchProcess) => {}
        Err(e) => return Err(PauseError::Cleanup(e)),
    }
    pidfd.reap_blocking().map_err(PauseError::Cleanup)
}

/// Descriptors handed to the child, all close-on-exec and numbered >= `sys::HIGH_FD`.
struct ChildFds {
    devnull: OwnedFd,
    ready_w: OwnedFd,
    cgroup_dir: Option<OwnedFd>,
}

/// Spawns the pause and waits until it reports ready.
///
/// Blocking (up to `ready_timeout`): from async code call it in `spawn_blocking`.
pub fn spawn(spec: &PauseSpec) -> Result<PauseProcess, PauseError> {
    validate(spec)?;

    // 1. Everything the child touches is built now: after clone3 the child of a
    //    multi-threaded parent may not allocate (another thread may hold the malloc lock).
    let path = cstring(spec.binary.as_os_str().as_bytes())?;
    let args = build_argv(spec)
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let argv = sys::pointer_array(&args);
    let envp = sys::pointer_array(&[]);

    // 2. The readiness pipe (close-on-exec both ends; the child dup2s the write end to 3).
    let (ready_r, ready_w) = prepare("create readiness pipe", io::pipe())?;
    let devnull = prepare(
        "open /dev/null",
        File::options().read(true).write(true).open("/dev/null"),
    )?;
    let cgroup_dir = match &spec.cgroup {
        Some(dir) => Some(prepare("open the cgroup directory", File::open(dir))?),
        None => None,
    };
    let fds = ChildFds {
        devnull: prepare("duplicate /dev/null", sys::dup_high(devnull.as_fd()))?,
        ready_w: prepare(
            "duplicate readiness pipe",
            sys::dup_high(OwnedFd::from(ready_w).as_fd()),
        )?,
        cgroup_dir: match &cgroup_dir {
            Some(f) => Some(prepare("duplicate cgroup fd", sys::dup_high(f.as_fd()))?),
            None => None,
        },
    };
    drop((devnull, cgroup_dir));

    // 3. clone3 straight into the namespaces (and cgroup); fall back to joining the cgroup
    //    by cgroup.procs in the child if this kernel's clone3 lacks CLONE_INTO_CGROUP.
    let flags = clone_flags(spec);
    let (pid, pidfd) = match clone_and_exec(spec, flags, &fds, &path, &argv, &envp, true) {
        Err(PauseError::Clone(Errno::E2BIG | Errno::EINVAL)) if fds.cgroup_dir.is_some() => {
            tracing::debug!(
                "clone3 rejected CLONE_INTO_CGROUP, joining the cgroup via cgroup.procs"
            );
            clone_and_exec(spec, flags, &fds, &path, &argv, &envp, false)?
        }
        other => other?,
    };
    // The parent's copy of the write end must go, or EOF would never come.
    drop(fds);
    let pidfd = Pidfd::from_owned(pidfd);

    // 4. Wait for "ok" / "error: ..." / EOF, within the deadline.
    let deadline = Instant::now() + spec.ready_timeout;
    let mut ready_r = File::from(OwnedFd::from(ready_r));
    let outcome = read_readiness(&mut ready_r, deadline, spec.ready_timeout);
    match outcome {
        Ok(Readiness::Ok) => {}
        Ok(Readiness::Error(message)) => {
            kill_and_reap(&pidfd)?;
            return Err(PauseError::Setup { message });
        }
        Ok(Readiness::Nothing) => {
            let status = kill_and_reap(&pidfd)?;
            return Err(PauseError::Exited { status });
        }
        Err(e) => {
            kill_and_reap(&pidfd)?;
            return Err(e);
        }
    }
    // Our unreaped child: the pid cannot have been reused, so its start time is stable.
    let Some(start_time) = process::start_time(pid) else {
        kill_and_reap(&pidfd)?;
        return Err(PauseError::NoStartTime { pid });
    };
    tracing::debug!(pid, "pause process ready");
    Ok(PauseProcess {
        pid,
        start_time,
        pidfd,
    })
}

/// One clone3 attempt; on the child side it never returns.
#[allow(clippy::too_many_arguments)]
fn clone_and_exec(
    spec: &PauseSpec,
    flags: u64,
    fds: &ChildFds,
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    into_cgroup: bool,
) -> Result<(i32, OwnedFd), PauseError> {
    // Without CLONE_INTO_CGROUP the child writes "0" to cgroup.procs itself.
    let procs = match (&spec.cgroup, into_cgroup) {
        (Some(dir), false) => {
            let f = prepare(
                "open cgroup.procs",
                File::options().write(true).open(dir.join("cgroup.procs")),
            )?;
            Some(prepare(
                "duplicate cgroup.procs fd",
                sys::dup_high(f.as_fd()),
            )?)
        }
        _ => None,
    };
    let exec = ChildExec {
        path,
        argv,
        envp,
        devnull: fds.devnull.as_fd(),
        ready_w: fds.ready_w.as_fd(),
        cgroup_procs: procs.as_ref().map(|f| f.as_fd()),
    };
    let cgroup = if into_cgroup {
        fds.cgroup_dir.as_ref().map(|f| f.as_fd())
    } else {
        None
    };
    sys::clone3_exec(flags, cgroup, &exec).map_err(PauseError::Clone)
}

/// For logs and errors: the argv the pause would get, as text.
pub fn describe_command(spec: &PauseSpec) -> String {
    let mut out = spec.binary.display().to_string();
    for a in build_argv(spec).iter().skip(1) {
        out.push(' ');
        out.push_str(&String::from_utf8_lossy(a));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> PauseSpec {
        PauseSpec {
            new_net: true,
            new_ipc: true,
            new_uts: true,
            new_pid: true,
            ..PauseSpec::new("/usr/bin/crius-pause")
        }
    }

    fn text(argv: &[Vec<u8>]) -> Vec<String> {
        argv.iter()
            .map(|a| String::from_utf8(a.clone()).unwrap())
            .collect()
    }

    #[test]
    fn argv_minimal_has_no_options() {
        assert_eq!(text(&build_argv(&PauseSpec::new("/x"))), ["crius-pause"]);
    }

    #[test]
    fn argv_with_hostname_sysctls_and_lo() {
        let mut s = spec();
        s.hostname = Some("web-0".into());
        s.sysctls = vec![
            ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ];
        assert_eq!(
            text(&build_argv(&s)),
            [
                "crius-pause",
                "--hostname",
                "web-0",
                "--sysctl",
                "net/ipv4/ping_group_range=0 2147483647",
                "--sysctl",
                "kernel/shm_rmid_forced=1",
                "--lo"
            ]
        );
        assert_eq!(
            describe_command(&s),
            "/usr/bin/crius-pause --hostname web-0 --sysctl net/ipv4/ping_group_range=0 2147483647 \
             --sysctl kernel/shm_rmid_forced=1 --lo"
        );
    }

    #[test]
    fn clone_flags_follow_spec() {
        assert_eq!(clone_flags(&PauseSpec::new("/x")), 0);
        assert_eq!(
            clone_flags(&spec()),
            sys::CLONE_NEWNET | sys::CLONE_NEWIPC | sys::CLONE_NEWUTS | sys::CLONE_NEWPID
        );
    }

    #[test]
    fn validate_rejects_host_changes() {
        let mut s = PauseSpec::new("/x");
        s.hostname = Some("h".into());
        assert!(matches!(
            validate(&s),
            Err(PauseError::InvalidHostname { .. })
        ));
        s.hostname = None;
        s.sysctls = vec![("net.core.somaxconn".into(), "1024".into())];
        assert!(matches!(validate(&s), Err(PauseError::InvalidSysctl(_))));
        s.new_net = true;
        assert!(validate(&s).is_ok());
        s.sysctls = vec![("kernel.msgmax".into(), "1".into())];
        assert!(matches!(validate(&s), Err(PauseError::InvalidSysctl(_))));
        s.new_ipc = true;
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn validate_rejects_bad_names() {
        let mut s = spec();
        for key in [
            "",
            "net..x",
            "net.ipv4/../../x",
            "net.a b",
            "vm.swappiness",
            ".net.x",
        ] {
            s.sysctls = vec![(key.into(), "1".into())];
            assert!(
                matches!(validate(&s), Err(PauseError::InvalidSysctl(_))),
                "key {key:?}"
            );
        }
        s.sysctls = vec![("net.core.somaxconn".into(), "1\n2".into())];
        assert!(validate(&s).is_err());
        s.sysctls.clear();
        for h in ["", "a b", "a/b", &"x".repeat(65)] {
            s.hostname = Some(h.to_string());
            assert!(
                matches!(validate(&s), Err(PauseError::InvalidHostname { .. })),
                "hostname {h:?}"
            );
        }
        s.hostname = Some("x".repeat(64));
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn sysctl_keys_reach_pause_in_slashed_form() {
        let mut s = PauseSpec::new("/p");
        s.new_net = true;
        s.new_uts = true;
        s.sysctls = vec![("net.ipv4.conf.eth0/100.rp_filter".into(), "1".into())];
        assert!(validate(&s).is_ok());
        let argv: Vec<String> = build_argv(&s)
            .into_iter()
            .map(|a| String::from_utf8(a).unwrap())
            .collect();
        assert!(
            argv.contains(&"net/ipv4/conf/eth0.100/rp_filter=1".to_string()),
            "{argv:?}"
        );
    }

    #[test]
    fn readiness_lines() {
        assert_eq!(parse_readiness(b"ok\n"), Readiness::Ok);
        assert_eq!(parse_readiness(b"ok"), Readiness::Ok);
        assert_eq!(parse_readiness(b""), Readiness::Nothing);
        assert_eq!(parse_readiness(b"okay\n"), Readiness::Nothing);
        assert_eq!(
            parse_readiness(b"error: sysctl net.x: No such file or directory (os error 2)\n"),
            Readiness::Error("sysctl net.x: No such file or directory (os error 2)".into())
        );
        assert_eq!(
            parse_readiness(b"error: execve: errno 2\n"),
            Readiness::Error(format!("execve: {}", io::Error::from_raw_os_error(2)))
        );
    }
}
