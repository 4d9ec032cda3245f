//! crius' own observability, end to end: the Prometheus endpoint (`[metrics] address`) counts RPCs by method and
//! code with latency histograms, pods by state, CNI and monitor starts; nothing listens when it is off; and with
//! `[tracing] otlp_endpoint` the RPCs arrive as spans at an OTLP/gRPC collector (a tiny one in this test).
//! Each test starts its own `crius serve` (root required).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use crius_e2e::{Crius, Options, v1, wait_until};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::Code;

/// The endpoint crius logged (it is configured with port 0: the kernel picks a free one).
fn metrics_url(c: &Crius) -> String {
    let log = c.log();
    let line = log
        .lines()
        .find(|l| l.contains("metrics endpoint listening"))
        .unwrap_or_else(|| panic!("crius did not log its metrics endpoint:\n{log}"));
    let url = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .unwrap_or_else(|| panic!("no url= in {line:?}"));
    url.to_owned()
}

fn get(url: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.body_mut().read_to_string().unwrap();
    (resp.status().as_u16(), kind, body)
}

fn scrape(url: &str) -> String {
    let (status, kind, body) = get(url);
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// The value of `name{labels}` (labels in the order crius writes them; 0 when the series is absent).
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// How much `name{labels}` grew between two scrapes.
fn grew(before: &str, after: &str, name: &str, labels: &str) -> f64 {
    sample(after, name, labels) - sample(before, name, labels)
}

fn rpc(method: &str, code: &str) -> String {
    format!("method=\"{method}\",code=\"{code}\"")
}

/// The TCP ports process `pid` listens on (its sockets in LISTEN state in its network namespace).
fn listening_ports(pid: i32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

fn port_of(url: &str) -> u16 {
    let hostport = url.trim_start_matches("http://").split('/').next().unwrap();
    hostport.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_count_rpcs_by_method_and_code_and_pods_by_state() {
    let c = Crius::start(Options::new().set("metrics.address", "\"127.0.0.1:0\"")).await;
    let url = metrics_url(&c);
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
        "{url}"
    );
    // Only /metrics, and only reads.
    assert_eq!(get(&url.replace("/metrics", "/other")).0, 404);

    let m0 = scrape(&url);
    for _ in 0..2 {
        c.runtime()
            .version(v1::VersionRequest::default())
            .await
            .unwrap();
    }
    let err = c
        .runtime()
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .runtime()
        .checkpoint_container(v1::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let m1 = scrape(&url);
    let requests = "crius_grpc_requests_total";
    let count = "crius_grpc_request_duration_seconds_count";
    for (name, labels, by) in [
        (requests, rpc("Version", "OK"), 2.0),
        (count, rpc("Version", "OK"), 2.0),
        (requests, rpc("PodSandboxStatus", "NotFound"), 1.0),
        (count, rpc("PodSandboxStatus", "NotFound"), 1.0),
        (requests, rpc("CheckpointContainer", "Unimplemented"), 1.0),
    ] {
        assert_eq!(grew(&m0, &m1, name, &labels), by, "{name}{{{labels}}}");
    }
    // Version answers in well under a second: every observation is in the 1 s bucket.
    let version_fast = sample(
        &m1,
        "crius_grpc_request_duration_seconds_bucket",
        &format!("le=\"1.0\",{}", rpc("Version", "OK")),
    );
    assert_eq!(version_fast, sample(&m1, count, &rpc("Version", "OK")));
    assert!(m1.contains("# TYPE crius_grpc_request_duration_seconds histogram"));
    assert_eq!(sample(&m1, "crius_pods", "state=\"ready\""), 0.0);
    assert!(m1.contains("crius_pods{state=\"ready\"} 0\n"), "{m1}");

    let id = c.run_pod(c.pod_config("metrics")).await.unwrap();
    let m2 = scrape(&url);
    assert_eq!(grew(&m1, &m2, requests, &rpc("RunPodSandbox", "OK")), 1.0);
    assert_eq!(sample(&m2, "crius_pods", "state=\"ready\""), 1.0);
    assert_eq!(sample(&m2, "crius_pods", "state=\"notready\""), 0.0);
    let add = "op=\"add\",result=\"success\"";
    assert_eq!(grew(&m1, &m2, "crius_cni_operations_total", add), 1.0);
    assert_eq!(
        grew(&m1, &m2, "crius_cni_operation_duration_seconds_count", add),
        1.0
    );
    assert_eq!(
        grew(
            &m1,
            &m2,
            "crius_monitor_starts_total",
            "kind=\"start\",result=\"success\""
        ),
        1.0
    );
    assert_eq!(sample(&m2, "crius_containers", "state=\"running\""), 0.0);

    c.stop_pod(&id).await.unwrap();
    let m3 = scrape(&url);
    assert_eq!(grew(&m2, &m3, requests, &rpc("StopPodSandbox", "OK")), 1.0);
    assert_eq!(sample(&m3, "crius_pods", "state=\"ready\""), 0.0);
    assert_eq!(sample(&m3, "crius_pods", "state=\"notready\""), 1.0);
    let del = "op=\"del\",result=\"success\"";
    assert!(
        grew(&m2, &m3, "crius_cni_operations_total", del) >= 1.0,
        "{m3}"
    );

    c.remove_pod(&id).await.unwrap();
    let m4 = scrape(&url);
    assert_eq!(
        grew(&m3, &m4, requests, &rpc("RemovePodSandbox", "OK")),
        1.0
    );
    assert_eq!(sample(&m4, "crius_pods", "state=\"notready\""), 0.0);
    assert_eq!(
        grew(
            &m0,
            &m4,
            "crius_cni_operations_total",
            "op=\"add\",result=\"failure\""
        ),
        0.0
    );

    // The endpoint is one more listening socket of crius, besides the streaming server.
    let ports = listening_ports(c.pid().unwrap());
    assert!(ports.contains(&port_of(&url)), "{ports:?}");
    assert_eq!(ports.len(), 2, "crius listens on {ports:?}");
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn metrics_are_off_by_default_and_a_busy_address_stops_startup() {
    let c = Crius::start(Options::new()).await;
    assert!(
        !c.log().contains("metrics endpoint listening"),
        "{}",
        c.log()
    );
    // Only the streaming server listens.
    let ports = listening_ports(c.pid().unwrap());
    assert_eq!(
        ports.len(),
        1,
        "crius listens on {ports:?} with metrics off"
    );
    c.assert_no_leaks().await;
    drop(c);

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let mut c = Crius::prepare(Options::new().set("metrics.address", &format!("\"{addr}\"")))
        .expect("prepare");
    let err = c
        .launch()
        .await
        .expect_err("crius started on a busy address");
    let log = c.log();
    assert!(
        log.contains(&format!("cannot listen on {addr} for metrics")),
        "{err:#}\n{log}"
    );
}

/// An OTLP/gRPC trace collector that hands over what it receives.
struct Collector(tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One received span: its name, kind, gRPC status code attribute and span status code.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    kind: i32,
    grpc_code: Option<i64>,
    status: i32,
    service: String,
}

fn spans(req: &ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let grpc_code = s
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "rpc.grpc.status_code")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::IntValue(i) => Some(*i),
                        _ => None,
                    });
                out.push(Span {
                    name: s.name.clone(),
                    kind: s.kind,
                    grpc_code,
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

// Multi-threaded: the collector must answer while the test blocks in `stop` (crius flushes as it exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_reach_an_otlp_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut c =
        Crius::start(Options::new().set("tracing.otlp_endpoint", &format!("\"http://{addr}\"")))
            .await;
    assert!(c.log().contains("exporting RPC traces"), "{}", c.log());
    c.runtime()
        .version(v1::VersionRequest::default())
        .await
        .unwrap();
    let err = c
        .runtime()
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The SDK sends a batch every 5 s.
    let mut got: Vec<Span> = Vec::new();
    let arrived = wait_until(Duration::from_secs(20), async || {
        while let Ok(req) = rx.try_recv() {
            got.extend(spans(&req));
        }
        got.iter().any(|s| s.name == "PodSandboxStatus")
    })
    .await;
    assert!(arrived, "spans received: {got:#?}\n{}", c.log());
    let version = got.iter().find(|s| s.name == "Version").unwrap();
    // SPAN_KIND_SERVER = 2; gRPC OK = 0; span status unset (0): a refused request is not a server error.
    assert_eq!(
        (version.kind, version.grpc_code),
        (2, Some(0)),
        "{version:?}"
    );
    assert_eq!(version.service, "crius");
    let status = got.iter().find(|s| s.name == "PodSandboxStatus").unwrap();
    assert_eq!(
        (status.grpc_code, status.status),
        (Some(5), 0),
        "{status:?}"
    );
    assert!(
        !got.iter().any(|s| s.name == "rpc"),
        "an unnamed RPC span: {got:#?}"
    );

    c.assert_no_leaks().await;
    // What is still buffered at SIGTERM is sent before crius exits.
    c.runtime()
        .runtime_config(v1::RuntimeConfigRequest {})
        .await
        .unwrap();
    let exit = c.stop();
    assert!(exit.success(), "{exit:?}");
    let mut last = Vec::new();
    while let Ok(req) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        last.extend(spans(&req.unwrap()));
        if last.iter().any(|s| s.name == "RuntimeConfig") {
            break;
        }
    }
    assert!(
        last.iter().any(|s| s.name == "RuntimeConfig"),
        "not flushed at exit: {last:#?}\n{}",
        c.log()
    );
    server.abort();
}
