//! The streaming RPCs themselves: Exec, Attach and PortForward refuse bad requests with the CRI's codes before
//! any URL is handed out, the outstanding URLs are bounded, and the server speaks HTTPS when given a
//! certificate, and a session with no traffic ends after the idle timeout, taking its exec'd process along.
//! The sessions on the URLs are in streaming_spdy.rs and streaming_ws.rs.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

use std::time::{Duration, Instant};

use crius_e2e::containers::{Fixture, busybox_image, strings};
use crius_e2e::v1::{self, ContainerState};
use crius_e2e::{Crius, Options};
use tonic::Code;

fn exec_req(id: &str, cmd: &[&str], tty: bool, streams: [bool; 3]) -> v1::ExecRequest {
    v1::ExecRequest {
        container_id: id.into(),
        cmd: strings(cmd),
        tty,
        stdin: streams[0],
        stdout: streams[1],
        stderr: streams[2],
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Err(s) => (s.code(), s.message().to_string()),
        Ok(ok) => panic!("expected an error, got {ok:?}"),
    }
}

#[tokio::test]
async fn bad_exec_attach_and_port_forward_requests_get_the_cri_codes_and_no_url() {
    let f = Fixture::start(&[("busybox", busybox_image().cmd(&["sh"]).build())]).await;
    let pod = f.pod(f.c.pod_config("streaming-rpc")).await;
    let id = f
        .spawn(&pod, f.config("busybox", "sleeper", &["sleep", "1000"]))
        .await;
    let mut rt = f.c.runtime();

    // Exec: an empty command, no stream at all, stderr beside a terminal.
    let (c, m) = code(
        rt.exec(exec_req(&id, &[], false, [false, true, false]))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("cmd"), "{m}");
    let (c, m) = code(rt.exec(exec_req(&id, &["ls"], false, [false; 3])).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let (c, m) = code(
        rt.exec(exec_req(&id, &["ls"], true, [true, true, true]))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("stderr"), "{m}");
    let (c, m) = code(
        rt.exec(exec_req(
            "no-such-container",
            &["ls"],
            false,
            [false, true, false],
        ))
        .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");
    // A good one works, by a unique prefix too.
    let url = rt
        .exec(exec_req(&id[..12], &["ls"], false, [false, true, true]))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/exec/"), "{url}");

    // Attach: stdin on a container created without it; unknown.
    let attach = |id: &str, stdin: bool| v1::AttachRequest {
        container_id: id.into(),
        stdin,
        tty: false,
        stdout: true,
        stderr: true,
    };
    let (c, m) = code(rt.attach(attach(&id, true)).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("stdin"), "{m}");
    let (c, m) = code(rt.attach(attach("no-such-container", false)).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(
        rt.attach(attach(&id, false))
            .await
            .unwrap()
            .into_inner()
            .url
            .contains("/attach/")
    );

    // PortForward: ports out of range; an unknown pod.
    for port in [0, -1, 65536] {
        let (c, m) = code(
            rt.port_forward(v1::PortForwardRequest {
                pod_sandbox_id: pod.id.clone(),
                port: vec![80, port],
            })
            .await,
        );
        assert_eq!(c, Code::InvalidArgument, "{port}: {m}");
        assert!(m.contains("port"), "{m}");
    }
    let (c, m) = code(
        rt.port_forward(v1::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![80],
        })
        .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");

    // An exited container takes no exec; a stopped pod no port-forward.
    f.stop(&id, 0).await;
    f.wait_state(&id, ContainerState::ContainerExited).await;
    let (c, m) = code(
        rt.exec(exec_req(&id, &["ls"], false, [false, true, false]))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    f.c.stop_pod(&pod.id).await.unwrap();
    let (c, m) = code(
        rt.port_forward(v1::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![80],
        })
        .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");

    f.remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn outstanding_urls_are_bounded_and_the_server_speaks_https_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (make setup installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let c = Crius::start(
        Options::new()
            .set("streaming.max_outstanding_tokens", "3")
            .set(
                "streaming.tls_cert_file",
                &format!("{:?}", cert.to_str().unwrap()),
            )
            .set(
                "streaming.tls_key_file",
                &format!("{:?}", key.to_str().unwrap()),
            ),
    )
    .await;
    let pod = c.run_pod(c.pod_config("tls")).await.unwrap();
    let mut rt = c.runtime();
    let forward = v1::PortForwardRequest {
        pod_sandbox_id: pod.clone(),
        port: vec![8080],
    };
    let mut urls = Vec::new();
    for _ in 0..3 {
        urls.push(
            rt.port_forward(forward.clone())
                .await
                .unwrap()
                .into_inner()
                .url,
        );
    }
    let (c4, m) = code(rt.port_forward(forward.clone()).await);
    assert_eq!(c4, Code::ResourceExhausted, "{m}");
    for u in &urls {
        assert!(u.starts_with("https://127.0.0.1:"), "{u}");
    }
    let curl = |url: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Over TLS: a used token is gone (a request that is no upgrade still uses it), an unknown one never was.
    assert_eq!(curl(&urls[0], &["-k"]), "400");
    assert_eq!(curl(&urls[0], &["-k"]), "404");
    let base = urls[1].rsplit_once('/').unwrap().0;
    assert_eq!(curl(&format!("{base}/nonsense"), &["-k"]), "404");
    // Without trusting the certificate the handshake fails; plain HTTP gets no HTTP answer.
    assert_eq!(curl(&urls[1], &[]), "000");
    assert_eq!(curl(&urls[1].replacen("https", "http", 1), &[]), "000");
    // A used URL frees its slot.
    rt.port_forward(forward).await.unwrap();
    c.stop_and_remove(&pod).await;
    c.assert_no_leaks().await;
}

/// Something the command left running keeps its output open; the session still ends soon after the command.
#[tokio::test]
async fn a_background_process_holding_the_output_does_not_keep_the_session_open() {
    let f = Fixture::start(&[("busybox", busybox_image().cmd(&["sh"]).build())]).await;
    let pod = f.pod(f.c.pod_config("background")).await;
    let id = f
        .spawn(&pod, f.config("busybox", "sleeper", &["sleep", "1000"]))
        .await;
    for tty in [false, true] {
        let url =
            f.c.runtime()
                .exec(exec_req(
                    &id,
                    &["sh", "-c", "sleep 37 & echo hi; exit 4"],
                    tty,
                    [false, true, !tty],
                ))
                .await
                .unwrap()
                .into_inner()
                .url;
        let t0 = Instant::now();
        let session = crius_e2e::ws_client::connect(&url, &[crius_e2e::ws_client::V5])
            .await
            .unwrap();
        let out = session.collect(Duration::from_secs(20)).await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tty {tty}: {:?}",
            t0.elapsed()
        );
        assert_eq!(
            out.text(crius_e2e::ws_client::STDOUT).trim(),
            "hi",
            "tty {tty}: {out}"
        );
        assert_eq!(out.exit_code().unwrap(), 4, "tty {tty}: {out}");
    }
    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// A client that gives up on an ExecSync (its deadline, a cancel) ends the command, not only the call.
#[tokio::test]
async fn an_abandoned_exec_sync_ends_its_command_and_not_the_container() {
    let f = Fixture::start(&[("busybox", busybox_image().cmd(&["sh"]).build())]).await;
    let pod = f.pod(f.c.pod_config("abandoned")).await;
    let id = f
        .spawn(&pod, f.config("busybox", "sleeper", &["sleep", "1000"]))
        .await;
    let call = f.exec(&id, &["sleep", "613"], 0);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err(),
        "the exec ended by itself"
    );
    let gone = crius_e2e::wait_until(Duration::from_secs(10), async || {
        !f.exec_ok(&id, &["ps"]).await.contains("sleep 613")
    })
    .await;
    assert!(gone, "the abandoned ExecSync's sleep 613 is still running");
    assert_eq!(
        f.status(&id).await.state(),
        ContainerState::ContainerRunning
    );
    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// Attach to a container with a terminal: one output stream, stdin to its shell, and the client's size on its
/// pty; detaching leaves the container running.
#[tokio::test]
async fn attach_to_a_tty_container_carries_stdin_output_and_resize() {
    use crius_e2e::ws_client::{self, STDIN, STDOUT, V5};
    let f = crius_e2e::streaming::fixture().await;
    let pod = f.pod(f.c.pod_config("tty-attach")).await;
    let mut config = f.config(crius_e2e::streaming::IMAGE, "shell", &["sh"]);
    config.tty = true;
    config.stdin = true;
    let id = f.spawn(&pod, config).await;
    let url =
        f.c.runtime()
            .attach(v1::AttachRequest {
                container_id: id.clone(),
                stdin: true,
                // The container's terminal decides; a client asking for stderr gets one stream anyway.
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
    let mut s = ws_client::connect(&url, &[V5]).await.unwrap();
    s.resize(111, 33).await.unwrap();
    s.send(STDIN, b"stty size; echo mark-$((6*7))\n")
        .await
        .unwrap();
    s.read_until(Duration::from_secs(10), "the shell's answer", |o| {
        String::from_utf8_lossy(o.channel(STDOUT)).contains("mark-42")
    })
    .await
    .unwrap();
    let out = s.close().await.unwrap();
    let text = out.text(STDOUT);
    assert!(text.contains("33 111"), "{text:?}");
    assert!(out.stderr().is_empty(), "{out}");
    assert_eq!(
        f.status(&id).await.state(),
        ContainerState::ContainerRunning
    );
    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn an_idle_session_is_closed_and_its_exec_ends_but_not_the_container() {
    let f = Fixture::start_with(
        Options::new().set("streaming.idle_timeout", "\"2s\""),
        &[("busybox", busybox_image().cmd(&["sh"]).build())],
    )
    .await;
    let pod = f.pod(f.c.pod_config("idle")).await;
    let id = f
        .spawn(&pod, f.config("busybox", "sleeper", &["sleep", "1000"]))
        .await;
    let url =
        f.c.runtime()
            .exec(exec_req(&id, &["sleep", "731"], false, [false, true, true]))
            .await
            .unwrap()
            .into_inner()
            .url;
    let t0 = Instant::now();
    let session = crius_e2e::ws_client::connect(&url, &[crius_e2e::ws_client::V5])
        .await
        .unwrap();
    // Nothing flows either way: the server ends the session on its own.
    let out = session.collect(Duration::from_secs(15)).await.unwrap();
    let took = t0.elapsed();
    assert!(out.ended, "{out}");
    assert!(took >= Duration::from_secs(2), "closed after {took:?}");
    let gone = crius_e2e::wait_until(Duration::from_secs(10), async || {
        !f.exec_ok(&id, &["ps"]).await.contains("sleep 731")
    })
    .await;
    assert!(gone, "the idle session's sleep 731 is still running");
    assert_eq!(
        f.status(&id).await.state(),
        ContainerState::ContainerRunning
    );
    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}
