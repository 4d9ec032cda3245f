//! A classic-BPF interpreter for the instructions seccomp programs use, so that unit tests can
//! ask what a compiled profile does with a call without loading it into the kernel.

use seccompiler::sock_filter;

use super::syscalls::NativeArch;

/// What the kernel would do with a call (SECCOMP_RET_* with its data).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    KillProcess,
    KillThread,
    Trap,
    Errno(u32),
    Trace(u32),
    Log,
    Allow,
}

/// Runs `bpf` on `name(args...)` made through `arch`'s native ABI.
pub(super) fn call(bpf: &[sock_filter], arch: NativeArch, name: &str, args: &[u64]) -> Verdict {
    let nr = arch
        .number(name)
        .unwrap_or_else(|| panic!("{name} is not a syscall on {arch:?}"));
    let mut all = [0; 6];
    all[..args.len()].copy_from_slice(args);
    run(bpf, arch.audit(), u32::try_from(nr).unwrap(), all)
}

/// Runs `bpf` on one `struct seccomp_data`.
pub(super) fn run(bpf: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> Verdict {
    let load = |offset: u32| -> u32 {
        match offset {
            0 => nr,
            4 => arch,
            8 | 12 => 0, // instruction_pointer
            16..=63 if offset.is_multiple_of(4) => {
                let arg = args[(offset as usize - 16) / 8];
                if offset.is_multiple_of(8) {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("load from seccomp_data offset {offset}"),
        }
    };
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let insn = &bpf[pc];
        pc += 1;
        let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match insn.code {
            0x20 => acc = load(insn.k),              // LD W ABS
            0x54 => acc &= insn.k,                   // ALU AND K
            0x05 => pc += insn.k as usize,           // JA
            0x15 => pc += branch(acc == insn.k),     // JEQ K
            0x25 => pc += branch(acc > insn.k),      // JGT K
            0x35 => pc += branch(acc >= insn.k),     // JGE K
            0x45 => pc += branch(acc & insn.k != 0), // JSET K
            0x06 => return verdict(insn.k),          // RET K
            code => panic!("instruction {code:#x} at {}", pc - 1),
        }
    }
}

fn verdict(ret: u32) -> Verdict {
    let data = ret & libc::SECCOMP_RET_DATA;
    match ret & 0xffff_0000 {
        libc::SECCOMP_RET_KILL_PROCESS => Verdict::KillProcess,
        libc::SECCOMP_RET_KILL_THREAD => Verdict::KillThread,
        libc::SECCOMP_RET_TRAP => Verdict::Trap,
        libc::SECCOMP_RET_ERRNO => Verdict::Errno(data),
        libc::SECCOMP_RET_TRACE => Verdict::Trace(data),
        libc::SECCOMP_RET_LOG => Verdict::Log,
        libc::SECCOMP_RET_ALLOW => Verdict::Allow,
        other => panic!("return value {other:#x}"),
    }
}

/// What the kernel's checker insists on: known opcodes, every jump inside the program, aligned
/// loads inside seccomp_data, and a RET at the end.
pub(super) fn check(bpf: &[sock_filter]) {
    assert!(!bpf.is_empty() && bpf.len() <= 4096, "length {}", bpf.len());
    assert_eq!(
        bpf[bpf.len() - 1].code,
        0x06,
        "last instruction is not RET K"
    );
    for (pc, insn) in bpf.iter().enumerate() {
        let lands =
            |offset: usize| assert!(pc + 1 + offset < bpf.len(), "jump at {pc} lands outside");
        match insn.code {
            0x20 => assert!(
                insn.k % 4 == 0 && insn.k < 64,
                "load at {pc} from {}",
                insn.k
            ),
            0x54 | 0x06 => {}
            0x05 => lands(insn.k as usize),
            0x15 | 0x25 | 0x35 | 0x45 => {
                lands(usize::from(insn.jt));
                lands(usize::from(insn.jf));
            }
            code => panic!("instruction {code:#x} at {pc}"),
        }
    }
}
