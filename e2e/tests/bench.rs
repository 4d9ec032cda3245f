//! Smoke runs of the benchmark tool (`crius-bench`), so it cannot rot: a tiny pull benchmark with every tool,
//! a 2-pod container benchmark on crius and containerd followed by a leak check from outside, and a short
//! streaming churn (exec sessions, the agent's descriptors before and after), through the
//! real binary, checked for sane figures. Not timed tests: nothing here compares speeds.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

use serde_json::Value;

#[test]
fn pull_benchmark_runs_every_tool_and_reports_figures() {
    let json = tempfile::NamedTempFile::new().unwrap();
    // Its own TMPDIR: registry, crius, containerd and skopeo dirs all go there, and must all be gone after.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crius-bench"))
        .env("TMPDIR", tmp.path())
        .args(["pull", "--sizes", "3", "--layers", "2", "--runs", "1"])
        .args(["--tools", "crius,containerd,skopeo", "--json"])
        .arg(json.path())
        .output()
        .expect("cannot run crius-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "crius-bench failed:\n{stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
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
    let json = tempfile::NamedTempFile::new().unwrap();
    // Its own TMPDIR: registry, crius, containerd and IPAM dirs all go there, and must all be gone after.
    let tmp = tempfile::tempdir().unwrap();
    let host_dirs: Vec<&str> = ["/run/containerd", "/var/lib/cni"]
        .into_iter()
        .filter(|d| !std::path::Path::new(d).exists())
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_crius-bench"))
        .env("TMPDIR", tmp.path())
        .args(["container", "--pods", "2", "--containers", "2"])
        .args(["--runtimes", "crius,containerd"])
        .arg("--json")
        .arg(json.path())
        .output()
        .expect("cannot run crius-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap_or_default())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "crius-bench failed:\n{stdout}\n{stderr}\n{report:#}"
    );
    let report = &report["container"];
    let runs = report["runtimes"].as_array().unwrap();
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["runtime"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["crius", "containerd"], "{report:#}");
    for run in runs {
        for (name, series) in run["latency"].as_object().unwrap() {
            let samples = series["samples_ms"].as_array().unwrap();
            // One sample per container for the container RPCs, one per pod for the rest.
            let per_container = ["create_container", "start_container", "create_start"];
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
            }
        }
        // A daemon holds at least a few MiB of code and heap.
        assert!(
            run["daemon_loaded"]["rss_kib"].as_u64().unwrap() > 1024,
            "{run}"
        );
        assert_eq!(run["problems"], serde_json::json!([]), "{run}");
    }
    assert!(report["ratios"]["pod_start_p50_ms"].as_f64().unwrap() > 0.0);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pod start (runp+create+start) p50 ms"))
        .unwrap_or_else(|| panic!("no pod start row:\n{stdout}"));
    let ratio = line.split_whitespace().last().unwrap();
    assert!(ratio.parse::<f64>().is_ok(), "{line}");

    // The leak check, from outside: nothing of either runtime outlives the benchmark.
    let bench_pid = report["bench_pid"].as_u64().unwrap();
    let tmp_path = tmp.path().to_string_lossy().into_owned();
    let mut leaks = Vec::new();
    for run in runs {
        for pod in run["pods"].as_array().unwrap() {
            let workload = pod["container_pids"].as_array().unwrap();
            for pid in [&pod["pause"]["pid"], &pod["helper"]["pid"]]
                .into_iter()
                .chain(workload)
            {
                let pid = pid.as_i64().unwrap() as i32;
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
        }
        let bridge = run["bridge"].as_str().unwrap();
        if std::path::Path::new("/sys/class/net").join(bridge).exists() {
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
        if std::path::Path::new(d).exists() {
            leaks.push(format!("{d} was created and not removed"));
        }
    }
    for m in crius_e2e::procfs::mounts_under(tmp.path()) {
        leaks.push(format!("mount left: {}", m.line));
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if !left.is_empty() {
        leaks.push(format!("left behind in TMPDIR: {left:?}"));
    }
    assert!(leaks.is_empty(), "leaks:\n  {}", leaks.join("\n  "));
}

#[test]
fn streaming_benchmark_runs_sessions_and_leaves_nothing() {
    let json = tempfile::NamedTempFile::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crius-bench"))
        .env("TMPDIR", tmp.path())
        .args([
            "streaming",
            "--sessions",
            "30",
            "--concurrency",
            "5",
            "--json",
        ])
        .arg(json.path())
        .output()
        .expect("cannot run crius-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap_or_default())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "crius-bench failed:\n{stdout}\n{stderr}\n{report:#}"
    );
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
