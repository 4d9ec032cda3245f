//! The container benchmark's figures: percentiles, means, the table with crius/containerd ratios, the JSON.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Latencies, Mem, Report, Runtime, RuntimeRun};

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

/// The latency series: (JSON key, table label, samples).
pub(crate) fn series(l: &Latencies) -> [(&'static str, &'static str, &[Duration]); 10] {
    [
        ("run_pod_sandbox", "RunPodSandbox", &l.run_pod),
        ("create_container", "CreateContainer", &l.create),
        ("start_container", "StartContainer", &l.start),
        ("create_start", "create+start", &l.create_start),
        ("pod_start", "pod start (runp+create+start)", &l.pod_start),
        ("stop_container", "StopContainer (timeout 0)", &l.stop),
        ("remove_container", "RemoveContainer", &l.remove),
        ("stop_pod_sandbox", "StopPodSandbox", &l.stop_pod),
        ("remove_pod_sandbox", "RemovePodSandbox", &l.remove_pod),
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
    for (key, label, samples) in series(&r.latencies) {
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

/// One row of a side-by-side table: a value per run (`None`: not measured there).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Figure {
    /// Its key in the JSON.
    pub(crate) key: String,
    pub(crate) label: String,
    pub(crate) values: Vec<Option<f64>>,
    /// Decimals shown in the table.
    pub(crate) decimals: usize,
}

impl Figure {
    /// The first run's value over the second's, when both were measured and the second is not zero.
    pub(crate) fn ratio(&self) -> Option<f64> {
        match self.values.as_slice() {
            [Some(a), Some(b), ..] if *b != 0.0 => Some(a / b),
            _ => None,
        }
    }
}

/// Rows of `figures` under a header of run `names`, and a ratio column (first run / second) when there are
/// two runs or more.
pub(crate) fn side_by_side(names: &[&str], figures: &[Figure]) -> String {
    let label_width = figures
        .iter()
        .map(|f| f.label.len())
        .chain([6])
        .max()
        .unwrap_or(6)
        + 2;
    let widths: Vec<usize> = names.iter().map(|n| n.len().max(9) + 1).collect();
    let with_ratio = names.len() >= 2;
    let mut out = format!("{:<label_width$}", "figure");
    for (name, w) in names.iter().zip(&widths) {
        out.push_str(&format!(" {name:>w$}"));
    }
    if with_ratio {
        out.push_str(&format!(" {:>7}", "ratio"));
    }
    out.push('\n');
    for f in figures {
        out.push_str(&format!("{:<label_width$}", f.label));
        for (k, w) in widths.iter().enumerate() {
            let cell = match f.values.get(k).copied().flatten() {
                Some(v) => format!("{v:.d$}", d = f.decimals),
                None => "-".into(),
            };
            out.push_str(&format!(" {cell:>w$}"));
        }
        if with_ratio {
            let ratio = f.ratio().map_or("-".into(), |r| format!("{r:.2}"));
            out.push_str(&format!(" {ratio:>7}"));
        }
        out.push('\n');
    }
    out
}

/// The ratios (first run / second) of `figures`, by key.
pub(crate) fn ratios(figures: &[Figure]) -> serde_json::Map<String, Value> {
    figures
        .iter()
        .filter_map(|f| Some((f.key.clone(), json!(f.ratio()?))))
        .collect()
}

/// The figures of crius and containerd side by side (a column for each that ran).
fn both(report: &Report) -> (Vec<&'static str>, Vec<Figure>) {
    let runs: Vec<&RuntimeRun> = [Runtime::Crius, Runtime::Containerd]
        .iter()
        .filter_map(|&rt| report.runs.iter().find(|r| r.runtime == rt))
        .collect();
    let names = runs.iter().map(|r| r.runtime.name()).collect();
    let per_run: Vec<_> = runs.iter().map(|r| figures(r)).collect();
    let rows = per_run.first().map(Vec::len).unwrap_or(0);
    let merged = (0..rows)
        .map(|i| {
            let (key, label, _, decimals) = per_run[0][i].clone();
            Figure {
                key,
                label,
                values: per_run.iter().map(|f| Some(f[i].2)).collect(),
                decimals,
            }
        })
        .collect();
    (names, merged)
}

/// The table: one row per figure, a column per runtime, and crius/containerd when both ran.
pub fn table(report: &Report) -> String {
    let (names, figures) = both(report);
    let mut out = format!(
        "{} pods (N) of {} busybox sleep containers each: {} container samples, {} pod samples\n",
        report.pods,
        report.containers,
        report.pods * report.containers,
        report.pods,
    );
    out.push_str(&side_by_side(&names, &figures));
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
    let latency: serde_json::Map<String, Value> = series(&r.latencies)
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
    let (names, figures) = both(report);
    let ratios = if names == [Runtime::Crius.name(), Runtime::Containerd.name()] {
        ratios(&figures)
    } else {
        serde_json::Map::new()
    };
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
    use super::super::PodProcesses;
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
                ..Default::default()
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
