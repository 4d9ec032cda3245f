//! End-to-end stats tests: ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
//! ListMetricDescriptors and ListPodSandboxMetrics against real busybox containers under `crius serve`.
//! On the development hosts (cgroup v1 hybrid, a v2 tree with hugetlb only) memory, swap and thread figures
//! must be absent; the tests read the tree's controllers and expect exactly what it can provide. The cgroup v2
//! VM tier (`vm_stats.rs`) checks the memory figures where they exist. Leak checks after each test.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crius_e2e::containers::{Fixture, Pod, busybox_image};
use crius_e2e::stats::{container_id, controller_enabled, cpu_ns, interface, pod_id, value};
use crius_e2e::{spawn_in_netns, v1, wait_until};
use tonic::Code;

async fn fixture() -> Fixture {
    Fixture::start(&[("busybox", busybox_image().build())]).await
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running container `name` in `pod` with `labels`.
async fn spawn(f: &Fixture, pod: &Pod, name: &str, cmd: &[&str], l: &[(&str, &str)]) -> String {
    let mut config = f.config("busybox", name, cmd);
    config.labels = labels(l);
    f.spawn(pod, config).await
}

/// A CPU burner's and an idle container's stats: cumulative usage grows, the average between two samples is
/// non-zero, the writable layer grows with a file written in it, memory is what the host provides; the metrics
/// carry the same figures under the descriptors' names and labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_cpu_writable_layer_memory_and_metrics() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("stats")).await;
    let burner = spawn(
        &f,
        &pod,
        "burner",
        &["sh", "-c", "while :; do :; done"],
        &[],
    )
    .await;
    let idle = spawn(&f, &pod, "idle", &["sleep", "1000"], &[]).await;
    let memory = controller_enabled(f.c.cgroup_mount(), "memory");
    println!("memory controller in the v2 tree: {memory}");

    let first = f.c.container_stats(&burner).await.unwrap();
    assert_eq!(container_id(&first), burner);
    let attrs = first.attributes.as_ref().unwrap();
    assert_eq!(attrs.metadata.as_ref().unwrap().name, "burner");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A unique prefix works as well as the full id.
    let second = f.c.container_stats(&burner[..12]).await.unwrap();
    assert_eq!(container_id(&second), burner);
    let (c1, c2) = (cpu_ns(&first), cpu_ns(&second));
    assert!(c2 > c1, "CPU usage did not grow: {c1} then {c2}");
    let cpu = second.cpu.as_ref().unwrap();
    assert!(cpu.timestamp > 0);
    let cores = value(&cpu.usage_nano_cores).expect("no usage_nano_cores after two samples");
    // A busy loop on a shared 2-core machine: well above 5% of a core.
    assert!(
        cores > 50_000_000,
        "usage_nano_cores {cores} for a busy loop"
    );
    println!("burner: {c2} ns of CPU, {:.2} cores", cores as f64 / 1e9);
    let idle_stats = f.c.container_stats(&idle).await.unwrap();
    assert!(cpu_ns(&idle_stats) < c2);

    // Memory: on a host without the memory controller, absent (not zero); with it, present.
    for s in [&second, &idle_stats] {
        if memory {
            let m = s
                .memory
                .as_ref()
                .expect("memory stats with the memory controller");
            assert!(value(&m.usage_bytes).unwrap() > 0);
            assert!(value(&m.working_set_bytes).is_some());
        } else {
            assert!(
                s.memory.is_none(),
                "memory figures without a memory controller: {s:?}"
            );
            assert!(
                s.swap.is_none(),
                "swap figures without a memory controller: {s:?}"
            );
        }
    }

    // The writable layer grows by the file written into the container (the cache is refreshed behind).
    let layer = |s: &v1::ContainerStats| {
        let w = s.writable_layer.as_ref().expect("no writable layer stats");
        (
            value(&w.used_bytes).unwrap(),
            value(&w.inodes_used).unwrap(),
        )
    };
    let w = idle_stats.writable_layer.as_ref().unwrap();
    assert!(
        w.fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .ends_with("/containers"),
        "{w:?}"
    );
    let (bytes0, inodes0) = layer(&idle_stats);
    f.exec_ok(
        &idle,
        &["sh", "-c", "head -c 2097152 /dev/zero > /data.bin"],
    )
    .await;
    let mut last = (bytes0, inodes0);
    let grew = wait_until(Duration::from_secs(30), async || {
        last = layer(&f.c.container_stats(&idle).await.unwrap());
        last.0 >= bytes0 + 2 * 1024 * 1024 && last.1 > inodes0
    })
    .await;
    assert!(
        grew,
        "writable layer {bytes0} B {inodes0} inodes, then {last:?}"
    );
    println!(
        "writable layer: {bytes0} B, {inodes0} inodes -> {} B, {} inodes",
        last.0, last.1
    );

    // An exited container still has stats; ListContainerStats lists running ones only.
    let done = f
        .create(&pod, f.config("busybox", "done", &["true"]))
        .await
        .unwrap();
    f.start_container(&done).await.unwrap();
    f.wait_state(&done, v1::ContainerState::ContainerExited)
        .await;
    assert!(f.c.container_stats(&done).await.unwrap().cpu.is_some());
    let listed: Vec<String> =
        f.c.list_container_stats(None)
            .await
            .iter()
            .map(|s| container_id(s).to_string())
            .collect();
    assert!(
        listed.contains(&burner) && listed.contains(&idle),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&done),
        "an exited container in ListContainerStats"
    );

    // Unknown ids: NotFound naming the field.
    let e = f.c.container_stats("feedbeef").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("container_id"), "{e}");

    // Metrics: described names only, labels as described, the burner's whole CPU seconds.
    let descriptors = f.c.metric_descriptors().await;
    for name in [
        "container_cpu_usage_seconds_total",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_processes",
        "container_fs_usage_bytes",
    ] {
        assert!(descriptors.contains_key(name), "{name} not described");
    }
    assert_eq!(
        descriptors.contains_key("container_memory_working_set_bytes"),
        memory
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = f.c.pod_metrics().await;
    let ours = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod.id)
        .expect("our pod in ListPodSandboxMetrics");
    let all = ours
        .metrics
        .iter()
        .chain(ours.container_metrics.iter().flat_map(|c| &c.metrics));
    for m in all {
        let d = descriptors
            .get(&m.name)
            .unwrap_or_else(|| panic!("{} is not described", m.name));
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{m:?} vs {d:?}");
        assert!(m.value.is_some(), "{m:?}");
    }
    let burner_metrics = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == burner)
        .expect("the burner's metrics");
    let cpu_secs = burner_metrics
        .metrics
        .iter()
        .find(|m| m.name == "container_cpu_usage_seconds_total")
        .expect("the burner's CPU metric");
    assert_eq!(
        cpu_secs.label_values[..3],
        [burner.clone(), "burner".into(), f.image("busybox").into()]
    );
    assert!(value(&cpu_secs.value).unwrap() >= 1, "{cpu_secs:?}");
    let rx: Vec<&str> = ours
        .metrics
        .iter()
        .filter(|m| m.name == "container_network_receive_bytes_total")
        .map(|m| m.label_values[3].as_str())
        .collect();
    assert!(rx.contains(&"eth0") && rx.contains(&"lo"), "{rx:?}");

    for id in [&burner, &idle, &done] {
        f.stop_and_remove(id).await;
    }
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// UDP datagrams of `size` bytes, `n` times, from a thread inside the pod's network namespace to loopback and to
/// the bridge's gateway.
fn traffic_inside(netns: &std::path::Path, gateway: String, n: usize, size: usize) {
    spawn_in_netns(netns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let payload = vec![0x5au8; size];
        for _ in 0..n {
            s.send_to(&payload, "127.0.0.1:9")?;
            s.send_to(&payload, (gateway.as_str(), 9))?;
        }
        Ok(())
    })
    .join()
    .unwrap()
    .unwrap();
}

/// Pod stats: CPU of the pod cgroup, processes (pause and the containers), rx/tx per interface growing with
/// traffic the test makes inside the pod and towards it; filters by id prefix, pod and labels for both lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_network_processes_and_filters() {
    let f = fixture().await;
    let mut web_config = f.c.pod_config("web");
    web_config.labels = labels(&[("app", "web")]);
    let web = f.pod(web_config).await;
    let mut db_config = f.c.pod_config("db");
    db_config.labels = labels(&[("app", "db")]);
    let db = f.pod(db_config).await;
    let front = spawn(&f, &web, "front", &["sleep", "1000"], &[("tier", "front")]).await;
    let side = spawn(&f, &web, "side", &["sleep", "1000"], &[("tier", "side")]).await;
    let store = spawn(&f, &db, "store", &["sleep", "1000"], &[("tier", "front")]).await;

    let before = f.c.pod_stats(&web.id).await.unwrap();
    assert_eq!(pod_id(&before), web.id);
    let linux = before.linux.as_ref().unwrap();
    assert!(value(&linux.cpu.as_ref().unwrap().usage_core_nano_seconds).unwrap() > 0);
    // pause + the two containers' processes.
    let procs = value(&linux.process.as_ref().unwrap().process_count).unwrap();
    assert_eq!(procs, 3, "{linux:?}");
    let mut in_pod: Vec<&str> = linux.containers.iter().map(container_id).collect();
    in_pod.sort();
    let mut want = vec![front.as_str(), side.as_str()];
    want.sort();
    assert_eq!(in_pod, want);
    if !controller_enabled(f.c.cgroup_mount(), "memory") {
        assert!(linux.memory.is_none(), "{linux:?}");
    }
    let net0 = linux
        .network
        .clone()
        .expect("no network stats for a ready pod");
    assert_eq!(net0.default_interface.as_ref().unwrap().name, "eth0");
    assert!(interface(&net0, "lo").is_some(), "{net0:?}");

    // Traffic: out of the pod (loopback and the gateway) and into it from the host, over the test's bridge.
    let (n, size) = (50, 1000);
    traffic_inside(&f.c.ns_file("netns", &web.id), f.c.gateway(), n, size);
    let ip = f.c.pod_status(&web.id).await.unwrap().ip().to_string();
    let host = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..n {
        host.send_to(&vec![0xa5u8; size], (ip.as_str(), 9)).unwrap();
    }
    let floor = (n * size) as u64;
    let counters = |net: &v1::NetworkUsage, name: &str| {
        let i = interface(net, name).unwrap_or_else(|| panic!("no {name} in {net:?}"));
        (value(&i.rx_bytes).unwrap(), value(&i.tx_bytes).unwrap())
    };
    let mut net1 = net0.clone();
    let grew = wait_until(Duration::from_secs(10), async || {
        let s = f.c.pod_stats(&web.id[..10]).await.unwrap();
        net1 = s.linux.unwrap().network.unwrap();
        let (eth_rx0, eth_tx0) = counters(&net0, "eth0");
        let (eth_rx1, eth_tx1) = counters(&net1, "eth0");
        let (lo_rx0, lo_tx0) = counters(&net0, "lo");
        let (lo_rx1, lo_tx1) = counters(&net1, "lo");
        eth_rx1 >= eth_rx0 + floor
            && eth_tx1 >= eth_tx0 + floor
            && lo_rx1 >= lo_rx0 + floor
            && lo_tx1 >= lo_tx0 + floor
    })
    .await;
    assert!(grew, "counters before {net0:?}, after {net1:?}");
    println!(
        "eth0 rx/tx {:?} -> {:?}, lo {:?} -> {:?}",
        counters(&net0, "eth0"),
        counters(&net1, "eth0"),
        counters(&net0, "lo"),
        counters(&net1, "lo")
    );
    let db_net =
        f.c.pod_stats(&db.id)
            .await
            .unwrap()
            .linux
            .unwrap()
            .network
            .unwrap();
    assert!(
        counters(&db_net, "lo").0 < floor,
        "the other pod's loopback saw our traffic: {db_net:?}"
    );

    // ListPodSandboxStats: all, by id prefix, by labels; an unknown id matches nothing.
    let ids = |v: Vec<v1::PodSandboxStats>| {
        let mut ids: Vec<String> = v.iter().map(|s| pod_id(s).to_string()).collect();
        ids.sort();
        ids
    };
    let mut both = vec![web.id.clone(), db.id.clone()];
    both.sort();
    assert_eq!(ids(f.c.list_pod_stats(None).await), both);
    let pod_filter = |id: &str, l: &[(&str, &str)]| {
        Some(v1::PodSandboxStatsFilter {
            id: id.into(),
            label_selector: labels(l),
        })
    };
    assert_eq!(
        ids(f.c.list_pod_stats(pod_filter(&db.id[..8], &[])).await),
        [db.id.as_str()]
    );
    assert_eq!(
        ids(f.c.list_pod_stats(pod_filter("", &[("app", "web")])).await),
        [web.id.as_str()]
    );
    assert!(
        f.c.list_pod_stats(pod_filter(&web.id, &[("app", "db")]))
            .await
            .is_empty()
    );
    assert!(
        f.c.list_pod_stats(pod_filter("feedbeef", &[]))
            .await
            .is_empty()
    );
    let listed = f.c.list_pod_stats(pod_filter(&db.id, &[])).await;
    assert_eq!(listed[0].linux.as_ref().unwrap().containers.len(), 1);

    // ListContainerStats: by id prefix, by pod, by labels, combined.
    let cids = |v: Vec<v1::ContainerStats>| {
        let mut ids: Vec<String> = v.iter().map(|s| container_id(s).to_string()).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let filter = |id: &str, pod: &str, l: &[(&str, &str)]| {
        Some(v1::ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: labels(l),
        })
    };
    assert_eq!(
        cids(f.c.list_container_stats(None).await),
        sorted(vec![front.clone(), side.clone(), store.clone()])
    );
    assert_eq!(
        cids(f.c.list_container_stats(filter(&side[..9], "", &[])).await),
        [side.as_str()]
    );
    assert_eq!(
        cids(f.c.list_container_stats(filter("", &web.id, &[])).await),
        sorted(vec![front.clone(), side.clone()])
    );
    assert_eq!(
        cids(
            f.c.list_container_stats(filter("", "", &[("tier", "front")]))
                .await
        ),
        sorted(vec![front.clone(), store.clone()])
    );
    assert_eq!(
        cids(
            f.c.list_container_stats(filter("", &db.id[..6], &[("tier", "front")]))
                .await
        ),
        [store.as_str()]
    );
    assert!(
        f.c.list_container_stats(filter(&store, &web.id, &[]))
            .await
            .is_empty()
    );
    assert!(
        f.c.list_container_stats(filter("feedbeef", "", &[]))
            .await
            .is_empty()
    );
    assert!(
        f.c.list_container_stats(filter("", "feedbeef", &[]))
            .await
            .is_empty()
    );

    // Unknown pod: NotFound naming the field. A stopped pod still answers, without network stats, and leaves
    // the ready-pods list.
    let e = f.c.pod_stats("feedbeef").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("pod_sandbox_id"), "{e}");
    f.c.stop_pod(&db.id).await.unwrap();
    let stopped = f.c.pod_stats(&db.id).await.unwrap();
    assert!(stopped.linux.unwrap().network.is_none());
    assert_eq!(ids(f.c.list_pod_stats(None).await), [web.id.as_str()]);

    for id in [&front, &side] {
        f.stop_and_remove(id).await;
    }
    f.c.stop_and_remove(&web.id).await;
    f.c.stop_and_remove(&db.id).await;
    f.c.assert_no_leaks().await;
}

/// ListContainerStats of 50 running containers (5 pods of 10) answers in milliseconds: a sanity bound on the
/// cost per container (a few small files, a cached walk, no monitor call), not a benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_stats_of_fifty_containers_is_cheap() {
    let f = fixture().await;
    let t = Instant::now();
    let mut pods = Vec::new();
    let mut ids = Vec::new();
    for p in 0..5 {
        let pod = f.pod(f.c.pod_config(&format!("many{p}"))).await;
        for c in 0..10 {
            ids.push(spawn(&f, &pod, &format!("c{c}"), &["sleep", "1000"], &[]).await);
        }
        pods.push(pod);
    }
    println!("50 containers running after {:.1?}", t.elapsed());
    // The first call measures every new writable layer; the bound is for the calls after it.
    assert_eq!(f.c.list_container_stats(None).await.len(), 50);
    let mut timings = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let stats = f.c.list_container_stats(None).await;
        timings.push(t.elapsed());
        assert_eq!(stats.len(), 50);
        assert!(
            stats
                .iter()
                .all(|s| s.cpu.is_some() && s.writable_layer.is_some())
        );
    }
    let t = Instant::now();
    let pod_stats = f.c.list_pod_stats(None).await;
    let pods_took = t.elapsed();
    assert_eq!(pod_stats.len(), 5);
    let t = Instant::now();
    let metrics = f.c.pod_metrics().await;
    let metrics_took = t.elapsed();
    assert_eq!(metrics.len(), 5);
    println!(
        "ListContainerStats x50: {timings:.1?}; ListPodSandboxStats x5: {pods_took:.1?}; \
         ListPodSandboxMetrics x5: {metrics_took:.1?}"
    );
    for took in &timings {
        assert!(
            *took < Duration::from_millis(200),
            "ListContainerStats of 50 containers took {took:?}"
        );
    }
    for pod in &pods {
        f.c.stop_and_remove(&pod.id).await;
    }
    f.c.assert_no_leaks().await;
}
