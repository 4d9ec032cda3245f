//! End-to-end streaming over WebSocket: Exec, Attach and PortForward URLs from the CRI, used with our own channel
//! client (crius_e2e::ws_client, written from Kubernetes' protocols) and with the Kubernetes Python client's
//! WebSocket code (e2e/independent/k8s_ws_client.py). The image, pods, URLs and after-session checks are
//! crius_e2e::streaming, shared with streaming_spdy.rs. Every test ends with the harness leak checks, no exec
//! helper left, and crius' fd count back where it was before the sessions.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use crius_e2e::containers::{STATE_TIMEOUT, wait_log};
use crius_e2e::streaming::{
    BULK_SIZE, Baseline, GET, HTTP_PORT, IMAGE, assert_exit_status, assert_http_ok, attach_url,
    bulk_output, bulk_script, exec_helpers, exec_req, exec_url, fixture, http_pod, pod_with,
    port_forward_url, split_response, teardown, www_body,
};
use crius_e2e::ws_client::{
    self, ERROR, Output, SESSION_TIMEOUT, STDERR, STDIN, STDOUT, V1, V4, V4_BASE64, V5,
};
use crius_e2e::{Crius, procfs, v1, wait_until};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Exec `cmd` (stdout + stderr) and read the whole session with `protocols`: the chosen protocol and output.
async fn exec_session(
    c: &Crius,
    req: v1::ExecRequest,
    protocols: &[&str],
) -> (Option<String>, Output) {
    let cmd = req.cmd.clone();
    let s = open_exec(c, req, protocols).await;
    let protocol = s.protocol().map(str::to_string);
    let out = s
        .collect(SESSION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{cmd:?} over {protocol:?}: {e:#}"));
    (protocol, out)
}

/// Exec `req` and open a session on its URL offering `protocols`.
async fn open_exec(c: &Crius, req: v1::ExecRequest, protocols: &[&str]) -> ws_client::Session {
    let url = exec_url(c, req.clone()).await;
    ws_client::connect(&url, protocols)
        .await
        .unwrap_or_else(|e| panic!("{:?}: {e:#}", req.cmd))
}

/// Open a port-forward session to `port` (port index 0) on `url`, offering `protocol`.
async fn open_forward(url: &str, protocol: &str, port: u16) -> ws_client::Session {
    ws_client::port_forward(url, &[protocol], &[port], SESSION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{protocol} to {port}: {e:#}"))
}

/// The first message of a session is an empty one on `channel` (the lowest output channel asked for).
fn assert_up_first(out: &Output, channel: u8) {
    assert_eq!(
        out.messages.first(),
        Some(&(channel, 0)),
        "the first message is not an empty one on channel {channel}: {out}"
    );
}

/// The v4/v5 end of a session whose command exited with `code`: the Status on channel 3, then a Close frame.
fn assert_exit(out: &Output, code: i32) {
    let st = out
        .status()
        .unwrap_or_else(|e| panic!("{e:#}; received: {out}"));
    assert_exit_status(&st, code, out);
    assert_eq!(out.exit_code().unwrap(), code);
    assert!(out.close.is_some(), "no Close frame at the end: {out}");
}

/// Pids of processes whose command line is exactly `args`.
fn pids_running(args: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    procfs::all_pids()
        .into_iter()
        .filter(|pid| {
            procfs::is_alive(*pid)
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
        })
        .collect()
}

#[tokio::test]
async fn exec_separates_stdout_and_stderr_and_reports_the_exit_code() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "exec", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    for proto in [V5, V4] {
        let cmd = ["sh", "-c", "echo out; echo err >&2; exit 3"];
        let (chosen, out) = exec_session(&f.c, exec_req(&id, &cmd, false, false), &[proto]).await;
        assert_eq!(chosen.as_deref(), Some(proto));
        assert_up_first(&out, STDOUT);
        assert_eq!(out.text(STDOUT), "out\n", "{proto}: {out}");
        assert_eq!(out.text(STDERR), "err\n", "{proto}: {out}");
        assert_exit(&out, 3);

        let (_, out) = exec_session(&f.c, exec_req(&id, &["true"], false, false), &[proto]).await;
        assert_up_first(&out, STDOUT);
        assert_eq!((out.stdout(), out.stderr()), (&b""[..], &b""[..]));
        assert_exit(&out, 0);

        // Without stdout the "up" message goes to stderr.
        let mut req = exec_req(&id, &["sh", "-c", "echo err >&2"], false, false);
        req.stdout = false;
        let (_, out) = exec_session(&f.c, req, &[proto]).await;
        assert_up_first(&out, STDERR);
        assert_eq!(out.text(STDERR), "err\n", "{proto}: {out}");
        assert_exit(&out, 0);
    }

    // The command runs in the container's namespaces.
    let kinds = ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}; "))
        .collect();
    let (_, out) = exec_session(
        &f.c,
        exec_req(&id, &["sh", "-c", &script], false, false),
        &[V5],
    )
    .await;
    assert_exit(&out, 0);
    let main = f.pid(&id).await;
    let want: String = kinds
        .iter()
        .map(|k| {
            let link = std::fs::read_link(format!("/proc/{main}/ns/{k}")).unwrap();
            format!("{}\n", link.to_string_lossy())
        })
        .collect();
    assert_eq!(out.text(STDOUT), want, "exec namespaces vs the container's");

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn protocol_negotiation_and_v1_text_errors() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "negotiate", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    // The first of the client's list that the server speaks.
    let cmd = ["sh", "-c", "echo out; exit 3"];
    let (chosen, out) = exec_session(
        &f.c,
        exec_req(&id, &cmd, false, false),
        &["v99.channel.k8s.io", V4, V5],
    )
    .await;
    assert_eq!(chosen.as_deref(), Some(V4));
    assert_exit(&out, 3);

    // channel.k8s.io, and no subprotocol at all: binary channels, errors as plain text.
    for protocols in [&[V1][..], &[][..]] {
        let (chosen, out) = exec_session(&f.c, exec_req(&id, &cmd, false, false), protocols).await;
        assert_eq!(chosen.as_deref(), protocols.first().copied());
        assert_up_first(&out, STDOUT);
        assert_eq!(out.text(STDOUT), "out\n", "{protocols:?}: {out}");
        let err = out.text(ERROR);
        assert!(
            !err.is_empty() && !err.trim_start().starts_with('{') && err.contains('3'),
            "{protocols:?}: the error channel should say in text that the exit code was 3: {out}"
        );
        let (_, out) = exec_session(&f.c, exec_req(&id, &["true"], false, false), protocols).await;
        assert_eq!(
            out.text(ERROR),
            "",
            "{protocols:?}: success has no error: {out}"
        );
        assert!(out.ended, "{out}");
    }
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn stdin_reaches_cat_and_v5_close_ends_it() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "stdin", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    let mut s = open_exec(&f.c, exec_req(&id, &["cat"], false, true), &[V5]).await;
    assert_eq!(s.protocol(), Some(V5));
    s.send(STDIN, b"hello\n").await.unwrap();
    s.read_until(SESSION_TIMEOUT, "cat's echo", |o| o.stdout() == b"hello\n")
        .await
        .unwrap();
    s.close_stdin().await.unwrap();
    let out = s.collect(SESSION_TIMEOUT).await.unwrap();
    assert_up_first(&out, STDOUT);
    assert_eq!(out.text(STDOUT), "hello\n");
    assert_exit(&out, 0);
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

/// Kubernetes reads client messages whatever their frame type and decodes them by the negotiated protocol, so
/// on binary protocols a text frame `"\0hello\n"` is stdin too (clients writing strings send those).
#[tokio::test]
async fn binary_protocols_take_stdin_in_text_frames_too() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "textframes", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    for proto in [V5, V4] {
        let req = exec_req(&id, &["sh", "-c", r#"read x; echo "got $x""#], false, true);
        let mut s = open_exec(&f.c, req, &[proto]).await;
        s.send_text("\u{0}hello\n").await.unwrap();
        let out = s
            .collect(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{proto}: stdin sent in a text frame: {e:#}"));
        assert_eq!(out.text(STDOUT), "got hello\n", "{proto}: {out}");
        assert_exit(&out, 0);
    }
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn base64_protocol_carries_binary_both_ways() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "base64", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    let script = r#"read x; echo "got $x"; printf '\001\377\200z'; echo err >&2; exit 3"#;
    let mut s = open_exec(
        &f.c,
        exec_req(&id, &["sh", "-c", script], false, true),
        &[V4_BASE64],
    )
    .await;
    assert_eq!(s.protocol(), Some(V4_BASE64));
    s.send(STDIN, b"hi there\n").await.unwrap();
    let out = s.collect(SESSION_TIMEOUT).await.unwrap();
    assert_up_first(&out, STDOUT);
    assert_eq!(out.stdout(), b"got hi there\n\x01\xff\x80z", "{out}");
    assert_eq!(out.text(STDERR), "err\n");
    assert_exit(&out, 3);
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn ten_mebibytes_of_output_arrive_intact_and_in_order() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "bulk", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    let cmd = bulk_script();
    let s = open_exec(
        &f.c,
        exec_req(&id, &["sh", "-c", &cmd], false, false),
        &[V5],
    )
    .await;
    let out = s.collect(Duration::from_secs(180)).await.unwrap();
    let want = bulk_output();
    let got = out.stdout();
    assert_eq!(got.len(), BULK_SIZE, "stdout length");
    if got != want.as_slice() {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        panic!(
            "stdout differs from byte {at}: sha256 {:x} instead of {:x}",
            Sha256::digest(got),
            Sha256::digest(&want)
        );
    }
    assert_eq!(out.text(STDERR), "");
    assert_exit(&out, 0);
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn tty_exec_gets_a_pty_and_the_resize() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "tty", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    let req = exec_req(&id, &["sh", "-c", "sleep 0.5; tty; stty size"], true, true);
    let mut s = open_exec(&f.c, req, &[V5]).await;
    s.resize(100, 40).await.unwrap();
    let out = s.collect(SESSION_TIMEOUT).await.unwrap();
    assert_up_first(&out, STDOUT);
    let text = out.text(STDOUT);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    let n = lines[0]
        .strip_prefix("/dev/pts/")
        .unwrap_or_else(|| panic!("tty printed {:?}", lines[0]));
    assert!(n.parse::<u32>().is_ok(), "tty printed {:?}", lines[0]);
    assert_eq!(lines[1], "40 100", "stty size after a 100x40 resize");
    assert_exit(&out, 0);
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn ending_a_session_kills_only_the_exec_process() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "endexec", &["sleep", "100000"]).await;
    let main = f.pid(&id).await;
    let base = Baseline::take(&f.c);
    for (tty, seconds) in [(false, "98761"), (true, "98762")] {
        let mut s = open_exec(&f.c, exec_req(&id, &["sleep", seconds], tty, true), &[V5]).await;
        s.read_until(SESSION_TIMEOUT, "the up message", |o| {
            !o.messages.is_empty()
        })
        .await
        .unwrap();
        let mut pid = None;
        assert!(
            wait_until(STATE_TIMEOUT, async || {
                pid = pids_running(&["sleep", seconds]).first().copied();
                pid.is_some()
            })
            .await,
            "tty {tty}: exec'd sleep {seconds} never showed up"
        );
        let pid = pid.unwrap();
        // The leak checks look for these helpers: make sure they would see one.
        assert!(
            !exec_helpers(&f.c).is_empty(),
            "no crius-monitor exec helper seen during a live session"
        );
        assert_eq!(
            procfs::ns_inode(pid, "pid"),
            procfs::ns_inode(main, "pid"),
            "the exec'd process is not in the container's pid namespace"
        );
        s.close().await.unwrap();
        assert!(
            wait_until(Duration::from_secs(10), async || !procfs::is_alive(pid)).await,
            "tty {tty}: exec'd sleep {pid} outlived the end of its session"
        );
        assert!(procfs::is_alive(main), "the container's process died too");
    }
    assert_eq!(
        f.status(&id).await.state,
        v1::ContainerState::ContainerRunning as i32
    );
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn attach_streams_new_output_and_takes_stdin() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("attach")).await;
    let script = r#"echo before; while read line; do echo "got $line"; done"#;
    let mut config = f.config(IMAGE, "reader", &["sh", "-c", script]);
    config.stdin = true;
    let log = pod.log_dir().join(&config.log_path);
    let id = f.spawn(&pod, config).await;
    wait_log(&log, |r| r.iter().any(|r| r.content == "before")).await;
    let base = Baseline::take(&f.c);

    for word in ["ping", "pong"] {
        let url = attach_url(&f.c, &id, true).await;
        let mut s = ws_client::connect(&url, &[V5]).await.unwrap();
        assert_eq!(s.protocol(), Some(V5));
        s.send(STDIN, format!("{word}\n").as_bytes()).await.unwrap();
        let want = format!("got {word}\n");
        s.read_until(SESSION_TIMEOUT, "the loop's answer", |o| {
            o.text(STDOUT).contains(&want)
        })
        .await
        .unwrap();
        let out = s.close().await.unwrap();
        assert_up_first(&out, STDOUT);
        assert_eq!(
            out.text(STDOUT),
            want,
            "only output after the attach: {out}"
        );
    }
    let records = wait_log(&log, |r| r.iter().any(|r| r.content == "got pong")).await;
    let lines: Vec<&str> = records.iter().map(|r| r.content.as_str()).collect();
    assert_eq!(lines, ["before", "got ping", "got pong"]);
    assert_eq!(
        f.status(&id).await.state,
        v1::ContainerState::ContainerRunning as i32,
        "detaching must leave the container running"
    );
    base.assert_settled(&f.c).await;
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

/// Whether `data` is a whole HTTP response (headers and Content-Length bytes of body).
fn http_complete(data: &[u8]) -> bool {
    let Some((head, body)) = split_response(data) else {
        return false;
    };
    head.to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// Forwards a GET over an open port-forward session on port index 0 and returns the response.
async fn forward_get(s: &mut ws_client::Session) -> Vec<u8> {
    s.send(ws_client::data_channel(0), GET).await.unwrap();
    s.read_until(SESSION_TIMEOUT, "the whole HTTP response", |o| {
        http_complete(o.port_data(0))
    })
    .await
    .unwrap();
    s.output().port_data(0).to_vec()
}

#[tokio::test]
async fn port_forward_reaches_httpd_in_the_pod() {
    let f = fixture().await;
    let (pod, id) = http_pod(&f, "forward").await;
    let base = Baseline::take(&f.c);
    for proto in [V4, V4_BASE64] {
        let url = port_forward_url(&f.c, &pod, &[HTTP_PORT]).await;
        let mut s = open_forward(&url, proto, HTTP_PORT).await;
        assert_eq!(s.protocol(), Some(proto));
        let response = forward_get(&mut s).await;
        assert_http_ok(&response, proto);
        assert_eq!(s.output().port_error(0), "", "{proto}");
        s.close().await.unwrap();
    }
    // No ports in the request: they come from the URL's query.
    let url = port_forward_url(&f.c, &pod, &[]).await;
    let url = format!("{url}?port={HTTP_PORT}");
    let mut s = open_forward(&url, V4, HTTP_PORT).await;
    let response = forward_get(&mut s).await;
    assert_http_ok(&response, "?port=");
    s.close().await.unwrap();

    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn port_forward_to_a_closed_port_reports_on_its_error_channel() {
    let f = fixture().await;
    let (pod, id) = http_pod(&f, "refused").await;
    let base = Baseline::take(&f.c);
    let url = port_forward_url(&f.c, &pod, &[9]).await;
    let mut s = open_forward(&url, V4, 9).await;
    s.read_until(SESSION_TIMEOUT, "an error for port 9", |o| {
        !o.port_error(0).is_empty()
    })
    .await
    .unwrap();
    assert_eq!(s.output().port_data(0), b"", "no data from a closed port");
    let err = s.output().port_error(0);
    assert!(err.contains('9'), "the error should name the port: {err:?}");
    s.close().await.unwrap();
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn tokens_are_single_use_and_unknown_ones_are_not_found() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "tokens", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);

    let exec = exec_url(&f.c, exec_req(&id, &["true"], false, false)).await;
    let out = ws_client::connect(&exec, &[V5])
        .await
        .unwrap()
        .collect(SESSION_TIMEOUT)
        .await
        .unwrap();
    assert_exit(&out, 0);
    let attach = attach_url(&f.c, &id, false).await;
    ws_client::connect(&attach, &[V5])
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let forward = port_forward_url(&f.c, &pod, &[9]).await;
    ws_client::connect(&forward, &[V4])
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    for (url, proto) in [(&exec, V5), (&attach, V5), (&forward, V4)] {
        let (status, body) = ws_client::upgrade_status(url, &[proto]).await.unwrap();
        assert_eq!(status, 404, "reused {url}: {body}");
        let unknown = format!("{}/0123456789abcdef", url.rsplit_once('/').unwrap().0);
        let (status, body) = ws_client::upgrade_status(&unknown, &[proto]).await.unwrap();
        assert_eq!(status, 404, "unknown {unknown}: {body}");
    }

    // A fresh token, but only a subprotocol the server does not speak: an HTTP error, no upgrade.
    let url = exec_url(&f.c, exec_req(&id, &["true"], false, false)).await;
    let (status, body) = ws_client::upgrade_status(&url, &["v99.channel.k8s.io"])
        .await
        .unwrap();
    assert!(
        (400..600).contains(&status),
        "unsupported subprotocol: HTTP {status} {body}"
    );
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_exec_sessions() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "concurrent", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    let script = r#"read x; echo "$x-$1"; echo "err-$1" >&2; exit $(( $1 % 4 ))"#;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut rt = f.c.runtime();
        let req = exec_req(
            &id,
            &["sh", "-c", script, "sh", &i.to_string()],
            false,
            true,
        );
        tasks.push(tokio::spawn(async move {
            let url = rt.exec(req).await?.into_inner().url;
            let mut s = ws_client::connect(&url, &[V5]).await?;
            s.send(STDIN, format!("line{i}\n").as_bytes()).await?;
            s.close_stdin().await?;
            anyhow::Ok((i, s.collect(Duration::from_secs(60)).await?))
        }));
    }
    for task in tasks {
        let (i, out) = task.await.unwrap().unwrap();
        assert_eq!(
            out.text(STDOUT),
            format!("line{i}-{i}\n"),
            "session {i}: {out}"
        );
        assert_eq!(out.text(STDERR), format!("err-{i}\n"), "session {i}: {out}");
        assert_exit(&out, i % 4);
    }
    base.assert_settled(&f.c).await;
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn a_hundred_sequential_sessions_leave_nothing_behind() {
    let f = fixture().await;
    let (pod, id) = pod_with(&f, "sequential", &["sleep", "100000"]).await;
    let base = Baseline::take(&f.c);
    for i in 0..100 {
        let n = i.to_string();
        let (_, out) = exec_session(&f.c, exec_req(&id, &["echo", &n], false, false), &[V5]).await;
        assert_eq!(out.text(STDOUT), format!("{i}\n"), "session {i}: {out}");
        assert_exit(&out, 0);
    }
    base.assert_settled(&f.c).await;
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}

#[tokio::test]
async fn kubernetes_python_client_execs_and_forwards() {
    // Debian's packages are for Debian's python3, which need not be the first python3 on PATH (pyenv).
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import kubernetes.stream.ws_client, websocket"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect(
            "python3 with the kubernetes and websocket packages is needed \
             (Debian python3-kubernetes python3-websocket): run make setup",
        );
    let f = fixture().await;
    let (pod, id) = http_pod(&f, "python").await;
    let base = Baseline::take(&f.c);
    let script = r#"read x; echo "out:$x"; echo err >&2; exit 5"#;
    let req = exec_req(&id, &["sh", "-c", script], false, true);
    let text_stdin = exec_url(&f.c, req.clone()).await;
    let bytes_stdin = exec_url(&f.c, req).await;
    let ok = exec_url(&f.c, exec_req(&id, &["echo", "fine"], false, false)).await;
    let forward = port_forward_url(&f.c, &pod, &[HTTP_PORT]).await;
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("independent/k8s_ws_client.py");
    let port = HTTP_PORT.to_string();
    let run = tokio::process::Command::new(python)
        .arg(&py)
        .args([&text_stdin, &bytes_stdin, &ok, &forward, &port])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the python client did not finish within 90 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("python output is not JSON ({e}): {stderr}"));

    // Every part is checked, then all that went wrong is reported at once.
    let mut wrong = Vec::new();
    let mut check = |part: &str, key: &str, want: serde_json::Value| {
        if let Some(exception) = seen[part]["exception"].as_str() {
            let line = format!("{part} failed in the client:\n{exception}");
            if !wrong.contains(&line) {
                wrong.push(line);
            }
        } else if seen[part][key] != want {
            wrong.push(format!(
                "{part}.{key}: want {want}, got {} ({})",
                seen[part][key], seen[part]
            ));
        }
    };
    for part in ["exec", "exec_bytes"] {
        check(part, "stdout", json!("out:hello\n"));
        check(part, "stderr", json!("err\n"));
        check(part, "returncode", json!(5));
    }
    check("exec_ok", "stdout", json!("fine\n"));
    check("exec_ok", "returncode", json!(0));
    check("http", "body_len", json!(www_body().len()));
    check(
        "http",
        "body_sha256",
        json!(format!("{:x}", Sha256::digest(www_body()))),
    );
    check("http", "error", serde_json::Value::Null);
    assert!(
        wrong.is_empty(),
        "the Kubernetes Python client saw:\n{}",
        wrong.join("\n")
    );
    teardown(&f, &pod, &[&id]).await;
    base.assert_clean(&f.c).await;
}
