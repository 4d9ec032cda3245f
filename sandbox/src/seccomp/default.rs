//! The RuntimeDefault profile: what Kubernetes' `seccompProfile: RuntimeDefault` means.
//!
//! The same shape and semantics as the default profile of containerd 2 and moby 25+: errno
//! EPERM by default, an allow list of ordinary syscalls, the syscalls whose kernel checks rest on
//! a capability allowed only with that capability, clone without namespace flags and clone3 as
//! ENOSYS (so libc falls back to clone) without CAP_SYS_ADMIN, the personality values programs
//! use, and no AF_VSOCK sockets. Like both, no io_uring (it runs syscalls that seccomp never
//! sees). ptrace and process_vm_* are allowed as moby allows them on kernels from 4.8 on, which
//! crius needs anyway (clone3, pidfds); the kernel's own ptrace checks still apply.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator, LinuxSyscall,
};

use super::syscalls::NativeArch;
use super::{has_capability, oci_arg};

/// Ordinary syscalls every container may make. Names another architecture has (chown32, mmap2,
/// _llseek, ...) are listed as in moby's profile and skipped where they do not exist.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32",
    "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr",
    "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink",
    "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall",
    "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32",
    "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt",
    "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl",
    "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee",
    "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
    // Allowed by moby on kernels from 4.8 on, which crius needs anyway.
    "process_vm_readv", "process_vm_writev", "ptrace",
];

/// Syscalls whose use the kernel grants by a capability: allowed only with it.
#[rustfmt::skip]
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_ADMIN", &[
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
        "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
        "umount2", "unshare",
    ]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &[
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace",
    ]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The personality(2) values programs set or query: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE,
/// both, and 0xffffffff (query without changing).
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The upper 32 bits of a 64-bit argument register.
const UPPER_HALF: u64 = 0xffff_ffff_0000_0000;

/// The clone flags that create namespaces; without CAP_SYS_ADMIN clone must carry none of them.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The RuntimeDefault profile for a container whose effective capabilities are `capabilities`
/// ("CAP_SYS_ADMIN", ...), as an OCI LinuxSeccomp for the build target's architecture.
pub fn runtime_default(capabilities: &[String]) -> LinuxSeccomp {
    let arch = NativeArch::current();
    runtime_default_for(capabilities, arch)
}

pub(super) fn runtime_default_for(
    capabilities: &[String],
    arch: Option<NativeArch>,
) -> LinuxSeccomp {
    let has = |cap: &str| has_capability(capabilities, cap);
    let mut syscalls = vec![allow(ALLOWED, Vec::new())];

    // socket(AF_VSOCK, ...) reaches the host's hypervisor sockets: refused. The kernel reads
    // the domain as an int, so its upper half must be zero too, or 40 | 1 << 32 would pass
    // "!= 40" and still make a vsock (moby's profile has only the second condition).
    let int_domain = arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, UPPER_HALF, 0);
    let not_vsock = arg(0, LinuxSeccompOperator::ScmpCmpNe, libc::AF_VSOCK as u64, 0);
    syscalls.push(allow(&["socket"], vec![int_domain, not_vsock]));
    for &persona in PERSONALITIES {
        syscalls.push(allow(
            &["personality"],
            vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, persona, 0)],
        ));
    }
    match arch {
        Some(NativeArch::X86_64) => syscalls.push(allow(&["arch_prctl", "modify_ldt"], Vec::new())),
        // The arm32 names: none exists natively on aarch64, listed as moby lists them.
        Some(NativeArch::Aarch64) => syscalls.push(allow(
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            Vec::new(),
        )),
        None => {}
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(allow(names, Vec::new()));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // Threads and processes, but no new namespaces (clone's flags are argument 0 on both
        // of our architectures; s390 puts them second).
        let no_namespaces = arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, NAMESPACE_FLAGS, 0);
        syscalls.push(allow(&["clone"], vec![no_namespaces]));
        // clone3's flags are behind a pointer that seccomp cannot read: ENOSYS makes libc use clone.
        let mut clone3 = LinuxSyscall::default();
        clone3
            .set_names(vec!["clone3".to_owned()])
            .set_action(LinuxSeccompAction::ScmpActErrno)
            .set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(clone3);
    }

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(libc::EPERM as u32))
        .set_architectures(arch.map(NativeArch::oci_with_compat))
        .set_syscalls(Some(syscalls));
    profile
}

fn allow(names: &[&str], args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall
        .set_names(names.iter().map(|name| (*name).to_owned()).collect())
        .set_action(LinuxSeccompAction::ScmpActAllow)
        .set_args((!args.is_empty()).then_some(args));
    syscall
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> LinuxSeccompArg {
    oci_arg(index, op, value, Some(value_two))
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::Arch;

    use super::super::bpf_vm::{self, Verdict};
    use super::super::compile::compile_for;
    use super::*;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn allowed_names(profile: &LinuxSeccomp) -> Vec<&str> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().iter().map(String::as_str))
            .collect()
    }

    /// What RuntimeDefault with `capabilities` does with `name(args)` on `arch`.
    fn verdict(capabilities: &[&str], arch: NativeArch, name: &str, args: &[u64]) -> Verdict {
        let profile = runtime_default_for(&caps(capabilities), Some(arch));
        let program = compile_for(&profile, arch).unwrap();
        bpf_vm::call(&program.bpf, arch, name, args)
    }

    #[test]
    fn shape_is_errno_eperm_with_native_and_compat_arches() {
        let p = runtime_default_for(&[], Some(NativeArch::X86_64));
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        let p = runtime_default_for(&[], Some(NativeArch::Aarch64));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        assert_eq!(
            runtime_default(&[]),
            runtime_default_for(&[], NativeArch::current())
        );
    }

    #[test]
    fn cap_sys_admin_adds_mount_and_namespaces() {
        let plain = runtime_default_for(&[], Some(NativeArch::X86_64));
        let admin = runtime_default_for(&caps(&["CAP_SYS_ADMIN"]), Some(NativeArch::X86_64));
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "sethostname",
        ] {
            assert!(
                !allowed_names(&plain).contains(&name),
                "{name} allowed without CAP_SYS_ADMIN"
            );
            assert!(
                allowed_names(&admin).contains(&name),
                "{name} not allowed with CAP_SYS_ADMIN"
            );
        }
        // Capability names are matched without regard to case, as runtimes hand them over.
        let lower = runtime_default_for(&caps(&["cap_sys_admin"]), Some(NativeArch::X86_64));
        assert!(allowed_names(&lower).contains(&"mount"));
    }

    #[test]
    fn each_capability_gates_its_syscalls() {
        let gated = [
            ("CAP_SYS_PTRACE", "kcmp"),
            ("CAP_SYS_MODULE", "init_module"),
            ("CAP_SYS_BOOT", "reboot"),
            ("CAP_SYSLOG", "syslog"),
            ("CAP_SYS_TIME", "settimeofday"),
            ("CAP_SYS_NICE", "mbind"),
            ("CAP_SYS_PACCT", "acct"),
            ("CAP_SYS_RAWIO", "iopl"),
            ("CAP_SYS_CHROOT", "chroot"),
            ("CAP_BPF", "bpf"),
            ("CAP_PERFMON", "perf_event_open"),
            ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
            ("CAP_SYS_TTY_CONFIG", "vhangup"),
        ];
        for (cap, name) in gated {
            assert_eq!(
                verdict(&[], NativeArch::X86_64, name, &[]),
                Verdict::Errno(1),
                "{name} without {cap}"
            );
            assert_eq!(
                verdict(&[cap], NativeArch::X86_64, name, &[]),
                Verdict::Allow,
                "{name} with {cap}"
            );
        }
    }

    #[test]
    fn ordinary_work_is_allowed_and_dangerous_calls_are_not() {
        for arch in [NativeArch::X86_64, NativeArch::Aarch64] {
            for name in [
                "read",
                "openat",
                "mmap",
                "futex",
                "execve",
                "wait4",
                "exit_group",
                "ptrace",
                "fchmodat2",
            ] {
                assert_eq!(
                    verdict(&[], arch, name, &[]),
                    Verdict::Allow,
                    "{name} on {arch:?}"
                );
            }
            for name in [
                "kexec_load",
                "io_uring_setup",
                "userfaultfd",
                "keyctl",
                "add_key",
                "swapon",
                "pivot_root",
            ] {
                assert_eq!(
                    verdict(&[], arch, name, &[]),
                    Verdict::Errno(1),
                    "{name} on {arch:?}"
                );
            }
        }
        assert_eq!(
            verdict(&[], NativeArch::X86_64, "arch_prctl", &[]),
            Verdict::Allow
        );
    }

    #[test]
    fn without_cap_sys_admin_clone_may_not_make_namespaces_and_clone3_is_enosys() {
        let thread = 0x003d_0f00;
        for arch in [NativeArch::X86_64, NativeArch::Aarch64] {
            assert_eq!(verdict(&[], arch, "clone", &[thread]), Verdict::Allow);
            assert_eq!(
                verdict(&[], arch, "clone", &[libc::SIGCHLD as u64]),
                Verdict::Allow
            );
            let new_ns = libc::SIGCHLD as u64 | libc::CLONE_NEWNS as u64;
            assert_eq!(verdict(&[], arch, "clone", &[new_ns]), Verdict::Errno(1));
            assert_eq!(verdict(&[], arch, "clone3", &[]), Verdict::Errno(38));
            assert_eq!(
                verdict(&[], arch, "unshare", &[libc::CLONE_NEWNS as u64]),
                Verdict::Errno(1)
            );
            assert_eq!(
                verdict(&["CAP_SYS_ADMIN"], arch, "clone", &[new_ns]),
                Verdict::Allow
            );
            assert_eq!(
                verdict(&["CAP_SYS_ADMIN"], arch, "clone3", &[]),
                Verdict::Allow
            );
            assert_eq!(
                verdict(
                    &["CAP_SYS_ADMIN"],
                    arch,
                    "unshare",
                    &[libc::CLONE_NEWNS as u64]
                ),
                Verdict::Allow
            );
        }
    }

    #[test]
    fn only_known_personalities_and_no_vsock() {
        for persona in [0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
            assert_eq!(
                verdict(&[], NativeArch::X86_64, "personality", &[persona]),
                Verdict::Allow
            );
        }
        assert_eq!(
            verdict(&[], NativeArch::X86_64, "personality", &[0x0040_0000]),
            Verdict::Errno(1)
        );
        assert_eq!(
            verdict(&[], NativeArch::X86_64, "socket", &[libc::AF_INET as u64]),
            Verdict::Allow
        );
        let vsock = libc::AF_VSOCK as u64;
        assert_eq!(
            verdict(&[], NativeArch::X86_64, "socket", &[vsock]),
            Verdict::Errno(1)
        );
        // The kernel would truncate this to AF_VSOCK.
        let disguised = vsock | 1 << 32;
        assert_eq!(
            verdict(&[], NativeArch::X86_64, "socket", &[disguised]),
            Verdict::Errno(1)
        );
    }

    #[test]
    fn compiles_well_within_the_kernel_limit_on_both_architectures() {
        for arch in [NativeArch::X86_64, NativeArch::Aarch64] {
            for capabilities in [
                caps(&[]),
                caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF"]),
            ] {
                let program =
                    compile_for(&runtime_default_for(&capabilities, Some(arch)), arch).unwrap();
                assert!(
                    program.instructions() < 2500,
                    "{} instructions",
                    program.instructions()
                );
                bpf_vm::check(&program.bpf);
            }
        }
    }

    #[test]
    fn round_trips_through_oci_json() {
        let p = runtime_default(&caps(&["CAP_SYS_ADMIN"]));
        let json = serde_json::to_vec(&p).unwrap();
        let back: LinuxSeccomp = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, p);
    }
}
