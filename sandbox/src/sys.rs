//! Raw system calls that neither `std` nor `nix` wrap: clone3, pidfds, waitid on a pidfd, poll.
//!
//! Every `unsafe` block of the process-management code lives here, each with a `// SAFETY:` line.
//! The child side of [`clone3_fork`] is [`exec_child`]: it makes only async-signal-safe system calls
//! on data prepared by the parent, because the parent (the agent) is multi-threaded.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `struct clone_args` as of Linux 5.7 (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

pub(crate) const CLONE_PIDFD: u64 = 0x1000;
pub(crate) const CLONE_NEWUTS: u64 = 0x0400_0000;
pub(crate) const CLONE_NEWIPC: u64 = 0x0800_0000;
pub(crate) const CLONE_NEWPID: u64 = 0x2000_0000;
pub(crate) const CLONE_NEWNET: u64 = 0x4000_0000;
pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Which side of a successful [`clone3_fork`] we are on.
enum Forked {
    Child,
    Parent { pid: i32, pidfd: OwnedFd },
}

/// Everything the child needs between clone3 and execve, prepared by the parent.
///
/// All descriptors are close-on-exec and numbered >= [`HIGH_FD`] so that the child's
/// dup2 onto 0..=3 never overwrites one it still has to read.
pub(crate) struct ChildExec<'a> {
    pub path: &'a CStr,
    /// NULL-terminated argv, pointing into CStrings the caller keeps alive.
    pub argv: &'a [*const libc::c_char],
    /// NULL-terminated envp.
    pub envp: &'a [*const libc::c_char],
    pub devnull: BorrowedFd<'a>,
    pub ready_w: BorrowedFd<'a>,
    /// `cgroup.procs` of the target cgroup when clone3 could not place the child there itself.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
}

/// Lowest number used for descriptors handed to the child (see [`ChildExec`]).
pub(crate) const HIGH_FD: RawFd = 10;

/// Duplicates `fd` onto a close-on-exec descriptor numbered >= [`HIGH_FD`].
pub(crate) fn dup_high(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor number; `fd` is valid for the call.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if new < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `new` is a descriptor we just created and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Builds a NULL-terminated pointer array over `strings` (which must outlive the array's use).
pub(crate) fn pointer_array(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Blocks every signal in the calling thread and restores the previous mask on drop.
///
/// Held across clone3 so the child starts with all signals blocked: no handler the parent
/// installed (tokio's, for instance) can run in the child before it resets the dispositions.
struct SignalsBlocked {
    old: libc::sigset_t,
}

impl SignalsBlocked {
    fn new() -> Result<Self, Errno> {
        // SAFETY: sigset_t is plain data; sigfillset initialises it before use.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above, the zeroed value is overwritten by pthread_sigmask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers refer to live, writable sigset_t values.
        let rc = unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old)
        };
        if rc != 0 {
            return Err(Errno::from_raw(rc));
        }
        Ok(SignalsBlocked { old })
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`; the pointer is valid for the call.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// clone3 with fork semantics (no new stack): returns twice, like fork.
///
/// # Safety
/// The caller is possibly multi-threaded, so on [`Forked::Child`] it must only make
/// async-signal-safe calls (no allocation, no locks, no logging) and end in execve or `_exit`.
unsafe fn clone3_fork(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> Result<Forked, Errno> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size we pass; with stack == 0 the child
    // continues on a copy of this thread's stack, as with fork. The caller upholds the
    // async-signal-safety contract for the child.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd that we now own.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent {
                pid: pid as i32,
                pidfd,
            })
        }
    }
}

/// clone3 (fork semantics) into `flags`' new namespaces and `cgroup`, then run
/// [`exec_child`] in the child. Returns the child's pid and pidfd.
pub(crate) fn clone3_exec(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    exec: &ChildExec<'_>,
) -> Result<(i32, OwnedFd), Errno> {
    // Block all signals across clone3 so no handler inherited from the parent runs in the
    // child before exec_child has reset the dispositions; the parent's mask comes back on drop.
    let _blocked = SignalsBlocked::new()?;
    // SAFETY: the child branch only calls exec_child, which makes async-signal-safe system
    // calls on data the caller prepared and ends in execve or _exit.
    match unsafe { clone3_fork(flags, cgroup) }? {
        Forked::Child => exec_child(exec),
        Forked::Parent { pid, pidfd } => Ok((pid, pidfd)),
    }
}

/// Writes `error: <step>: errno <n>\n` to `fd` without allocating.
fn child_report(fd: RawFd, step: &[u8], errno: i32) {
    let mut buf = [0u8; 96];
    let mut len = 0;
    for part in [b"error: ".as_slice(), step, b": errno "] {
        let n = part.len().min(buf.len() - len - 12);
        buf[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    let mut digits = [0u8; 10];
    let mut d = 0;
    let mut v = errno.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[len] = digits[d];
        len += 1;
    }
    buf[len] = b'\n';
    len += 1;
    // SAFETY: write is async-signal-safe; `buf[..len]` is initialised memory on our stack.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), len);
    }
}

/// Reports the failed step on the readiness pipe and exits with 127.
fn child_fail(fd: RawFd, step: &[u8]) -> ! {
    child_report(fd, step, Errno::last_raw());
    // SAFETY: _exit is async-signal-safe and never returns; no atexit handlers run.
    unsafe { libc::_exit(127) }
}

/// The child side of clone3: small steps, async-signal-safe system calls only, then execve.
fn exec_child(c: &ChildExec<'_>) -> ! {
    let ready = c.ready_w.as_raw_fd();
    // New session: the pause must not share the agent's process group or controlling
    // terminal, so a Ctrl-C or a group signal aimed at the agent does not reach it.
    // SAFETY: setsid is async-signal-safe and takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        child_fail(ready, b"setsid");
    }
    // Default dispositions: exec keeps ignored signals ignored (Rust ignores SIGPIPE), and
    // a handler inherited from the parent must not run here once signals are unblocked.
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: signal() with SIG_DFL is async-signal-safe; errors for signals reserved by
        // the C library are harmless and ignored.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // Fallback cgroup placement for kernels whose clone3 lacks CLONE_INTO_CGROUP: writing
    // "0" to cgroup.procs moves the writer itself, before it runs any foreign code.
    if let Some(procs) = c.cgroup_procs {
        // SAFETY: writes two static bytes to a descriptor the parent opened for us.
        if unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            child_fail(ready, b"join cgroup");
        }
    }
    // stdio to /dev/null (the pause has nothing to say there) and the readiness pipe on fd 3.
    // The sources are numbered >= HIGH_FD, so no dup2 clobbers a later source.
    for (src, dst) in [
        (c.devnull.as_raw_fd(), 0),
        (c.devnull.as_raw_fd(), 1),
        (c.devnull.as_raw_fd(), 2),
        (ready, 3),
    ] {
        // SAFETY: dup2 is async-signal-safe; both are valid descriptor numbers.
        if unsafe { libc::dup2(src, dst) } < 0 {
            child_fail(ready, b"dup2");
        }
    }
    // Close everything else the multi-threaded parent may have had open (other pods'
    // pipes, sockets without CLOEXEC). ENOSYS on old kernels is fine: ours are all CLOEXEC.
    // SAFETY: close_range is a plain system call on descriptor numbers.
    unsafe {
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
    // Unblock everything: the pause sets up its own mask.
    // SAFETY: sigemptyset initialises the set; sigprocmask is async-signal-safe.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    // SAFETY: path, argv and envp are NUL-terminated strings and NULL-terminated arrays
    // built by the parent before clone3 and still alive in this copy of its memory.
    unsafe {
        libc::execve(c.path.as_ptr(), c.argv.as_ptr(), c.envp.as_ptr());
    }
    child_fail(3, b"execve")
}

/// pidfd_open(2).
pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_send_signal(2).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: plain system call; a NULL siginfo means "as kill(2) would send it".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// How a waited-for child ended, straight from siginfo.
pub(crate) struct Waited {
    pub code: i32,
    pub status: i32,
}

/// waitid(P_PIDFD, WEXITED); `None` with `nohang` when the child is still running.
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> Result<Option<Waited>, Errno> {
    let mut flags = libc::WEXITED;
    if nohang {
        flags |= libc::WNOHANG;
    }
    loop {
        // SAFETY: siginfo_t is plain data; the kernel fills it (or leaves si_pid 0).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, writable siginfo_t.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if rc < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        // SAFETY: waitid succeeded, so the SIGCHLD fields of the union are the ones set.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(Waited {
            code: info.si_code,
            status,
        }));
    }
}

/// Waits until `fd` is readable (or hung up) or `timeout_ms` passes; `false` on timeout.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> Result<bool, Errno> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    match rc {
        r if r < 0 => Err(Errno::last()),
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Which side of [`fork_single_threaded`] we are on.
pub(crate) enum ForkSide {
    Child,
    Parent(i32),
}

/// fork(2) for a process that has exactly one thread (the pod monitor and the children it forks), so the child
/// may allocate, lock and log freely. Refuses (EINVAL) when the process has more than one thread.
pub(crate) fn fork_single_threaded() -> Result<ForkSide, Errno> {
    // Unreadable (0) once a process joined another mount namespace whose /proc belongs to a PID namespace it is
    // not in (the exec helper after setns): it is a freshly exec'd, single-threaded program then.
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads > 1 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the process has a single thread (checked just above where /proc allows, and by construction for
    // the exec helper; no thread can appear in between since only this thread could create one), so the child's
    // copy of every lock and allocator state is consistent.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(ForkSide::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(ForkSide::Parent(child.as_raw())),
    }
}

/// Marks every descriptor from `first` up close-on-exec (close_range with CLOSE_RANGE_CLOEXEC): nothing of the
/// monitor leaks into a container (runc CVE-2024-21626).
pub(crate) fn cloexec_from(first: u32) -> Result<(), Errno> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Makes the terminal `fd` the controlling terminal of the calling session leader (TIOCSCTTY).
pub(crate) fn set_controlling_tty(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); `fd` is valid for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Sets every catchable signal (1 to 64, real-time ones included) back to its default action, for a process
/// about to exec a workload: the Rust runtime ignores SIGPIPE, whoever started us may have ignored others, and
/// an ignored signal stays ignored across exec (`yes | head` would never end). Handlers need no reset (exec
/// resets those). The raw system call, since glibc refuses the two real-time signals it keeps for itself.
pub(crate) fn default_signal_dispositions() -> Result<(), Errno> {
    /// The kernel's `struct sigaction` on x86-64 and aarch64 (not glibc's).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads one kernel sigaction through the pointer, a live local of that layout, with
        // an 8-byte signal set as the size says; SIG_DFL installs no handler code, and no old action is asked for.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// `_exit(2)`: ends a forked child without running the parent's atexit handlers or flushing its buffers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn child_report_formats_step_and_errno() {
        let (mut r, w) = std::io::pipe().unwrap();
        child_report(w.as_raw_fd(), b"execve", 2);
        drop(w);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "error: execve: errno 2\n");
    }

    #[test]
    fn dup_high_returns_cloexec_fd_above_floor() {
        let (r, _w) = std::io::pipe().unwrap();
        let owned: OwnedFd = r.into();
        let high = dup_high(owned.as_fd()).unwrap();
        assert!(high.as_raw_fd() >= HIGH_FD);
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(high.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
