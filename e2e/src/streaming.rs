//! What the streaming session tests share (`tests/streaming_spdy.rs` with the Go SPDY client,
//! `tests/streaming_ws.rs` with the WebSocket clients): the busybox image with the applets they run and the
//! file httpd serves, the fixture and its pods, the Exec, Attach and PortForward URLs (their shape checked),
//! the v4/v5 exit Status, the forwarded HTTP response, and the checks after the sessions ([`Baseline`]: no
//! `crius-monitor exec` helper left, no unreaped child of crius, crius' fd count back where it was).
//!
//! ```no_run
//! # async fn example() {
//! use crius_e2e::streaming::{Baseline, exec_req, exec_url, fixture, pod_with, teardown};
//! let f = fixture().await;
//! let (pod, id) = pod_with(&f, "exec", &["sleep", "100000"]).await;
//! let base = Baseline::take(&f.c);
//! let url = exec_url(&f.c, exec_req(&id, &["echo", "hi"], false, false)).await;
//! // ... a session on `url` with one of the clients ...
//! teardown(&f, &pod, &[&id]).await;
//! base.assert_clean(&f.c).await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::containers::{EXTRA_APPLETS, Fixture, Pod, STATE_TIMEOUT, strings};
use crate::images::{Compression, DEFAULT_APPLETS, Image, ImageBuilder, LayerBuilder};
use crate::instance::Crius;
use crate::{procfs, v1, wait_until};

/// The name [`fixture`] pushes [`image`] under (what [`Fixture::config`] takes).
pub const IMAGE: &str = "stream";

/// The port [`HTTPD`] listens on.
pub const HTTP_PORT: u16 = 8080;

/// busybox httpd in the foreground on [`HTTP_PORT`], serving `/www` (the [`www_body`] file).
pub const HTTPD: &[&str] = &["httpd", "-f", "-p", "8080", "-h", "/www"];

/// A request for the served file, as the Kubernetes Python client test sends it too
/// (`e2e/independent/k8s_ws_client.py`).
pub const GET: &[u8] = b"GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// The file httpd serves as `/hello.txt`: numbered lines (60 KiB), so a lost or moved byte shows.
pub fn www_body() -> Vec<u8> {
    (0..2000)
        .map(|i| format!("line {i:05} of the forwarded file\n"))
        .collect::<String>()
        .into_bytes()
}

/// How much the large-output tests print: 10 MiB.
pub const BULK_SIZE: usize = 10 * 1024 * 1024;

/// The shell script of the large-output tests: [`BULK_SIZE`] bytes of `abcdefghij` lines from `yes`.
pub fn bulk_script() -> String {
    format!("yes abcdefghij | head -c {BULK_SIZE}")
}

/// What [`bulk_script`] prints.
pub fn bulk_output() -> Vec<u8> {
    b"abcdefghij\n"
        .iter()
        .copied()
        .cycle()
        .take(BULK_SIZE)
        .collect()
}

/// busybox with the shared applets plus httpd (port-forward), stty (tty size) and yes (bulk output), and
/// `/www/hello.txt`.
pub fn image() -> Image {
    let applets: Vec<&str> = DEFAULT_APPLETS
        .iter()
        .chain(EXTRA_APPLETS)
        .chain(&["httpd", "stty", "yes"])
        .copied()
        .collect();
    ImageBuilder::new()
        .config("Env", json!(["PATH=/bin"]))
        .layer(
            LayerBuilder::busybox_with(&applets)
                .dir("www")
                .file("www/hello.txt", www_body())
                .build(Compression::Gzip),
        )
        .build()
}

/// A registry holding [`image`] as [`IMAGE`] and a crius that pulled it.
pub async fn fixture() -> Fixture {
    Fixture::start(&[(IMAGE, image())]).await
}

/// A pod and a running container `main` in it running `command`.
pub async fn pod_with(f: &Fixture, name: &str, command: &[&str]) -> (Pod, String) {
    let pod = f.pod(f.c.pod_config(name)).await;
    let id = f.spawn(&pod, f.config(IMAGE, "main", command)).await;
    (pod, id)
}

/// A pod running [`HTTPD`], once it listens.
pub async fn http_pod(f: &Fixture, name: &str) -> (Pod, String) {
    let (pod, id) = pod_with(f, name, HTTPD).await;
    wait_listening(f, &id, HTTP_PORT).await;
    (pod, id)
}

/// Waits until a socket on `port` is in LISTEN (`0A`) in the network namespace of `id`'s process (IPv4 or,
/// bound to `::`, IPv6), as its /proc/net shows it.
pub async fn wait_listening(f: &Fixture, id: &str, port: u16) {
    let pid = f.pid(id).await;
    let hex = format!(":{port:04X}");
    let listening = wait_until(STATE_TIMEOUT, async || {
        ["tcp", "tcp6"].iter().any(|t| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).is_ok_and(|s| {
                s.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && cols[1].ends_with(&hex) && cols[3] == "0A"
                })
            })
        })
    })
    .await;
    assert!(listening, "nothing ever listened on port {port} in the pod");
}

/// Stops and removes `containers`, then the pod.
pub async fn teardown(f: &Fixture, pod: &Pod, containers: &[&str]) {
    for id in containers {
        f.stop_and_remove(id).await;
    }
    f.c.stop_and_remove(&pod.id).await;
}

/// An ExecRequest for `cmd` in `id` with stdout and, unless `tty` (a pty has one output stream), stderr.
pub fn exec_req(id: &str, cmd: &[&str], tty: bool, stdin: bool) -> v1::ExecRequest {
    v1::ExecRequest {
        container_id: id.into(),
        cmd: strings(cmd),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// The URL an Exec RPC hands out; checks its shape.
pub async fn exec_url(c: &Crius, req: v1::ExecRequest) -> String {
    let url = c
        .runtime()
        .exec(req.clone())
        .await
        .unwrap_or_else(|e| panic!("Exec {req:?}: {e}"))
        .into_inner()
        .url;
    assert_url(&url, "exec");
    url
}

/// The URL of an Attach to `id` (stdout and stderr, no tty); checks its shape.
pub async fn attach_url(c: &Crius, id: &str, stdin: bool) -> String {
    let url = c
        .runtime()
        .attach(v1::AttachRequest {
            container_id: id.into(),
            stdin,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_or_else(|e| panic!("Attach {id}: {e}"))
        .into_inner()
        .url;
    assert_url(&url, "attach");
    url
}

/// The URL of a PortForward to `ports` of `pod`; checks its shape.
pub async fn port_forward_url(c: &Crius, pod: &Pod, ports: &[u16]) -> String {
    let url = c
        .runtime()
        .port_forward(v1::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: ports.iter().map(|&p| i32::from(p)).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("PortForward {ports:?}: {e}"))
        .into_inner()
        .url;
    assert_url(&url, "portforward");
    url
}

/// `http://127.0.0.1:<port>/<kind>/<token>`.
fn assert_url(url: &str, kind: &str) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("{kind} URL {url:?} is not http://127.0.0.1:<port>/..."));
    let (port, path) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("no path in {url:?}"));
    assert!(port.parse::<u16>().is_ok(), "bad port in {url:?}");
    let token = path
        .strip_prefix(kind)
        .and_then(|t| t.strip_prefix('/'))
        .unwrap_or_else(|| panic!("{url:?} is not .../{kind}/<token>"));
    assert!(
        !token.is_empty() && !token.contains('/'),
        "bad token in {url:?}"
    );
}

/// The v4/v5 Status (the JSON on the error stream) of a command that exited with `code`: Success for 0,
/// else a NonZeroExitCode Failure whose one cause is the code. `context` goes into the messages.
pub fn assert_exit_status(status: &Value, code: i32, context: &dyn fmt::Display) {
    if code == 0 {
        assert_eq!(
            status,
            &json!({"metadata": {}, "status": "Success"}),
            "{context}"
        );
    } else {
        assert_eq!(status["status"], "Failure", "{context}");
        assert_eq!(status["reason"], "NonZeroExitCode", "{context}");
        assert_eq!(
            status["details"]["causes"],
            json!([{"reason": "ExitCode", "message": code.to_string()}]),
            "{context}"
        );
    }
}

/// An HTTP response split at the end of its headers, or `None` while the headers are not all there.
pub fn split_response(data: &[u8]) -> Option<(String, &[u8])> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    Some((head, &data[end + 4..]))
}

/// Checks a forwarded HTTP response: 200 and the served file ([`www_body`]).
pub fn assert_http_ok(data: &[u8], what: &str) {
    let (head, body) = split_response(data).unwrap_or_else(|| {
        panic!(
            "{what}: no end of headers in {:?}",
            String::from_utf8_lossy(&data[..data.len().min(300)])
        )
    });
    let status = head.lines().next().unwrap_or_default();
    // busybox httpd answers HTTP/1.1 whatever the request's version.
    assert!(
        status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200"),
        "{what}: {head}"
    );
    assert_eq!(body.len(), www_body().len(), "{what}: body length");
    assert!(body == www_body(), "{what}: the body differs from the file");
}

/// crius' open fds (number → target), taken before the sessions, to compare with after them.
pub struct Baseline {
    pid: i32,
    fds: BTreeMap<String, String>,
}

impl Baseline {
    /// crius' fds now.
    pub fn take(c: &Crius) -> Baseline {
        let pid = c.pid().expect("crius is not running");
        Baseline {
            pid,
            fds: open_fds(pid),
        }
    }

    /// [`Baseline::take`] after an ExecSync in `id` went through, so that the pod monitor's connection is up
    /// and counted.
    pub async fn after_exec_sync(f: &Fixture, id: &str) -> Baseline {
        f.exec_ok(id, &["true"]).await;
        Baseline::take(&f.c)
    }

    /// Within 10 s: no exec helper left and crius' fd count back to the baseline (a session's fds are closed
    /// a moment after its end). Panics naming the helpers and the new fds.
    pub async fn assert_settled(&self, c: &Crius) {
        let settled = wait_until(Duration::from_secs(10), async || {
            exec_helpers(c).is_empty() && open_fds(self.pid).len() <= self.fds.len()
        })
        .await;
        if !settled {
            let now = open_fds(self.pid);
            let new: Vec<String> = now
                .iter()
                .filter(|(fd, target)| self.fds.get(*fd) != Some(*target))
                .map(|(fd, target)| format!("{fd} -> {target}"))
                .collect();
            panic!(
                "after the sessions: exec helpers {:?}; crius has {} fds, {} before; new ones: {new:?}",
                exec_helpers(c),
                now.len(),
                self.fds.len()
            );
        }
    }

    /// [`Baseline::assert_settled`], then the harness' leak check (after the test removed its pods).
    pub async fn assert_clean(&self, c: &Crius) {
        self.assert_settled(c).await;
        c.assert_no_leaks().await;
    }
}

/// `pid`'s open fds (number → target); none once it is gone.
fn open_fds(pid: i32) -> BTreeMap<String, String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeMap::new();
    };
    dir.filter_map(Result::ok)
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        .collect()
}

/// crius' exec helpers still there: processes running `crius-monitor exec ...` (by their first argument or
/// their executable) that are children of this crius or name its directories, and zombie children of crius
/// (helpers not reaped).
pub fn exec_helpers(c: &Crius) -> Vec<String> {
    let crius = c.pid().expect("crius is not running");
    let monitor = c.monitor_bin();
    let dir = c.paths().dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for pid in procfs::all_pids() {
        let Some(st) = procfs::stat(pid) else {
            continue;
        };
        if st.ppid == crius && st.state == 'Z' {
            found.push(format!("zombie child {pid} ({}) of crius", st.comm));
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_helper = args.len() > 1
            && (Path::new(&args[0]) == monitor || procfs::exe(pid).as_deref() == Some(&monitor))
            && args[1] == "exec";
        if is_helper && (st.ppid == crius || args.iter().any(|a| a.contains(&dir))) {
            found.push(format!("exec helper {pid}: {}", args.join(" ")));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn httpd_listens_on_http_port() {
        assert_eq!(HTTPD[3], HTTP_PORT.to_string());
    }

    #[test]
    fn a_response_splits_only_once_its_headers_are_whole() {
        assert_eq!(split_response(b"HTTP/1.0 200 OK\r\nA: b\r\n"), None);
        let (head, body) =
            split_response(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\nbody").expect("the headers end");
        assert_eq!(
            (head.as_str(), body),
            ("HTTP/1.0 200 OK\r\nA: b", &b"body"[..])
        );
    }
}
