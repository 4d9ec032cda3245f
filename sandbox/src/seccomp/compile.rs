//! An OCI `LinuxSeccomp` to one BPF program. The design and the semantics are in the module
//! comment of `seccomp/mod.rs`; the tests in `compile/tests.rs` pin each of them.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, sock_filter,
};

use super::syscalls::{NativeArch, X32_SYSCALL_BIT};
use super::{Program, SeccompError};

/// The kernel's limit on the length of one filter (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;
/// What SCMP_ACT_ERRNO and SCMP_ACT_TRACE mean without errnoRet (OCI runtime spec).
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;
/// The kernel clamps a larger errno to MAX_ERRNO; a profile asking for one is malformed.
const MAX_ERRNO: u32 = 4095;
/// A TRACE action hands the tracer the 16 bits of SECCOMP_RET_DATA.
const MAX_TRACE_DATA: u32 = 0xffff;

/// BPF_LD | BPF_W | BPF_ABS (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JA.
const JMP_JA: u16 = 0x05;
/// BPF_JMP | BPF_JEQ | BPF_K.
const JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JGE | BPF_K.
const JMP_JGE_K: u16 = 0x35;
/// BPF_RET | BPF_K.
const RET_K: u16 = 0x06;
/// Offsets of `nr` and `arch` in struct seccomp_data.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// Compiles `profile` to one BPF program for the native architecture. Syscall names this
/// architecture does not have are skipped; SCMP_ACT_NOTIFY, a misplaced or out-of-range
/// errnoRet and argument indexes past 5 are errors naming the entry.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let arch = NativeArch::current().ok_or(SeccompError::UnsupportedArch)?;
    compile_for(profile, arch)
}

pub(super) fn compile_for(
    profile: &LinuxSeccomp,
    arch: NativeArch,
) -> Result<Program, SeccompError> {
    let default = Action::new(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let flags = filter_flags(profile.flags().as_deref().unwrap_or_default())?;

    let mut allow = Group::new(Action::Allow);
    let mut others = Vec::new();
    for group in group_rules(profile, arch, default)? {
        if group.action == Action::Allow {
            allow = group;
        } else if !group.rules.is_empty() {
            others.push(group);
        }
    }
    // Stable: within one rank (two errno values) the action listed first stays first.
    others.sort_by_key(|group| group.action.rank());

    let mut bpf = abi_guard(arch);
    for group in others {
        bpf.extend(fall_through(group.into_bpf(arch, Action::Allow)?));
    }
    let last = if default == Action::Allow {
        // Nothing is left to allow (ALLOW rules were redundant). A filter without rules is the
        // arch check and `RET default`; its match action is never used.
        Group::new(Action::KillProcess).into_bpf(arch, default)?
    } else {
        allow.into_bpf(arch, default)?
    };
    bpf.extend(last);

    if bpf.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge {
            len: bpf.len(),
            max: MAX_INSTRUCTIONS,
        });
    }
    Ok(Program { bpf, flags })
}

/// A seccomp action with its data, in the kernel's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u32),
    Trace(u32),
    Log,
    Allow,
}

impl Action {
    fn new(
        action: LinuxSeccompAction,
        errno_ret: Option<u32>,
        at: &str,
    ) -> Result<Self, SeccompError> {
        let data = |max: u32| match errno_ret {
            None => Ok(DEFAULT_ERRNO),
            Some(errno) if errno <= max => Ok(errno),
            Some(errno) => Err(SeccompError::ErrnoOutOfRange {
                at: at.to_owned(),
                errno,
                max,
            }),
        };
        let action = match action {
            LinuxSeccompAction::ScmpActErrno => return Ok(Action::Errno(data(MAX_ERRNO)?)),
            LinuxSeccompAction::ScmpActTrace => return Ok(Action::Trace(data(MAX_TRACE_DATA)?)),
            LinuxSeccompAction::ScmpActNotify => {
                return Err(SeccompError::Notify { at: at.to_owned() });
            }
            // libseccomp's SCMP_ACT_KILL is SECCOMP_RET_KILL_THREAD.
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Action::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
        };
        match errno_ret {
            Some(_) => Err(SeccompError::ErrnoNotAllowed { at: at.to_owned() }),
            None => Ok(action),
        }
    }

    /// The kernel's precedence when several filters answer one call, most restrictive first
    /// (seccomp(2), "Filter return values"); we give overlapping rules the same order.
    fn rank(self) -> u8 {
        match self {
            Action::KillProcess => 0,
            Action::KillThread => 1,
            Action::Trap => 2,
            Action::Errno(_) => 3,
            Action::Trace(_) => 4,
            Action::Log => 5,
            Action::Allow => 6,
        }
    }

    fn seccompiler(self) -> SeccompAction {
        match self {
            Action::KillProcess => SeccompAction::KillProcess,
            Action::KillThread => SeccompAction::KillThread,
            Action::Trap => SeccompAction::Trap,
            Action::Errno(errno) => SeccompAction::Errno(errno),
            Action::Trace(data) => SeccompAction::Trace(data),
            Action::Log => SeccompAction::Log,
            Action::Allow => SeccompAction::Allow,
        }
    }
}

/// The rules of one action, by syscall number. `None` matches the syscall whatever its args.
struct Group {
    action: Action,
    rules: BTreeMap<i64, Option<Vec<SeccompRule>>>,
}

impl Group {
    fn new(action: Action) -> Self {
        Group {
            action,
            rules: BTreeMap::new(),
        }
    }

    /// Adds "`nr` when all of `conditions` hold" (ORed with what is there).
    fn add(
        &mut self,
        nr: i64,
        conditions: &[SeccompCondition],
        at: &str,
    ) -> Result<(), SeccompError> {
        if conditions.is_empty() {
            self.rules.insert(nr, None);
            return Ok(());
        }
        // Already unconditional: a narrower rule adds nothing.
        if let Some(rules) = self.rules.entry(nr).or_insert_with(|| Some(Vec::new())) {
            let rule =
                SeccompRule::new(conditions.to_vec()).map_err(|source| SeccompError::Build {
                    at: at.to_owned(),
                    source,
                })?;
            rules.push(rule);
        }
        Ok(())
    }

    /// This group as a seccompiler filter: its action on match, `on_mismatch` otherwise.
    fn into_bpf(self, arch: NativeArch, on_mismatch: Action) -> Result<BpfProgram, SeccompError> {
        let at = format!("rules of action {:?}", self.action);
        // seccompiler's empty rule list matches on the syscall number alone.
        let rules = self
            .rules
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect();
        let build = |source| SeccompError::Build {
            at: at.clone(),
            source,
        };
        let filter = SeccompFilter::new(
            rules,
            on_mismatch.seccompiler(),
            self.action.seccompiler(),
            arch.target(),
        )
        .map_err(build)?;
        BpfProgram::try_from(filter).map_err(build)
    }
}

/// The profile's rules, grouped by action in the order each action first appears. Rules whose
/// action is the default one are dropped: the default already does what they say.
fn group_rules(
    profile: &LinuxSeccomp,
    arch: NativeArch,
    default: Action,
) -> Result<Vec<Group>, SeccompError> {
    let mut groups: Vec<Group> = Vec::new();
    let mut skipped = Vec::new();
    for (index, syscall) in profile.syscalls().iter().flatten().enumerate() {
        let at = entry_name(index, syscall);
        let action = Action::new(syscall.action(), syscall.errno_ret(), &at)?;
        let conditions = syscall
            .args()
            .iter()
            .flatten()
            .map(|arg| condition(arg, &at))
            .collect::<Result<Vec<_>, _>>()?;
        if syscall.names().iter().any(String::is_empty) {
            return Err(SeccompError::NoSyscallName { at });
        }
        if action == default {
            continue;
        }
        let group = group_for(&mut groups, action);
        for name in syscall.names() {
            match arch.number(name) {
                Some(nr) => group.add(nr, &conditions, &at)?,
                None => skipped.push(name.as_str()),
            }
        }
    }
    if !skipped.is_empty() {
        tracing::debug!(
            ?skipped,
            "seccomp rules for syscalls this architecture does not have were skipped"
        );
    }
    Ok(groups)
}

fn group_for(groups: &mut Vec<Group>, action: Action) -> &mut Group {
    let index = match groups.iter().position(|group| group.action == action) {
        Some(index) => index,
        None => {
            groups.push(Group::new(action));
            groups.len() - 1
        }
    };
    &mut groups[index]
}

/// "syscalls[3] (mkdir)", "syscalls[0] (accept and 300 more)": where an error is.
fn entry_name(index: usize, syscall: &LinuxSyscall) -> String {
    match syscall.names().as_slice() {
        [] => format!("syscalls[{index}]"),
        [name] => format!("syscalls[{index}] ({name})"),
        [name, rest @ ..] => format!("syscalls[{index}] ({name} and {} more)", rest.len()),
    }
}

/// One OCI argument comparison, always on the full 64-bit argument.
fn condition(arg: &LinuxSeccompArg, at: &str) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|index| *index <= 5)
        .ok_or_else(|| SeccompError::ArgIndex {
            at: at.to_owned(),
            index: arg.index(),
        })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // `value` is the mask and `valueTwo` the datum: (arg & value) == (valueTwo & value).
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|source| {
        SeccompError::Build {
            at: at.to_owned(),
            source,
        }
    })
}

fn filter_flags(flags: &[LinuxSeccompFilterFlag]) -> Result<libc::c_ulong, SeccompError> {
    let mut bits = 0;
    for flag in flags {
        bits |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The filter is loaded by a single-threaded child just before execve: no thread to sync.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::UnsupportedFlag {
                    flag: flag.to_string(),
                });
            }
        };
    }
    Ok(bits)
}

/// On x86_64, x32 calls carry AUDIT_ARCH_X86_64 with X32_SYSCALL_BIT set in the number: they
/// pass seccompiler's arch check and match no rule (those use native numbers), so a profile
/// that allows by default would allow every x32 call. Kill them, as the arch check kills every
/// other foreign ABI. aarch64 has no such second ABI under its own audit arch.
fn abi_guard(arch: NativeArch) -> BpfProgram {
    match arch {
        NativeArch::X86_64 => vec![
            stmt(LD_W_ABS, DATA_ARCH),
            // Another arch: the next filter's arch check deals with it.
            jump(JMP_JEQ_K, arch.audit(), 0, 3),
            stmt(LD_W_ABS, DATA_NR),
            jump(JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        ],
        NativeArch::Aarch64 => Vec::new(),
    }
}

/// Makes a filter go on into whatever follows it instead of allowing: every `RET ALLOW` becomes
/// a jump to the instruction just past its end. Only for filters whose match action is not
/// ALLOW, where `RET ALLOW` can only be the mismatch exit.
fn fall_through(mut bpf: BpfProgram) -> BpfProgram {
    let len = bpf.len();
    for (index, insn) in bpf.iter_mut().enumerate() {
        if insn.code == RET_K && insn.k == libc::SECCOMP_RET_ALLOW {
            // JA skips k instructions after itself: index + 1 + k == len. seccompiler keeps a
            // filter under 4096 instructions, so the distance fits.
            *insn = stmt(JMP_JA, (len - 1 - index) as u32);
        }
    }
    bpf
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

#[cfg(test)]
mod tests;
