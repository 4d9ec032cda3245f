//! The cgroup v2 VM tier (e2e/vm/README.md): pod limits checked on a kernel whose cgroup2 hierarchy has every
//! controller, which the cgroup v1 hybrid development machines lack.
//!
//! [`cgroup_v2_limits_in_vm`] runs on the host. It boots a throwaway VM with `e2e/vm/vm-run.sh` and runs this
//! very test binary there, selecting [`inside_vm_pod_limits`], which is ignored in normal runs. The VM sees the
//! host's root read-only (so the binaries under `target/` are at the same paths) with a fresh writable `/tmp`,
//! where the harness puts its private directories.

use std::path::Path;
use std::time::{Duration, Instant};

use crius_e2e::v1::{LinuxContainerResources, NamespaceMode, PodSandboxConfig};
use crius_e2e::{Crius, Driver, Options, PodStatus, namespaces, procfs, wait_until};

/// The inner test's name, as libtest's `--exact` filter wants it.
const INNER: &str = "inside_vm_pod_limits";
/// Where the VM mounts cgroup2.
const CGROUP: &str = "/sys/fs/cgroup";
/// The VM's whole run, boot included; the tier's budget in CI is about 3 minutes.
const VM_TIMEOUT_SECS: u32 = 300;
const MIB: i64 = 1 << 20;

/// Host side: boots the VM and runs [`inside_vm_pod_limits`] in it; passes when that test passed there.
#[test]
fn cgroup_v2_limits_in_vm() {
    crius_e2e::vm::run_inner_test(INNER, VM_TIMEOUT_SECS);
}

/// VM side: real pod limits on cgroup v2, with both cgroup drivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the cgroup v2 VM, driven by cgroup_v2_limits_in_vm"]
async fn inside_vm_pod_limits() {
    crius_e2e::vm::assert_inside(INNER, "cgroup_v2_limits_in_vm");
    let fs = nix::sys::statfs::statfs(CGROUP).expect("statfs /sys/fs/cgroup");
    assert_eq!(
        fs.filesystem_type(),
        nix::sys::statfs::CGROUP2_SUPER_MAGIC,
        "{CGROUP} is not cgroup2"
    );
    let enabled = read(&Path::new(CGROUP).join("cgroup.subtree_control"));
    for c in ["memory", "cpu", "pids"] {
        assert!(
            enabled.split_whitespace().any(|e| e == c),
            "controller {c} not enabled in the VM: {enabled}"
        );
    }

    let t = Instant::now();
    let mut crius = Crius::prepare(vm_options(Driver::Cgroupfs)).expect("prepare crius");
    check_reports_controllers(&crius);
    crius.launch().await.expect("start crius");
    println!("[{:5.1?}] crius serve (cgroupfs driver) is up", t.elapsed());
    let host_network = namespaces(
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    cgroupfs_pod(&crius, "limits-hostnet", Some(host_network)).await;
    println!(
        "[{:5.1?}] pod with host network: limits checked, pod removed",
        t.elapsed()
    );
    cgroupfs_pod(&crius, "limits-bridge", None).await;
    println!(
        "[{:5.1?}] pod on the bridge network: limits checked, pod removed",
        t.elapsed()
    );
    crius.assert_no_leaks().await;
    assert!(
        crius.stop().success(),
        "crius serve did not exit cleanly on SIGTERM"
    );
    drop(crius);

    let crius = Crius::start(vm_options(Driver::Systemd)).await;
    println!("[{:5.1?}] crius serve (systemd driver) is up", t.elapsed());
    systemd_pod(&crius).await;
    println!(
        "[{:5.1?}] systemd-driver pod checked and removed",
        t.elapsed()
    );
    crius.assert_no_leaks().await;
}

/// The harness' private instance, on the VM's pure cgroup2 mount.
fn vm_options(driver: Driver) -> Options {
    Options::new()
        .driver(driver)
        .set("cgroup.mount", &format!("\"{CGROUP}\""))
}

/// `crius check` finds the memory, cpu and pids controllers usable and says the machine is ready.
fn check_reports_controllers(crius: &Crius) {
    let out = procfs::output_with_timeout(
        crius
            .command()
            .arg("check")
            .arg("--config")
            .arg(&crius.paths().config),
        Duration::from_secs(60),
    )
    .expect("run crius check");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "crius check failed ({}):\n{report}",
        out.status
    );
    assert!(
        text.lines().any(|l| l.trim() == "verdict: ready"),
        "crius check:\n{report}"
    );
    let line = text
        .lines()
        .find(|l| {
            l.split_once(':')
                .is_some_and(|(head, _)| head.trim_end().ends_with("cgroup v2"))
        })
        .unwrap_or_else(|| panic!("crius check has no cgroup v2 line:\n{report}"));
    assert!(line.starts_with("ok"), "crius check: {line}");
    let words: Vec<&str> = line.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    for c in ["memory", "cpu", "pids"] {
        assert!(
            words.contains(&c),
            "crius check does not list {c} as usable: {line}"
        );
        // No warning may say a limit of these controllers cannot be enforced.
        let warned = text.lines().filter(|l| !l.starts_with("ok")).any(|l| {
            l.split(|ch: char| !ch.is_ascii_alphanumeric())
                .any(|w| w == c)
        });
        assert!(!warned, "crius check warns about {c}:\n{report}");
    }
}

/// The limits of the tier: what kubelet sends for a burstable pod, plus a runtime-class overhead.
fn with_limits(mut config: PodSandboxConfig, cgroup_parent: String) -> PodSandboxConfig {
    let linux = config.linux.as_mut().expect("harness pod config has linux");
    linux.cgroup_parent = cgroup_parent;
    linux.resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 128 * MIB,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        unified: [("pids.max".to_string(), "64".to_string())].into(),
        ..Default::default()
    });
    linux.overhead = Some(LinuxContainerResources {
        memory_limit_in_bytes: 16 * MIB,
        cpu_shares: 0,
        ..Default::default()
    });
    config
}

fn uid_of(config: &PodSandboxConfig) -> String {
    config
        .metadata
        .as_ref()
        .expect("harness pod config has metadata")
        .uid
        .clone()
}

/// A pod under kubelet's cgroupfs parent `/kubepods/burstable/pod<uid>`: its limits, where pause lives, and
/// that stop + remove take away every cgroup crius created (the VM starts with none of them).
async fn cgroupfs_pod(crius: &Crius, name: &str, ns: Option<crius_e2e::v1::NamespaceOption>) {
    let mut config = crius.pod_config(name);
    let uid = uid_of(&config);
    config = with_limits(config, format!("/kubepods/burstable/pod{uid}"));
    if let Some(ns) = ns {
        let sc = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .expect("security context");
        sc.namespace_options = Some(ns);
    }
    let id = crius
        .run_pod(config)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"));
    let status = crius.pod_status(&id).await.expect("PodSandboxStatus");
    let pod_dir = Path::new(CGROUP).join(format!("kubepods/burstable/pod{uid}"));
    let pause = assert_limits(&status, &pod_dir, &format!("crius-{id}"));
    if name.ends_with("bridge") {
        assert!(
            crius.in_subnet(status.ip()),
            "pod IP {:?} not in {}",
            status.ip(),
            crius.subnet()
        );
    }
    crius.stop_and_remove(&id).await;
    assert_gone(pause, &Path::new(CGROUP).join("kubepods")).await;
}

/// A pod under the systemd slice `kubepods-burstable-pod<uid>.slice`, which the driver nests as systemd does.
async fn systemd_pod(crius: &Crius) {
    let mut config = crius.pod_config("limits-systemd");
    let uid = uid_of(&config);
    config = with_limits(config, format!("kubepods-burstable-pod{uid}.slice"));
    let id = crius
        .run_pod(config)
        .await
        .expect("RunPodSandbox with the systemd driver");
    let status = crius.pod_status(&id).await.expect("PodSandboxStatus");
    let pod_dir = Path::new(CGROUP).join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"
    ));
    let pause = assert_limits(&status, &pod_dir, &format!("crius-{id}.scope"));
    crius.stop_and_remove(&id).await;
    assert_gone(pause, &Path::new(CGROUP).join("kubepods.slice")).await;
}

/// Checks the pod cgroup files against [`with_limits`] and that pause runs in `<pod_dir>/<sandbox_name>`;
/// returns the pause pid.
fn assert_limits(status: &PodStatus, pod_dir: &Path, sandbox_name: &str) -> i32 {
    assert!(status.is_ready(), "pod not ready: {:?}", status.status);
    assert_eq!(
        status.info_str("cgroupPath"),
        pod_dir.to_str(),
        "verbose info: {}",
        status.info
    );
    let sandbox_dir = pod_dir.join(sandbox_name);
    assert_eq!(
        status.info_str("sandboxCgroupPath"),
        sandbox_dir.to_str(),
        "verbose info: {}",
        status.info
    );
    let unenforced = status
        .info
        .get("unenforcedLimits")
        .and_then(|u| u.as_array());
    assert_eq!(
        unenforced.map(Vec::len),
        Some(0),
        "every limit must be enforced in the VM; verbose info: {}",
        status.info
    );

    // memory: the pod's limit plus the overhead. cpu.weight: shares 512 (+0) by the Kubernetes conversion
    // 1 + ((512 - 2) * 9999) / 262142 = 20.
    assert_eq!(
        read(&pod_dir.join("memory.max")),
        (144 * MIB).to_string(),
        "memory.max of {}",
        pod_dir.display()
    );
    assert_eq!(
        read(&pod_dir.join("cpu.max")),
        "50000 100000",
        "cpu.max of {}",
        pod_dir.display()
    );
    assert_eq!(
        read(&pod_dir.join("cpu.weight")),
        "20",
        "cpu.weight of {}",
        pod_dir.display()
    );
    assert_eq!(
        read(&pod_dir.join("pids.max")),
        "64",
        "pids.max of {}",
        pod_dir.display()
    );

    let pause = status.pid().expect("verbose info has the pause pid");
    let procs = read(&sandbox_dir.join("cgroup.procs"));
    assert!(
        procs.lines().any(|p| p.trim() == pause.to_string()),
        "pause pid {pause} not in {}/cgroup.procs: {procs:?}",
        sandbox_dir.display()
    );
    let rel = sandbox_dir
        .strip_prefix(CGROUP)
        .expect("under the cgroup mount");
    assert_eq!(
        procfs::cgroup_v2_path(pause),
        Some(format!("/{}", rel.display())),
        "pause's /proc/<pid>/cgroup"
    );
    pause
}

/// After stop + remove: the pause process is gone and so is the cgroup tree crius created from `top` down.
async fn assert_gone(pause: i32, top: &Path) {
    // Stop may return before the killed pause is reaped (by crius, or by the harness' reaper).
    let exited = wait_until(Duration::from_secs(10), async || !procfs::is_alive(pause)).await;
    assert!(exited, "pause {pause} still runs after the pod was removed");
    assert!(
        !top.exists(),
        "{} is left after the pod was removed",
        top.display()
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_string()
}
