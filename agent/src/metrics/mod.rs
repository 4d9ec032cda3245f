//! crius' own metrics, in the Prometheus/OpenMetrics text format on `GET /metrics` (`[metrics] address`).
//!
//! Counters and histograms live in one process-wide registry, updated by one-line calls where things happen
//! (the RPC helpers in grpc/, the image pull, CNI ADD/DEL, monitor starts, streaming sessions); recording is a
//! few atomic operations whether or not the endpoint is on. Pods and containers by state are not tracked as they
//! change: they are counted from the services when scraped ([`Snapshot`]).

mod server;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use self::server::MetricsServer;
use crate::container::record::{ContainerRecord, ContainerState};
use crate::pod::record::{PodRecord, PodState};

/// Every metric name starts with this.
const PREFIX: &str = "crius";

/// RPC latencies: from sub-millisecond lookups to pulls and stops that take minutes.
const RPC_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];
/// Image pulls: a cached image in milliseconds, a big one in minutes.
const PULL_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// CNI plugin chains: tens of milliseconds normally, up to the plugin timeout.
const CNI_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MonitorLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    kind: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Histograms<RpcLabels>,
    pulls: Family<ResultLabels, Counter>,
    pull_seconds: Histograms<ResultLabels>,
    pull_bytes: Counter,
    cni: Family<OpLabels, Counter>,
    cni_seconds: Histograms<OpLabels>,
    monitor_starts: Family<MonitorLabels, Counter>,
    streams: Family<StreamLabels, Counter>,
}

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS)
}
fn pull_histogram() -> Histogram {
    Histogram::new(PULL_BUCKETS)
}
fn cni_histogram() -> Histogram {
    Histogram::new(CNI_BUCKETS)
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix(PREFIX),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(rpc_histogram),
            pulls: Family::default(),
            pull_seconds: Family::new_with_constructor(pull_histogram),
            pull_bytes: Counter::default(),
            cni: Family::default(),
            cni_seconds: Family::new_with_constructor(cni_histogram),
            monitor_starts: Family::default(),
            streams: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "grpc_requests",
            "CRI RPCs handled, by method and gRPC status code",
            m.rpcs.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "Time to handle a CRI RPC, by method and gRPC status code",
            m.rpc_seconds.clone(),
        );
        r.register(
            "image_pulls",
            "Image pulls from registries (concurrent PullImage calls for one image share one), by result",
            m.pulls.clone(),
        );
        r.register(
            "image_pull_duration_seconds",
            "Time an image pull took, by result",
            m.pull_seconds.clone(),
        );
        r.register(
            "image_pull_bytes",
            "Layer bytes downloaded from registries",
            m.pull_bytes.clone(),
        );
        r.register(
            "cni_operations",
            "CNI ADD and DEL of a pod (loopback and the pod network), by result",
            m.cni.clone(),
        );
        r.register(
            "cni_operation_duration_seconds",
            "Time a pod's CNI ADD or DEL took, by result",
            m.cni_seconds.clone(),
        );
        r.register(
            "monitor_starts",
            "Pod monitors started: kind start (a new pod) or restart (its monitor was gone), by result",
            m.monitor_starts.clone(),
        );
        r.register(
            "streaming_sessions",
            "Exec, attach and port-forward sessions opened on the streaming server, by protocol",
            m.streams.clone(),
        );
        m
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn result(ok: bool) -> &'static str {
    if ok { "success" } else { "failure" }
}

/// One CRI RPC: its method, outcome and latency.
pub fn rpc(method: &'static str, code: tonic::Code, elapsed: Duration) {
    let labels = RpcLabels {
        method,
        code: code_name(code),
    };
    METRICS.rpcs.get_or_create(&labels).inc();
    METRICS
        .rpc_seconds
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
}

/// Times one RPC for [`rpc`]. Dropped before [`RpcTimer::finish`] (the client went away and tonic dropped the
/// handler), it counts the RPC as Canceled.
pub struct RpcTimer {
    method: &'static str,
    start: Instant,
    finished: bool,
}

impl RpcTimer {
    pub fn start(method: &'static str) -> RpcTimer {
        RpcTimer {
            method,
            start: Instant::now(),
            finished: false,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn finish(mut self, code: tonic::Code) {
        self.finished = true;
        rpc(self.method, code, self.start.elapsed());
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        if !self.finished {
            rpc(self.method, tonic::Code::Cancelled, self.start.elapsed());
        }
    }
}

/// How an image pull from a registry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullResult {
    Success,
    Failure,
    /// Every caller went away (client cancel or deadline) before it finished.
    Cancelled,
}

/// One image pull (not one PullImage call: callers that join a pull in progress share it).
pub fn image_pull(outcome: PullResult, elapsed: Duration) {
    let labels = ResultLabels {
        result: match outcome {
            PullResult::Success => "success",
            PullResult::Failure => "failure",
            PullResult::Cancelled => "cancelled",
        },
    };
    METRICS.pulls.get_or_create(&labels).inc();
    METRICS
        .pull_seconds
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
}

/// Bytes of layer blobs received from a registry.
pub fn image_bytes(n: usize) {
    METRICS.pull_bytes.inc_by(n as u64);
}

/// A pod's CNI ADD or DEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniOp {
    Add,
    Del,
}

pub fn cni(op: CniOp, ok: bool, elapsed: Duration) {
    let labels = OpLabels {
        op: match op {
            CniOp::Add => "add",
            CniOp::Del => "del",
        },
        result: result(ok),
    };
    METRICS.cni.get_or_create(&labels).inc();
    METRICS
        .cni_seconds
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
}

/// A pod monitor was started; `restart` when the pod had one before.
pub fn monitor_start(restart: bool, ok: bool) {
    let labels = MonitorLabels {
        kind: if restart { "restart" } else { "start" },
        result: result(ok),
    };
    METRICS.monitor_starts.get_or_create(&labels).inc();
}

/// A streaming session was upgraded: `kind` exec, attach or portforward.
pub fn streaming_session(kind: &'static str, websocket: bool) {
    let labels = StreamLabels {
        kind,
        protocol: if websocket { "websocket" } else { "spdy" },
    };
    METRICS.streams.get_or_create(&labels).inc();
}

/// Pods and containers by state at one moment (what the services list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// ready, notready
    pub pods: [(&'static str, i64); 2],
    /// created, running, exited
    pub containers: [(&'static str, i64); 3],
}

impl Default for Snapshot {
    /// Nothing in any state.
    fn default() -> Snapshot {
        Snapshot::count(std::iter::empty(), std::iter::empty())
    }
}

impl Snapshot {
    pub fn of(pods: &[PodRecord], containers: &[ContainerRecord]) -> Snapshot {
        let pod_states = pods.iter().map(|p| p.observed_state());
        let container_states = containers.iter().map(|c| c.state);
        Snapshot::count(pod_states, container_states)
    }

    fn count(
        pods: impl Iterator<Item = PodState>,
        containers: impl Iterator<Item = ContainerState>,
    ) -> Snapshot {
        let mut s = Snapshot {
            pods: [("ready", 0), ("notready", 0)],
            containers: [("created", 0), ("running", 0), ("exited", 0)],
        };
        for p in pods {
            match p {
                PodState::Ready => s.pods[0].1 += 1,
                PodState::NotReady => s.pods[1].1 += 1,
                // Not listed yet: RunPodSandbox has not answered.
                PodState::Creating => {}
            }
        }
        for c in containers {
            match c {
                ContainerState::Created => s.containers[0].1 += 1,
                ContainerState::Running => s.containers[1].1 += 1,
                ContainerState::Exited => s.containers[2].1 += 1,
                ContainerState::Creating => {}
            }
        }
        s
    }
}

/// The whole exposition: the process-wide metrics, the state gauges of `snapshot`, and the EOF marker.
pub fn encode(snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut now = Registry::with_prefix(PREFIX);
    let build: Family<VersionLabels, Gauge> = Family::default();
    build
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    now.register("build_info", "The running crius version", build);
    let pods: Family<StateLabels, Gauge> = Family::default();
    for (state, n) in snapshot.pods {
        pods.get_or_create(&StateLabels { state }).set(n);
    }
    now.register(
        "pods",
        "Pod sandboxes by state (notready: stopped, or its pause died)",
        pods,
    );
    let containers: Family<StateLabels, Gauge> = Family::default();
    for (state, n) in snapshot.containers {
        containers.get_or_create(&StateLabels { state }).set(n);
    }
    now.register("containers", "Containers by state", containers);
    let mut out = String::new();
    text::encode_registry(&mut out, &METRICS.registry)?;
    text::encode_registry(&mut out, &now)?;
    text::encode_eof(&mut out)?;
    Ok(out)
}

/// The canonical gRPC name of a code, as other gRPC servers label their metrics.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests;
