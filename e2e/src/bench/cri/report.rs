//! The CRI benchmark's figures: a table per phase with a column per runtime and the ratio first / second (crius
//! / containerd by default), the targets checked against them, and the JSON with every sample.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Checkpoint, CriReport, CriRun, Density, PodsMem, ProcState};
use crate::bench::container::report::{Figure, percentile, ratios, series, side_by_side};

/// A figure of one run: (section, JSON key, table label, value, decimals).
type Cell = (Section, String, String, Option<f64>, usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Latency,
    Density,
    Memory,
    Churn,
}

const SECTIONS: [Section; 4] = [
    Section::Latency,
    Section::Density,
    Section::Memory,
    Section::Churn,
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The figures of one run, section by section.
struct Cells {
    section: Section,
    out: Vec<Cell>,
}

impl Cells {
    fn add(
        &mut self,
        key: impl Into<String>,
        label: impl Into<String>,
        v: Option<f64>,
        decimals: usize,
    ) {
        self.out
            .push((self.section, key.into(), label.into(), v, decimals));
    }

    /// p50, p95 and p99 of `samples` in ms (nothing when there are none).
    fn percentiles(&mut self, key: &str, label: &str, samples: &[Duration]) {
        for p in [50.0, 95.0, 99.0] {
            let v = (!samples.is_empty()).then(|| ms(percentile(samples, p)));
            self.add(format!("{key}_p{p}_ms"), format!("{label} p{p} ms"), v, 1);
        }
    }
}

fn fds(s: Option<ProcState>) -> Option<f64> {
    s.map(|s| s.fds as f64)
}

fn rss(s: Option<ProcState>) -> Option<f64> {
    s.map(|s| s.mem.rss_kib as f64)
}

/// Every figure of a run, in table order.
fn cells(r: &CriRun) -> Vec<Cell> {
    let mut c = Cells {
        section: Section::Latency,
        out: Vec::new(),
    };
    for (key, label, samples) in series(&r.latency) {
        c.percentiles(key, label, samples);
    }
    c.section = Section::Density;
    let d = &r.density;
    let ran = d.checkpoints.iter().any(|c| c.pods > 0);
    for (key, label, v, decimals) in [
        ("density_pods_running", "pods running", d.started as f64, 0),
        ("density_errors", "failed calls", d.errors.len() as f64, 0),
        (
            "density_start_s",
            "start of all pods, s",
            d.start_total.as_secs_f64(),
            2,
        ),
    ] {
        c.add(key, label, ran.then_some(v), decimals);
    }
    c.percentiles("density_pod_start", "pod start under load", &d.pod_start);
    let teardown = ran.then_some(d.teardown_total.as_secs_f64());
    c.add("density_teardown_s", "teardown of all pods, s", teardown, 2);
    c.section = Section::Memory;
    memory(&mut c, d);
    c.section = Section::Churn;
    let ch = &r.churn;
    c.percentiles("churn_cycle", "cycle", &ch.cycle);
    let churned = !ch.cycle.is_empty() || !ch.errors.is_empty();
    c.add(
        "churn_total_s",
        "all cycles, s",
        churned.then_some(ch.total.as_secs_f64()),
        1,
    );
    c.add(
        "churn_errors",
        "failed cycles",
        churned.then_some(ch.errors.len() as f64),
        0,
    );
    for (key, label, before, after) in [
        ("daemon", "daemon", ch.daemon_before, ch.daemon_after),
        ("helper", "monitor|shim", ch.helper_before, ch.helper_after),
    ] {
        c.add(
            format!("churn_{key}_fds_before"),
            format!("{label} fds before"),
            fds(before),
            0,
        );
        c.add(
            format!("churn_{key}_fds_after"),
            format!("{label} fds after"),
            fds(after),
            0,
        );
        c.add(
            format!("churn_{key}_rss_kib_before"),
            format!("{label} RSS KiB before"),
            rss(before),
            0,
        );
        c.add(
            format!("churn_{key}_rss_kib_after"),
            format!("{label} RSS KiB after"),
            rss(after),
            0,
        );
    }
    c.out
}

/// The memory figures: at each checkpoint, per pod at the last one, and the daemon after the teardown.
fn memory(c: &mut Cells, d: &Density) {
    let kib = |v: Option<u64>| v.map(|v| v as f64);
    for cp in &d.checkpoints {
        let n = cp.pods;
        let daemon = cp.daemon.map(|s| s.mem);
        let pods_pss = cp.pods_mem.map(|m| m.pause_pss_kib + m.helper_pss_kib);
        let pods_rss = cp.pods_mem.map(|m| m.pause_rss_kib + m.helper_rss_kib);
        let total = |own: Option<u64>, per_pod: Option<u64>| Some(own? + per_pod?);
        let (daemon_rss, daemon_pss) = (daemon.map(|m| m.rss_kib), daemon.map(|m| m.pss_kib));
        c.add(
            format!("mem_{n}_daemon_rss_kib"),
            format!("daemon RSS KiB, {n} pods"),
            kib(daemon_rss),
            0,
        );
        c.add(
            format!("mem_{n}_daemon_pss_kib"),
            format!("daemon PSS KiB, {n} pods"),
            kib(daemon_pss),
            0,
        );
        if n > 0 {
            let label = format!("pauses+helpers PSS KiB, {n} pods");
            c.add(format!("mem_{n}_pods_pss_kib"), label, kib(pods_pss), 0);
        }
        let total_rss = kib(total(daemon_rss, pods_rss));
        c.add(
            format!("mem_{n}_total_rss_kib"),
            format!("total RSS KiB, {n} pods"),
            total_rss,
            0,
        );
        let total_pss = kib(total(daemon_pss, pods_pss));
        c.add(
            format!("mem_{n}_total_pss_kib"),
            format!("total PSS KiB, {n} pods"),
            total_pss,
            0,
        );
    }
    let peak: Option<&Checkpoint> = d.checkpoints.last().filter(|c| c.pods > 0);
    let per_pod = |f: fn(&PodsMem) -> u64| {
        let m = peak?.pods_mem.filter(|m| m.pods > 0)?;
        Some(f(&m) as f64 / m.pods as f64)
    };
    type PerPod = fn(&PodsMem) -> u64;
    let rows: [(&str, &str, PerPod); 5] = [
        ("pause_rss_kib", "pause RSS KiB/pod", |m| m.pause_rss_kib),
        ("pause_pss_kib", "pause PSS KiB/pod", |m| m.pause_pss_kib),
        ("helper_rss_kib", "monitor|shim RSS KiB/pod", |m| {
            m.helper_rss_kib
        }),
        ("helper_pss_kib", "monitor|shim PSS KiB/pod", |m| {
            m.helper_pss_kib
        }),
        (
            "per_pod_pss_kib",
            "per-pod overhead PSS KiB (pause+helper)",
            |m| m.pause_pss_kib + m.helper_pss_kib,
        ),
    ];
    for (key, label, f) in rows {
        c.add(key, label, per_pod(f), 0);
    }
    let idle = d.checkpoints.first().and_then(|c| c.daemon);
    let after = d.after_teardown;
    c.add(
        "daemon_rss_kib_after_teardown",
        "daemon RSS KiB after teardown",
        rss(after),
        0,
    );
    c.add("daemon_fds_idle", "daemon fds, 0 pods", fds(idle), 0);
    c.add(
        "daemon_fds_peak",
        "daemon fds, all pods",
        fds(peak.and_then(|c| c.daemon)),
        0,
    );
    c.add(
        "daemon_fds_after_teardown",
        "daemon fds after teardown",
        fds(after),
        0,
    );
}

/// The runs' figures merged by row: (section, figure with a value per run).
fn figures(report: &CriReport) -> Vec<(Section, Figure)> {
    let per_run: Vec<Vec<Cell>> = report.runs.iter().map(cells).collect();
    let Some(first) = per_run.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (section, key, label, _, decimals))| {
            (
                *section,
                Figure {
                    key: key.clone(),
                    label: label.clone(),
                    values: per_run.iter().map(|c| c.get(i).and_then(|c| c.3)).collect(),
                    decimals: *decimals,
                },
            )
        })
        .collect()
}

fn title(report: &CriReport, section: Section) -> String {
    let p = &report.params;
    match section {
        Section::Latency => format!(
            "pod and container RPCs: {} pods one after the other, each RunPodSandbox (bridge CNI), \
             CreateContainer + StartContainer of busybox sleep, StopContainer, RemoveContainer, StopPodSandbox, \
             RemovePodSandbox",
            p.samples
        ),
        Section::Density => format!(
            "density: {} pods of one busybox sleep, started and torn down {} at a time",
            p.pods, p.batch
        ),
        Section::Memory => format!(
            "memory of the runtime's own processes, read at {:?} pods: the daemon; per pod the pause and the \
             helper (monitor|shim: crius-monitor or containerd-shim-runc-v2)",
            p.checkpoints()
        ),
        Section::Churn => format!(
            "churn: {} cycles ({}) after {} not counted",
            p.churn,
            p.churn_kind.cycle(),
            super::phases::WARMUP
        ),
    }
}

/// The tables, one per phase, then the targets.
pub fn table(report: &CriReport) -> String {
    let names: Vec<&str> = report.runs.iter().map(|r| r.name.as_str()).collect();
    let all = figures(report);
    let mut out = String::new();
    for section in SECTIONS {
        let rows: Vec<Figure> = all
            .iter()
            .filter(|(s, _)| *s == section)
            .map(|(_, f)| f.clone())
            .collect();
        out.push_str(&title(report, section));
        out.push('\n');
        out.push_str(&side_by_side(&names, &rows));
        out.push('\n');
    }
    if let [a, b, ..] = names.as_slice() {
        out.push_str(&format!(
            "ratio is {a} / {b} (below 1: {a} is faster or smaller)\n"
        ));
    }
    for r in &report.runs {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|(p, d)| format!("{p} {:.1} s", d.as_secs_f64()))
            .collect();
        out.push_str(&format!(
            "{}: {}; its own calls: {}\n",
            r.name,
            r.version,
            phases.join(", ")
        ));
    }
    out.push_str(&format!("total {:.1} s\n", report.total.as_secs_f64()));
    let checks = targets(report);
    if !checks.is_empty() {
        out.push_str("\ntargets (issue 6), from this run:\n");
        for c in &checks {
            let verdict = match c.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "-",
            };
            out.push_str(&format!("  {:<56} {verdict:<8} {}\n", c.goal, c.measured));
        }
    }
    out
}

/// One of the targets, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetCheck {
    pub goal: &'static str,
    pub measured: String,
    /// `None` when this run cannot tell (containerd did not run, say).
    pub met: Option<bool>,
}

/// The targets, for a run with crius (and containerd for the ratios).
pub fn targets(report: &CriReport) -> Vec<TargetCheck> {
    let Some(crius) = report.runs.iter().position(|r| r.name == "crius") else {
        return Vec::new();
    };
    let containerd = report.runs.iter().position(|r| r.name == "containerd");
    let all = figures(report);
    let value = |key: &str, run: Option<usize>| {
        let f = &all.iter().find(|(_, f)| f.key == key)?.1;
        f.values.get(run?).copied().flatten()
    };
    let ratio = |goal: &'static str, a: Option<f64>, b: Option<f64>, max: f64| {
        let r = a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        TargetCheck {
            goal,
            measured: r.map_or("-".into(), |r| {
                format!("{r:.2} ({:.0} / {:.0})", a.unwrap_or(0.0), b.unwrap_or(0.0))
            }),
            met: r.map(|r| r <= max),
        }
    };
    let c = Some(crius);
    let mut checks = vec![
        ratio(
            "full pod start p50 <= 0.5x containerd",
            value("pod_start_p50_ms", c),
            value("pod_start_p50_ms", containerd),
            0.5,
        ),
        ratio(
            "container create+start p50 <= 0.3x containerd",
            value("create_start_p50_ms", c),
            value("create_start_p50_ms", containerd),
            0.3,
        ),
    ];
    checks.push(per_pod_overhead(
        &report.runs[crius],
        containerd.map(|k| &report.runs[k]),
    ));
    let idle = value("mem_0_daemon_rss_kib", c);
    checks.push(TargetCheck {
        goal: "idle agent RSS < 20 MB",
        measured: idle.map_or("-".into(), |k| format!("{:.1} MB", k * 1024.0 / 1e6)),
        met: idle.map(|k| k * 1024.0 < 20e6),
    });
    let run = &report.runs[crius];
    let churn = &run.churn;
    let (before, after) = (churn.daemon_before, churn.daemon_after);
    let (hb, ha) = (churn.helper_before, churn.helper_after);
    let fds = |b: Option<ProcState>, a: Option<ProcState>| match (b, a) {
        (Some(b), Some(a)) => format!("{}->{}", b.fds, a.fds),
        _ => "-".into(),
    };
    let clean = churn.errors.is_empty() && run.problems.is_empty() && report.left.is_empty();
    checks.push(TargetCheck {
        goal: "zero leaks after churn",
        measured: format!(
            "fds agent {} monitor {}, {} problems",
            fds(before, after),
            fds(hb, ha),
            run.problems.len() + report.left.len() + churn.errors.len()
        ),
        met: before.is_some().then_some(clean),
    });
    checks
}

/// crius' pause + monitor PSS per pod over containerd's shim PSS per pod, at every pod count measured (most
/// first): the static binaries' pages are shared among the pods, so the ratio is at its worst with one pod.
fn per_pod_overhead(crius: &CriRun, containerd: Option<&CriRun>) -> TargetCheck {
    let per_pod = |run: &CriRun, n: usize, f: fn(&PodsMem) -> u64| {
        let m = run
            .density
            .checkpoints
            .iter()
            .find(|c| c.pods == n)?
            .pods_mem?;
        (m.pods > 0).then(|| f(&m) as f64 / m.pods as f64)
    };
    let ratios: Vec<(usize, f64)> = crius
        .density
        .checkpoints
        .iter()
        .rev()
        .filter_map(|c| {
            let own = per_pod(crius, c.pods, |m| m.pause_pss_kib + m.helper_pss_kib)?;
            let shim = per_pod(containerd?, c.pods, |m| m.helper_pss_kib)?;
            (shim > 0.0).then_some((c.pods, own / shim))
        })
        .collect();
    let measured: Vec<String> = ratios
        .iter()
        .map(|(n, r)| format!("{r:.2} at {n} pods"))
        .collect();
    TargetCheck {
        goal: "per-pod pause+monitor PSS <= 0.2x containerd's shim PSS",
        measured: if measured.is_empty() {
            "-".into()
        } else {
            measured.join(", ")
        },
        met: (!ratios.is_empty()).then(|| ratios.iter().all(|(_, r)| *r <= 0.2)),
    }
}

fn proc_json(s: &Option<ProcState>) -> Value {
    match s {
        Some(s) => {
            json!({ "pid": s.mem.pid, "rss_kib": s.mem.rss_kib, "pss_kib": s.mem.pss_kib, "fds": s.fds })
        }
        None => Value::Null,
    }
}

fn samples_ms(v: &[Duration]) -> Value {
    json!(v.iter().map(|d| ms(*d)).collect::<Vec<_>>())
}

fn run_json(r: &CriRun) -> Value {
    let figures: serde_json::Map<String, Value> = cells(r)
        .into_iter()
        .map(|(_, key, _, v, _)| (key, json!(v)))
        .collect();
    let l = &r.latency;
    let d = &r.density;
    let c = &r.churn;
    json!({
        "name": r.name,
        "version": r.version,
        "helper": r.helper,
        "bridge": r.bridge,
        "figures": figures,
        "latency_samples_ms": {
            "run_pod_sandbox": samples_ms(&l.run_pod),
            "stop_pod_sandbox": samples_ms(&l.stop_pod),
            "remove_pod_sandbox": samples_ms(&l.remove_pod),
            "create_container": samples_ms(&l.create),
            "start_container": samples_ms(&l.start),
            "stop_container": samples_ms(&l.stop),
            "remove_container": samples_ms(&l.remove),
            "create_start": samples_ms(&l.create_start),
            "pod_start": samples_ms(&l.pod_start),
        },
        "density": {
            "pods_running": d.started,
            "errors": d.errors,
            "start_total_s": d.start_total.as_secs_f64(),
            "teardown_total_s": d.teardown_total.as_secs_f64(),
            "pod_start_ms": samples_ms(&d.pod_start),
            "checkpoints": d.checkpoints.iter().map(|c| json!({
                "pods": c.pods,
                "daemon": proc_json(&c.daemon),
                "pods_mem": c.pods_mem.map(|m| json!({
                    "pods": m.pods,
                    "pause_rss_kib": m.pause_rss_kib,
                    "pause_pss_kib": m.pause_pss_kib,
                    "helper_rss_kib": m.helper_rss_kib,
                    "helper_pss_kib": m.helper_pss_kib,
                })),
            })).collect::<Vec<_>>(),
            "after_teardown": proc_json(&d.after_teardown),
            "cgroups": d.cgroups,
        },
        "churn": {
            "kind": c.kind.name(),
            "cycles": c.cycle.len(),
            "cycle_ms": samples_ms(&c.cycle),
            "errors": c.errors,
            "total_s": c.total.as_secs_f64(),
            "daemon_before": proc_json(&c.daemon_before),
            "daemon_after": proc_json(&c.daemon_after),
            "helper_before": proc_json(&c.helper_before),
            "helper_after": proc_json(&c.helper_after),
        },
        "phases_s": r.phases.iter().map(|(p, d)| (p.to_string(), json!(d.as_secs_f64()))).collect::<serde_json::Map<_, _>>(),
        "recorded_pids": r.recorded_pids(),
        "problems": r.problems,
    })
}

/// The report as JSON: every figure and sample per run, the ratios (first run / second), the targets, the
/// host check.
pub fn json(report: &CriReport) -> Value {
    let p = &report.params;
    let figures: Vec<Figure> = figures(report).into_iter().map(|(_, f)| f).collect();
    let names: Vec<&str> = report.runs.iter().map(|r| r.name.as_str()).collect();
    json!({ "cri": {
        "params": {
            "samples": p.samples,
            "pods": p.pods,
            "batch": p.batch,
            "churn": p.churn,
            "churn_kind": p.churn_kind.name(),
            "checkpoints": p.checkpoints(),
        },
        "bench_pid": report.bench_pid,
        "runs": report.runs.iter().map(run_json).collect::<Vec<_>>(),
        "ratio_of": names.iter().take(2).collect::<Vec<_>>(),
        "ratios": if names.len() >= 2 { ratios(&figures) } else { serde_json::Map::new() },
        "targets": targets(report).iter().map(|t| json!({
            "goal": t.goal, "measured": t.measured, "met": t.met,
        })).collect::<Vec<_>>(),
        "left": report.left,
        "total_s": report.total.as_secs_f64(),
    }})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Churn, ChurnKind, CriParams, Latencies, PodsMem};
    use super::*;
    use crate::bench::container::{Mem, Runtime};

    fn ms(v: u64) -> Vec<Duration> {
        vec![Duration::from_millis(v)]
    }

    fn state(kib: u64, fds: usize) -> Option<ProcState> {
        Some(ProcState {
            mem: Mem {
                pid: 1,
                rss_kib: kib,
                pss_kib: kib / 2,
            },
            fds,
        })
    }

    /// A run whose latencies are `lat` ms and whose memory is `kib` KiB a process.
    fn run(name: &str, lat: u64, kib: u64) -> CriRun {
        let one = |v| Latencies {
            run_pod: ms(v),
            stop_pod: ms(v),
            remove_pod: ms(v),
            create: ms(v),
            start: ms(v),
            stop: ms(v),
            remove: ms(v),
            create_start: ms(2 * v),
            pod_start: ms(3 * v),
            teardown: ms(4 * v),
        };
        let pods = |n: u64| PodsMem {
            pods: n as usize,
            pause_rss_kib: n * kib,
            pause_pss_kib: n * kib / 2,
            helper_rss_kib: n * kib,
            helper_pss_kib: n * kib / 2,
        };
        let checkpoints = [0, 1, 2]
            .into_iter()
            .map(|n| Checkpoint {
                pods: n as usize,
                daemon: state(kib, 10),
                pods_mem: Some(pods(n)),
            })
            .collect();
        CriRun {
            name: name.into(),
            version: format!("{name} 1"),
            helper: "helper",
            bridge: String::new(),
            density: Density {
                started: 2,
                start_total: Duration::from_secs(1),
                pod_start: ms(3 * lat),
                checkpoints,
                after_teardown: state(kib, 10),
                ..Default::default()
            },
            latency: one(lat),
            churn: Churn {
                cycle: ms(lat),
                daemon_before: state(kib, 10),
                daemon_after: state(kib, 10),
                ..Churn::new(ChurnKind::Container)
            },
            phases: vec![("density", Duration::from_secs(1))],
            problems: Vec::new(),
        }
    }

    fn report(runs: Vec<CriRun>) -> CriReport {
        CriReport {
            params: CriParams {
                runtimes: vec![Runtime::Crius, Runtime::Containerd],
                endpoints: Vec::new(),
                samples: 1,
                pods: 2,
                batch: 2,
                churn: 1,
                churn_kind: ChurnKind::Container,
            },
            bench_pid: 1,
            runs,
            left: Vec::new(),
            total: Duration::from_secs(3),
        }
    }

    #[test]
    fn tables_have_a_column_per_run_and_the_ratio() {
        let r = report(vec![run("crius", 10, 1000), run("containerd", 40, 8000)]);
        let t = table(&r);
        let line = |start: &str| {
            t.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start}:\n{t}"))
        };
        assert!(
            line("pod start (runp+create+start) p50 ms").ends_with("0.25"),
            "{t}"
        );
        assert!(line("total PSS KiB, 2 pods").ends_with("0.12"), "{t}");
        assert!(line("daemon fds after").ends_with("1.00"), "{t}");
        assert!(t.contains("ratio is crius / containerd"), "{t}");
        let j = json(&r);
        let cri = &j["cri"];
        assert_eq!(cri["ratios"]["create_start_p50_ms"].as_f64(), Some(0.25));
        assert_eq!(
            cri["runs"][1]["figures"]["mem_2_pods_pss_kib"].as_f64(),
            Some(16000.0)
        );
        assert_eq!(cri["params"]["checkpoints"], json!([0, 1, 2]));
    }

    #[test]
    fn targets_are_checked_against_the_run() {
        let r = report(vec![run("crius", 10, 1000), run("containerd", 40, 8000)]);
        let checks = targets(&r);
        let met: Vec<Option<bool>> = checks.iter().map(|c| c.met).collect();
        // pod start 0.25x, create+start 0.25x, pause+monitor 1000 / shim 4000 = 0.25x, 1000 KiB idle, no leaks.
        assert_eq!(
            met,
            [Some(true), Some(true), Some(false), Some(true), Some(true)]
        );
        let alone = report(vec![run("crius", 10, 30000)]);
        let met: Vec<Option<bool>> = targets(&alone).iter().map(|c| c.met).collect();
        assert_eq!(met, [None, None, None, Some(false), Some(true)]);
        assert!(!table(&alone).contains("ratio is"));
        let mut leaky = run("crius", 10, 1000);
        leaky.churn.daemon_after = state(1000, 11);
        leaky.problems = leaky.churn.fd_growth();
        assert_eq!(targets(&report(vec![leaky]))[4].met, Some(false));
    }
}
