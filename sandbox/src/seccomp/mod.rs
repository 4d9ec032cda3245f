//! Seccomp for containers: the RuntimeDefault profile, Localhost profile files, and compiling a
//! profile to one BPF program that the container's init installs just before execve.
//!
//! How it is built, and why:
//!
//! * **Names to numbers** come from our own per-architecture tables (`syscalls.rs`), taken from
//!   the kernel's syscall tables. seccompiler knows names only in its `json` feature, which this
//!   crate does not enable, and its JSON format is not OCI's anyway; `libc::SYS_*` misses
//!   syscalls newer than the crate (cachestat, futex_wake, ...) and a few that arm64 has
//!   (renameat, getrlimit), and a missing name would silently drop a rule. A name that the
//!   native architecture does not have is skipped, as libseccomp does (profiles list 32-bit
//!   names such as `chown32` for every machine).
//! * **One program from many actions.** seccompiler's backend compiles a `SeccompFilter` that has
//!   one action on match and one on mismatch; an OCI profile has one action per rule. So we
//!   compile one seccompiler filter per distinct action, with "allow" on mismatch, and chain them:
//!   in every filter but the last, each `RET ALLOW` (which can only be its mismatch exit) becomes
//!   a jump to the first instruction of the next filter. The last filter holds the ALLOW rules
//!   and returns the default action. One program is one seccomp(2) call, so an earlier filter
//!   cannot forbid loading a later one (a profile that denies seccomp(2) itself), and it costs
//!   the kernel one filter run per syscall.
//! * **Semantics**, pinned by the unit tests, which run the compiled BPF in a small interpreter:
//!   the args of one rule are ANDed, always compared as full 64-bit values (libseccomp does that
//!   on 64-bit architectures; seccompiler's `Dword` would look at the low half only); several
//!   rules for one syscall with one action are ORed; a rule without args matches on the number
//!   alone (seccompiler's empty rule list), and absorbs the conditional rules of the same action;
//!   a rule whose action (errno included) equals the default action is dropped, as runc does;
//!   when rules with different actions match one call, the most restrictive action wins, in the
//!   kernel's own order (kill process, kill thread, trap, errno, trace, log, allow), and between
//!   two errno (or trace) values the one listed first in the profile.
//! * **Only the native ABI is filtered.** A call through another ABI (i386 via int 0x80 or x32
//!   on x86_64, arm32 on aarch64) kills the process even if the profile lists that architecture:
//!   we have no tables for those numbers, and letting them through would bypass the profile.
//! * **install** makes the seccomp(2) call itself instead of `seccompiler::apply_filter`, which
//!   always sets no_new_privs (that would break setuid binaries in containers that allow
//!   privilege escalation) and cannot pass the profile's `SECCOMP_FILTER_FLAG_LOG` /
//!   `SPEC_ALLOW` flags.

mod compile;
mod default;
#[allow(unsafe_code)]
mod load;
mod profile;
mod syscalls;

#[cfg(test)]
mod bpf_vm;

use std::path::PathBuf;

use nix::errno::Errno;
use oci_spec::runtime::{LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator};

pub use compile::compile;
pub use default::runtime_default;
pub use profile::parse_profile;

/// A compiled profile: one classic-BPF program for the native architecture, and the seccomp(2)
/// flags it is loaded with. Cheap to move into a forked child; [`install`] does not allocate.
#[derive(Clone, Debug)]
pub struct Program {
    bpf: seccompiler::BpfProgram,
    flags: libc::c_ulong,
}

impl Program {
    /// The number of BPF instructions (the kernel takes at most 4096).
    pub fn instructions(&self) -> usize {
        self.bpf.len()
    }
}

/// Installs `program` on the calling thread with seccomp(2), to be inherited by everything it
/// execs and forks. The caller has set no_new_privs or holds CAP_SYS_ADMIN. Async-signal-safe:
/// it makes one system call and does not allocate, so it can run in a freshly forked child.
pub fn install(program: &Program) -> Result<(), SeccompError> {
    load::set_mode_filter(&program.bpf, program.flags)
        .map_err(|source| SeccompError::Install { source })
}

/// An OCI argument comparison. `LinuxSeccompArg` has no setters, and its builder cannot fail:
/// every field has a default, so `build` always returns `Ok`.
fn oci_arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let builder = match value_two {
        Some(value_two) => builder.value_two(value_two),
        None => builder,
    };
    builder.build().unwrap_or_default()
}

/// Whether `wanted` ("CAP_SYS_ADMIN") is among `capabilities`, ignoring case and a missing
/// "CAP_" prefix, as runtimes are handed capability names in either form.
fn has_capability(capabilities: &[String], wanted: &str) -> bool {
    let bare = |cap: &str| {
        let upper = cap.to_ascii_uppercase();
        match upper.strip_prefix("CAP_") {
            Some(bare) => bare.to_owned(),
            None => upper,
        }
    };
    let wanted = bare(wanted);
    capabilities.iter().any(|cap| bare(cap) == wanted)
}

/// Errors from parsing, compiling and installing seccomp profiles.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("seccomp profile has no defaultAction")]
    NoDefaultAction,
    #[error("seccomp profile sets both architectures and archMap")]
    ArchitecturesAndArchMap,
    #[error("{at}: unknown architecture {arch:?}")]
    UnknownArch { at: String, arch: String },
    #[error("{at}: unknown seccomp flag {flag:?}")]
    UnknownFlag { at: String, flag: String },
    #[error("{at}: unknown action {action:?}")]
    UnknownAction { at: String, action: String },
    #[error("{at}: unknown operator {op:?}")]
    UnknownOperator { at: String, op: String },
    #[error("{at}: sets both name and names")]
    NameAndNames { at: String },
    #[error("{at}: names no syscall")]
    NoSyscallName { at: String },
    #[error("{at}: minKernel {version:?} is not a kernel version")]
    BadMinKernel { at: String, version: String },
    #[error("read the running kernel's version from {path}")]
    KernelVersion {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: SCMP_ACT_NOTIFY needs a seccomp agent listening, and crius runs none")]
    Notify { at: String },
    #[error("{at}: errnoRet is only for SCMP_ACT_ERRNO and SCMP_ACT_TRACE")]
    ErrnoNotAllowed { at: String },
    #[error("{at}: errnoRet {errno} is out of range (at most {max})")]
    ErrnoOutOfRange { at: String, errno: u32, max: u32 },
    #[error("{at}: argument index {index} is out of range (a syscall has 6 arguments, 0 to 5)")]
    ArgIndex { at: String, index: usize },
    #[error("flag {flag} is only meaningful with a seccomp agent, and crius runs none")]
    UnsupportedFlag { flag: String },
    #[error("seccomp filters are not supported on this architecture")]
    UnsupportedArch,
    #[error("{at}: build the BPF filter")]
    Build {
        at: String,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp program has {len} instructions, the kernel takes at most {max}")]
    TooLarge { len: usize, max: usize },
    #[error("load the seccomp filter")]
    Install {
        #[source]
        source: Errno,
    },
}
