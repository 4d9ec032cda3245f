//! The semantics of compiled profiles, pinned by running the BPF in `bpf_vm`.

use oci_spec::runtime::{Arch, LinuxSeccompAction as A, LinuxSeccompOperator as Op};
use serde_json::json;

use super::super::bpf_vm::{self, Verdict};
use super::*;

/// A LinuxSeccomp from its OCI JSON form.
fn profile(value: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(value).unwrap()
}

fn native(profile: &LinuxSeccomp) -> (Program, NativeArch) {
    (
        compile_for(profile, NativeArch::X86_64).unwrap(),
        NativeArch::X86_64,
    )
}

/// What the program does with `name(args...)` on x86_64.
fn call(profile: &LinuxSeccomp, name: &str, args: &[u64]) -> Verdict {
    let (program, arch) = native(profile);
    bpf_vm::call(&program.bpf, arch, name, args)
}

fn deny(names: &[&str], errno: Option<u32>) -> serde_json::Value {
    json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno})
}

#[test]
fn an_empty_allow_profile_allows_everything_native() {
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
    let (program, _) = native(&p);
    assert_eq!(
        bpf_vm::call(&program.bpf, NativeArch::X86_64, "mkdir", &[]),
        Verdict::Allow
    );
    assert_eq!(
        bpf_vm::call(&program.bpf, NativeArch::X86_64, "reboot", &[]),
        Verdict::Allow
    );
}

#[test]
fn foreign_abis_are_killed_even_when_the_profile_allows_by_default() {
    let p =
        profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [deny(&["mkdir"], None)]}));
    let (program, _) = native(&p);
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
    assert_eq!(
        bpf_vm::run(&program.bpf, AUDIT_ARCH_I386, 39, [0; 6]),
        Verdict::KillProcess
    );
    // x32 mkdir: native arch, number with the x32 bit. Without the guard it would be allowed.
    let x32_mkdir = X32_SYSCALL_BIT | 83;
    assert_eq!(
        bpf_vm::run(&program.bpf, NativeArch::X86_64.audit(), x32_mkdir, [0; 6]),
        Verdict::KillProcess
    );
    assert_eq!(
        bpf_vm::run(&program.bpf, NativeArch::X86_64.audit(), 83, [0; 6]),
        Verdict::Errno(1)
    );

    let aarch64 = compile_for(&p, NativeArch::Aarch64).unwrap();
    const AUDIT_ARCH_ARM: u32 = 40 | 0x4000_0000;
    assert_eq!(
        bpf_vm::run(&aarch64.bpf, AUDIT_ARCH_ARM, 39, [0; 6]),
        Verdict::KillProcess
    );
    assert_eq!(
        bpf_vm::call(&aarch64.bpf, NativeArch::Aarch64, "mkdirat", &[]),
        Verdict::Allow
    );
    assert_eq!(
        bpf_vm::run(&aarch64.bpf, NativeArch::Aarch64.audit(), 34, [0; 6]),
        Verdict::Allow
    );
}

#[test]
fn an_allow_list_denies_the_rest_with_the_default_errno() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 13,
        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}],
    }));
    assert_eq!(call(&p, "read", &[]), Verdict::Allow);
    assert_eq!(call(&p, "write", &[]), Verdict::Allow);
    assert_eq!(call(&p, "openat", &[]), Verdict::Errno(13));
    let without_errno = profile(json!({"defaultAction": "SCMP_ACT_ERRNO"}));
    assert_eq!(call(&without_errno, "read", &[]), Verdict::Errno(1));
}

#[test]
fn errno_ret_is_honoured_and_defaults_to_eperm() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [deny(&["mkdir"], Some(38)), deny(&["rmdir"], None)],
    }));
    assert_eq!(call(&p, "mkdir", &[]), Verdict::Errno(38));
    assert_eq!(call(&p, "rmdir", &[]), Verdict::Errno(1));
    assert_eq!(call(&p, "mkdirat", &[]), Verdict::Allow);
}

#[test]
fn every_action_reaches_the_kernel_as_libseccomp_spells_it() {
    let rule = |name: &str, action: &str| json!({"names": [name], "action": action});
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            rule("mkdir", "SCMP_ACT_KILL"),
            rule("rmdir", "SCMP_ACT_KILL_THREAD"),
            rule("unlink", "SCMP_ACT_KILL_PROCESS"),
            rule("link", "SCMP_ACT_TRAP"),
            rule("chmod", "SCMP_ACT_LOG"),
            rule("chown", "SCMP_ACT_TRACE"),
            {"names": ["chdir"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
        ],
    }));
    assert_eq!(call(&p, "mkdir", &[]), Verdict::KillThread);
    assert_eq!(call(&p, "rmdir", &[]), Verdict::KillThread);
    assert_eq!(call(&p, "unlink", &[]), Verdict::KillProcess);
    assert_eq!(call(&p, "link", &[]), Verdict::Trap);
    assert_eq!(call(&p, "chmod", &[]), Verdict::Log);
    assert_eq!(call(&p, "chown", &[]), Verdict::Trace(1));
    assert_eq!(call(&p, "chdir", &[]), Verdict::Trace(7));
    assert_eq!(call(&p, "read", &[]), Verdict::Allow);
}

#[test]
fn rules_for_one_syscall_are_ored_and_args_of_one_rule_anded() {
    let eq = |index: u32, value: u64| json!({"index": index, "value": value, "op": "SCMP_CMP_EQ"});
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [eq(0, 0)]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [eq(0, 8)]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [eq(0, 1), eq(1, 2)]},
        ],
    }));
    assert_eq!(call(&p, "personality", &[0]), Verdict::Allow);
    assert_eq!(call(&p, "personality", &[8]), Verdict::Allow);
    assert_eq!(call(&p, "personality", &[5]), Verdict::Errno(1));
    assert_eq!(call(&p, "socket", &[1, 2]), Verdict::Allow);
    assert_eq!(call(&p, "socket", &[1, 1]), Verdict::Errno(1));
    assert_eq!(call(&p, "socket", &[2, 2]), Verdict::Errno(1));
}

#[test]
fn a_rule_without_args_matches_whatever_the_args_and_absorbs_narrower_ones() {
    let narrow = json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]});
    let wide = json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW"});
    for syscalls in [json!([narrow, wide]), json!([wide, narrow])] {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": syscalls}));
        assert_eq!(call(&p, "personality", &[5]), Verdict::Allow);
        assert_eq!(call(&p, "personality", &[0]), Verdict::Allow);
    }
}

#[test]
fn argument_comparisons_use_all_64_bits() {
    const FOUR_GIB: u64 = 1 << 32;
    let cases = [
        (
            "SCMP_CMP_EQ",
            FOUR_GIB,
            [(0, false), (FOUR_GIB, true), (FOUR_GIB + 1, false)],
        ),
        (
            "SCMP_CMP_NE",
            FOUR_GIB,
            [(0, true), (FOUR_GIB, false), (FOUR_GIB + 1, true)],
        ),
        (
            "SCMP_CMP_GT",
            u64::from(u32::MAX),
            [
                (u64::from(u32::MAX), false),
                (FOUR_GIB, true),
                (u64::MAX, true),
            ],
        ),
        (
            "SCMP_CMP_GE",
            FOUR_GIB,
            [
                (u64::from(u32::MAX), false),
                (FOUR_GIB, true),
                (FOUR_GIB + 7, true),
            ],
        ),
        (
            "SCMP_CMP_LT",
            FOUR_GIB,
            [
                (u64::from(u32::MAX), true),
                (FOUR_GIB, false),
                (FOUR_GIB + 1, false),
            ],
        ),
        (
            "SCMP_CMP_LE",
            FOUR_GIB,
            [(3, true), (FOUR_GIB, true), (FOUR_GIB + 1, false)],
        ),
    ];
    for (op, value, expectations) in cases {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["lseek"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 1, "value": value, "op": op}]}],
        }));
        for (offset, denied) in expectations {
            let expected = if denied {
                Verdict::Errno(1)
            } else {
                Verdict::Allow
            };
            assert_eq!(
                call(&p, "lseek", &[3, offset, 0]),
                expected,
                "{op} {value:#x} with {offset:#x}"
            );
        }
    }
}

#[test]
fn masked_eq_takes_the_mask_from_value_and_the_datum_from_value_two() {
    let ns_flags: u64 = 0x7e02_0000;
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": ns_flags, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}],
    }));
    let thread_flags = 0x003d_0f00;
    assert_eq!(call(&p, "clone", &[thread_flags]), Verdict::Allow);
    assert_eq!(
        call(
            &p,
            "clone",
            &[thread_flags | u64::from(libc::CLONE_NEWNS as u32)]
        ),
        Verdict::Errno(1)
    );
    // A flag in the high word is outside the mask, so it does not matter.
    assert_eq!(call(&p, "clone", &[thread_flags | 1 << 40]), Verdict::Allow);
    let high = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["lseek"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 2, "value": 0xff_0000_0000u64, "valueTwo": 0x12_0000_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]}],
    }));
    assert_eq!(
        call(&high, "lseek", &[0, 0, 0x12_0000_0005]),
        Verdict::Errno(1)
    );
    assert_eq!(
        call(&high, "lseek", &[0, 0, 0x13_0000_0000]),
        Verdict::Allow
    );
}

#[test]
fn overlapping_rules_with_different_actions_give_the_most_restrictive() {
    let mode_777 = json!([{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]);
    for kill_first in [true, false] {
        let errno = deny(&["mkdir"], Some(38));
        let kill = json!({"names": ["mkdir"], "action": "SCMP_ACT_KILL_PROCESS", "args": mode_777});
        let syscalls = if kill_first {
            json!([kill, errno])
        } else {
            json!([errno, kill])
        };
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}));
        assert_eq!(call(&p, "mkdir", &[0, 0o777]), Verdict::KillProcess);
        assert_eq!(call(&p, "mkdir", &[0, 0o755]), Verdict::Errno(38));
    }
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["read"], "action": "SCMP_ACT_LOG", "args": [{"index": 0, "value": 5, "op": "SCMP_CMP_EQ"}]},
        ],
    }));
    assert_eq!(call(&p, "read", &[5]), Verdict::Log);
    assert_eq!(call(&p, "read", &[3]), Verdict::Allow);
}

#[test]
fn between_two_errno_values_the_first_listed_wins() {
    let eacces = deny(&["mkdir"], Some(13));
    let enosys = deny(&["mkdir"], Some(38));
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [enosys, eacces]}));
    assert_eq!(call(&p, "mkdir", &[]), Verdict::Errno(38));
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [eacces, enosys]}));
    assert_eq!(call(&p, "mkdir", &[]), Verdict::Errno(13));
}

#[test]
fn a_rule_with_the_default_action_is_dropped() {
    // An errno rule equal to the default adds nothing, so it cannot carve a hole in the
    // ALLOW rule for the same syscall either (runc drops it the same way).
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]},
        ],
    }));
    assert_eq!(call(&p, "socket", &[40]), Verdict::Allow);
    // A different errno is a different action and is kept.
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW"}, deny(&["socket"], Some(97))],
    }));
    assert_eq!(call(&p, "socket", &[40]), Verdict::Errno(97));
}

#[test]
fn unknown_syscall_names_are_skipped() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [deny(&["no_such_syscall", "chown32", "mkdir"], None), deny(&["_llseek"], Some(5))],
    }));
    assert_eq!(call(&p, "mkdir", &[]), Verdict::Errno(1));
    assert_eq!(call(&p, "lseek", &[]), Verdict::Allow);
}

#[test]
fn notify_is_refused_naming_where() {
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["openat"], "action": "SCMP_ACT_NOTIFY"}]}));
    let err = compile_for(&p, NativeArch::X86_64).unwrap_err();
    assert!(matches!(err, SeccompError::Notify { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "syscalls[0] (openat): SCMP_ACT_NOTIFY needs a seccomp agent listening, and crius runs none"
    );
    let p = profile(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    let err = compile_for(&p, NativeArch::X86_64).unwrap_err();
    assert!(err.to_string().starts_with("defaultAction: "), "{err}");
}

#[test]
fn malformed_rules_are_errors_naming_the_entry() {
    let compile_err =
        |value: serde_json::Value| compile_for(&profile(value), NativeArch::X86_64).unwrap_err();

    let err = compile_err(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["socket", "bind"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]},
    ]}));
    assert!(
        matches!(err, SeccompError::ArgIndex { index: 6, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("syscalls[1] (socket and 1 more): "),
        "{err}"
    );

    let err = compile_err(json!({"defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}));
    assert!(
        matches!(err, SeccompError::ErrnoNotAllowed { .. }),
        "{err:?}"
    );

    let err = compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}));
    assert!(
        matches!(err, SeccompError::ErrnoNotAllowed { .. }),
        "{err:?}"
    );

    let err = compile_err(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [deny(&["mkdir"], Some(5000))]}),
    );
    assert!(
        matches!(
            err,
            SeccompError::ErrnoOutOfRange {
                errno: 5000,
                max: 4095,
                ..
            }
        ),
        "{err:?}"
    );

    let err =
        compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [deny(&[""], None)]}));
    assert!(matches!(err, SeccompError::NoSyscallName { .. }), "{err:?}");
}

#[test]
fn flags_are_passed_to_seccomp_and_a_listener_flag_is_refused() {
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"]}));
    let (program, _) = native(&p);
    assert_eq!(
        program.flags,
        libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
    let p = profile(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}),
    );
    let err = compile_for(&p, NativeArch::X86_64).unwrap_err();
    assert!(
        matches!(err, SeccompError::UnsupportedFlag { .. }),
        "{err:?}"
    );
}

#[test]
fn a_program_past_the_kernel_limit_is_refused() {
    // Each group stays under seccompiler's per-filter limit; together they do not.
    let rules = |action: &str, base: u64| -> Vec<serde_json::Value> {
        (0..400)
            .map(|i| {
                json!({"names": ["lseek"], "action": action,
                "args": [{"index": 1, "value": base + i, "op": "SCMP_CMP_EQ"}]})
            })
            .collect()
    };
    let mut syscalls = rules("SCMP_ACT_ERRNO", 0);
    syscalls.extend(rules("SCMP_ACT_TRAP", 1000));
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}));
    let err = compile_for(&p, NativeArch::X86_64).unwrap_err();
    assert!(
        matches!(err, SeccompError::TooLarge { max: 4096, .. }),
        "{err:?}"
    );
}

#[test]
fn programs_are_well_formed_classic_bpf() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read", "write", "mmap"], "action": "SCMP_ACT_ALLOW"},
            deny(&["clone3"], Some(38)),
            {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
        ],
    }));
    for arch in [NativeArch::X86_64, NativeArch::Aarch64] {
        bpf_vm::check(&compile_for(&p, arch).unwrap().bpf);
    }
}

#[test]
fn typed_profiles_compile_like_their_json() {
    let arg = super::super::oci_arg(0, Op::ScmpCmpEq, 2, None);
    let mut syscall = LinuxSyscall::default();
    syscall
        .set_names(vec!["socket".to_owned()])
        .set_action(A::ScmpActErrno)
        .set_args(Some(vec![arg]));
    let mut p = LinuxSeccomp::default();
    p.set_default_action(A::ScmpActAllow)
        .set_architectures(Some(vec![Arch::ScmpArchX86_64]))
        .set_syscalls(Some(vec![syscall]));
    assert_eq!(call(&p, "socket", &[2]), Verdict::Errno(1));
    assert_eq!(call(&p, "socket", &[1]), Verdict::Allow);
}
