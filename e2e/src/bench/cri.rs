//! The CRI benchmark (`crius-bench cri`): kubelet's view of a runtime, on crius and a private containerd + runc
//! started side by side in one run (the container benchmark's machinery: [`super::container`]), or on any CRI
//! endpoint already running here (`--endpoint`). Every runtime is started first, each on a fresh instance;
//! then each phase runs on all of them interleaved (a batch, a sample, a block of churn cycles on one, then on
//! the next: see `phases`), so that they share the machine's load, in this order:
//!
//! 1. **density**: `--pods` pods (kubelet's default maximum, 110) of one busybox `sleep` each, started
//!    `--batch` at a time (concurrent RunPodSandbox + CreateContainer + StartContainer, over one connection as
//!    kubelet does); the total time, failed calls, the pod start under that load, and the memory (RSS and
//!    PSS) of the runtime's own processes at 0, 1, 10 and all pods: the daemon (crius serve, containerd), and
//!    per pod the pause and crius-monitor or containerd-shim-runc-v2. Then all are torn down, `--batch` at a
//!    time, and the daemon measured again.
//! 2. **latency**: `--samples` pods one after the other, each RunPodSandbox (bridge CNI), CreateContainer,
//!    StartContainer, StopContainer (timeout 0), RemoveContainer, StopPodSandbox, RemovePodSandbox, each
//!    timed (p50/p95/p99).
//! 3. **churn**: `--churn` cycles of CreateContainer + StartContainer + StopContainer + RemoveContainer of one
//!    container in one pod (`--churn-kind container`, the default), or of whole pods with their container
//!    (`pod`); the daemon's (and the pod's monitor or shim's) descriptors and RSS before and after, after a
//!    warm-up of 5 cycles: descriptors that stay above the baseline are a leak.
//!
//! Then everything is checked gone, as in the container benchmark: processes, mounts, cgroups (and that
//! nothing was ever placed in this process' own cgroups), interfaces, IP reservations.

mod phases;
mod report;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crius_proto::v1::VersionRequest;

pub use self::report::{json, table, targets};
pub use super::container::Latencies;
use super::container::{EndpointSpec, Instance, Mem, PodProcesses, Runtime, Shared};
use super::measure;
use crate::client;

/// What one churn cycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChurnKind {
    /// CreateContainer + StartContainer + StopContainer + RemoveContainer in one pod.
    Container,
    /// A whole pod: RunPodSandbox, create + start of its container, stop + remove, StopPodSandbox,
    /// RemovePodSandbox.
    Pod,
}

impl ChurnKind {
    pub fn parse(s: &str) -> anyhow::Result<ChurnKind> {
        match s {
            "container" => Ok(ChurnKind::Container),
            "pod" => Ok(ChurnKind::Pod),
            other => bail!("unknown churn kind {other:?} (container, pod)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChurnKind::Container => "container",
            ChurnKind::Pod => "pod",
        }
    }

    /// What a cycle does, for the report.
    pub fn cycle(self) -> &'static str {
        match self {
            ChurnKind::Container => "create+start+stop+rm of a container in one pod",
            ChurnKind::Pod => "runp+create+start+stop+rm+stopp+rmp of a pod",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CriParams {
    /// Runtimes the benchmark starts itself.
    pub runtimes: Vec<Runtime>,
    /// Endpoints already running, driven as they are.
    pub endpoints: Vec<EndpointSpec>,
    /// Pods started one after the other for the RPC latencies (0: none).
    pub samples: usize,
    /// Pods in the density phase (0: none).
    pub pods: usize,
    /// Pods started (and torn down) at a time in the density phase.
    pub batch: usize,
    /// Churn cycles (0: none).
    pub churn: usize,
    pub churn_kind: ChurnKind,
}

impl CriParams {
    /// The pod counts at which memory is read: 0, 1, 10 and all of them (those up to `pods`).
    pub fn checkpoints(&self) -> Vec<usize> {
        let mut c: Vec<usize> = [0, 1, 10, self.pods]
            .into_iter()
            .filter(|&n| n <= self.pods)
            .collect();
        c.dedup();
        c
    }
}

/// Memory and open descriptors of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcState {
    pub mem: Mem,
    pub fds: usize,
}

impl ProcState {
    pub fn of(pid: i32) -> anyhow::Result<ProcState> {
        Ok(ProcState {
            mem: Mem::of(pid)?,
            fds: measure::fd_count(pid)?,
        })
    }
}

/// Sums over the pods' own processes (pause, monitor|shim), KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodsMem {
    pub pods: usize,
    pub pause_rss_kib: u64,
    pub pause_pss_kib: u64,
    pub helper_rss_kib: u64,
    pub helper_pss_kib: u64,
}

impl PodsMem {
    fn of(procs: &[PodProcesses]) -> PodsMem {
        PodsMem {
            pods: procs.len(),
            pause_rss_kib: procs.iter().map(|p| p.pause.rss_kib).sum(),
            pause_pss_kib: procs.iter().map(|p| p.pause.pss_kib).sum(),
            helper_rss_kib: procs.iter().map(|p| p.helper.rss_kib).sum(),
            helper_pss_kib: procs.iter().map(|p| p.helper.pss_kib).sum(),
        }
    }
}

/// The memory with `pods` pods running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub pods: usize,
    /// `None` for an endpoint without `--pid`.
    pub daemon: Option<ProcState>,
    /// `None` where the per-pod processes are not known (an endpoint).
    pub pods_mem: Option<PodsMem>,
}

/// The density phase.
#[derive(Debug, Clone, Default)]
pub struct Density {
    /// Pods whose start succeeded.
    pub started: usize,
    /// Failed calls (start or teardown), one line each.
    pub errors: Vec<String>,
    /// The batches' wall time, added up (memory reads between them not counted).
    pub start_total: Duration,
    /// RunPodSandbox + CreateContainer + StartContainer of each pod, under the load of its batch.
    pub pod_start: Vec<Duration>,
    pub teardown_total: Duration,
    pub checkpoints: Vec<Checkpoint>,
    /// The daemon once every pod is removed.
    pub after_teardown: Option<ProcState>,
    /// The per-pod processes at the last checkpoint.
    pub processes: Vec<PodProcesses>,
    /// Where the first pod's processes live and which cgroup dirs the pods made.
    pub cgroups: Vec<String>,
}

/// The churn phase.
#[derive(Debug, Clone)]
pub struct Churn {
    pub kind: ChurnKind,
    pub cycle: Vec<Duration>,
    pub errors: Vec<String>,
    pub total: Duration,
    pub daemon_before: Option<ProcState>,
    pub daemon_after: Option<ProcState>,
    /// The churn pod's monitor or shim (container churn on a started runtime).
    pub helper_before: Option<ProcState>,
    pub helper_after: Option<ProcState>,
    /// The churn pod's processes (container churn on a started runtime), for the leak check.
    pub pod: Option<PodProcesses>,
}

impl Churn {
    fn new(kind: ChurnKind) -> Churn {
        Churn {
            kind,
            cycle: Vec::new(),
            errors: Vec::new(),
            total: Duration::ZERO,
            daemon_before: None,
            daemon_after: None,
            helper_before: None,
            helper_after: None,
            pod: None,
        }
    }

    /// Descriptors the daemon or the helper holds after the churn beyond what it held before.
    pub fn fd_growth(&self) -> Vec<String> {
        let mut grown = Vec::new();
        for (what, before, after) in [
            ("daemon", self.daemon_before, self.daemon_after),
            ("pod helper", self.helper_before, self.helper_after),
        ] {
            if let (Some(b), Some(a)) = (before, after)
                && a.fds > b.fds
            {
                grown.push(format!(
                    "the {what} holds {} descriptors after {} churn cycles, {} before",
                    a.fds,
                    self.cycle.len(),
                    b.fds
                ));
            }
        }
        grown
    }
}

/// Everything measured on one runtime.
#[derive(Debug, Clone)]
pub struct CriRun {
    pub name: String,
    /// `runtime_name runtime_version` from Version.
    pub version: String,
    /// The per-pod process next to the pause (crius-monitor, containerd-shim-runc-v2).
    pub helper: &'static str,
    /// The bridge its pods were on (empty for an endpoint).
    pub bridge: String,
    pub density: Density,
    pub latency: Latencies,
    pub churn: Churn,
    /// The time each phase spent on this runtime's own calls (its turns, not the other runtimes').
    pub phases: Vec<(&'static str, Duration)>,
    /// Rules broken and things left behind (descriptors kept after the churn among them); empty when clean.
    pub problems: Vec<String>,
}

impl CriRun {
    /// Every per-pod process and container pid seen, for the checks that they are gone.
    pub fn recorded_pids(&self) -> Vec<i32> {
        self.density
            .processes
            .iter()
            .chain(&self.churn.pod)
            .flat_map(PodProcesses::pids)
            .collect()
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct CriReport {
    pub params: CriParams,
    pub bench_pid: u32,
    pub runs: Vec<CriRun>,
    /// What is left on the host after every runtime is gone; empty when clean.
    pub left: Vec<String>,
    pub total: Duration,
}

impl CriReport {
    /// Every problem of every run and of the host, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .runs
            .iter()
            .flat_map(|r| r.problems.iter().map(|p| format!("{}: {p}", r.name)))
            .collect();
        all.extend(self.left.iter().map(|l| format!("host: {l}")));
        all
    }
}

/// Starts every runtime and connects to every endpoint, runs the phases on all of them interleaved, then
/// checks what each left and the host after them.
pub async fn run(params: &CriParams) -> anyhow::Result<CriReport> {
    if params.runtimes.is_empty() && params.endpoints.is_empty() {
        bail!("nothing to benchmark: give --runtimes or --endpoint");
    }
    if params.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let t0 = Instant::now();
    let shared = Shared::prepare()?;
    let mut instances = Vec::new();
    for &runtime in &params.runtimes {
        instances.push(Instance::start(&shared, runtime).await?);
    }
    for spec in &params.endpoints {
        instances.push(Instance::endpoint(&shared, spec).await?);
    }
    let logs = |instances: &[Instance]| instances.iter().map(Instance::log).collect::<String>();
    let mut runs = run_all(&instances, &shared, params)
        .await
        .with_context(|| logs(&instances))?;
    for (run, instance) in runs.iter_mut().zip(instances) {
        let recorded = run.recorded_pids();
        run.problems.extend(instance.finish(&recorded).await);
    }
    Ok(CriReport {
        params: params.clone(),
        bench_pid: std::process::id(),
        runs,
        left: shared.left(),
        total: t0.elapsed(),
    })
}

/// The phases on every instance, interleaved ([`phases`]): density first (so that 0 pods is a fresh daemon),
/// then latency, then churn.
async fn run_all(
    instances: &[Instance],
    shared: &Shared,
    params: &CriParams,
) -> anyhow::Result<Vec<CriRun>> {
    let sides: Vec<_> = instances.iter().map(Instance::side).collect();
    let names: Vec<&str> = sides.iter().map(|s| s.name()).collect();
    eprintln!(
        "cri: {}: {} pods {} at a time, {} latency samples, {} {} churn cycles, interleaved",
        names.join(", "),
        params.pods,
        params.batch,
        params.samples,
        params.churn,
        params.churn_kind.name()
    );
    let mut versions = Vec::new();
    for instance in instances {
        let v = client::runtime(instance.channel())
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner();
        versions.push(format!("{} {}", v.runtime_name, v.runtime_version));
    }
    let mut targets: Vec<phases::Target> = sides
        .iter()
        .zip(instances)
        .map(|(side, instance)| phases::Target::new(side, instance.channel(), shared))
        .collect();
    let mut timed: Vec<Vec<(&'static str, Duration)>> = vec![Vec::new(); targets.len()];
    let mut lap = |targets: &mut [phases::Target], phase: &'static str| {
        for (t, timed) in targets.iter_mut().zip(timed.iter_mut()) {
            timed.push((phase, t.take_spent()));
        }
    };
    let density = phases::density(
        &mut targets,
        params.pods,
        params.batch,
        &params.checkpoints(),
    )
    .await?;
    lap(&mut targets, "density");
    let latency = phases::latency(&mut targets, params.samples).await?;
    lap(&mut targets, "latency");
    let churn = phases::churn(&mut targets, params.churn, params.churn_kind).await?;
    lap(&mut targets, "churn");
    let mut runs = Vec::new();
    let parts = density.into_iter().zip(latency).zip(churn);
    for (k, ((density, latency), churn)) in parts.enumerate() {
        let mut problems = targets[k].take_problems();
        problems.extend(churn.fd_growth());
        let phases: Vec<String> = timed[k]
            .iter()
            .map(|(p, d)| format!("{p} {:.1} s", d.as_secs_f64()))
            .collect();
        eprintln!("cri: {}: {}", names[k], phases.join(", "));
        runs.push(CriRun {
            name: names[k].to_string(),
            version: versions[k].clone(),
            helper: sides[k].helper_name(),
            bridge: sides[k].bridge().to_string(),
            density,
            latency,
            churn,
            phases: timed[k].clone(),
            problems,
        });
    }
    Ok(runs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(pods: usize) -> CriParams {
        CriParams {
            runtimes: vec![Runtime::Crius],
            endpoints: Vec::new(),
            samples: 1,
            pods,
            batch: 10,
            churn: 1,
            churn_kind: ChurnKind::Container,
        }
    }

    #[test]
    fn memory_is_read_at_0_1_10_and_all_pods() {
        assert_eq!(params(110).checkpoints(), [0, 1, 10, 110]);
        assert_eq!(params(10).checkpoints(), [0, 1, 10]);
        assert_eq!(params(3).checkpoints(), [0, 1, 3]);
        assert_eq!(params(0).checkpoints(), [0]);
    }

    #[test]
    fn descriptors_kept_after_the_churn_are_named() {
        let state = |fds| ProcState {
            mem: Mem::default(),
            fds,
        };
        let mut c = Churn::new(ChurnKind::Container);
        c.daemon_before = Some(state(20));
        c.daemon_after = Some(state(20));
        c.helper_before = Some(state(8));
        c.helper_after = Some(state(9));
        let grown = c.fd_growth();
        assert_eq!(grown.len(), 1, "{grown:?}");
        assert!(grown[0].contains("pod helper holds 9"), "{grown:?}");
        assert_eq!(ChurnKind::parse("pod").unwrap(), ChurnKind::Pod);
        assert!(ChurnKind::parse("x").is_err());
    }
}
