//! End-to-end streaming over SPDY/3.1 with an independent client: Exec, Attach and PortForward URLs from the
//! CRI, used by `e2e/independent/spdy/client.go` (Go's docker/spdystream, what kubelet, kubectl and crictl
//! use underneath; see crius_e2e::spdy_client). The image, pods, URLs and after-session checks are
//! crius_e2e::streaming, shared with streaming_ws.rs. Every test ends with the harness leak checks, no
//! `crius-monitor exec` helper left, and crius' fd count back where it was before the sessions.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use crius_e2e::containers::{Fixture, Pod, wait_log};
use crius_e2e::spdy_client::{Forwarded, PortForward, RemoteCommand, Session};
use crius_e2e::streaming::{
    BULK_SIZE, Baseline, GET, HTTP_PORT, HTTPD, IMAGE, assert_exit_status, assert_http_ok,
    attach_url, bulk_output, bulk_script, exec_req, exec_url, fixture, pod_with, port_forward_url,
    teardown, wait_listening,
};
use crius_e2e::{procfs, v1, wait_until};
use serde_json::Value;
use sha2::{Digest, Sha256};

const V4: &str = "v4.channel.k8s.io";
const V3: &str = "v3.channel.k8s.io";
const V5: &str = "v5.channel.k8s.io";
const V2: &str = "v2.channel.k8s.io";
const V1: &str = "channel.k8s.io";
/// A port nothing in the pod listens on.
const DEAD_PORT: u16 = 8081;

/// A crius with the image pulled, a pod, and a running container `main` running `command`.
async fn start(name: &str, command: &[&str]) -> (Fixture, Pod, String) {
    // Built before crius starts: a missing Go toolchain fails the test at once, with what to install.
    crius_e2e::spdy_client::binary();
    let f = fixture().await;
    let (pod, id) = pod_with(&f, name, command).await;
    (f, pod, id)
}

/// Runs a session with the Go client (on a blocking thread: the client is a process we wait for).
async fn run(rc: RemoteCommand) -> Session {
    let what = format!("{rc:?}");
    tokio::task::spawn_blocking(move || rc.run())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

async fn forward(pf: PortForward) -> Forwarded {
    let what = format!("{pf:?}");
    tokio::task::spawn_blocking(move || pf.run())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// A remotecommand session that completed normally: 101 with `protocol`, no client error, the server closed.
fn assert_completed(s: &Session, protocol: &str) {
    assert_eq!(s.http_status, 101, "{}", s.summary());
    assert_eq!(s.protocol, protocol, "{}", s.summary());
    assert_eq!(s.error, None, "{}", s.summary());
    assert!(
        s.server_closed,
        "the server did not close the connection after the error stream: {}",
        s.summary()
    );
}

/// The v4 (and v5) Status for an exit with `code`.
fn assert_v4_exit(s: &Session, code: i32) {
    let st = s
        .status
        .as_ref()
        .unwrap_or_else(|| panic!("no JSON Status on the error stream: {}", s.summary()));
    assert_exit_status(st, code, &s.summary());
    assert_eq!(s.exit_code, Some(code), "{}", s.summary());
}

/// The lines of `ps` in the container whose command is exactly `command`.
async fn ps_lines(f: &Fixture, id: &str, command: &str) -> Vec<String> {
    f.exec_ok(id, &["ps"])
        .await
        .lines()
        .filter(|l| l.trim_end().ends_with(&format!(" {command}")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn exec_separates_stdout_and_stderr_and_reports_the_exit_code() {
    let (f, pod, id) = start("spdy-exec", &["sleep", "100000"]).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    // kubelet's offer (v4, v3, v2, v1): the server picks v4.
    let cmd = ["sh", "-c", "echo out; echo err >&2; exit 3"];
    let url = exec_url(&f.c, exec_req(&id, &cmd, false, false)).await;
    let s = run(RemoteCommand::exec(&url)).await;
    assert_completed(&s, V4);
    assert_eq!(s.stdout_str(), "out\n", "{}", s.summary());
    assert_eq!(s.stderr_str(), "err\n", "{}", s.summary());
    assert_v4_exit(&s, 3);

    let url = exec_url(
        &f.c,
        exec_req(&id, &["sh", "-c", "echo fine"], false, false),
    )
    .await;
    let s = run(RemoteCommand::exec(&url)).await;
    assert_completed(&s, V4);
    assert_eq!(
        (s.stdout_str(), s.stderr_str()),
        ("fine\n".into(), "".into())
    );
    assert_v4_exit(&s, 0);

    // The exec runs as the container's user with its environment.
    let url = exec_url(
        &f.c,
        exec_req(&id, &["sh", "-c", "id -u; echo $PATH"], false, false),
    )
    .await;
    let s = run(RemoteCommand::exec(&url)).await;
    assert_completed(&s, V4);
    assert_eq!(s.stdout_str(), "0\n/bin\n", "{}", s.summary());
    assert_v4_exit(&s, 0);

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn exec_stdin_comes_back_and_its_half_close_ends_cat() {
    let (f, pod, id) = start("spdy-stdin", &["sleep", "100000"]).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    // More than one frame's worth, and more than a pipe holds, so flow control is exercised too.
    let input: Vec<u8> = (0..20000)
        .map(|i| format!("stdin line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let url = exec_url(&f.c, exec_req(&id, &["cat"], false, true)).await;
    let s = run(RemoteCommand::exec(&url).stdin(&input)).await;
    assert_completed(&s, V4);
    assert_eq!(s.stdout.len(), input.len(), "{}", s.summary());
    assert!(s.stdout == input, "cat's output differs from its input");
    assert_eq!(s.stderr_str(), "");
    assert_v4_exit(&s, 0);

    // An empty stdin, closed at once: cat sees EOF straight away.
    let url = exec_url(&f.c, exec_req(&id, &["cat"], false, true)).await;
    let s = run(RemoteCommand::exec(&url).stdin(b"")).await;
    assert_completed(&s, V4);
    assert_eq!(s.stdout_str(), "", "{}", s.summary());
    assert_v4_exit(&s, 0);

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn exec_large_output_arrives_intact_and_in_order() {
    let (f, pod, id) = start("spdy-large", &["sleep", "100000"]).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    let script = bulk_script();
    let cmd = ["sh", "-c", &script];
    let url = exec_url(&f.c, exec_req(&id, &cmd, false, false)).await;
    let s = run(RemoteCommand::exec(&url).timeout(Duration::from_secs(120))).await;
    let want = bulk_output();
    assert_completed(&s, V4);
    assert_eq!(s.stdout.len(), BULK_SIZE, "{}", s.summary());
    assert_eq!(
        format!("{:x}", Sha256::digest(&s.stdout)),
        format!("{:x}", Sha256::digest(&want)),
        "10 MiB of stdout arrived changed or out of order"
    );
    assert_eq!(s.stderr_str(), "");
    assert_v4_exit(&s, 0);

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn exec_with_a_tty_gets_a_pty_that_follows_resize() {
    let (f, pod, id) = start("spdy-tty", &["sleep", "100000"]).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    // The size is sent as soon as the streams are open; the command reads it half a second later.
    let cmd = ["sh", "-c", "tty; sleep 0.5; stty size"];
    let url = exec_url(&f.c, exec_req(&id, &cmd, true, false)).await;
    let s = run(RemoteCommand::exec(&url).tty().resize(100, 40)).await;
    assert_completed(&s, V4);
    let out = s.stdout_str().replace("\r\n", "\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{}", s.summary());
    let n = lines[0].strip_prefix("/dev/pts/");
    assert!(
        n.is_some_and(|n| n.parse::<u32>().is_ok()),
        "tty printed {:?}, not /dev/pts/N",
        lines[0]
    );
    assert_eq!(lines[1], "40 100", "{}", s.summary());
    assert_eq!(s.stderr, b"", "a tty session has no stderr stream");
    assert_v4_exit(&s, 0);

    // The exit code comes through a tty session too.
    let url = exec_url(&f.c, exec_req(&id, &["sh", "-c", "exit 7"], true, false)).await;
    let s = run(RemoteCommand::exec(&url).tty()).await;
    assert_completed(&s, V4);
    assert_v4_exit(&s, 7);

    // `kubectl exec -it <ctr> -- sh`: typed input reaches the shell through the pty; it exits by itself.
    let url = exec_url(&f.c, exec_req(&id, &["sh"], true, true)).await;
    let s = run(RemoteCommand::exec(&url)
        .tty()
        .resize(80, 24)
        .stdin(b"echo hi-$((40+2)); exit 5\n")
        .stdin_hold())
    .await;
    assert_completed(&s, V4);
    assert!(s.stdout_str().contains("hi-42"), "{}", s.summary());
    assert_v4_exit(&s, 5);

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn protocol_negotiation_follows_the_offer() {
    let (f, pod, id) = start("spdy-proto", &["sleep", "100000"]).await;
    let base = Baseline::after_exec_sync(&f, &id).await;
    let fail = ["sh", "-c", "echo out; exit 3"];

    // v3 only: the 101 names it; a failure is a text message, success leaves the error stream empty.
    let url = exec_url(&f.c, exec_req(&id, &fail, false, false)).await;
    let s = run(RemoteCommand::exec(&url).protocols(&[V3])).await;
    assert_completed(&s, V3);
    assert_eq!(s.stdout_str(), "out\n", "{}", s.summary());
    assert!(!s.error_stream.is_empty(), "v3: no failure message");
    assert!(
        !serde_json::from_str::<Value>(&s.error_stream).is_ok_and(|v| v.is_object()),
        "v3 got a JSON object on the error stream, only v4 has a Status: {}",
        s.summary()
    );
    let url = exec_url(&f.c, exec_req(&id, &["true"], false, false)).await;
    let s = run(RemoteCommand::exec(&url).protocols(&[V3])).await;
    assert_completed(&s, V3);
    assert_eq!(s.error_stream, "", "v3 success: {}", s.summary());

    // v5 (over SPDY the same as v4) only.
    let url = exec_url(&f.c, exec_req(&id, &fail, false, false)).await;
    let s = run(RemoteCommand::exec(&url).protocols(&[V5])).await;
    assert_completed(&s, V5);
    assert_v4_exit(&s, 3);

    // Kubernetes' negotiation takes the first protocol of the client's list that the server supports.
    let url = exec_url(&f.c, exec_req(&id, &["true"], false, false)).await;
    let s = run(RemoteCommand::exec(&url).protocols(&[V3, V4])).await;
    assert_completed(&s, V3);

    // The older protocols run a command too; v2 reports a failure as text like v3.
    let url = exec_url(&f.c, exec_req(&id, &fail, false, false)).await;
    let s = run(RemoteCommand::exec(&url).protocols(&[V2])).await;
    assert_completed(&s, V2);
    assert_eq!(s.stdout_str(), "out\n", "{}", s.summary());
    assert!(!s.error_stream.is_empty(), "v2: no failure message");
    let url = exec_url(&f.c, exec_req(&id, &["echo", "v1"], false, false)).await;
    let s = run(RemoteCommand::exec(&url).protocols(&[V1])).await;
    assert_completed(&s, V1);
    assert_eq!(s.stdout_str(), "v1\n", "{}", s.summary());
    assert_eq!(s.error_stream, "", "v1 success: {}", s.summary());

    // The upgrade may come as a GET as well as a POST.
    let url = exec_url(&f.c, exec_req(&id, &["echo", "get"], false, false)).await;
    let s = run(RemoteCommand::exec(&url).method("GET")).await;
    assert_completed(&s, V4);
    assert_eq!(s.stdout_str(), "get\n", "{}", s.summary());
    assert_v4_exit(&s, 0);

    // Nothing in common: 403, no upgrade.
    let url = exec_url(&f.c, exec_req(&id, &["true"], false, false)).await;
    let s = run(RemoteCommand::exec(&url).protocols(&["v99.channel.k8s.io"])).await;
    assert_eq!(s.http_status, 403, "{}", s.summary());
    assert_eq!(s.error, None, "{}", s.summary());

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn tokens_are_single_use_and_unknown_ones_are_404() {
    let (f, pod, id) = start("spdy-tokens", &["sleep", "100000"]).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    let url = exec_url(&f.c, exec_req(&id, &["echo", "once"], false, false)).await;
    let s = run(RemoteCommand::exec(&url)).await;
    assert_completed(&s, V4);
    assert_eq!(s.stdout_str(), "once\n");
    let again = run(RemoteCommand::exec(&url)).await;
    assert_eq!(again.http_status, 404, "second use: {}", again.summary());

    let (prefix, _) = url.rsplit_once('/').unwrap();
    let unknown = format!("{prefix}/0123456789abcdefnotatoken");
    let s = run(RemoteCommand::exec(&unknown)).await;
    assert_eq!(s.http_status, 404, "unknown token: {}", s.summary());

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn attach_sends_stdin_and_shows_only_live_output() {
    crius_e2e::spdy_client::binary();
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("spdy-attach")).await;
    let script = "echo before; while read l; do echo got:$l; done";
    let mut config = f.config(IMAGE, "main", &["sh", "-c", script]);
    config.stdin = true;
    config.stdin_once = false;
    let id = f.spawn(&pod, config).await;
    wait_log(&pod.log_dir().join("main.log"), |r| {
        r.iter().any(|r| r.content == "before")
    })
    .await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    // An interactive user: stdin stays open; the client leaves once it has seen the answers.
    let url = attach_url(&f.c, &id, true).await;
    let s = run(RemoteCommand::attach(&url)
        .stdin(b"a\nb\n")
        .stdin_hold()
        .expect("got:b\n"))
    .await;
    assert_eq!(
        (s.http_status, s.protocol.as_str()),
        (101, V4),
        "{}",
        s.summary()
    );
    assert_eq!(s.error, None, "{}", s.summary());
    assert_eq!(s.stdout_str(), "got:a\ngot:b\n", "{}", s.summary());

    // A second session sees only what comes after it attached; the container's stdin survived the first.
    let url = attach_url(&f.c, &id, true).await;
    let s = run(RemoteCommand::attach(&url)
        .stdin(b"c\n")
        .stdin_hold()
        .expect("got:c\n"))
    .await;
    assert_eq!(s.error, None, "{}", s.summary());
    assert_eq!(s.stdout_str(), "got:c\n", "{}", s.summary());
    assert_eq!(
        f.status(&id).await.state,
        v1::ContainerState::ContainerRunning as i32,
        "the container did not survive its attach sessions"
    );

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

/// Pair `pair` of `fwd` carried the served file, with nothing on its error stream.
fn assert_served(fwd: &Forwarded, pair: usize) {
    let p = &fwd.pairs[pair];
    assert_eq!(p.error, None, "{}", fwd.summary());
    assert_eq!(p.error_stream, "", "{}", fwd.summary());
    assert_http_ok(&p.data, &format!("pair {pair} of {}", fwd.summary()));
}

#[tokio::test]
async fn port_forward_reaches_the_pod_and_reports_a_dead_port_on_its_pair() {
    let (f, pod, id) = start("spdy-pf", HTTPD).await;
    wait_listening(&f, &id, HTTP_PORT).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    // Two pairs to 8080 at once.
    let url = port_forward_url(&f.c, &pod, &[HTTP_PORT, DEAD_PORT]).await;
    let fwd = forward(
        PortForward::new(&url, &[HTTP_PORT])
            .connections(2)
            .send(GET),
    )
    .await;
    assert_eq!(
        (fwd.http_status, fwd.protocol.as_str()),
        (101, "portforward.k8s.io"),
        "{}",
        fwd.summary()
    );
    assert_eq!(fwd.error, None, "{}", fwd.summary());
    assert_eq!(fwd.pairs.len(), 2);
    assert_served(&fwd, 0);
    assert_served(&fwd, 1);

    // A pair to a port nothing listens on fails on its own error stream; the other pair still works.
    let url = port_forward_url(&f.c, &pod, &[HTTP_PORT, DEAD_PORT]).await;
    let fwd = forward(PortForward::new(&url, &[DEAD_PORT, HTTP_PORT]).send(GET)).await;
    assert_eq!(fwd.http_status, 101, "{}", fwd.summary());
    assert_eq!(fwd.error, None, "{}", fwd.summary());
    let dead = &fwd.pairs[0];
    assert_eq!(dead.port, DEAD_PORT);
    assert_eq!(dead.error, None, "{}", fwd.summary());
    assert!(
        !dead.error_stream.is_empty(),
        "no message on the error stream of the pair to {DEAD_PORT}: {}",
        fwd.summary()
    );
    assert_eq!(dead.data, b"", "{}", fwd.summary());
    assert_served(&fwd, 1);

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn port_forward_carries_a_mebibyte_each_way_on_concurrent_pairs() {
    const ECHO_PORT: u16 = 9000;
    // An echo server: each connection is `cat`, which ends when the client's half-close reaches it.
    let echo = ["nc", "-ll", "-p", "9000", "-e", "cat"];
    let (f, pod, id) = start("spdy-pf-echo", &echo).await;
    wait_listening(&f, &id, ECHO_PORT).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    let payload: Vec<u8> = (0..80_000)
        .map(|i| format!("{i:012}\n"))
        .collect::<String>()
        .into_bytes();
    let url = port_forward_url(&f.c, &pod, &[ECHO_PORT]).await;
    let fwd = forward(
        PortForward::new(&url, &[ECHO_PORT])
            .connections(3)
            .send(&payload)
            .timeout(Duration::from_secs(120)),
    )
    .await;
    assert_eq!(fwd.http_status, 101, "{}", fwd.summary());
    assert_eq!(fwd.error, None, "{}", fwd.summary());
    assert_eq!(fwd.pairs.len(), 3, "{}", fwd.summary());
    for p in &fwd.pairs {
        assert_eq!(
            (p.error.as_deref(), p.error_stream.as_str()),
            (None, ""),
            "{}",
            fwd.summary()
        );
        assert_eq!(p.data.len(), payload.len(), "{}", fwd.summary());
        assert!(
            p.data == payload,
            "pair {}: the echo differs from what was sent",
            p.request_id
        );
    }

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn twenty_concurrent_exec_sessions() {
    let (f, pod, id) = start("spdy-many", &["sleep", "100000"]).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    let mut urls = Vec::new();
    for i in 0..20 {
        urls.push(exec_url(&f.c, exec_req(&id, &["echo", &i.to_string()], false, false)).await);
    }
    let sessions: Vec<_> = urls
        .iter()
        .map(|url| {
            tokio::task::spawn_blocking({
                let rc = RemoteCommand::exec(url).timeout(Duration::from_secs(120));
                move || rc.run()
            })
        })
        .collect();
    for (i, session) in sessions.into_iter().enumerate() {
        let s = session
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("session {i}: {e:#}"));
        assert_completed(&s, V4);
        assert_eq!(
            s.stdout_str(),
            format!("{i}\n"),
            "session {i}: {}",
            s.summary()
        );
        assert_v4_exit(&s, 0);
    }

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn killing_the_client_ends_the_exec_but_not_the_container() {
    let (f, pod, id) = start("spdy-kill", &["sleep", "100000"]).await;
    let main = f.pid(&id).await;
    let base = Baseline::after_exec_sync(&f, &id).await;

    let url = exec_url(&f.c, exec_req(&id, &["sleep", "1000"], false, false)).await;
    let (mut client, _stdin) = RemoteCommand::exec(&url)
        .timeout(Duration::from_secs(300))
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(20), async || {
        !ps_lines(&f, &id, "sleep 1000").await.is_empty()
    })
    .await;
    if !started {
        let _ = client.kill();
        let _ = client.wait();
        panic!("the exec'd sleep 1000 never showed in the container");
    }
    client.kill().unwrap();
    client.wait().unwrap();

    let gone = wait_until(Duration::from_secs(10), async || {
        ps_lines(&f, &id, "sleep 1000").await.is_empty()
    })
    .await;
    assert!(
        gone,
        "the exec'd process outlived its client: {:?}",
        ps_lines(&f, &id, "sleep 1000").await
    );
    assert_eq!(
        f.status(&id).await.state,
        v1::ContainerState::ContainerRunning as i32
    );
    assert!(
        procfs::is_alive(main),
        "the container's process {main} died"
    );

    // The same when the client closes the connection itself mid-session.
    let cmd = ["sh", "-c", "echo ready; exec sleep 1001"];
    let url = exec_url(&f.c, exec_req(&id, &cmd, false, false)).await;
    let s = run(RemoteCommand::exec(&url).expect("ready\n")).await;
    assert_eq!(
        (s.http_status, s.error.as_deref()),
        (101, None),
        "{}",
        s.summary()
    );
    let gone = wait_until(Duration::from_secs(10), async || {
        ps_lines(&f, &id, "sleep 1001").await.is_empty()
    })
    .await;
    assert!(
        gone,
        "the exec'd process outlived the connection: {:?}",
        ps_lines(&f, &id, "sleep 1001").await
    );
    assert!(
        procfs::is_alive(main),
        "the container's process {main} died"
    );

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}
