//! The container benchmark's figures: percentiles, means, the table with crius/containerd ratios, the JSON.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Mem, Report, Runtime, RuntimeRun};

/// The `p`th percentile of `samples` (nearest rank: the smallest sample with at least p% of them at or
/// below it). With 10 samples p95 and p99 are both the largest.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn mean(values: impl Iterator<Item = u64>) -> f64 {
    let v: Vec<u64> = values.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }
}

/// The latency series of a run: (JSON key, table label, samples).
fn series(r: &RuntimeRun) -> [(&'static str, &'static str, &[Duration]); 6] {
    let l = &r.latencies;
    [
        ("run_pod_sandbox", "RunPodSandbox", &l.run_pod),
        ("create_container", "CreateContainer", &l.create),
        ("start_container", "StartContainer", &l.start),
        ("create_start", "create+start", &l.create_start),
        ("pod_start", "pod start (runp+create+start)", &l.pod_start),
        (
            "teardown",
            "teardown (stop+rm ctr, stop+rm pod)",
            &l.teardown,
        ),
    ]
}

/// The memory figures of a run, KiB: (JSON key, table label, value).
fn memory(r: &RuntimeRun) -> Vec<(&'static str, String, f64)> {
    let per_pod = |f: &dyn Fn(&super::PodProcesses) -> u64| mean(r.pods.iter().map(f));
    let pods_pss: u64 = r
        .pods
        .iter()
        .map(|p| p.pause.pss_kib + p.helper.pss_kib)
        .sum();
    vec![
        (
            "pause_rss_kib",
            "pause RSS KiB/pod".into(),
            per_pod(&|p| p.pause.rss_kib),
        ),
        (
            "pause_pss_kib",
            "pause PSS KiB/pod".into(),
            per_pod(&|p| p.pause.pss_kib),
        ),
        (
            "helper_rss_kib",
            "monitor|shim RSS KiB/pod".into(),
            per_pod(&|p| p.helper.rss_kib),
        ),
        (
            "helper_pss_kib",
            "monitor|shim PSS KiB/pod".into(),
            per_pod(&|p| p.helper.pss_kib),
        ),
        (
            "per_pod_pss_kib",
            "per-pod overhead PSS KiB (pause+helper)".into(),
            per_pod(&|p| p.pause.pss_kib + p.helper.pss_kib),
        ),
        (
            "daemon_rss_kib_idle",
            "daemon RSS KiB, 0 pods".into(),
            r.daemon_idle.rss_kib as f64,
        ),
        (
            "daemon_rss_kib_loaded",
            "daemon RSS KiB, N pods".into(),
            r.daemon_loaded.rss_kib as f64,
        ),
        (
            "daemon_pss_kib_idle",
            "daemon PSS KiB, 0 pods".into(),
            r.daemon_idle.pss_kib as f64,
        ),
        (
            "daemon_pss_kib_loaded",
            "daemon PSS KiB, N pods".into(),
            r.daemon_loaded.pss_kib as f64,
        ),
        (
            "total_pss_kib_loaded",
            "total PSS KiB, N pods (daemon+per-pod)".into(),
            (r.daemon_loaded.pss_kib + pods_pss) as f64,
        ),
    ]
}

/// Every figure of a run: (JSON key, table label, value, unit decimals).
fn figures(r: &RuntimeRun) -> Vec<(String, String, f64, usize)> {
    let mut out = Vec::new();
    for (key, label, samples) in series(r) {
        for p in [50.0, 95.0, 99.0] {
            out.push((
                format!("{key}_p{p}_ms"),
                format!("{label} p{p} ms"),
                percentile(samples, p).as_secs_f64() * 1000.0,
                1,
            ));
        }
    }
    for (key, label, value) in memory(r) {
        out.push((key.to_string(), label, value, 0));
    }
    out
}

/// The table: one row per figure, a column per runtime, and crius/containerd when both ran.
pub fn table(report: &Report) -> String {
    let crius = report.runs.iter().find(|r| r.runtime == Runtime::Crius);
    let containerd = report
        .runs
        .iter()
        .find(|r| r.runtime == Runtime::Containerd);
    let (a, b) = (crius.map(figures), containerd.map(figures));
    let rows = a.as_ref().or(b.as_ref()).map(Vec::len).unwrap_or(0);
    let mut out = format!(
        "{} pods (N) of {} busybox sleep containers each: {} container samples, {} pod samples\n\
         {:<44} {:>10} {:>11} {:>8}\n",
        report.pods,
        report.containers,
        report.pods * report.containers,
        report.pods,
        "figure",
        "crius",
        "containerd",
        "ratio"
    );
    for i in 0..rows {
        let cell = |f: &Option<Vec<(String, String, f64, usize)>>| {
            f.as_ref().map(|f| (f[i].1.clone(), f[i].2, f[i].3))
        };
        let (x, y) = (cell(&a), cell(&b));
        let label = x
            .as_ref()
            .or(y.as_ref())
            .map(|c| c.0.clone())
            .unwrap_or_default();
        let show = |c: &Option<(String, f64, usize)>| match c {
            Some((_, v, d)) => format!("{v:.d$}", d = *d),
            None => "-".into(),
        };
        let ratio = match (&x, &y) {
            (Some((_, cv, _)), Some((_, dv, _))) if *dv > 0.0 => format!("{:.2}", cv / dv),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<44} {:>10} {:>11} {:>8}\n",
            label,
            show(&x),
            show(&y),
            ratio
        ));
    }
    out.push_str(
        "ratio is crius / containerd (below 1: crius is faster or smaller); monitor|shim is crius-monitor or \
         containerd-shim-runc-v2\n",
    );
    out
}

fn mem_json(m: &Mem) -> Value {
    json!({ "pid": m.pid, "rss_kib": m.rss_kib, "pss_kib": m.pss_kib })
}

fn run_json(r: &RuntimeRun) -> Value {
    let latency: serde_json::Map<String, Value> = series(r)
        .iter()
        .map(|(key, _, samples)| {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            (
                key.to_string(),
                json!({
                    "p50_ms": ms(percentile(samples, 50.0)),
                    "p95_ms": ms(percentile(samples, 95.0)),
                    "p99_ms": ms(percentile(samples, 99.0)),
                    "samples_ms": samples.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let memory: serde_json::Map<String, Value> = memory(r)
        .into_iter()
        .map(|(key, _, v)| (key.to_string(), json!(v)))
        .collect();
    json!({
        "runtime": r.runtime.name(),
        "helper": r.runtime.helper(),
        "bridge": r.bridge,
        "latency": latency,
        "memory": memory,
        "daemon_idle": mem_json(&r.daemon_idle),
        "daemon_loaded": mem_json(&r.daemon_loaded),
        "pods": r.pods.iter().map(|p| json!({
            "pod_id": p.pod_id,
            "pause": mem_json(&p.pause),
            "helper": mem_json(&p.helper),
            "container_pids": p.container_pids,
        })).collect::<Vec<_>>(),
        "cgroups": r.cgroups,
        "problems": r.problems,
    })
}

/// The report as JSON: every sample and figure per runtime, the crius/containerd ratios, the host check.
pub fn json(report: &Report) -> Value {
    let crius = report.runs.iter().find(|r| r.runtime == Runtime::Crius);
    let containerd = report
        .runs
        .iter()
        .find(|r| r.runtime == Runtime::Containerd);
    let mut ratios = serde_json::Map::new();
    if let (Some(a), Some(b)) = (crius, containerd) {
        for (x, y) in figures(a).into_iter().zip(figures(b)) {
            if y.2 > 0.0 {
                ratios.insert(x.0, json!(x.2 / y.2));
            }
        }
    }
    json!({ "container": {
        "pods": report.pods,
        "containers_per_pod": report.containers,
        "bench_pid": report.bench_pid,
        "runtimes": report.runs.iter().map(run_json).collect::<Vec<_>>(),
        "ratios": ratios,
        "own_cgroups": report.own_cgroups,
        "left": report.left,
    }})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Latencies, PodProcesses};
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = ms(&[10, 1, 9, 2, 8, 3, 7, 4, 6, 5]);
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&s, 95.0), Duration::from_millis(10));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&ms(&[7]), 50.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    fn run(runtime: Runtime, lat: u64, kib: u64) -> RuntimeRun {
        let m = |pid| Mem {
            pid,
            rss_kib: kib,
            pss_kib: kib / 2,
        };
        RuntimeRun {
            runtime,
            bridge: "br".into(),
            latencies: Latencies {
                run_pod: ms(&[lat]),
                create: ms(&[lat]),
                start: ms(&[lat]),
                create_start: ms(&[2 * lat]),
                pod_start: ms(&[3 * lat]),
                teardown: ms(&[lat]),
            },
            daemon_idle: m(1),
            daemon_loaded: m(1),
            pods: vec![PodProcesses {
                pod_id: "p".into(),
                pause: m(2),
                helper: m(3),
                container_pids: vec![4],
            }],
            cgroups: Vec::new(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn table_and_json_have_ratios() {
        let report = Report {
            pods: 1,
            containers: 1,
            bench_pid: 1,
            runs: vec![
                run(Runtime::Crius, 10, 1000),
                run(Runtime::Containerd, 40, 4000),
            ],
            own_cgroups: Vec::new(),
            left: Vec::new(),
        };
        let t = table(&report);
        let line = t
            .lines()
            .find(|l| l.starts_with("RunPodSandbox p50"))
            .unwrap();
        assert!(line.ends_with("0.25"), "{t}");
        let j = json(&report);
        let r = &j["container"]["ratios"];
        assert_eq!(r["pause_rss_kib"].as_f64(), Some(0.25));
        assert_eq!(r["pod_start_p50_ms"].as_f64(), Some(0.25));
        assert_eq!(
            j["container"]["runtimes"][1]["latency"]["run_pod_sandbox"]["p50_ms"].as_f64(),
            Some(40.0)
        );
    }
}
