//! End-to-end tests of pod sandboxes: real pause processes, namespaces, CNI plugins, cgroups. Each test starts
//! its own `crius serve` (private root, state, bridge, subnet, cgroup parent) and ends with a leak check.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crius_e2e::v1::{
    DnsConfig, LinuxContainerResources, NamespaceMode, PodSandboxConfig, PodSandboxFilter,
    PodSandboxState, PodSandboxStateValue, PortMapping, Protocol, RunPodSandboxRequest,
};
use crius_e2e::{
    Crius, Driver, Options, bridge_conflist, namespaces, procfs, spawn_in_netns, wait_until,
};
use tonic::Code;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn uid_of(cfg: &PodSandboxConfig) -> String {
    cfg.metadata.as_ref().expect("metadata").uid.clone()
}

fn set_namespaces(
    cfg: &mut PodSandboxConfig,
    network: NamespaceMode,
    pid: NamespaceMode,
    ipc: NamespaceMode,
) {
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options = Some(namespaces(network, pid, ipc));
}

/// `cmd` with nsenter into one namespace file, e.g. `nsenter --uts=<file> hostname`.
fn nsenter(flag: &str, file: &Path, cmd: &[&str]) -> String {
    let mut args = vec![format!("--{flag}={}", file.display())];
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    procfs::run("nsenter", &args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn cni_result_ips(info: &serde_json::Value) -> Vec<String> {
    let result = match info.get("cniResult") {
        Some(serde_json::Value::String(s)) => {
            serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
        }
        Some(v) => v.clone(),
        None => serde_json::Value::Null,
    };
    result
        .get("ips")
        .and_then(|ips| ips.as_array())
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address")?.as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test]
async fn run_inspect_stop_remove() {
    let c = Crius::start(Options::new()).await;
    let mut cfg = c.pod_config("basic");
    cfg.labels = labels(&[("app", "web"), ("tier", "front")]);
    cfg.annotations = labels(&[
        ("note", "hello world"),
        ("kubernetes.io/config.source", "api"),
    ]);
    let uid = uid_of(&cfg);
    let before = now_ns();
    let id = c.run_pod(cfg.clone()).await.expect("RunPodSandbox");

    // The status answers what was asked.
    let st = c.pod_status(&id).await.expect("PodSandboxStatus");
    assert!(st.is_ready(), "{:?}", st.status);
    assert_eq!(st.status.id, id);
    assert_eq!(st.status.metadata, cfg.metadata);
    assert_eq!(st.status.labels, cfg.labels);
    assert_eq!(st.status.annotations, cfg.annotations);
    assert_eq!(st.status.runtime_handler, "");
    assert!(
        st.status.created_at >= before - 1_000_000_000 && st.status.created_at <= now_ns(),
        "created_at {} is not the run time (ns since the epoch)",
        st.status.created_at
    );
    assert!(
        c.in_subnet(st.ip()),
        "IP {:?} not in {}",
        st.ip(),
        c.subnet()
    );
    let ns = st
        .status
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .expect("linux namespace options in status");
    assert_eq!(ns.network, NamespaceMode::Pod as i32);
    assert_eq!(ns.pid, NamespaceMode::Container as i32);
    assert_eq!(ns.ipc, NamespaceMode::Pod as i32);

    // The verbose info points at real things.
    let info = &st.info;
    for key in [
        "pid",
        "netnsPath",
        "podDir",
        "cgroupPath",
        "sandboxCgroupPath",
        "cniNetwork",
        "cniResult",
        "unenforcedLimits",
        "oomScoreAdj",
    ] {
        assert!(info.get(key).is_some(), "verbose info lacks {key}: {info}");
    }
    let pid = st.pid().expect("pid");
    let ps = procfs::stat(pid).expect("pause process");
    assert_eq!(ps.comm, "crius-pause");
    assert_eq!(procfs::exe(pid).as_deref(), Some(c.pause_binary()));
    let netns = c.ns_file("netns", &id);
    assert_eq!(st.info_str("netnsPath"), Some(netns.to_str().unwrap()));
    for (kind, ns) in [("netns", "net"), ("ipcns", "ipc"), ("utsns", "uts")] {
        assert_eq!(
            procfs::file_inode(&c.ns_file(kind, &id)),
            procfs::ns_inode(pid, ns),
            "{kind} file is not pause's {ns} namespace"
        );
    }
    assert_ne!(procfs::ns_inode(pid, "net"), procfs::ns_inode(0, "net"));
    assert!(
        !c.ns_file("pidns", &id).exists(),
        "pidns file for a pod with pid CONTAINER"
    );
    assert_eq!(
        st.info_str("podDir"),
        Some(c.pod_dir(&id).to_str().unwrap())
    );
    assert!(c.pod_dir(&id).is_dir());
    let cgroup = c.pod_cgroup_dir(&uid);
    assert_eq!(st.info_str("cgroupPath"), Some(cgroup.to_str().unwrap()));
    assert!(cgroup.is_dir(), "{} missing", cgroup.display());
    let sandbox_cg =
        Path::new(st.info_str("sandboxCgroupPath").expect("sandboxCgroupPath")).to_path_buf();
    assert_eq!(sandbox_cg, cgroup.join(format!("crius-{id}")));
    let procs = std::fs::read_to_string(sandbox_cg.join("cgroup.procs")).expect("cgroup.procs");
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "pause not in {}",
        sandbox_cg.display()
    );
    let rel = sandbox_cg.strip_prefix(c.cgroup_mount()).unwrap();
    assert_eq!(
        procfs::cgroup_v2_path(pid),
        Some(format!("/{}", rel.display()))
    );
    assert!(!st.info_str("cniNetwork").unwrap_or("").is_empty());
    assert_eq!(cni_result_ips(info), vec![st.ip().to_string()]);
    assert!(info["unenforcedLimits"].is_array());
    // oom_score_adj: the value pause really has; when the host refused -998, the report says so.
    let actual = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    let reported = match &info["oomScoreAdj"] {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    assert!(
        reported.split_whitespace().next() == Some(actual.trim()),
        "oomScoreAdj {reported:?} is not pause's {}",
        actual.trim()
    );
    if actual.trim() != "-998" {
        assert!(
            reported.contains("-998"),
            "the clamp from -998 is not reported: {reported:?}"
        );
    }
    assert_eq!(
        c.bridge_ports().unwrap().len(),
        1,
        "one veth on {}",
        c.bridge()
    );
    let reserved = c.ip_reservations();
    assert_eq!(reserved.len(), 1, "{reserved:?}");
    assert_eq!(reserved[0].0.file_name().unwrap().to_str(), Some(st.ip()));

    let listed = c.list_pods(None).await.expect("ListPodSandbox");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].state, PodSandboxState::SandboxReady as i32);
    assert_eq!(listed[0].labels, cfg.labels);

    // Stop: not ready, pause gone, IP and veth released; twice is fine.
    c.stop_pod(&id).await.expect("StopPodSandbox");
    let stopped = c.pod_status(&id).await.expect("status after stop");
    assert_eq!(
        stopped.status.state,
        PodSandboxState::SandboxNotready as i32
    );
    assert!(
        !procfs::is_alive(pid),
        "pause {pid} alive after stop: {:?}",
        procfs::stat(pid)
    );
    assert!(
        c.ip_reservations().is_empty(),
        "IP kept after stop: {:?}",
        c.ip_reservations()
    );
    assert!(c.bridge_ports().unwrap().is_empty(), "veth kept after stop");
    c.stop_pod(&id).await.expect("second StopPodSandbox");

    // Remove: gone; twice is fine.
    c.remove_pod(&id).await.expect("RemovePodSandbox");
    let err = c
        .pod_status(&id)
        .await
        .expect_err("status of a removed pod");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    c.remove_pod(&id).await.expect("second RemovePodSandbox");
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn hostname_and_etc_files() {
    let c = Crius::start(Options::new()).await;
    let mut cfg = c.pod_config("files-pod");
    cfg.dns_config = Some(DnsConfig {
        servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
        searches: vec!["e2e.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into(), "timeout:2".into()],
    });
    let id = c.run_pod(cfg).await.expect("RunPodSandbox");
    let st = c.pod_status(&id).await.unwrap();

    let uts = nsenter("uts", &c.ns_file("utsns", &id), &["hostname"]);
    assert_eq!(uts.trim(), "files-pod");
    let dir = c.pod_dir(&id);
    let resolv = std::fs::read_to_string(dir.join("resolv.conf")).expect("resolv.conf");
    let lines: Vec<&str> = resolv.lines().map(str::trim).collect();
    for want in [
        "nameserver 10.0.0.10",
        "nameserver 10.0.0.11",
        "search e2e.svc.cluster.local svc.cluster.local",
        "options ndots:5 timeout:2",
    ] {
        assert!(
            lines.contains(&want),
            "resolv.conf lacks {want:?}:\n{resolv}"
        );
    }
    let hostname = std::fs::read_to_string(dir.join("hostname")).expect("hostname file");
    assert_eq!(hostname.trim(), "files-pod");
    let hosts = std::fs::read_to_string(dir.join("hosts")).expect("hosts file");
    assert!(
        hosts
            .lines()
            .any(|l| l.starts_with("127.0.0.1") && l.contains("localhost")),
        "no localhost in hosts:\n{hosts}"
    );
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().next() == Some(st.ip()) && l.contains("files-pod")),
        "no '{} files-pod' line in hosts:\n{hosts}",
        st.ip()
    );

    // Without dns_config the pod gets the host's resolv.conf (pod.resolv_conf).
    let id2 = c
        .run_pod(c.pod_config("host-dns"))
        .await
        .expect("RunPodSandbox");
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let got = std::fs::read_to_string(c.pod_dir(&id2).join("resolv.conf")).expect("resolv.conf");
    assert_eq!(got.trim(), host.trim());

    c.stop_and_remove(&id).await;
    c.stop_and_remove(&id2).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn shm_is_a_tmpfs_of_the_configured_size() {
    let c = Crius::start(Options::new().set("pod.shm_size", "\"32Mi\"")).await;
    let id = c.run_pod(c.pod_config("shm")).await.expect("RunPodSandbox");
    let shm = c.pod_dir(&id).join("shm");
    let mounts = procfs::mounts();
    let m = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == shm)
        .unwrap_or_else(|| panic!("{} is not a mount point", shm.display()));
    assert_eq!(m.fs_type, "tmpfs", "{}", m.line);
    assert!(
        m.super_options.split(',').any(|o| o == "size=32768k"),
        "{}",
        m.line
    );

    // With the host's IPC namespace there is no private /dev/shm.
    let mut cfg = c.pod_config("host-ipc");
    set_namespaces(
        &mut cfg,
        NamespaceMode::Pod,
        NamespaceMode::Container,
        NamespaceMode::Node,
    );
    let id2 = c.run_pod(cfg).await.expect("RunPodSandbox host IPC");
    let shm2 = c.pod_dir(&id2).join("shm");
    assert!(
        !procfs::mounts().iter().any(|m| m.mount_point == shm2),
        "shm mounted with host IPC"
    );
    let st2 = c.pod_status(&id2).await.unwrap();
    assert_eq!(
        procfs::ns_inode(st2.pid().unwrap(), "ipc"),
        procfs::ns_inode(0, "ipc")
    );

    c.stop_and_remove(&id).await;
    c.stop_and_remove(&id2).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn namespaced_sysctls_are_applied_inside_the_pod() {
    let c = Crius::start(Options::new()).await;
    let host_port_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let mut cfg = c.pod_config("sysctl");
    let linux = cfg.linux.as_mut().unwrap();
    linux.sysctls = labels(&[
        ("net.ipv4.ip_unprivileged_port_start", "800"),
        ("kernel.shm_rmid_forced", "1"),
    ]);
    let id = c.run_pod(cfg).await.expect("RunPodSandbox");
    let net = nsenter(
        "net",
        &c.ns_file("netns", &id),
        &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
    );
    assert_eq!(net.trim(), "800");
    let ipc = nsenter(
        "ipc",
        &c.ns_file("ipcns", &id),
        &["cat", "/proc/sys/kernel/shm_rmid_forced"],
    );
    assert_eq!(ipc.trim(), "1");
    let host_after =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    assert_eq!(host_after, host_port_start, "the host's sysctl changed");
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn forbidden_sysctls_are_rejected_before_anything_is_created() {
    let c = Crius::start(Options::new()).await;
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let cases = [
        (
            "kernel.core_pattern",
            "|/tmp/crius-e2e-pwned",
            "kernel.core_pattern",
        ),
        (
            "net.ipv4.ip_unprivileged_port_start",
            "1024\nkernel.core_pattern=|/tmp/crius-e2e-pwned",
            "net.ipv4.ip_unprivileged_port_start",
        ),
        (
            "net.ipv4/../../kernel/core_pattern",
            "|/tmp/crius-e2e-pwned",
            "sysctl",
        ),
    ];
    for (key, value, named) in cases {
        let mut cfg = c.pod_config("bad-sysctl");
        cfg.linux.as_mut().unwrap().sysctls = labels(&[(key, value)]);
        let uid = uid_of(&cfg);
        let err = c
            .run_pod(cfg)
            .await
            .expect_err(&format!("sysctl {key:?}={value:?} accepted"));
        assert_eq!(err.code(), Code::InvalidArgument, "{key}: {err:?}");
        assert!(
            err.message().contains(named),
            "{key}: message does not name {named:?}: {}",
            err.message()
        );
        assert!(
            !c.pod_cgroup_dir(&uid).exists(),
            "{key}: a pod cgroup was created"
        );
        assert!(
            c.list_pods(None).await.unwrap().is_empty(),
            "{key}: a pod record was created"
        );
        c.assert_no_leaks().await;
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
}

#[tokio::test]
async fn unknown_ids() {
    let c = Crius::start(Options::new()).await;
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    c.stop_pod(unknown)
        .await
        .expect("StopPodSandbox of an unknown id must succeed");
    c.remove_pod(unknown)
        .await
        .expect("RemovePodSandbox of an unknown id must succeed");
    let err = c
        .pod_status(unknown)
        .await
        .expect_err("status of an unknown id");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("pod_sandbox_id") && err.message().contains(unknown),
        "NotFound does not name the field and the id: {}",
        err.message()
    );
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn same_metadata_twice_is_already_exists() {
    let c = Crius::start(Options::new()).await;
    let cfg = c.pod_config("dup");
    let id = c.run_pod(cfg.clone()).await.expect("first RunPodSandbox");
    let err = c
        .run_pod(cfg.clone())
        .await
        .expect_err("second RunPodSandbox with the same metadata");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("dup"),
        "message does not name the pod: {}",
        err.message()
    );
    // The next attempt is another sandbox.
    let mut next = cfg.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let id1 = c.run_pod(next).await.expect("RunPodSandbox attempt 1");
    assert_ne!(id, id1);
    assert_eq!(c.list_pods(None).await.unwrap().len(), 2);
    // Once removed, the name is free again.
    c.stop_and_remove(&id).await;
    let id2 = c.run_pod(cfg).await.expect("RunPodSandbox after removal");
    c.stop_and_remove(&id1).await;
    c.stop_and_remove(&id2).await;
    c.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_runs_create_one_pod() {
    let c = Crius::start(Options::new()).await;
    let cfg = c.pod_config("twins");
    let request = || RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    };
    let (mut a, mut b) = (c.runtime(), c.runtime());
    let (ra, rb) = tokio::join!(a.run_pod_sandbox(request()), b.run_pod_sandbox(request()));
    let results = [ra, rb];
    let ok: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|r| r.get_ref().pod_sandbox_id.clone()))
        .collect();
    let errs: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        ok.len(),
        1,
        "exactly one RunPodSandbox must win: {results:?}"
    );
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].code(), Code::AlreadyExists, "{:?}", errs[0]);
    let pods = c.list_pods(None).await.unwrap();
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, ok[0]);
    c.pod_status(&ok[0]).await.unwrap();
    c.stop_and_remove(&ok[0]).await;
    c.assert_no_leaks().await;
}

fn ids(pods: &[crius_e2e::v1::PodSandbox]) -> BTreeSet<String> {
    pods.iter().map(|p| p.id.clone()).collect()
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn list_filters_by_id_prefix_state_and_labels() {
    let c = Crius::start(Options::new()).await;
    let run = async |name: &str, l: &[(&str, &str)]| {
        let mut cfg = c.pod_config(name);
        cfg.labels = labels(l);
        c.run_pod(cfg).await.expect("RunPodSandbox")
    };
    let a = run("a", &[("app", "a"), ("tier", "front")]).await;
    let b = run("b", &[("app", "b"), ("tier", "front")]).await;
    let d = run("d", &[("app", "a"), ("tier", "back")]).await;
    let all = [&a, &b, &d];
    let filter = |id: &str, state: Option<PodSandboxState>, l: &[(&str, &str)]| {
        Some(PodSandboxFilter {
            id: id.to_string(),
            state: state.map(|s| PodSandboxStateValue { state: s as i32 }),
            label_selector: labels(l),
        })
    };
    let list = async |f| ids(&c.list_pods(f).await.expect("ListPodSandbox"));

    assert_eq!(list(None).await, set(&all));
    assert_eq!(list(filter(&a, None, &[])).await, set(&[&a]));
    let prefix_len = (4..a.len())
        .find(|&n| all.iter().filter(|id| id.starts_with(&a[..n])).count() == 1)
        .expect("a unique prefix");
    assert_eq!(
        list(filter(&a[..prefix_len], None, &[])).await,
        set(&[&a]),
        "unique prefix"
    );
    assert!(
        list(filter("ffffffffffffffffffff", None, &[]))
            .await
            .is_empty()
    );
    assert_eq!(
        list(filter("", None, &[("app", "a")])).await,
        set(&[&a, &d])
    );
    assert_eq!(
        list(filter("", None, &[("app", "a"), ("tier", "front")])).await,
        set(&[&a])
    );
    assert!(list(filter("", None, &[("app", "zzz")])).await.is_empty());

    c.stop_pod(&b).await.unwrap();
    assert_eq!(
        list(filter("", Some(PodSandboxState::SandboxNotready), &[])).await,
        set(&[&b])
    );
    assert_eq!(
        list(filter("", Some(PodSandboxState::SandboxReady), &[])).await,
        set(&[&a, &d])
    );
    assert_eq!(
        list(filter(
            "",
            Some(PodSandboxState::SandboxReady),
            &[("tier", "front")]
        ))
        .await,
        set(&[&a])
    );
    assert!(
        list(filter(&b, Some(PodSandboxState::SandboxReady), &[]))
            .await
            .is_empty()
    );

    for id in all {
        c.stop_and_remove(id).await;
    }
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn host_network_pod_uses_the_host_namespace() {
    let c = Crius::start(Options::new()).await;
    let mut cfg = c.pod_config("hostnet");
    cfg.hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    set_namespaces(
        &mut cfg,
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    let id = c.run_pod(cfg).await.expect("RunPodSandbox hostNetwork");
    let st = c.pod_status(&id).await.unwrap();
    assert!(st.is_ready());
    let pid = st.pid().expect("pid");
    assert_eq!(
        procfs::ns_inode(pid, "net"),
        procfs::ns_inode(0, "net"),
        "pause not in the host netns"
    );
    assert!(
        !c.ns_file("netns", &id).exists(),
        "netns file for a host-network pod"
    );
    assert!(
        !c.in_subnet(st.ip()),
        "host-network pod got CNI IP {}",
        st.ip()
    );
    assert!(
        cni_result_ips(&st.info).is_empty(),
        "CNI ran for a host-network pod: {}",
        st.info
    );
    assert!(c.ip_reservations().is_empty());
    assert!(c.bridge_ports().unwrap().is_empty());
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn shared_pid_namespace_makes_pause_pid_1() {
    let c = Crius::start(Options::new()).await;
    let own_depth = procfs::nspid(std::process::id() as i32).unwrap().len();
    let mut cfg = c.pod_config("sharedpid");
    set_namespaces(
        &mut cfg,
        NamespaceMode::Pod,
        NamespaceMode::Pod,
        NamespaceMode::Pod,
    );
    let id = c.run_pod(cfg).await.expect("RunPodSandbox pid=POD");
    let pid = c.pod_status(&id).await.unwrap().pid().expect("pid");
    let nspid = procfs::nspid(pid).expect("NSpid");
    assert_eq!(
        nspid.len(),
        own_depth + 1,
        "pause not in a nested PID namespace: {nspid:?}"
    );
    assert_eq!(
        nspid.last(),
        Some(&1),
        "pause is not PID 1 of the pod: {nspid:?}"
    );
    assert_eq!(
        procfs::file_inode(&c.ns_file("pidns", &id)),
        procfs::ns_inode(pid, "pid")
    );

    // pid=CONTAINER: pause stays in our PID namespace.
    let id2 = c
        .run_pod(c.pod_config("ownpid"))
        .await
        .expect("RunPodSandbox");
    let pid2 = c.pod_status(&id2).await.unwrap().pid().expect("pid");
    assert_eq!(procfs::nspid(pid2).unwrap().len(), own_depth);

    c.stop_and_remove(&id).await;
    c.stop_and_remove(&id2).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn invalid_requests_name_the_field_and_leave_nothing() {
    let c = Crius::start(Options::new()).await;
    let mut cases: Vec<(&str, Option<PodSandboxConfig>)> = Vec::new();
    cases.push(("config", None));
    let mut cfg = c.pod_config("x");
    cfg.metadata = None;
    cases.push(("metadata", Some(cfg)));
    for field in ["name", "namespace", "uid"] {
        let mut cfg = c.pod_config("x");
        let m = cfg.metadata.as_mut().unwrap();
        match field {
            "name" => m.name.clear(),
            "namespace" => m.namespace.clear(),
            _ => m.uid.clear(),
        }
        cases.push((field, Some(cfg)));
    }
    for bad in ["Bad_Host!", "-leading-dash", &"a".repeat(64)] {
        let mut cfg = c.pod_config("x");
        cfg.hostname = bad.to_string();
        cases.push(("hostname", Some(cfg)));
    }
    let port = |container: i32, host: i32, protocol: i32| PortMapping {
        protocol,
        container_port: container,
        host_port: host,
        host_ip: String::new(),
    };
    for (pm, field) in [
        (port(0, 0, Protocol::Tcp as i32), "port"),
        (port(70000, 0, Protocol::Tcp as i32), "port"),
        (port(80, 70000, Protocol::Tcp as i32), "port"),
        (port(80, -1, Protocol::Tcp as i32), "port"),
        (port(80, 8080, 7), "protocol"),
    ] {
        let mut cfg = c.pod_config("x");
        cfg.port_mappings = vec![pm];
        cases.push((field, Some(cfg)));
    }
    for (field, config) in cases {
        let what = format!("{field}: {config:?}");
        let err = c
            .runtime()
            .run_pod_sandbox(RunPodSandboxRequest {
                config,
                runtime_handler: String::new(),
            })
            .await
            .expect_err(&format!("accepted invalid request ({what})"));
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().to_lowercase().contains(field),
            "{what}: message does not name {field:?}: {}",
            err.message()
        );
    }
    c.assert_no_leaks().await;
}

/// A CNI plugin that fails every ADD (code 7). It logs each call to `@DIR@/e2e-fail.calls` and keeps the
/// environment and stdin of the ADD in `@DIR@/e2e-fail.ADD.env` / `.json`.
const FAILING_PLUGIN: &str = r#"#!/bin/sh
echo "$CNI_COMMAND $CNI_CONTAINERID" >> "@DIR@/e2e-fail.calls"
case "$CNI_COMMAND" in
ADD)
  env | grep '^CNI_' > "@DIR@/e2e-fail.ADD.env"
  cat > "@DIR@/e2e-fail.ADD.json"
  echo '{"cniVersion":"1.0.0","code":7,"msg":"e2e induced failure","details":"this plugin fails every ADD"}'
  exit 1 ;;
VERSION)
  echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}' ;;
*)
  cat >/dev/null ;;
esac
exit 0
"#;

#[tokio::test]
async fn failing_cni_plugin_is_named_and_everything_is_undone() {
    let plugin = serde_json::json!({"type": "e2e-fail", "capabilities": {"portMappings": true}});
    let conflist = bridge_conflist("e2e-fail-net", &[plugin]);
    let c = Crius::start(
        Options::new()
            .plugin("e2e-fail", FAILING_PLUGIN)
            .conflist("10-e2e-fail.conflist", &conflist),
    )
    .await;
    let mut cfg = c.pod_config("cni-fail");
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 31234,
        host_ip: "127.0.0.1".into(),
    }];
    let uid = uid_of(&cfg);
    let err = c
        .run_pod(cfg)
        .await
        .expect_err("RunPodSandbox succeeded with a failing plugin");
    assert!(
        err.message().contains("e2e-fail"),
        "the error does not name the plugin: {}",
        err.message()
    );
    assert!(
        err.message().contains("e2e induced failure"),
        "the plugin's msg is lost: {}",
        err.message()
    );
    assert!(
        err.message().contains('7'),
        "the plugin's error code (7) is lost: {}",
        err.message()
    );
    let dir = &c.paths().dir;
    let calls = std::fs::read_to_string(dir.join("e2e-fail.calls")).unwrap_or_default();
    let add = calls
        .lines()
        .find(|l| l.starts_with("ADD "))
        .expect("the plugin never saw ADD");
    let container = add.trim_start_matches("ADD ");
    assert!(
        calls.lines().any(|l| l == format!("DEL {container}")),
        "no DEL after the failed ADD:\n{calls}"
    );

    // What the plugin was given: the CNI environment, the config with prevResult and runtimeConfig.
    let env = std::fs::read_to_string(dir.join("e2e-fail.ADD.env")).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not set for the plugin:\n{env}"))
            .to_string()
    };
    assert_eq!(var("CNI_IFNAME"), "eth0");
    assert!(
        Path::new(&var("CNI_NETNS")).starts_with(c.paths().state.join("netns")),
        "CNI_NETNS {}",
        var("CNI_NETNS")
    );
    assert!(var("CNI_PATH").contains(c.paths().plugin_dir.to_str().unwrap()));
    let args: Vec<String> = var("CNI_ARGS").split(';').map(str::to_string).collect();
    for want in [
        "IgnoreUnknown=1".to_string(),
        "K8S_POD_NAMESPACE=e2e".to_string(),
        "K8S_POD_NAME=cni-fail".to_string(),
        format!("K8S_POD_INFRA_CONTAINER_ID={container}"),
        format!("K8S_POD_UID={uid}"),
    ] {
        assert!(args.contains(&want), "CNI_ARGS lacks {want}: {args:?}");
    }
    let stdin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("e2e-fail.ADD.json")).unwrap())
            .expect("the plugin's stdin is not JSON");
    assert_eq!(stdin["name"], "e2e-fail-net");
    assert_eq!(stdin["type"], "e2e-fail");
    assert!(stdin["cniVersion"].is_string(), "{stdin}");
    assert!(
        stdin["prevResult"]["ips"].is_array(),
        "no prevResult from bridge: {stdin}"
    );
    let pm = &stdin["runtimeConfig"]["portMappings"];
    assert_eq!(
        pm,
        &serde_json::json!([{"hostPort": 31234, "containerPort": 8080, "protocol": "tcp", "hostIP": "127.0.0.1"}]),
        "runtimeConfig: {stdin}"
    );

    assert!(c.list_pods(None).await.unwrap().is_empty());
    assert!(
        !c.pod_cgroup_dir(&uid).exists(),
        "pod cgroup left after a failed run"
    );
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn missing_cni_plugin_is_named_and_everything_is_undone() {
    let conflist = bridge_conflist(
        "e2e-missing-net",
        &[serde_json::json!({"type": "crius-e2e-no-such-plugin"})],
    );
    let c = Crius::start(Options::new().conflist("10-e2e-missing.conflist", &conflist)).await;
    let err = c
        .run_pod(c.pod_config("cni-missing"))
        .await
        .expect_err("RunPodSandbox succeeded with a missing plugin");
    assert!(
        err.message().contains("crius-e2e-no-such-plugin"),
        "the error does not name the plugin: {}",
        err.message()
    );
    assert!(c.list_pods(None).await.unwrap().is_empty());
    c.assert_no_leaks().await;
}

/// Listens on `port` inside `netns`, reads one line, answers `reply`; returns the line.
fn serve_once_in_netns(
    netns: &Path,
    port: u16,
    reply: &'static str,
) -> (
    std::thread::JoinHandle<anyhow::Result<String>>,
    std::sync::mpsc::Receiver<()>,
) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = spawn_in_netns(netns, move || {
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        ready_tx.send(())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (stream, _) = loop {
            match listener.accept() {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        (&stream).write_all(reply.as_bytes())?;
        Ok(line)
    });
    (handle, ready_rx)
}

fn exchange(addr: SocketAddr, send: &str) -> String {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&stream).write_all(send.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    answer
}

#[tokio::test]
async fn pod_ip_is_reachable_from_the_host() {
    let c = Crius::start(Options::new()).await;
    let id = c
        .run_pod(c.pod_config("reachable"))
        .await
        .expect("RunPodSandbox");
    let ip = c.pod_status(&id).await.unwrap().ip().to_string();
    let (server, ready) =
        serve_once_in_netns(&c.ns_file("netns", &id), 8080, "pong from the pod\n");
    ready
        .recv_timeout(Duration::from_secs(10))
        .expect("listener in the pod never bound");
    let answer = exchange(
        format!("{ip}:8080").parse().unwrap(),
        "ping from the host\n",
    );
    assert_eq!(answer, "pong from the pod\n");
    let got = server.join().unwrap().expect("pod-side listener");
    assert_eq!(got, "ping from the host\n");
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_pods_in_parallel() {
    let c = Arc::new(Crius::start(Options::new()).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = Arc::clone(&c);
        tasks.spawn(async move {
            let id = c.run_pod(c.pod_config(&format!("par-{i}"))).await?;
            let st = c.pod_status(&id).await?;
            Ok::<_, tonic::Status>((id, st))
        });
    }
    let mut pods = Vec::new();
    while let Some(r) = tasks.join_next().await {
        pods.push(r.expect("task").expect("RunPodSandbox in parallel"));
    }
    let ips: BTreeSet<String> = pods.iter().map(|(_, st)| st.ip().to_string()).collect();
    assert_eq!(ips.len(), 20, "IPs are not distinct: {ips:?}");
    for (id, st) in &pods {
        assert!(st.is_ready(), "{id} not ready");
        assert!(c.in_subnet(st.ip()), "{} not in {}", st.ip(), c.subnet());
    }
    assert_eq!(c.list_pods(None).await.unwrap().len(), 20);
    assert_eq!(c.bridge_ports().unwrap().len(), 20);
    assert_eq!(c.ip_reservations().len(), 20);
    let mut removals = tokio::task::JoinSet::new();
    for (id, _) in pods {
        let c = Arc::clone(&c);
        removals.spawn(async move {
            c.stop_pod(&id).await?;
            c.remove_pod(&id).await
        });
    }
    while let Some(r) = removals.join_next().await {
        r.expect("task").expect("Stop/Remove in parallel");
    }
    c.assert_no_leaks().await;
}

fn nat_rules() -> String {
    procfs::run("iptables-save", &["-t", "nat"]).expect("iptables-save")
}

#[tokio::test]
async fn port_mappings_become_hostport_rules() {
    let c = Crius::start(Options::new()).await;
    let host_port = 40000 + (std::process::id() % 20000) as i32;
    let mut cfg = c.pod_config("ports");
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let id = c.run_pod(cfg).await.expect("RunPodSandbox with a hostPort");
    let rules = nat_rules();
    assert!(
        rules.contains("CNI-HOSTPORT"),
        "no CNI-HOSTPORT chain:\n{rules}"
    );
    assert!(rules.contains(&id), "no hostport rule for {id}:\n{rules}");
    assert!(
        rules.contains(&format!("--dport {host_port}")),
        "no rule for port {host_port}:\n{rules}"
    );

    // The host port on the bridge's address leads into the pod.
    let (server, ready) = serve_once_in_netns(&c.ns_file("netns", &id), 8080, "via hostPort\n");
    ready
        .recv_timeout(Duration::from_secs(10))
        .expect("listener in the pod never bound");
    let addr: SocketAddr = format!("{}:{host_port}", c.gateway()).parse().unwrap();
    assert_eq!(exchange(addr, "hello\n"), "via hostPort\n");
    assert_eq!(
        server.join().unwrap().expect("pod-side listener"),
        "hello\n"
    );

    c.stop_and_remove(&id).await;
    let rules = nat_rules();
    assert!(
        !rules.contains(&id),
        "hostport rules left for {id}:\n{rules}"
    );
    c.assert_no_leaks().await;
}

fn ifb_devices() -> BTreeSet<String> {
    let out = procfs::run("ip", &["-o", "link", "show", "type", "ifb"]).expect("ip link");
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn bandwidth_annotations_shape_the_pod_traffic() {
    let c = Crius::start(Options::new()).await;
    let ifb_before = ifb_devices();
    let mut cfg = c.pod_config("shaped");
    cfg.annotations = labels(&[
        ("kubernetes.io/ingress-bandwidth", "10M"),
        ("kubernetes.io/egress-bandwidth", "20M"),
    ]);
    let id = c
        .run_pod(cfg)
        .await
        .expect("RunPodSandbox with bandwidth annotations");
    let ports = c.bridge_ports().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    // "5: veth1234@if2: <...> ..." -> veth1234
    let veth = ports[0]
        .split(':')
        .nth(1)
        .and_then(|n| n.trim().split('@').next())
        .unwrap()
        .to_string();
    let qdisc = procfs::run("tc", &["qdisc", "show", "dev", &veth]).unwrap();
    assert!(
        qdisc.contains("tbf"),
        "no token bucket on {veth} for ingress:\n{qdisc}"
    );
    let new_ifb: Vec<String> = ifb_devices().difference(&ifb_before).cloned().collect();
    assert_eq!(
        new_ifb.len(),
        1,
        "no ifb device for egress shaping: {new_ifb:?}"
    );
    let ifb_qdisc = procfs::run("tc", &["qdisc", "show", "dev", &new_ifb[0]]).unwrap();
    assert!(
        ifb_qdisc.contains("tbf"),
        "no token bucket on {} for egress:\n{ifb_qdisc}",
        new_ifb[0]
    );
    c.stop_and_remove(&id).await;
    assert!(
        !Path::new("/sys/class/net").join(&new_ifb[0]).exists(),
        "ifb {} left after remove",
        new_ifb[0]
    );
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn pod_resources_report_what_cannot_be_enforced() {
    let c = Crius::start(Options::new()).await;
    let controllers =
        std::fs::read_to_string(c.cgroup_mount().join("cgroup.controllers")).unwrap_or_default();
    let available: Vec<&str> = controllers.split_whitespace().collect();
    let mut cfg = c.pod_config("limits");
    cfg.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        ..Default::default()
    });
    let id = c
        .run_pod(cfg)
        .await
        .expect("RunPodSandbox with pod resources");
    let st = c.pod_status(&id).await.unwrap();
    assert!(st.is_ready());
    let unenforced: Vec<String> = st.info["unenforcedLimits"]
        .as_array()
        .expect("unenforcedLimits array")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    for controller in ["memory", "cpu"] {
        let reported = unenforced.iter().any(|u| u.contains(controller));
        if available.contains(&controller) {
            assert!(
                !reported,
                "{controller} is available but reported unenforced: {unenforced:?}"
            );
        } else {
            assert!(
                reported,
                "{controller} limit silently dropped (controllers: {available:?}): {unenforced:?}"
            );
        }
    }
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn systemd_driver_expands_slices() {
    let c = Crius::start(Options::new().driver(Driver::Systemd)).await;
    let cfg = c.pod_config("slices");
    let uid = uid_of(&cfg);
    let id = c
        .run_pod(cfg)
        .await
        .expect("RunPodSandbox (systemd driver)");
    let st = c.pod_status(&id).await.unwrap();
    let pod_cg = c.pod_cgroup_dir(&uid);
    assert_eq!(st.info_str("cgroupPath"), Some(pod_cg.to_str().unwrap()));
    assert!(pod_cg.is_dir());
    let sandbox = pod_cg.join(format!("crius-{id}.scope"));
    assert_eq!(
        st.info_str("sandboxCgroupPath"),
        Some(sandbox.to_str().unwrap())
    );
    let rel = sandbox.strip_prefix(c.cgroup_mount()).unwrap();
    assert_eq!(
        procfs::cgroup_v2_path(st.pid().unwrap()),
        Some(format!("/{}", rel.display()))
    );
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn pod_without_cgroup_parent_goes_under_the_default_parent() {
    let c = Crius::start(Options::new()).await;
    let mut cfg = c.pod_config("noparent");
    cfg.linux.as_mut().unwrap().cgroup_parent.clear();
    let id = c.run_pod(cfg).await.expect("RunPodSandbox");
    let st = c.pod_status(&id).await.unwrap();
    let cg = Path::new(st.info_str("cgroupPath").expect("cgroupPath")).to_path_buf();
    assert_eq!(
        cg.parent(),
        Some(c.cgroup_dir().as_path()),
        "{}",
        cg.display()
    );
    assert!(cg.is_dir());
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn remove_stops_a_running_pod() {
    let c = Crius::start(Options::new()).await;
    let id = c
        .run_pod(c.pod_config("rm-running"))
        .await
        .expect("RunPodSandbox");
    let pid = c.pod_status(&id).await.unwrap().pid().unwrap();
    c.remove_pod(&id)
        .await
        .expect("RemovePodSandbox of a running pod");
    assert!(!procfs::is_alive(pid), "pause survived Remove");
    assert_eq!(c.pod_status(&id).await.unwrap_err().code(), Code::NotFound);
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn a_dead_pause_makes_the_pod_not_ready_and_it_still_cleans_up() {
    let c = Crius::start(Options::new()).await;
    let id = c
        .run_pod(c.pod_config("pause-dies"))
        .await
        .expect("RunPodSandbox");
    let pid = c.pod_status(&id).await.unwrap().pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let not_ready = wait_until(Duration::from_secs(10), async || {
        c.pod_status(&id).await.is_ok_and(|s| !s.is_ready())
    })
    .await;
    assert!(not_ready, "pod still Ready 10 s after its pause died");
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn a_dual_stack_network_reports_the_second_address_in_additional_ips() {
    // A private IPv6 ULA range next to the instance's IPv4 subnet, on the instance's own bridge.
    let v6 = format!("fd00:c1:{:x}::/64", std::process::id() & 0xffff);
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "dual",
        "plugins": [{
            "type": "bridge",
            "bridge": "@BRIDGE@",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": "@IPAM_DIR@",
                "ranges": [[{"subnet": "@SUBNET@", "gateway": "@GATEWAY@"}], [{"subnet": v6}]],
            }
        }]
    })
    .to_string();
    let c = Crius::start(Options::new().conflist("10-dual.conflist", &conflist)).await;
    let id = c.run_pod(c.pod_config("dual")).await.unwrap();
    let st = c.pod_status(&id).await.unwrap();
    let net = st.status.network.as_ref().expect("no network status");
    assert!(c.in_subnet(&net.ip), "{net:?}");
    let extra: Vec<&str> = net.additional_ips.iter().map(|i| i.ip.as_str()).collect();
    assert_eq!(extra.len(), 1, "{net:?}");
    let addr: std::net::Ipv6Addr = extra[0].parse().expect("not an IPv6 address");
    assert_eq!(
        addr.segments()[..3],
        [0xfd00, 0xc1, (std::process::id() & 0xffff) as u16],
        "{addr} outside {v6}"
    );
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn a_sysctl_the_kernel_refuses_fails_the_pod_and_everything_is_undone() {
    // Allowed by name (namespaced, well formed) but refused by the kernel when pause writes it.
    let c = Crius::start(Options::new()).await;
    let mut cfg = c.pod_config("kernel-refuses");
    cfg.linux.as_mut().unwrap().sysctls = labels(&[("net.core.somaxconn", "not-a-number")]);
    let err = c
        .run_pod(cfg)
        .await
        .expect_err("a sysctl the kernel refuses was accepted");
    assert!(
        err.message().contains("somaxconn"),
        "the error does not name the sysctl: {err:?}"
    );
    assert!(c.list_pods(None).await.unwrap().is_empty());
    c.assert_no_leaks().await;
}
