//! The cgroup v2 VM tier for stats: with every controller, ContainerStats and PodSandboxStats report memory
//! (usage, working set, RSS, page faults, available under a limit) and the metrics the memory, pids and cpu
//! controllers fill — the figures the development hosts' hugetlb-only tree leaves absent (`stats.rs`).
//! [`stats_in_vm`] runs on the host and boots the VM (see `crius_e2e::vm`); [`inside_vm_stats`] runs in it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use crius_e2e::containers::{Fixture, busybox_image};
use crius_e2e::stats::{container_id, value};
use crius_e2e::{Options, v1, wait_until};

const INNER: &str = "inside_vm_stats";
const VM_TIMEOUT_SECS: u32 = 300;
const MIB: u64 = 1 << 20;

#[test]
fn stats_in_vm() {
    crius_e2e::vm::run_inner_test(INNER, VM_TIMEOUT_SECS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the cgroup v2 VM, driven by stats_in_vm"]
async fn inside_vm_stats() {
    crius_e2e::vm::assert_inside(INNER, "stats_in_vm");
    let t = Instant::now();
    let f = Fixture::start_with(
        Options::new().set("cgroup.mount", "\"/sys/fs/cgroup\""),
        &[("busybox", busybox_image().build())],
    )
    .await;
    println!(
        "[{:5.1?}] registry, crius and the image are ready",
        t.elapsed()
    );
    let pod = f.pod(f.c.pod_config("vmstats")).await;
    // tail keeps all of its input (no newline) in memory, then blocks writing to sleep, which never reads.
    let mut config = f.config(
        "busybox",
        "holder",
        &["sh", "-c", "head -c 20971520 /dev/zero | tail | sleep 1000"],
    );
    config.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: (64 * MIB) as i64,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = f.spawn(&pod, config).await;

    // Memory, as the kernel accounts it in the container's cgroup, once head has written everything and left
    // (the pod then holds pause, sh, tail and sleep).
    let mut last = None;
    let held = wait_until(Duration::from_secs(60), async || {
        let s = f.c.container_stats(&id).await.unwrap();
        let p = f.c.pod_stats(&pod.id).await.unwrap();
        let rss = s
            .memory
            .as_ref()
            .and_then(|m| value(&m.rss_bytes))
            .unwrap_or(0);
        let procs = p
            .linux
            .as_ref()
            .and_then(|l| l.process.as_ref())
            .and_then(|p| value(&p.process_count));
        last = Some((s, p));
        rss >= 16 * MIB && procs == Some(4)
    })
    .await;
    let (s, p) = last.unwrap();
    assert!(
        held,
        "tail never held 16 MiB alone with sh and sleep: {s:?} {p:?}"
    );
    let m = s.memory.as_ref().unwrap();
    let usage = value(&m.usage_bytes).expect("no memory.current");
    let ws = value(&m.working_set_bytes).unwrap();
    let rss = value(&m.rss_bytes).unwrap();
    // The working set holds the anonymous memory (and the kernel's share), usage holds the working set.
    assert!(usage >= ws && ws >= rss, "{m:?}");
    assert_eq!(value(&m.available_bytes), Some(64 * MIB - ws), "{m:?}");
    assert!(value(&m.page_faults).expect("no page faults") > 0, "{m:?}");
    assert!(value(&m.major_page_faults).is_some(), "{m:?}");
    assert!(m.timestamp > 0);
    println!(
        "[{:5.1?}] container memory: usage {usage} working set {ws} rss {rss} swap {:?}",
        t.elapsed(),
        s.swap
    );

    // The pod: memory of its cgroup (pause + the container), processes, the container inside.
    let linux = p.linux.as_ref().unwrap();
    let pod_ws = value(
        &linux
            .memory
            .as_ref()
            .expect("no pod memory")
            .working_set_bytes,
    )
    .unwrap();
    assert!(
        pod_ws >= ws,
        "pod working set {pod_ws} below the container's {ws}"
    );
    // pause, sh, tail and sleep.
    let procs = value(&linux.process.as_ref().unwrap().process_count).unwrap();
    assert_eq!(procs, 4, "{linux:?}");
    assert_eq!(
        linux
            .containers
            .iter()
            .map(container_id)
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(linux.network.is_some());

    // Metrics the controllers fill: memory, threads (pids.current), CFS periods (cpu).
    let descriptors = f.c.metric_descriptors().await;
    for name in [
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_threads",
        "container_cpu_cfs_periods_total",
    ] {
        assert!(descriptors.contains_key(name), "{name} not described");
    }
    let metrics = f.c.pod_metrics().await;
    let ours = metrics.iter().find(|m| m.pod_sandbox_id == pod.id).unwrap();
    let ctr = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == id)
        .unwrap();
    let get = |name: &str| {
        ctr.metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| value(&m.value))
            .unwrap_or_else(|| panic!("no {name} in {:?}", ctr.metrics))
    };
    assert!(get("container_memory_working_set_bytes") >= 16 * MIB);
    assert_eq!(get("container_spec_memory_limit_bytes"), 64 * MIB);
    assert_eq!(get("container_threads"), 3, "sh, tail and sleep");
    assert_eq!(get("container_processes"), 3);
    println!("[{:5.1?}] pod stats and metrics checked", t.elapsed());

    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
    println!("[{:5.1?}] all removed", t.elapsed());
}
