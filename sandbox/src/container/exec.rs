//! Running a process inside an existing container (ExecSync, and later the streaming exec): the `crius-monitor
//! exec` helper, exec'd by the agent, joins every namespace of the container's init and its cgroup, then forks
//! the command with the container's user, capabilities, no_new_privs and seccomp profile. It waits for the
//! command (killing its whole process group after the timeout, never the container) and exits with its status.
//!
//! With `--tty` the command gets a pty made inside the container (its devpts, so `tty` names it) as its
//! controlling terminal, and the helper hands the master to the agent over its stdin, a unix socket
//! ([`crate::fdpass`]). SIGTERM, SIGINT or SIGHUP to the helper (the agent ending a stream) kill the command's
//! process group, never the container, and the helper exits with [`KILLED`].

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::InitError;
use super::init::{become_the_process, cstrings, exec_reason, find_executable};
use crate::sys::{self, ForkSide};

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The container init's pid (its namespaces are joined).
    pub pid: i32,
    /// The container's OCI spec: user, capabilities, no_new_privs, seccomp, env, cwd come from it.
    pub spec: PathBuf,
    pub cgroup_dir: Option<PathBuf>,
    pub args: Vec<String>,
    /// None: wait as long as it takes.
    pub timeout: Option<Duration>,
    /// A pty for the command; its master goes to the agent over stdin (a unix socket).
    pub tty: bool,
}

/// Exit status of the helper when the command timed out (and was killed).
pub const TIMED_OUT: i32 = 124;
/// Exit status of the helper when it was told to stop (and killed the command).
pub const KILLED: i32 = 137;

/// Runs the request; returns the exit code the helper should exit with (the command's, 128+n for a signal,
/// [`TIMED_OUT`] after a timeout, 127 when the command cannot be executed).
pub fn run(req: &ExecRequest) -> Result<i32, InitError> {
    let spec = Spec::load(&req.spec)
        .map_err(|e| InitError::BadSpec(format!("cannot load {}: {e}", req.spec.display())))?;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| InitError::BadSpec("no process".into()))?;
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(p) => Some(crate::seccomp::compile(p)?),
        None => None,
    };
    if let Some(dir) = &req.cgroup_dir {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, format!("{}\n", std::process::id()))
            .map_err(|e| InitError::io("join cgroup via", &procs, e))?;
    }
    // Open all first: once in the container's mount namespace, /proc is the container's.
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut files = Vec::new();
    for (name, flag) in kinds {
        let path = PathBuf::from(format!("/proc/{}/ns/{name}", req.pid));
        let f = File::open(&path).map_err(|e| InitError::io("open namespace", &path, e))?;
        files.push((path, f, flag));
    }
    let own = |name: &str| std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
    for (path, f, flag) in &files {
        // Joining a namespace we are already in is harmless, but skip it for the host's (NODE mode).
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if std::fs::read_link(path).ok() == own(name) {
            continue;
        }
        setns(f.as_fd(), *flag).map_err(|e| InitError::Mount {
            op: "join namespace",
            target: path.clone(),
            source: e,
        })?;
    }
    drop(files);
    // Stop requests are taken in the wait loop; the command unblocks every signal again.
    let mut stop = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(sig);
    }
    stop.thread_block()
        .map_err(InitError::sys("block the stop signals"))?;
    let stops = SignalFd::with_flags(&stop, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(InitError::sys("signalfd"))?;
    let pty = if req.tty { Some(open_pty()?) } else { None };
    let args = req.args.clone();
    let env = process.env().clone().unwrap_or_default();
    let program = args
        .first()
        .ok_or_else(|| InitError::BadSpec("no command".into()))?
        .clone();
    match sys::fork_single_threaded().map_err(InitError::sys("fork"))? {
        ForkSide::Child => {
            drop(stops);
            let slave = pty.map(|(master, slave)| {
                drop(master);
                slave
            });
            let e = child(&process, seccomp.as_ref(), &program, &args, &env, slave);
            eprintln!("{}", super::one_line(&e));
            sys::exit_now(127)
        }
        ForkSide::Parent(child) => {
            if let Some((master, slave)) = pty {
                // Ours would keep the terminal open after the command is gone: the agent must see its end.
                drop(slave);
                let sent = crate::fdpass::send_fd(std::io::stdin().as_fd(), master.as_fd());
                drop(master);
                if let Err(e) = sent {
                    let _ = killpg(Pid::from_raw(child), Signal::SIGKILL);
                    let _ = waitpid(Pid::from_raw(child), None);
                    return Err(InitError::io(
                        "hand over the pty master on",
                        std::path::Path::new("stdin"),
                        e,
                    ));
                }
            }
            Ok(wait(child, req.timeout, &stops))
        }
    }
}

/// A pty from the container's /dev/ptmx (we are in its mount namespace): (master, slave).
fn open_pty() -> Result<(OwnedFd, OwnedFd), InitError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(InitError::sys("open /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(InitError::sys("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(InitError::sys("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(InitError::sys("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(InitError::sys("open the pty slave"))?;
    Ok((OwnedFd::from(master), slave))
}

/// The command's side: its own process group (so a timeout kills all of it), the container's identity, exec.
fn child(
    process: &oci_spec::runtime::Process,
    seccomp: Option<&crate::seccomp::Program>,
    program: &str,
    args: &[String],
    env: &[String],
    tty: Option<OwnedFd>,
) -> InitError {
    let run = || -> Result<std::convert::Infallible, InitError> {
        if let Some(slave) = &tty {
            // A session of its own (so also a process group) with the pty as its controlling terminal.
            nix::unistd::setsid().map_err(InitError::sys("setsid"))?;
            nix::unistd::dup2_stdin(slave).map_err(InitError::sys("dup2 stdin"))?;
            nix::unistd::dup2_stdout(slave).map_err(InitError::sys("dup2 stdout"))?;
            nix::unistd::dup2_stderr(slave).map_err(InitError::sys("dup2 stderr"))?;
            sys::set_controlling_tty(std::io::stdin().as_fd())
                .map_err(InitError::sys("TIOCSCTTY"))?;
        } else {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                .map_err(InitError::sys("setpgid"))?;
        }
        nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        )
        .map_err(InitError::sys("reset the signal mask"))?;
        sys::default_signal_dispositions().map_err(InitError::sys("reset signal dispositions"))?;
        become_the_process(process, seccomp)?;
        let cwd = process.cwd();
        nix::unistd::chdir(cwd)
            .or_else(|_| nix::unistd::chdir("/"))
            .map_err(InitError::sys("chdir"))?;
        let exe = find_executable(program, env);
        let exe_c = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
            .map_err(|_| InitError::BadSpec("NUL in the executable path".into()))?;
        let argv = cstrings(args)?;
        let envp = cstrings(env)?;
        sys::cloexec_from(3).map_err(InitError::sys("close_range"))?;
        let err = match nix::unistd::execve(&exe_c, &argv, &envp) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        Err(InitError::Reported(format!(
            "exec {program}: {}",
            exec_reason(err)
        )))
    };
    match run() {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Waits for the command; after `timeout`, or when told to stop, SIGKILL to its process group, then its
/// status.
fn wait(child: i32, timeout: Option<Duration>, stops: &SignalFd) -> i32 {
    let pid = Pid::from_raw(child);
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(_) => return 255,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return TIMED_OUT;
        }
        if let Ok(Some(_)) = stops.read_signal() {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return KILLED;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Parses `exec --pid N --spec FILE [--cgroup DIR] [--timeout-ms MS] [--tty] -- ARGS...`.
pub fn parse_args(args: &[String]) -> Result<ExecRequest, String> {
    let mut pid = None;
    let mut spec = None;
    let mut cgroup_dir = None;
    let mut timeout = None;
    let mut tty = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--pid" => pid = Some(value()?.parse::<i32>().map_err(|e| format!("--pid: {e}"))?),
            "--spec" => spec = Some(PathBuf::from(value()?)),
            "--cgroup" => cgroup_dir = Some(PathBuf::from(value()?)),
            "--timeout-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--timeout-ms: {e}"))?;
                timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--tty" => tty = true,
            "--" => break,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let rest: Vec<String> = it.cloned().collect();
    if rest.is_empty() {
        return Err("no command after --".into());
    }
    Ok(ExecRequest {
        pid: pid.ok_or("--pid is required")?,
        spec: spec.ok_or("--spec is required")?,
        cgroup_dir,
        args: rest,
        timeout,
        tty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args_parse() {
        let r = parse_args(&s(&[
            "--pid",
            "7",
            "--spec",
            "/b/config.json",
            "--timeout-ms",
            "1500",
            "--",
            "sh",
            "-c",
            "x",
        ]))
        .unwrap();
        assert_eq!(r.pid, 7);
        assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(r.args, s(&["sh", "-c", "x"]));
        assert!(!r.tty);
        let t = parse_args(&s(&["--pid", "7", "--spec", "/x", "--tty", "--", "sh"])).unwrap();
        assert!(t.tty);
        assert!(parse_args(&s(&["--pid", "7", "--spec", "/x"])).is_err());
        assert!(
            parse_args(&s(&["--spec", "/x", "--", "true"]))
                .unwrap_err()
                .contains("--pid")
        );
        assert_eq!(
            parse_args(&s(&[
                "--pid",
                "1",
                "--spec",
                "/x",
                "--timeout-ms",
                "0",
                "--",
                "true"
            ]))
            .unwrap()
            .timeout,
            None
        );
    }
}
