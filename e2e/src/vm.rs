//! The host side of the cgroup v2 VM tier (e2e/vm/README.md): boot a throwaway VM with `e2e/vm/vm-run.sh` and run
//! one ignored test of the calling test binary inside it. The VM sees the host's root read-only (so the binaries
//! under `target/` are at the same paths) with a fresh writable `/tmp`, where the harness puts its private
//! directories; the inner test finds `CRIUS_VM_INNER=1` in its environment.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Boots the VM and runs the ignored test `inner` of this test binary in it; panics (with the VM's output)
/// unless that test ran and passed there.
pub fn run_inner_test(inner: &str, timeout_secs: u32) {
    let cache = std::env::var_os("CRIUS_VM_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/crius-vm"), PathBuf::from);
    assert!(
        cache.join("current/vmlinux").is_file(),
        "the cgroup v2 VM tier needs the VM kernel in {}, which is not set up: run `make setup` \
         (or `sudo e2e/vm/vm-setup.sh`) once on this machine",
        cache.display()
    );
    let exe = std::env::current_exe().expect("cannot find this test binary");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/crius, as cargo lays out a workspace build.
    let crius = std::env::var_os("CRIUS_BIN").map_or_else(
        || {
            exe.parent()
                .and_then(Path::parent)
                .expect("test binary outside target/")
                .join("crius")
        },
        PathBuf::from,
    );
    assert!(
        crius.is_file() && crius.with_file_name("crius-pause").is_file(),
        "{} or crius-pause next to it is missing: run `cargo build --workspace` first (or set CRIUS_BIN)",
        crius.display()
    );
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/vm-run.sh");

    let started = Instant::now();
    let mut child = Command::new(&runner)
        .arg("--timing")
        .args(["--timeout", &timeout_secs.to_string()])
        .args(["--cwd", env!("CARGO_MANIFEST_DIR")])
        .args(["-e", "CRIUS_VM_INNER=1", "-e", "RUST_BACKTRACE=1"])
        // The harness' private dirs on the VM's own tmpfs: with a checkout under /tmp the VM's /tmp is the
        // host's, copy-on-write through overlayfs, which cannot be an overlay upper dir for container rootfs.
        .args(["-e", "TMPDIR=/run"])
        .arg("-e")
        .arg(format!("CRIUS_BIN={}", crius.display()))
        .arg("--")
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            inner,
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", runner.display()));
    // The runner's own messages (timings, VM failures) come on stderr; the VM's output on stdout, echoed line
    // by line so that a --nocapture run shows progress and a failing run shows everything.
    let mut runner_stderr = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = runner_stderr.read_to_string(&mut text);
        text
    });
    let mut output = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.expect("cannot read the VM output");
        println!("vm| {line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait().expect("cannot wait for vm-run.sh");
    let runner_messages = stderr_reader.join().expect("stderr reader panicked");
    print!("{runner_messages}");
    println!("vm-run.sh took {:.1?} in all", started.elapsed());

    let what = match status.code() {
        Some(0) => None,
        Some(124) => Some(format!("the VM timed out after {timeout_secs} s")),
        Some(125) => Some("the VM failed (see the console lines above)".to_string()),
        _ => Some(format!("the inner test failed ({status})")),
    };
    if let Some(what) = what {
        panic!("{what}\n----- vm-run.sh -----\n{runner_messages}");
    }
    // libtest exits 0 when its filter matches nothing: make sure the inner test really ran and passed.
    assert!(
        output.contains(&format!("test {inner} ... "))
            && output.contains("test result: ok. 1 passed"),
        "the inner test {inner} did not run in the VM"
    );
}

/// Panics unless this process runs inside the VM tier (the inner half of a VM test).
pub fn assert_inside(inner: &str, outer: &str) {
    assert_eq!(
        std::env::var("CRIUS_VM_INNER").as_deref(),
        Ok("1"),
        "{inner} runs only inside the cgroup v2 VM: run {outer} instead"
    );
}
