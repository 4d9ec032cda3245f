//! Privileged tests: real setgroups/setresuid/capset in a child process. They need root and
//! fail loudly without it.
//!
//! Fork-per-test: `identity::apply` changes the calling process for good, so each test runs
//! its body in a fresh copy of this test binary (`<test name> --exact` with `CHILD_ENV` set
//! to the test's name). The child applies the identity and prints the lines of
//! /proc/thread-self/status the parent asserts on (thread-self, not self: capabilities and
//! prctl state are per thread, and libtest runs the test on a thread of its own).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Command;

use crius_sandbox::identity::{self, IdentityError};
use oci_spec::runtime::{LinuxCapabilities, User};
use serde_json::json;

const CHILD_ENV: &str = "CRIUS_IDENTITY_CHILD";
const STATUS_KEYS: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Umask",
];

/// containerd's default capability set: CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER,
/// CAP_MKNOD, CAP_NET_RAW, CAP_SETGID, CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP,
/// CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE.
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
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// Bits 0 1 3 4 5 6 7 8 10 13 18 27 29 31, as /proc prints them (Docker's well-known default).
const DEFAULT_MASK: &str = "00000000a80425fb";
const NO_CAPS: &str = "0000000000000000";

type Status = HashMap<String, String>;

/// Runs `child` in a fresh copy of this binary (as the test `name`) and returns what it saw,
/// or, in that copy, runs `child` and reports.
fn isolated(name: &str, child: impl FnOnce() -> Result<(), IdentityError>) -> Option<Status> {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        let result = child();
        // libtest has printed "test <name> ... " without a newline: start our lines afresh.
        println!();
        match result {
            Ok(()) => report_status(),
            Err(e) => println!("@error {}", error_chain(&e)),
        }
        println!("@done {name}");
        return None;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "identity_real tests switch uid, groups and capabilities: run them as root \
         (euid is {})",
        nix::unistd::geteuid()
    );
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {name} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Guards against a filter that matched nothing: libtest would exit 0 without running.
    assert!(
        stdout.lines().any(|l| l == format!("@done {name}")),
        "child {name} did not run:\n{stdout}"
    );
    if let Some(err) = stdout.lines().find_map(|l| l.strip_prefix("@error ")) {
        panic!("identity::apply failed in child {name}: {err}");
    }
    let status = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@status "))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    Some(status)
}

fn report_status() {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    for line in status.lines() {
        if let Some((key, _)) = line.split_once(':')
            && STATUS_KEYS.contains(&key)
        {
            println!("@status {line}");
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn user(value: serde_json::Value) -> User {
    serde_json::from_value(value).unwrap()
}

fn caps_all(names: &[&str]) -> LinuxCapabilities {
    serde_json::from_value(json!({
        "bounding": names,
        "effective": names,
        "permitted": names,
        "inheritable": names,
        "ambient": [],
    }))
    .unwrap()
}

fn field<'a>(status: &'a Status, key: &str) -> &'a str {
    status
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {status:?}"))
}

fn assert_caps(status: &Status, eff_prm_bnd: &str) {
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(status, key), eff_prm_bnd, "{key} in {status:?}");
    }
    for key in ["CapInh", "CapAmb"] {
        assert_eq!(field(status, key), NO_CAPS, "{key} in {status:?}");
    }
}

fn ids(status: &Status, key: &str) -> Vec<String> {
    field(status, key)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn user_and_groups() {
    let Some(st) = isolated("user_and_groups", || {
        let u = user(json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}));
        identity::apply(&u, None, false)
    }) else {
        return;
    };
    assert_eq!(ids(&st, "Uid"), ["1000"; 4]);
    assert_eq!(ids(&st, "Gid"), ["1000"; 4]);
    let mut groups = ids(&st, "Groups");
    groups.sort();
    assert_eq!(groups, ["10", "1000", "20"]);
    assert_caps(&st, NO_CAPS);
    assert_eq!(field(&st, "NoNewPrivs"), "0");
}

#[test]
fn inherited_groups_are_replaced() {
    let Some(st) = isolated("inherited_groups_are_replaced", || {
        // The runtime's own supplementary groups must not leak into the container.
        nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(4242)]).unwrap();
        identity::apply(&user(json!({"uid": 0, "gid": 5})), None, false)
    }) else {
        return;
    };
    assert_eq!(ids(&st, "Uid"), ["0"; 4]);
    assert_eq!(ids(&st, "Gid"), ["5"; 4]);
    assert_eq!(ids(&st, "Groups"), ["5"]);
}

#[test]
fn default_caps_as_root() {
    let Some(st) = isolated("default_caps_as_root", || {
        // Inheritable is listed too, as containerd did before CVE-2022-29162: it must end empty.
        let caps = caps_all(DEFAULT_CAPS);
        identity::apply(&user(json!({"uid": 0, "gid": 0})), Some(&caps), false)
    }) else {
        return;
    };
    assert_eq!(ids(&st, "Uid"), ["0"; 4]);
    assert_caps(&st, DEFAULT_MASK);
}

#[test]
fn default_caps_as_uid_1000() {
    let Some(st) = isolated("default_caps_as_uid_1000", || {
        let mut caps = caps_all(DEFAULT_CAPS);
        // Asked for, but cannot be raised with inheritable empty: ambient must end empty.
        caps.set_ambient(Some(
            [identity::parse_capability("CAP_NET_BIND_SERVICE").unwrap()].into(),
        ));
        let u = user(json!({"uid": 1000, "gid": 1000}));
        identity::apply(&u, Some(&caps), false)
    }) else {
        return;
    };
    assert_eq!(ids(&st, "Uid"), ["1000"; 4]);
    assert_eq!(ids(&st, "Gid"), ["1000"; 4]);
    assert_caps(&st, DEFAULT_MASK);
}

#[test]
fn no_caps_drops_everything() {
    let Some(st) = isolated("no_caps_drops_everything", || {
        identity::apply(&user(json!({"uid": 0, "gid": 0})), None, false)
    }) else {
        return;
    };
    assert_eq!(ids(&st, "Uid"), ["0"; 4]);
    assert_caps(&st, NO_CAPS);
}

#[test]
fn no_new_privs() {
    let Some(st) = isolated("no_new_privs", || {
        let caps = caps_all(DEFAULT_CAPS);
        identity::apply(&user(json!({"uid": 1000, "gid": 1000})), Some(&caps), true)
    }) else {
        return;
    };
    assert_eq!(field(&st, "NoNewPrivs"), "1");
    assert_caps(&st, DEFAULT_MASK);
}

#[test]
fn umask_from_spec() {
    let Some(st) = isolated("umask_from_spec", || {
        identity::apply_umask(&user(json!({"uid": 0, "gid": 0, "umask": 0o027})));
        Ok(())
    }) else {
        return;
    };
    assert_eq!(field(&st, "Umask"), "0027");
}

#[test]
fn umask_default() {
    let Some(st) = isolated("umask_default", || {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        identity::apply_umask(&user(json!({"uid": 0, "gid": 0})));
        Ok(())
    }) else {
        return;
    };
    assert_eq!(field(&st, "Umask"), "0022");
}

#[test]
fn unknown_capability_name_is_an_error_naming_it() {
    // Needs no privilege and changes nothing, so it runs in this process.
    let err = identity::parse_capability("CAP_BOGUS").unwrap_err();
    assert!(err.to_string().contains("CAP_BOGUS"), "{err}");

    // A spec naming it never reaches apply: oci-spec's typed capabilities refuse it, naming it.
    let err = serde_json::from_value::<LinuxCapabilities>(json!({"bounding": ["CAP_BOGUS"]}))
        .unwrap_err();
    assert!(err.to_string().contains("CAP_BOGUS"), "{err}");
}
