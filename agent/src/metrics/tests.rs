#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;

/// The value of the sample `name{labels}` (labels exactly as written) in an exposition.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key.as_str())?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn scrape() -> String {
    encode(&Snapshot::default()).unwrap()
}

// The registry is one per process and tests run in parallel: each test uses its own method names and
// compares before and after.

#[test]
fn rpcs_are_counted_and_timed_by_method_and_code() {
    let before = scrape();
    let ok = "method=\"TestVersion\",code=\"OK\"";
    let nf = "method=\"TestVersion\",code=\"NotFound\"";
    assert_eq!(sample(&before, "crius_grpc_requests_total", ok), None);
    rpc("TestVersion", tonic::Code::Ok, Duration::from_micros(300));
    rpc("TestVersion", tonic::Code::Ok, Duration::from_millis(20));
    rpc("TestVersion", tonic::Code::NotFound, Duration::from_secs(3));
    let after = scrape();
    assert_eq!(sample(&after, "crius_grpc_requests_total", ok), Some(2.0));
    assert_eq!(sample(&after, "crius_grpc_requests_total", nf), Some(1.0));
    let h = "crius_grpc_request_duration_seconds";
    assert_eq!(sample(&after, &format!("{h}_count"), ok), Some(2.0));
    let sum = sample(&after, &format!("{h}_sum"), ok).unwrap();
    assert!((sum - 0.0203).abs() < 1e-9, "{sum}");
    // Cumulative buckets: 300 µs is under 0.0005, 20 ms under 0.025, both under +Inf.
    let bucket = |le: &str, labels: &str| {
        sample(
            &after,
            &format!("{h}_bucket"),
            &format!("le=\"{le}\",{labels}"),
        )
    };
    assert_eq!(bucket("0.0005", ok), Some(1.0));
    assert_eq!(bucket("0.01", ok), Some(1.0));
    assert_eq!(bucket("0.025", ok), Some(2.0));
    assert_eq!(bucket("+Inf", ok), Some(2.0));
    assert_eq!(bucket("2.5", nf), Some(0.0));
    assert_eq!(bucket("5.0", nf), Some(1.0));
}

#[test]
fn the_exposition_is_openmetrics_with_help_and_types() {
    rpc("TestHelp", tonic::Code::Unimplemented, Duration::ZERO);
    let text = scrape();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    for (name, kind) in [
        ("crius_grpc_requests", "counter"),
        ("crius_grpc_request_duration_seconds", "histogram"),
        ("crius_image_pulls", "counter"),
        ("crius_image_pull_bytes", "counter"),
        ("crius_cni_operations", "counter"),
        ("crius_monitor_starts", "counter"),
        ("crius_streaming_sessions", "counter"),
        ("crius_pods", "gauge"),
        ("crius_containers", "gauge"),
        ("crius_build_info", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no {kind} {name} in\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no help for {name}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "crius_grpc_requests_total",
            "method=\"TestHelp\",code=\"Unimplemented\""
        ),
        Some(1.0)
    );
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&text, "crius_build_info", &version), Some(1.0));
}

#[test]
fn state_gauges_come_from_the_snapshot_and_show_zeros() {
    let s = Snapshot::count(
        [
            PodState::Ready,
            PodState::Ready,
            PodState::NotReady,
            PodState::Creating,
        ]
        .into_iter(),
        [
            ContainerState::Running,
            ContainerState::Exited,
            ContainerState::Creating,
        ]
        .into_iter(),
    );
    assert_eq!(s.pods, [("ready", 2), ("notready", 1)]);
    assert_eq!(
        s.containers,
        [("created", 0), ("running", 1), ("exited", 1)]
    );
    let text = encode(&s).unwrap();
    assert_eq!(sample(&text, "crius_pods", "state=\"ready\""), Some(2.0));
    assert_eq!(sample(&text, "crius_pods", "state=\"notready\""), Some(1.0));
    assert_eq!(
        sample(&text, "crius_containers", "state=\"created\""),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "crius_containers", "state=\"running\""),
        Some(1.0)
    );
    // Nothing left over from an earlier scrape.
    let text = scrape();
    assert_eq!(sample(&text, "crius_pods", "state=\"ready\""), Some(0.0));
}

#[test]
fn pulls_cni_monitors_and_streams() {
    // Shared series (no per-test name): only increases are checked.
    let before = scrape();
    let get = |text: &str, name: &str, labels: &str| sample(text, name, labels).unwrap_or(0.0);
    image_pull(PullResult::Cancelled, Duration::from_secs(1));
    image_bytes(1000);
    cni(CniOp::Del, false, Duration::from_millis(5));
    monitor_start(true, true);
    streaming_session("portforward", true);
    let after = scrape();
    for (name, labels, by) in [
        ("crius_image_pulls_total", "result=\"cancelled\"", 1.0),
        (
            "crius_image_pull_duration_seconds_count",
            "result=\"cancelled\"",
            1.0,
        ),
        ("crius_image_pull_bytes_total", "", 1000.0),
        (
            "crius_cni_operations_total",
            "op=\"del\",result=\"failure\"",
            1.0,
        ),
        (
            "crius_cni_operation_duration_seconds_count",
            "op=\"del\",result=\"failure\"",
            1.0,
        ),
        (
            "crius_monitor_starts_total",
            "kind=\"restart\",result=\"success\"",
            1.0,
        ),
        (
            "crius_streaming_sessions_total",
            "kind=\"portforward\",protocol=\"websocket\"",
            1.0,
        ),
    ] {
        let grew = get(&after, name, labels) - get(&before, name, labels);
        assert!(grew >= by, "{name}{{{labels}}} grew by {grew}, not {by}");
    }
}

#[test]
fn an_rpc_dropped_unfinished_counts_as_canceled() {
    let timer = RpcTimer::start("TestDropped");
    drop(timer);
    RpcTimer::start("TestDropped").finish(tonic::Code::Ok);
    let text = scrape();
    let n = |code: &str| {
        sample(
            &text,
            "crius_grpc_requests_total",
            &format!("method=\"TestDropped\",code=\"{code}\""),
        )
    };
    assert_eq!(n("Canceled"), Some(1.0));
    assert_eq!(n("OK"), Some(1.0));
}

#[test]
fn code_names_are_grpc_canonical() {
    assert_eq!(code_name(tonic::Code::Ok), "OK");
    assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    assert_eq!(
        code_name(tonic::Code::FailedPrecondition),
        "FailedPrecondition"
    );
}
