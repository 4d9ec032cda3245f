//! Privileged tests: real seccomp filters in the kernel. They need root and fail loudly without it.
//!
//! Fork-per-test isolation: each test re-runs this test binary on its `child_*` half with
//! CRIUS_SECCOMP_CHILD set, so the filter is installed in a process of its own (on its test
//! thread, which also makes every call under test) and goes away with it. The `child_*` halves
//! are ignored in a plain run, so they are not counted as passes, and refuse to run without the
//! variable, so `--ignored` cannot load filters into a shared harness.

#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use crius_sandbox::seccomp;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use oci_spec::runtime::LinuxSeccomp;
use serde_json::json;

const CHILD: &str = "CRIUS_SECCOMP_CHILD";

/// What Docker and containerd grant a container by default: no CAP_SYS_ADMIN, no CAP_SYS_CHROOT.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests load seccomp filters and check that root's own CAP_SYS_ADMIN calls are \
         refused by them: run them as root"
    );
}

/// Runs the `child` test in a process of its own and returns how that process ended.
fn run_child(child: &str) -> (std::process::ExitStatus, String) {
    require_root();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            child,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// Runs the `child` test in a process of its own and fails with its output unless it passed.
fn isolated(child: &str) {
    let (status, output) = run_child(child);
    assert!(
        status.success() && output.contains("1 passed"),
        "{child} ({status}):\n{output}"
    );
}

/// In a child: sets no_new_privs and loads `profile` on this thread.
fn confine(profile: &LinuxSeccomp) {
    assert_eq!(
        std::env::var(CHILD).as_deref(),
        Ok("1"),
        "a child_* test loads a seccomp filter into its own process: run it through its parent test"
    );
    let program = seccomp::compile(profile).unwrap();
    println!("loading {} BPF instructions", program.instructions());
    nix::sys::prctl::set_no_new_privs().unwrap();
    seccomp::install(&program).unwrap();
}

fn oci(value: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(value).unwrap()
}

fn caps(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[test]
fn mkdir_denied_with_eperm_while_other_calls_work() {
    isolated("child_mkdir_denied_with_eperm_while_other_calls_work");
}

#[test]
#[ignore = "the child half of mkdir_denied_with_eperm_while_other_calls_work"]
fn child_mkdir_denied_with_eperm_while_other_calls_work() {
    let dir = tempfile::tempdir().unwrap();
    // A Docker-format Localhost profile, through the same parser the agent uses.
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
    });
    let profile = seccomp::parse_profile(&serde_json::to_vec(&profile).unwrap(), &[]).unwrap();
    confine(&profile);

    let err = fs::create_dir(dir.path().join("sub")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, b"still writable").unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"still writable");
    fs::remove_file(&file).unwrap();
}

#[test]
fn errno_ret_is_what_the_call_returns() {
    isolated("child_errno_ret_is_what_the_call_returns");
}

#[test]
#[ignore = "the child half of errno_ret_is_what_the_call_returns"]
fn child_errno_ret_is_what_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    confine(&oci(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS},
            {"names": ["symlink", "symlinkat"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EROFS},
        ],
    })));

    let err = fs::create_dir(dir.path().join("sub")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSYS), "{err}");
    let err = std::os::unix::fs::symlink("/", dir.path().join("link")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
}

#[test]
fn an_argument_filter_refuses_only_matching_calls() {
    isolated("child_an_argument_filter_refuses_only_matching_calls");
}

#[test]
#[ignore = "the child half of an_argument_filter_refuses_only_matching_calls"]
fn child_an_argument_filter_refuses_only_matching_calls() {
    confine(&oci(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EAFNOSUPPORT,
            "args": [{"index": 0, "value": libc::AF_INET, "op": "SCMP_CMP_EQ"}]}],
    })));

    let err = TcpListener::bind("127.0.0.1:0").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EAFNOSUPPORT), "{err}");
    UnixDatagram::unbound().unwrap();
}

#[test]
fn arguments_are_compared_on_all_64_bits() {
    isolated("child_arguments_are_compared_on_all_64_bits");
}

#[test]
#[ignore = "the child half of arguments_are_compared_on_all_64_bits"]
fn child_arguments_are_compared_on_all_64_bits() {
    let mut file = tempfile::tempfile().unwrap();
    // lseek's offset is a full 64-bit register: refuse offsets past 4 GiB - 1.
    confine(&oci(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["lseek"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 1, "value": u32::MAX, "op": "SCMP_CMP_GT"}]}],
    })));

    assert_eq!(
        file.seek(SeekFrom::Start(u64::from(u32::MAX))).unwrap(),
        u64::from(u32::MAX)
    );
    assert_eq!(file.seek(SeekFrom::Start(0)).unwrap(), 0);
    // The low half of 1 << 32 is 0: a 32-bit comparison would let this through.
    let err = file.seek(SeekFrom::Start(1 << 32)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
}

#[test]
fn kill_process_kills_the_process_with_sigsys() {
    let (status, output) = run_child("child_kill_process_kills_the_process_with_sigsys");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}:\n{output}");
    assert!(output.contains("about to mkdir"), "{output}");
}

#[test]
#[ignore = "the child half of kill_process_kills_the_process_with_sigsys; it dies"]
fn child_kill_process_kills_the_process_with_sigsys() {
    let dir = tempfile::tempdir().unwrap();
    confine(&oci(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}],
    })));
    println!("about to mkdir");
    std::io::stdout().flush().unwrap();
    let result = fs::create_dir(dir.path().join("sub"));
    panic!("mkdir returned {result:?} instead of killing the process");
}

#[test]
fn runtime_default_without_cap_sys_admin_refuses_unshare_and_allows_ordinary_work() {
    isolated("child_runtime_default_without_cap_sys_admin");
}

#[test]
#[ignore = "the child half of runtime_default_without_cap_sys_admin_refuses_unshare_and_allows_ordinary_work"]
fn child_runtime_default_without_cap_sys_admin() {
    let dir = tempfile::tempdir().unwrap();
    confine(&seccomp::runtime_default(&caps(DEFAULT_CAPS)));

    // We are root with CAP_SYS_ADMIN: only the filter can refuse these.
    assert_eq!(
        nix::sched::unshare(CloneFlags::CLONE_NEWNS),
        Err(Errno::EPERM)
    );
    assert_eq!(nix::unistd::chroot("/"), Err(Errno::EPERM));

    let file = dir.path().join("file");
    let mut out = File::create(&file).unwrap();
    out.write_all(b"ordinary work").unwrap();
    out.sync_all().unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"ordinary work");
    // glibc tries clone3 first and falls back to clone only on ENOSYS: threads and child
    // processes work only if clone3 gets ENOSYS and clone without namespace flags is allowed.
    assert_eq!(std::thread::spawn(|| 6 * 7).join().unwrap(), 42);
    let status = Command::new("/bin/sh")
        .args(["-c", "echo child; exit 7"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    // What the container runs inherits the filter across execve.
    let output = Command::new("unshare")
        .args(["--mount", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
}

#[test]
fn runtime_default_with_cap_sys_admin_lets_unshare_through() {
    isolated("child_runtime_default_with_cap_sys_admin");
}

#[test]
#[ignore = "the child half of runtime_default_with_cap_sys_admin_lets_unshare_through"]
fn child_runtime_default_with_cap_sys_admin() {
    let mut capabilities = caps(DEFAULT_CAPS);
    capabilities.push("CAP_SYS_ADMIN".to_owned());
    confine(&seccomp::runtime_default(&capabilities));

    nix::sched::unshare(CloneFlags::CLONE_NEWNS).unwrap();
    assert_eq!(std::thread::spawn(|| 6 * 7).join().unwrap(), 42);
}
