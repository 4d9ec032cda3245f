//! The two forked stages of a container init (see the module doc of `container`). Everything here runs in a
//! child of the single-threaded monitor, so allocation is fine; errors go back over the report pipe.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::mounts::{self, Rootfs as RootfsDir};
use super::{InitError, Rootfs, Stdio, dev};
use crate::seccomp::Program;
use crate::sys::{self, ForkSide};

/// Stage 1: namespaces with a path, the cgroup, then the fork into any PID namespace. Reports `pid <n>`.
pub(super) fn stage1(
    spec: &Spec,
    rootfs: &Rootfs,
    cgroup_dir: Option<&Path>,
    stdio: Stdio,
    seccomp: Option<&Program>,
    start: OwnedFd,
    report: &mut File,
) -> Result<(), InitError> {
    // Nobody else may open /proc/<pid>/exe of a process still running the monitor's binary (CVE-2019-5736);
    // execve resets this for the workload.
    nix::sys::prctl::set_dumpable(false).map_err(InitError::sys("prctl(PR_SET_DUMPABLE)"))?;
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut unshare_flags = CloneFlags::empty();
    // Joined in this order: the PID namespace last, it only applies to children anyway.
    for kind in [
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
    ] {
        let Some(ns) = namespaces.iter().find(|n| n.typ() == kind) else {
            continue;
        };
        match ns.path() {
            Some(path) => {
                let f = File::open(path).map_err(|e| InitError::io("open namespace", path, e))?;
                setns(f.as_fd(), clone_flag(kind)).map_err(|e| InitError::Mount {
                    op: "join namespace",
                    target: path.clone(),
                    source: e,
                })?;
            }
            None => unshare_flags |= clone_flag(kind),
        }
    }
    if let Some(dir) = cgroup_dir {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, format!("{}\n", std::process::id()))
            .map_err(|e| InitError::io("join cgroup via", &procs, e))?;
    }
    // A new PID namespace takes effect for the next child; the others right away. Mount and cgroup namespaces
    // are unshared in stage 2 (after the cgroup join, so the cgroup namespace is rooted at the container's).
    let early = unshare_flags
        & (CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS);
    if !early.is_empty() {
        unshare(early).map_err(InitError::sys("unshare"))?;
    }
    let late_flags = namespaces.iter().filter(|n| n.path().is_none()).fold(
        CloneFlags::empty(),
        |acc, n| match n.typ() {
            LinuxNamespaceType::Mount | LinuxNamespaceType::Cgroup => acc | clone_flag(n.typ()),
            _ => acc,
        },
    );
    // Stage 2 waits for EOF on this pipe before it does anything, so its reports always come after our
    // `pid` line and the monitor knows whom to kill and reap when stage 2 fails.
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(InitError::sys("pipe"))?;
    match sys::fork_single_threaded().map_err(InitError::sys("fork stage 2"))? {
        ForkSide::Parent(pid) => {
            drop(go_r);
            let reported = writeln!(report, "pid {pid}")
                .map_err(|e| InitError::io("report to", Path::new("the monitor"), e));
            drop(go_w);
            reported
        }
        ForkSide::Child => {
            drop(go_w);
            let mut byte = [0u8; 1];
            let _ = File::from(go_r).read(&mut byte);
            let code = match stage2(spec, rootfs, late_flags, stdio, seccomp, start, report) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = writeln!(report, "error {}", super::one_line(&e));
                    1
                }
            };
            sys::exit_now(code)
        }
    }
}

fn clone_flag(kind: LinuxNamespaceType) -> CloneFlags {
    match kind {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// Stage 2, the container init. Returns only with an error; on success it becomes the workload.
fn stage2(
    spec: &Spec,
    rootfs: &Rootfs,
    unshare_flags: CloneFlags,
    stdio: Stdio,
    seccomp: Option<&Program>,
    start: OwnedFd,
    report: &mut File,
) -> Result<std::convert::Infallible, InitError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| InitError::BadSpec("no root".into()))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| InitError::BadSpec("no process".into()))?;
    if !unshare_flags.contains(CloneFlags::CLONE_NEWNS) {
        return Err(InitError::BadSpec(
            "a container needs its own mount namespace".into(),
        ));
    }
    // The monitor blocks the signals it reads from a signalfd and ignores SIGPIPE (the Rust runtime does); the
    // workload starts with none blocked and every disposition the default.
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(InitError::sys("reset the signal mask"))?;
    sys::default_signal_dispositions().map_err(InitError::sys("reset signal dispositions"))?;
    unshare(unshare_flags).map_err(InitError::sys("unshare mount/cgroup namespaces"))?;
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(InitError::sys("make / rslave"))?;

    // The rootfs: an overlay of the image layers with the container's own upper dir.
    let target = root.path();
    let lower: Vec<String> = rootfs
        .lower
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        rootfs.upper.display(),
        rootfs.work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| InitError::Mount {
        op: "mount the overlay rootfs on",
        target: target.clone(),
        source: e,
    })?;
    let dir = RootfsDir::open(target)?;
    let spec_mounts = spec.mounts().clone().unwrap_or_default();
    for m in &spec_mounts {
        mounts::apply(&dir, m)?;
    }
    if spec_mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev"))
    {
        dev::populate(&dir, linux.devices().as_deref().unwrap_or_default())?;
    }
    dev::readonly(&dir, linux.readonly_paths().as_deref().unwrap_or_default())?;
    dev::mask(&dir, linux.masked_paths().as_deref().unwrap_or_default())?;
    // The working directory is created (as root, inside the rootfs) if the image lacks it.
    let cwd = process.cwd().clone();
    drop(dir.target(&cwd, false)?);

    pivot(target)?;
    if root.readonly().unwrap_or(false) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(InitError::sys("remount / read-only"))?;
    }
    if let Some(p) = linux.rootfs_propagation() {
        let flags = mounts::parse_options(std::slice::from_ref(p)).propagation;
        if !flags.is_empty() {
            mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
                .map_err(InitError::sys("set rootfs propagation"))?;
        }
    }

    // The streams. The session makes the container its own process group leader, off the monitor's.
    nix::unistd::setsid().map_err(InitError::sys("setsid"))?;
    nix::unistd::dup2_stdin(&stdio.stdin).map_err(InitError::sys("dup2 stdin"))?;
    nix::unistd::dup2_stdout(&stdio.stdout).map_err(InitError::sys("dup2 stdout"))?;
    nix::unistd::dup2_stderr(&stdio.stderr).map_err(InitError::sys("dup2 stderr"))?;
    drop(stdio);
    if process.terminal().unwrap_or(false) {
        // The pty slave is stdin: make it our controlling terminal (we lead a new session).
        sys::set_controlling_tty(std::io::stdin().as_fd()).map_err(InitError::sys("TIOCSCTTY"))?;
    }

    if let Some(adj) = process.oom_score_adj() {
        // Without CAP_SYS_RESOURCE a value below ours is refused: keep ours (restrict_oom_score_adj).
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    for r in process.rlimits().as_deref().unwrap_or_default() {
        set_rlimit(r)?;
    }
    become_the_process(process, seccomp)?;
    nix::unistd::chdir(&cwd).map_err(|e| InitError::Mount {
        op: "chdir to the working directory",
        target: cwd.clone(),
        source: e,
    })?;

    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let program = args
        .first()
        .ok_or_else(|| InitError::BadSpec("process.args is empty".into()))?;
    let exe = find_executable(program, &env);
    let argv = cstrings(&args)?;
    let envp = cstrings(&env)?;
    let exe_c = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| InitError::BadSpec("NUL in the executable path".into()))?;
    // Nothing of the monitor's may reach the workload (runc CVE-2024-21626): every descriptor above the standard
    // streams closes on exec, the report pipe included (its EOF tells the monitor the exec succeeded).
    sys::cloexec_from(3).map_err(InitError::sys("close_range"))?;

    writeln!(report, "created")
        .map_err(|e| InitError::io("report to", Path::new("the monitor"), e))?;
    let mut start = File::from(start);
    let mut byte = [0u8; 1];
    match start.read(&mut byte) {
        Ok(1) => {}
        // The container was removed before it was started.
        _ => sys::exit_now(0),
    }
    let err = match nix::unistd::execve(&exe_c, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let _ = writeln!(report, "error exec {}: {}", program, exec_reason(err));
    sys::exit_now(127)
}

/// Takes on the spec's identity: umask, groups, uid/gid, capabilities, no_new_privs, and the seccomp filter.
/// seccomp(2) without no_new_privs needs CAP_SYS_ADMIN, so then the filter goes in before the capabilities are
/// dropped; with no_new_privs it goes in last, so it need not allow what the drop itself calls.
pub(super) fn become_the_process(
    process: &oci_spec::runtime::Process,
    seccomp: Option<&Program>,
) -> Result<(), InitError> {
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    if !no_new_privs && let Some(p) = seccomp {
        crate::seccomp::install(p)?;
    }
    crate::identity::apply_umask(process.user());
    crate::identity::apply(
        process.user(),
        process.capabilities().as_ref(),
        no_new_privs,
    )?;
    if no_new_privs && let Some(p) = seccomp {
        crate::seccomp::install(p)?;
    }
    Ok(())
}

/// pivot_root into `root` without a spare directory: stack the old root under the new one and detach it.
fn pivot(root: &Path) -> Result<(), InitError> {
    nix::unistd::chdir(root).map_err(InitError::sys("chdir to the rootfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(InitError::sys("pivot_root"))?;
    // The old root is now mounted over the new one at "."; the rslave first keeps the detach from propagating.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(InitError::sys("make the old root rslave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(InitError::sys("detach the old root"))?;
    nix::unistd::chdir("/").map_err(InitError::sys("chdir /"))?;
    Ok(())
}

fn set_rlimit(r: &oci_spec::runtime::PosixRlimit) -> Result<(), InitError> {
    use nix::sys::resource::{Resource, setrlimit};
    use oci_spec::runtime::PosixRlimitType as T;
    let resource = match r.typ() {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    };
    match setrlimit(resource, r.soft(), r.hard()) {
        Ok(()) => Ok(()),
        // Raising a hard limit needs CAP_SYS_RESOURCE, which hosts like these lack: keep the current limits
        // rather than fail the container, as for oom_score_adj.
        Err(nix::errno::Errno::EPERM) => Ok(()),
        Err(e) => Err(InitError::Sys {
            op: "setrlimit",
            source: e,
        }),
    }
}

/// `program` as execvp would find it: with a '/' as given, else the first executable file in the spec's PATH.
pub(super) fn find_executable(program: &str, env: &[String]) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.metadata().is_ok_and(|m| m.is_file())
        {
            return candidate;
        }
    }
    // Not found: execve of the bare name fails with ENOENT, reported as "not found in $PATH".
    PathBuf::from(program)
}

pub(super) fn exec_reason(e: nix::errno::Errno) -> String {
    match e {
        nix::errno::Errno::ENOENT => {
            "no such file or directory (not found in the image's $PATH)".into()
        }
        nix::errno::Errno::EACCES => "permission denied (not an executable file)".into(),
        other => other.desc().to_lowercase(),
    }
}

pub(super) fn cstrings(v: &[String]) -> Result<Vec<std::ffi::CString>, InitError> {
    v.iter()
        .map(|s| {
            std::ffi::CString::new(s.as_bytes())
                .map_err(|_| InitError::BadSpec(format!("NUL byte in {s:?}")))
        })
        .collect()
}
