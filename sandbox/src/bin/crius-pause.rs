//! `crius-pause [--hostname NAME] [--sysctl KEY=VALUE]... [--lo]`
//!
//! The pod's pause process. The agent clones it straight into the pod's new namespaces; it
//! finishes their setup from inside (hostname in its UTS namespace, sysctls resolved through
//! its net/IPC namespaces, loopback up), reports `ok` or `error: <what failed: why>` on fd 3,
//! then holds the namespaces and reaps zombies (it may be PID 1 of the pod PID namespace)
//! until SIGTERM or SIGINT.
//!
//! Deliberately tiny: no async runtime, no argument-parsing crate, nothing allocated after
//! setup.
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// Parsed command line.
#[derive(Debug, Default)]
struct Args {
    hostname: Option<OsString>,
    sysctls: Vec<Sysctl>,
    lo: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct Sysctl {
    key: String,
    path: String,
    value: OsString,
}

fn parse_args(mut it: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let mut args = Args::default();
    while let Some(a) = it.next() {
        match a.as_bytes() {
            b"--hostname" => {
                args.hostname = Some(
                    it.next()
                        .ok_or("parse arguments: --hostname needs a value")?,
                );
            }
            b"--sysctl" => {
                let kv = it
                    .next()
                    .ok_or("parse arguments: --sysctl needs KEY=VALUE")?;
                let kv = kv.as_bytes();
                let eq = kv
                    .iter()
                    .position(|&b| b == b'=')
                    .ok_or("parse arguments: --sysctl needs KEY=VALUE")?;
                let key = String::from_utf8_lossy(&kv[..eq]).into_owned();
                // The key becomes a path under /proc/sys: slashed form as given (the agent
                // always sends it so), dotted form converted. No empty, '.' or '..' parts.
                let path = if key.contains('/') {
                    key.clone()
                } else {
                    key.replace('.', "/")
                };
                if path
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == "..")
                    || !path.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/')
                    })
                {
                    return Err(format!("parse arguments: invalid sysctl key {key:?}"));
                }
                args.sysctls.push(Sysctl {
                    key,
                    path: format!("/proc/sys/{path}"),
                    value: OsString::from(std::ffi::OsStr::from_bytes(&kv[eq + 1..])),
                });
            }
            b"--lo" => args.lo = true,
            _ => return Err(format!("parse arguments: unknown argument {a:?}")),
        }
    }
    Ok(args)
}

/// Everything that has to succeed before the pause reports ready.
fn setup(args: &Args) -> Result<(), String> {
    // Hold no directory of the agent's busy (it may want to unmount it later).
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if let Some(h) = &args.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("set hostname {h:?}: {e}"))?;
    }
    for Sysctl { key, path, value } in &args.sysctls {
        // /proc/sys resolves net.* through our network namespace and kernel.shm*/msg*/sem
        // through our IPC namespace, so these land in the pod, not on the host.
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| format!("sysctl {key}: {e}"))?;
    }
    if args.lo {
        raw::loopback_up().map_err(|e| format!("bring loopback up: {e}"))?;
    }
    Ok(())
}

/// Reports on the readiness pipe (or stderr when there is none) and closes it.
fn report(ready: Option<File>, line: &str) {
    match ready {
        Some(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        None => eprint!("crius-pause: {line}"),
    }
}

/// Reaps every exited child: re-parented orphans of the pod PID namespace end up here.
fn reap_all() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

fn main() -> ExitCode {
    // Block everything first: SIGTERM during setup is then handled by the loop below, and
    // SIGPIPE/SIGHUP can never kill us (blocked signals are consumed by sigwait and ignored).
    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None);
    let ready = raw::take_fd(3);

    let outcome = parse_args(std::env::args_os().skip(1)).and_then(|args| setup(&args));
    match outcome {
        Ok(()) => report(ready, "ok\n"),
        Err(msg) => {
            report(ready, &format!("error: {msg}\n"));
            return ExitCode::from(1);
        }
    }

    loop {
        match all.wait() {
            Ok(Signal::SIGCHLD) => reap_all(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => return ExitCode::SUCCESS,
            _ => {}
        }
    }
}

/// The two calls `std` and `nix` do not offer safely here.
#[allow(unsafe_code)]
mod raw {
    use std::fs::File;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// Takes ownership of an inherited descriptor, if it is open.
    pub fn take_fd(fd: i32) -> Option<File> {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // SAFETY: the descriptor is open and was handed to us by the agent for our sole use.
        Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `ip link set lo up`, by ioctl on a throwaway socket.
    pub fn loopback_up() -> io::Result<()> {
        // SAFETY: socket() with constant arguments; the result is checked.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `s` is a new descriptor we own; OwnedFd closes it on return.
        let sock = unsafe { OwnedFd::from_raw_fd(s) };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        // SAFETY: ifreq is plain data; all-zero is a valid empty request.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into it.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the union member ifru_flags is what SIOCGIFFLAGS filled in.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq for "lo".
        if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(OsString::from))
    }

    #[test]
    fn parses_all_options() {
        let a = args(&[
            "--hostname",
            "pod-a",
            "--sysctl",
            "net.ipv4.ping_group_range=0 1=2",
            "--lo",
        ])
        .unwrap();
        assert_eq!(a.hostname.as_deref(), Some(std::ffi::OsStr::new("pod-a")));
        assert_eq!(
            a.sysctls,
            [Sysctl {
                key: "net.ipv4.ping_group_range".into(),
                path: "/proc/sys/net/ipv4/ping_group_range".into(),
                value: "0 1=2".into(),
            }]
        );
        let b = args(&["--sysctl", "net/ipv4/conf/eth0.100/rp_filter=1"]).unwrap();
        assert_eq!(
            b.sysctls[0].path,
            "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
        );
        assert!(a.lo);
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(args(&["--hostname"]).is_err());
        assert!(args(&["--sysctl", "novalue"]).is_err());
        assert!(args(&["--sysctl", "net/../x=1"]).is_err());
        assert!(args(&["--sysctl", "net..x=1"]).is_err());
        assert!(args(&["--sysctl", "net/./x=1"]).is_err());
        assert!(args(&["--what"]).unwrap_err().contains("unknown argument"));
        assert!(args(&[]).unwrap().sysctls.is_empty());
    }
}
