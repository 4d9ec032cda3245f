//! Smoke runs of the benchmark tool (`crius-bench`), so it cannot rot: a tiny pull benchmark with every tool,
//! a 2-pod container benchmark and a small CRI benchmark (a few pods, a few churn cycles) on crius and
//! containerd, each followed by a leak check from outside, the CRI benchmark against an endpoint it did not
//! start (a crius of this test), and a short streaming churn (exec sessions, the agent's descriptors before and
//! after), through the real binary, checked for sane figures. Not timed tests: nothing here compares speeds.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `crius-bench ARGS --json FILE` (ARGS split at spaces) with its own TMPDIR (`tmp`: every dir of the run goes there and must
/// be gone after), fails the test unless it succeeds, and returns its stdout and the JSON report.
fn bench(tmp: &Path, args: &str) -> (String, Value) {
    let json = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crius-bench"))
        .env("TMPDIR", tmp)
        .args(args.split_whitespace())
        .arg("--json")
        .arg(json.path())
        .output()
        .expect("cannot run crius-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap_or_default())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "crius-bench failed:\n{stdout}\n{stderr}\n{report:#}"
    );
    (stdout, report)
}

/// The host dirs containerd writes to that do not exist now (they must not exist after the run either).
fn absent_host_dirs() -> Vec<&'static str> {
    ["/run/containerd", "/var/lib/cni"]
        .into_iter()
        .filter(|d| !Path::new(d).exists())
        .collect()
}

/// The ratio (the last column) of the table row that starts with `label`, checked to be a number.
fn ratio_of_row(stdout: &str, label: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} row:\n{stdout}"));
    let ratio = line.split_whitespace().last().unwrap();
    ratio.parse().unwrap_or_else(|_| panic!("no ratio: {line}"))
}

/// The leak check, from outside: nothing of the benchmark's runtimes outlives it. `pids` are the per-pod
/// processes and containers it recorded, `bridges` the bridges it made; `host_dirs` from [`absent_host_dirs`].
fn leaks_from_outside(
    bench_pid: u64,
    pids: &[i32],
    bridges: &[&str],
    tmp: &Path,
    host_dirs: &[&str],
) -> Vec<String> {
    let tmp_path = tmp.to_string_lossy().into_owned();
    let mut leaks = Vec::new();
    for &pid in pids {
        // A live process at a recorded pid is a leak unless the pid was reused by something else.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if crius_e2e::procfs::is_alive(pid)
            && ["sleep", "crius-", "containerd-shim"]
                .iter()
                .any(|w| cmdline.contains(w))
        {
            leaks.push(format!("process {pid} still alive: {cmdline}"));
        }
    }
    for bridge in bridges {
        if Path::new("/sys/class/net").join(bridge).exists() {
            leaks.push(format!("bridge {bridge} left"));
        }
    }
    let ours = [
        format!("crius-bench-{bench_pid}-"),
        format!("crius-e2e-{bench_pid}-"),
    ];
    for pid in crius_e2e::procfs::all_pids() {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if ours.iter().any(|o| cgroups.contains(o)) || cmdline.contains(&tmp_path) {
            leaks.push(format!("process {pid} left: {cmdline}"));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for entry in std::fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ours.iter().any(|o| name.starts_with(o)) {
                leaks.push(format!("cgroup left: {}", entry.path().display()));
            }
        }
    }
    for d in host_dirs {
        if Path::new(d).exists() {
            leaks.push(format!("{d} was created and not removed"));
        }
    }
    for m in crius_e2e::procfs::mounts_under(tmp) {
        leaks.push(format!("mount left: {}", m.line));
    }
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if !left.is_empty() {
        leaks.push(format!("left behind in TMPDIR: {left:?}"));
    }
    leaks
}

#[test]
fn pull_benchmark_runs_every_tool_and_reports_figures() {
    // Registry, crius, containerd and skopeo dirs all go to its TMPDIR.
    let tmp = tempfile::tempdir().unwrap();
    let (stdout, report) = bench(
        tmp.path(),
        "pull --sizes 3 --layers 2 --runs 1 --tools crius,containerd,skopeo",
    );
    let rows = report["pull"].as_array().unwrap();
    let tools: Vec<&str> = rows.iter().map(|r| r["tool"].as_str().unwrap()).collect();
    assert_eq!(tools, ["crius", "containerd", "skopeo"], "{report:#}");
    for row in rows {
        assert!(row["wall_s"].as_f64().unwrap() > 0.0, "{row}");
        // Every tool has to hold at least a few MiB of code and buffers to pull anything.
        assert!(row["peak_rss_kib"].as_u64().unwrap() > 1024, "{row}");
        assert!(row["compressed_mib"].as_f64().unwrap() > 1.0, "{row}");
    }
    // The table has a ratio for each other tool.
    for tool in ["containerd", "skopeo"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(tool))
            .unwrap_or_else(|| panic!("no {tool} row:\n{stdout}"));
        let ratio = line.split_whitespace().nth(6).unwrap();
        assert!(ratio.parse::<f64>().is_ok(), "{line}");
    }
    // Every instance cleaned up after itself.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
    assert!(
        crius_e2e::procfs::mounts_under(tmp.path()).is_empty(),
        "mounts left under TMPDIR"
    );
}

#[test]
fn container_benchmark_runs_both_runtimes_and_leaves_nothing() {
    // Registry, crius, containerd and IPAM dirs all go to its TMPDIR.
    let tmp = tempfile::tempdir().unwrap();
    let host_dirs = absent_host_dirs();
    let (stdout, report) = bench(
        tmp.path(),
        "container --pods 2 --containers 2 --runtimes crius,containerd",
    );
    let report = &report["container"];
    let runs = report["runtimes"].as_array().unwrap();
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["runtime"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["crius", "containerd"], "{report:#}");
    let mut pids = Vec::new();
    for run in runs {
        for (name, series) in run["latency"].as_object().unwrap() {
            let samples = series["samples_ms"].as_array().unwrap();
            // One sample per container for the container RPCs, one per pod for the rest.
            let per_container = [
                "create_container",
                "start_container",
                "create_start",
                "stop_container",
                "remove_container",
            ];
            let expected = if per_container.contains(&name.as_str()) {
                4
            } else {
                2
            };
            assert_eq!(samples.len(), expected, "{name}: {run}");
            assert!(samples.iter().all(|s| s.as_f64().unwrap() > 0.0), "{run}");
        }
        for pod in run["pods"].as_array().unwrap() {
            assert_eq!(pod["container_pids"].as_array().unwrap().len(), 2, "{pod}");
            for part in ["pause", "helper"] {
                assert!(pod[part]["rss_kib"].as_u64().unwrap() > 0, "{pod}");
                assert!(pod[part]["pss_kib"].as_u64().unwrap() > 0, "{pod}");
                pids.push(pod[part]["pid"].as_i64().unwrap() as i32);
            }
            let workload = pod["container_pids"].as_array().unwrap();
            pids.extend(workload.iter().map(|p| p.as_i64().unwrap() as i32));
        }
        // A daemon holds at least a few MiB of code and heap.
        assert!(
            run["daemon_loaded"]["rss_kib"].as_u64().unwrap() > 1024,
            "{run}"
        );
        assert_eq!(run["problems"], serde_json::json!([]), "{run}");
    }
    assert!(report["ratios"]["pod_start_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(ratio_of_row(&stdout, "pod start (runp+create+start) p50 ms") > 0.0);

    let bridges: Vec<&str> = runs.iter().map(|r| r["bridge"].as_str().unwrap()).collect();
    let bench_pid = report["bench_pid"].as_u64().unwrap();
    let leaks = leaks_from_outside(bench_pid, &pids, &bridges, tmp.path(), &host_dirs);
    assert!(leaks.is_empty(), "leaks:\n  {}", leaks.join("\n  "));
}

/// The figures of a CRI benchmark run that every runtime must have, and the ones only a runtime the benchmark
/// started has (the per-pod processes).
fn check_cri_run(run: &Value, pods: u64, started: bool) {
    let f = &run["figures"];
    let positive = |key: &str| {
        assert!(
            f[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} is {}: {run:#}",
            f[key]
        )
    };
    for rpc in [
        "run_pod_sandbox",
        "stop_pod_sandbox",
        "remove_pod_sandbox",
        "create_container",
        "start_container",
        "stop_container",
        "remove_container",
        "create_start",
        "pod_start",
        "density_pod_start",
        "churn_cycle",
    ] {
        for p in [50, 95, 99] {
            positive(&format!("{rpc}_p{p}_ms"));
        }
    }
    assert_eq!(
        f["density_pods_running"].as_f64(),
        Some(pods as f64),
        "{run:#}"
    );
    assert_eq!(f["density_errors"].as_f64(), Some(0.0), "{run:#}");
    assert_eq!(f["churn_errors"].as_f64(), Some(0.0), "{run:#}");
    for key in ["density_start_s", "density_teardown_s"] {
        positive(key);
    }
    for n in [0, 1, pods] {
        positive(&format!("mem_{n}_daemon_rss_kib"));
        positive(&format!("mem_{n}_daemon_pss_kib"));
    }
    positive("churn_daemon_fds_before");
    // No descriptor kept by the churn (the run fails otherwise; here it is read from the figures).
    assert!(
        f["churn_daemon_fds_after"].as_f64() <= f["churn_daemon_fds_before"].as_f64(),
        "{run:#}"
    );
    let checkpoints = run["density"]["checkpoints"].as_array().unwrap();
    let at: Vec<u64> = checkpoints
        .iter()
        .map(|c| c["pods"].as_u64().unwrap())
        .collect();
    assert_eq!(at, [0, 1, pods], "{run:#}");
    if started {
        for key in [
            "mem_1_pods_pss_kib",
            "pause_pss_kib",
            "helper_pss_kib",
            "per_pod_pss_kib",
            "churn_helper_fds_before",
        ] {
            positive(key);
        }
        positive(&format!("mem_{pods}_total_pss_kib"));
        assert!(
            f["churn_helper_fds_after"].as_f64() <= f["churn_helper_fds_before"].as_f64(),
            "{run:#}"
        );
    } else {
        assert!(f["helper_pss_kib"].is_null(), "{run:#}");
        assert!(f["mem_1_pods_pss_kib"].is_null(), "{run:#}");
    }
    assert_eq!(run["problems"], serde_json::json!([]), "{run:#}");
}

#[test]
fn cri_benchmark_runs_both_runtimes_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let host_dirs = absent_host_dirs();
    let (stdout, report) = bench(
        tmp.path(),
        "cri --runtimes crius,containerd --samples 2 --pods 3 --batch 2 --churn 3",
    );
    let report = &report["cri"];
    let runs = report["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["crius", "containerd"], "{report:#}");
    for run in runs {
        check_cri_run(run, 3, true);
    }
    assert!(report["ratios"]["pod_start_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(report["ratios"]["mem_3_total_pss_kib"].as_f64().unwrap() > 0.0);
    for row in [
        "RunPodSandbox p50 ms",
        "StopPodSandbox p99 ms",
        "RemoveContainer p50 ms",
        "pod start under load p95 ms",
        "total PSS KiB, 3 pods",
        "cycle p50 ms",
    ] {
        assert!(ratio_of_row(&stdout, row) > 0.0);
    }
    assert_eq!(report["targets"].as_array().unwrap().len(), 5, "{report:#}");
    assert!(stdout.contains("zero leaks after churn"), "{stdout}");

    let pids: Vec<i32> = runs
        .iter()
        .flat_map(|r| r["recorded_pids"].as_array().unwrap())
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    // Pauses, monitors or shims and containers of 3 pods and the churn pod, on each runtime.
    assert!(pids.len() >= 2 * (3 * 3 + 2), "{pids:?}");
    let bridges: Vec<&str> = runs.iter().map(|r| r["bridge"].as_str().unwrap()).collect();
    let bench_pid = report["bench_pid"].as_u64().unwrap();
    let leaks = leaks_from_outside(bench_pid, &pids, &bridges, tmp.path(), &host_dirs);
    assert!(leaks.is_empty(), "leaks:\n  {}", leaks.join("\n  "));
}

/// "Any CRI endpoint": a crius this test started is driven over its socket, not started or stopped by the
/// benchmark; with its pid, the daemon's memory and descriptors are measured. Pod churn this time.
#[tokio::test(flavor = "multi_thread")]
async fn cri_benchmark_drives_an_endpoint_it_did_not_start() {
    let crius = crius_e2e::Crius::start(crius_e2e::Options::new()).await;
    let tmp = tempfile::tempdir().unwrap();
    let args = format!(
        "cri --endpoint mine=unix://{} --pid mine={} --samples 2 --pods 2 --batch 2 --churn 3 \
         --churn-kind pod",
        crius.paths().socket.display(),
        crius.pid().unwrap()
    );
    let (stdout, report) = tokio::task::block_in_place(|| bench(tmp.path(), &args));
    let report = &report["cri"];
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{report:#}");
    assert_eq!(runs[0]["name"], "mine", "{report:#}");
    assert_eq!(runs[0]["churn"]["kind"], "pod", "{report:#}");
    check_cri_run(&runs[0], 2, false);
    assert!(!stdout.contains("ratio is"), "{stdout}");
    assert!(crius.is_running(), "the benchmark stopped its endpoint");
    crius.assert_no_leaks().await;
    let bench_pid = report["bench_pid"].as_u64().unwrap();
    let leaks = leaks_from_outside(bench_pid, &[], &[], tmp.path(), &[]);
    assert!(leaks.is_empty(), "leaks:\n  {}", leaks.join("\n  "));
}

#[test]
fn streaming_benchmark_runs_sessions_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (stdout, report) = bench(tmp.path(), "streaming --sessions 30 --concurrency 5");
    let r = &report["streaming"];
    assert_eq!(r["sessions"], 30, "{r:#}");
    assert_eq!(r["failures"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["helpers_left"], serde_json::json!([]), "{r:#}");
    assert!(r["session_p50_ms"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(
        r["agent_fds_after"].as_u64().unwrap() <= r["agent_fds_before"].as_u64().unwrap(),
        "{r:#}"
    );
    assert!(stdout.contains("agent descriptors:"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}
