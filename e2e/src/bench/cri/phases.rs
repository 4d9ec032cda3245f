//! The CRI benchmark's phases: density, latency, churn, each on every runtime of the run at once, interleaved:
//! a batch, a sample or a block of cycles on one runtime, then on the next, the one that goes first rotating
//! from round to round. The machine is shared, and its load changes from minute to minute; interleaved, every
//! runtime sees the same load, so the ratios of one run hold even when single figures move. Each phase tears
//! down what it started, also when a call fails (best effort), so that an endpoint the benchmark does not own
//! is left as it was.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crius_proto::v1::PodSandboxConfig;
use crius_proto::v1::runtime_service_client::RuntimeServiceClient;
use futures_util::future::join_all;
use tonic::transport::Channel;

use super::{Checkpoint, Churn, ChurnKind, Density, Latencies, PodsMem, ProcState};
use crate::bench::container::{
    PodProcesses, PodStart, Shared, Side, StartTimes, Started, TeardownTimes, cgroup_report,
    create_and_start, measure_pod, sleep_container, start_pod, stop_and_remove, teardown,
};
use crate::client;

/// Churn cycles run before the baseline is read: lazily made buffers and threads are not leaks.
pub(super) const WARMUP: usize = 5;
/// Churn cycles a runtime runs before the next one has its turn.
const CHURN_BLOCK: usize = 10;
/// Failed churn cycles after which the churn gives up.
const MAX_ERRORS: usize = 10;
/// How long the daemons get after a burst of calls before their memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// One runtime as the phases drive it: its side, a client, the pods given out so far, the time its own calls
/// took, the rules broken.
pub(super) struct Target<'a> {
    side: &'a Side<'a>,
    shared: &'a Shared,
    rt: RuntimeServiceClient<Channel>,
    next_pod: usize,
    spent: Duration,
    problems: Vec<String>,
}

impl<'a> Target<'a> {
    pub(super) fn new(side: &'a Side<'a>, channel: Channel, shared: &'a Shared) -> Target<'a> {
        Target {
            side,
            shared,
            rt: client::runtime(channel),
            next_pod: 0,
            spent: Duration::ZERO,
            problems: Vec::new(),
        }
    }

    /// The time spent on this runtime's own work since the last call (its turns, not the others').
    pub(super) fn take_spent(&mut self) -> Duration {
        std::mem::take(&mut self.spent)
    }

    pub(super) fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    /// A pod config with a name and uid not used before in this run.
    fn config(&mut self) -> PodSandboxConfig {
        self.next_pod += 1;
        self.side.pod_config(self.next_pod - 1)
    }

    fn image(&self) -> &str {
        self.side.image(self.shared)
    }

    fn daemon(&self) -> anyhow::Result<Option<ProcState>> {
        self.side.daemon_pid().map(ProcState::of).transpose()
    }

    /// Tears down what a failed start made, ignoring errors (the failure that got us here is reported).
    async fn abandon(&mut self, made: Option<Started>) {
        if let Some(s) = made {
            let _ = teardown(&mut self.rt, &s).await;
        }
    }
}

/// The order of the `n` runtimes in `round`: 0, 1, ..., then 1, 2, ..., 0, and so on.
fn rotation(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n)
}

/// `samples` pods on each runtime, one after the other, every RPC of each timed.
pub(super) async fn latency(
    targets: &mut [Target<'_>],
    samples: usize,
) -> anyhow::Result<Vec<Latencies>> {
    let mut lats = vec![Latencies::default(); targets.len()];
    for round in 0..samples {
        for i in rotation(round, targets.len()) {
            let t = &mut targets[i];
            let t0 = Instant::now();
            let (up, down) = sample(t)
                .await
                .with_context(|| format!("{}: latency sample {round}", t.side.name()))?;
            t.spent += t0.elapsed();
            lats[i].add_start(&up);
            lats[i].add_teardown(&down);
        }
    }
    Ok(lats)
}

/// One pod with its container started and torn down, every RPC timed.
async fn sample(t: &mut Target<'_>) -> anyhow::Result<(StartTimes, TeardownTimes)> {
    let config = t.config();
    let PodStart { made, result } = start_pod(t.rt.clone(), config, t.image(), 1).await;
    match (result, made) {
        (Ok(up), Some(made)) => Ok((up, teardown(&mut t.rt, &made).await?)),
        (result, made) => {
            t.abandon(made).await;
            Err(result.err().unwrap_or_else(|| anyhow::anyhow!("no pod")))
        }
    }
}

/// What the density phase holds for one runtime: its figures, its pods started and those a call failed on.
#[derive(Default)]
struct Pods {
    d: Density,
    live: Vec<Started>,
    failed: Vec<Started>,
}

/// `pods` pods of one container on each runtime, `batch` at a time, with the memory read at each of
/// `checkpoints`; then every pod torn down, `batch` at a time, and the daemons read again.
pub(super) async fn density(
    targets: &mut [Target<'_>],
    pods: usize,
    batch: usize,
    checkpoints: &[usize],
) -> anyhow::Result<Vec<Density>> {
    let mut all: Vec<Pods> = targets.iter().map(|_| Pods::default()).collect();
    let grown = grow(targets, batch, checkpoints, &mut all).await;
    let chunks: Vec<Vec<&[Started]>> = all
        .iter()
        .map(|p| p.live.chunks(batch).chain(p.failed.chunks(batch)).collect())
        .collect();
    let rounds = chunks.iter().map(Vec::len).max().unwrap_or(0);
    let mut errors: Vec<Vec<String>> = vec![Vec::new(); targets.len()];
    let mut took = vec![Duration::ZERO; targets.len()];
    for round in 0..rounds {
        for i in rotation(round, targets.len()) {
            let Some(chunk) = chunks[i].get(round) else {
                continue;
            };
            let t0 = Instant::now();
            let downs = chunk.iter().map(|s| {
                let mut rt = targets[i].rt.clone();
                async move {
                    teardown(&mut rt, s)
                        .await
                        .with_context(|| format!("teardown of pod {}", s.pod_id))
                }
            });
            for r in join_all(downs).await {
                if let Err(e) = r {
                    errors[i].push(format!("{e:#}"));
                }
            }
            took[i] += t0.elapsed();
        }
    }
    grown?;
    if pods > 0 {
        tokio::time::sleep(SETTLE).await;
    }
    let mut out = Vec::new();
    for (i, (t, mut p)) in targets.iter_mut().zip(all).enumerate() {
        p.d.errors.append(&mut errors[i]);
        p.d.teardown_total = took[i];
        t.spent += took[i];
        if pods > 0 {
            p.d.after_teardown = t.daemon()?;
        }
        out.push(p.d);
    }
    Ok(out)
}

/// The start side of [`density`]: a batch on each runtime in turn until the next checkpoint, then the memory.
async fn grow(
    targets: &mut [Target<'_>],
    batch: usize,
    checkpoints: &[usize],
    all: &mut [Pods],
) -> anyhow::Result<()> {
    let (mut count, mut round) = (0, 0);
    let last = checkpoints.last().copied().unwrap_or(0);
    for &at in checkpoints {
        while count < at {
            let n = batch.min(at - count);
            for i in rotation(round, targets.len()) {
                start_batch(&mut targets[i], n, &mut all[i]).await;
            }
            count += n;
            round += 1;
        }
        tokio::time::sleep(SETTLE).await;
        for (t, p) in targets.iter_mut().zip(all.iter_mut()) {
            p.d.started = p.live.len();
            let (checkpoint, procs) = read_memory(t, &p.live).await?;
            p.d.checkpoints.push(checkpoint);
            if at == last && at > 0 {
                p.d.cgroups = cgroup_report(t.side, t.shared, procs.first());
                p.d.processes = procs;
            }
        }
    }
    Ok(())
}

/// `n` pods started at once on one runtime.
async fn start_batch(t: &mut Target<'_>, n: usize, p: &mut Pods) {
    let configs: Vec<PodSandboxConfig> = (0..n).map(|_| t.config()).collect();
    let image = t.image().to_string();
    let t0 = Instant::now();
    let starts = configs
        .into_iter()
        .map(|c| start_pod(t.rt.clone(), c, &image, 1));
    let results = join_all(starts).await;
    p.d.start_total += t0.elapsed();
    t.spent += t0.elapsed();
    for PodStart { made, result } in results {
        match result {
            Ok(times) => {
                p.d.pod_start.extend(times.pod_start());
                p.live.extend(made);
            }
            Err(e) => {
                p.d.errors.push(format!("{}: {e:#}", t.side.name()));
                p.failed.extend(made);
            }
        }
    }
}

/// The daemon's memory and descriptors, and those of every live pod's processes where they are known.
async fn read_memory(
    t: &mut Target<'_>,
    live: &[Started],
) -> anyhow::Result<(Checkpoint, Vec<PodProcesses>)> {
    let daemon = t.daemon()?;
    let mut procs = Vec::new();
    if t.side.knows_pod_processes() {
        for s in live {
            let (p, broken) = measure_pod(t.side, &mut t.rt, t.shared, s).await?;
            t.problems.extend(broken);
            procs.push(p);
        }
    }
    for d in t.shared.own_changes() {
        t.problems.push(format!(
            "with {} pods, changed below our own cgroup: {}",
            live.len(),
            d.display()
        ));
    }
    let checkpoint = Checkpoint {
        pods: live.len(),
        daemon,
        pods_mem: t.side.knows_pod_processes().then(|| PodsMem::of(&procs)),
    };
    Ok((checkpoint, procs))
}

/// One runtime's churn: the pod its containers cycle in (container churn), the figures.
struct Churning {
    pod: Option<(Started, PodSandboxConfig)>,
    c: Churn,
}

/// `cycles` churn cycles on each runtime, in blocks of [`CHURN_BLOCK`], after [`WARMUP`] ones, with the daemon
/// (and the churn pod's helper) read before and after.
pub(super) async fn churn(
    targets: &mut [Target<'_>],
    cycles: usize,
    kind: ChurnKind,
) -> anyhow::Result<Vec<Churn>> {
    let mut all: Vec<Churning> = targets
        .iter()
        .map(|_| Churning {
            pod: None,
            c: Churn::new(kind),
        })
        .collect();
    if cycles == 0 {
        return Ok(all.into_iter().map(|c| c.c).collect());
    }
    let churned = churn_all(targets, cycles, &mut all).await;
    let mut down = Ok(());
    for (t, ch) in targets.iter_mut().zip(&all) {
        if let Some((pod, _)) = &ch.pod {
            let r = teardown(&mut t.rt, pod).await.map(|_| ());
            if down.is_ok() {
                down = r.with_context(|| format!("{}: churn pod teardown", t.side.name()));
            }
        }
    }
    churned?;
    down?;
    Ok(all.into_iter().map(|c| c.c).collect())
}

async fn churn_all(
    targets: &mut [Target<'_>],
    cycles: usize,
    all: &mut [Churning],
) -> anyhow::Result<()> {
    let mut helpers = Vec::new();
    for (t, ch) in targets.iter_mut().zip(all.iter_mut()) {
        let name = t.side.name().to_string();
        if ch.c.kind == ChurnKind::Container {
            let config = t.config();
            let PodStart { made, result } =
                start_pod(t.rt.clone(), config.clone(), t.image(), 0).await;
            ch.pod = made.map(|m| (m, config));
            result.with_context(|| format!("{name}: churn pod"))?;
        }
        for _ in 0..WARMUP {
            cycle(t, ch)
                .await
                .with_context(|| format!("{name}: churn warm-up"))?;
        }
        let helper = match &ch.pod {
            Some((pod, _)) if t.side.knows_pod_processes() => {
                let (p, broken) = measure_pod(t.side, &mut t.rt, t.shared, pod).await?;
                t.problems.extend(broken);
                let pid = p.helper.pid;
                ch.c.pod = Some(p);
                Some(pid)
            }
            _ => None,
        };
        helpers.push(helper);
    }
    tokio::time::sleep(SETTLE).await;
    for ((t, ch), helper) in targets.iter().zip(all.iter_mut()).zip(&helpers) {
        ch.c.daemon_before = t.daemon()?;
        ch.c.helper_before = helper.map(ProcState::of).transpose()?;
    }
    for round in 0..cycles.div_ceil(CHURN_BLOCK) {
        let n = CHURN_BLOCK.min(cycles - round * CHURN_BLOCK);
        for i in rotation(round, targets.len()) {
            let (t, ch) = (&mut targets[i], &mut all[i]);
            let t0 = Instant::now();
            for k in 0..n {
                let t1 = Instant::now();
                match cycle(t, ch).await {
                    Ok(()) => ch.c.cycle.push(t1.elapsed()),
                    Err(e) => failed_cycle(&mut ch.c, round * CHURN_BLOCK + k, e)
                        .with_context(|| t.side.name().to_string())?,
                }
            }
            ch.c.total += t0.elapsed();
            t.spent += t0.elapsed();
        }
    }
    for ((t, ch), helper) in targets.iter().zip(all.iter_mut()).zip(&helpers) {
        (ch.c.daemon_after, ch.c.helper_after) =
            settled(t, *helper, ch.c.daemon_before, ch.c.helper_before).await?;
    }
    Ok(())
}

/// One churn cycle: a container in the churn pod, or a whole pod.
async fn cycle(t: &mut Target<'_>, ch: &Churning) -> anyhow::Result<()> {
    match &ch.pod {
        Some((pod, config)) => {
            let image = t.image().to_string();
            container_cycle(&mut t.rt, pod, config, &image).await
        }
        None => pod_cycle(t).await,
    }
}

/// Records a failed cycle; gives up after [`MAX_ERRORS`].
fn failed_cycle(c: &mut Churn, i: usize, e: anyhow::Error) -> anyhow::Result<()> {
    c.errors.push(format!("cycle {i}: {e:#}"));
    if c.errors.len() >= MAX_ERRORS {
        bail!("churn: {} cycles failed, the last: {e:#}", c.errors.len());
    }
    Ok(())
}

/// One container created, started, stopped and removed in `pod` (removed also when its start failed).
async fn container_cycle(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &Started,
    config: &PodSandboxConfig,
    image: &str,
) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    let up = create_and_start(rt, &pod.pod_id, config, sleep_container(image, 0), &mut ids).await;
    for id in &ids {
        stop_and_remove(rt, id).await?;
    }
    up.map(|_| ())
}

/// One pod with its container started and torn down.
async fn pod_cycle(t: &mut Target<'_>) -> anyhow::Result<()> {
    sample(t).await.map(|_| ())
}

/// The daemon and helper once their descriptors are back at the baseline, or after 5 s (connections and
/// helpers of the last cycles close right after them).
async fn settled(
    t: &Target<'_>,
    helper: Option<i32>,
    daemon_before: Option<ProcState>,
    helper_before: Option<ProcState>,
) -> anyhow::Result<(Option<ProcState>, Option<ProcState>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let daemon = t.daemon()?;
        let helper_now = helper.map(ProcState::of).transpose()?;
        let above = |now: Option<ProcState>, before: Option<ProcState>| matches!((now, before), (Some(n), Some(b)) if n.fds > b.fds);
        let waiting = above(daemon, daemon_before) || above(helper_now, helper_before);
        if !waiting || Instant::now() > deadline {
            return Ok((daemon, helper_now));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_going_first_rotates() {
        let orders: Vec<Vec<usize>> = (0..3).map(|r| rotation(r, 2).collect()).collect();
        assert_eq!(orders, [vec![0, 1], vec![1, 0], vec![0, 1]]);
        assert_eq!(rotation(4, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(7, 1).collect::<Vec<_>>(), [0]);
    }
}
