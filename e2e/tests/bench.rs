//! Smoke run of the benchmark tool (`crius-bench`), so it cannot rot: a tiny pull benchmark with every tool,
//! through the real binary, checked for sane figures. Not a timed test: nothing here compares speeds.
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
