//! The streaming churn benchmark: many short exec sessions over WebSocket (`v5.channel.k8s.io`; every tenth
//! with a TTY, every fifth on `v4`) against one running busybox container, each one Exec RPC, upgrade, output,
//! status and close. It reports the session latency (p50/p95/p99), and the agent's open descriptors and RSS
//! before and after (after a warm-up, so lazily made runtime threads and buffers are not counted as leaks), plus
//! any exec helper still alive. A leak shows as a descriptor count that grows with the sessions.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::container::report::percentile;
use super::measure::{self, fd_count};
use crate::containers::{Fixture, busybox_image};
use crate::v1;
use crate::ws_client::{self, V4, V5};

/// What to run.
#[derive(Debug, Clone)]
pub struct StreamingParams {
    pub sessions: usize,
    /// Sessions at once.
    pub concurrency: usize,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct StreamingReport {
    pub sessions: usize,
    pub concurrency: usize,
    pub latency: Vec<Duration>,
    pub total: Duration,
    pub fds_before: usize,
    pub fds_after: usize,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    /// Exec helpers (`crius-monitor exec`) alive after the sessions.
    pub helpers_left: Vec<i32>,
    /// Sessions whose output or status was wrong.
    pub failures: Vec<String>,
}

/// Live processes running `monitor exec ...`.
fn exec_helpers(monitor: &std::path::Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mut args = cmd.split(|b| *b == 0);
            let exe = args.next().unwrap_or_default();
            exe == monitor.as_os_str().as_encoded_bytes() && args.next() == Some(b"exec")
        })
        .collect()
}

/// One session: `echo <i>` (with a TTY: `\r\n` line ends), checked.
async fn session(f: &Fixture, container: &str, i: usize) -> anyhow::Result<Duration> {
    let tty = i % 10 == 9;
    let protocol = if i % 5 == 4 { V4 } else { V5 };
    let t0 = Instant::now();
    let url =
        f.c.runtime()
            .exec(v1::ExecRequest {
                container_id: container.into(),
                cmd: vec!["echo".into(), i.to_string()],
                tty,
                stdin: false,
                stdout: true,
                stderr: !tty,
            })
            .await
            .context("Exec")?
            .into_inner()
            .url;
    let s = ws_client::connect(&url, &[protocol]).await?;
    let out = s.collect(ws_client::SESSION_TIMEOUT).await?;
    let elapsed = t0.elapsed();
    let want = if tty {
        format!("{i}\r\n")
    } else {
        format!("{i}\n")
    };
    if out.text(ws_client::STDOUT) != want || out.exit_code()? != 0 {
        bail!("session {i}: {out}");
    }
    Ok(elapsed)
}

/// Runs the benchmark on a fresh crius (its own registry, pod and container), torn down at the end.
pub async fn run(params: &StreamingParams) -> anyhow::Result<StreamingReport> {
    if params.sessions == 0 || params.concurrency == 0 {
        bail!("need at least one session, one at a time");
    }
    let f = Fixture::start(&[("busybox", busybox_image().cmd(&["sh"]).build())]).await;
    let pod = f.pod(f.c.pod_config("streaming-bench")).await;
    let container = f
        .spawn(&pod, f.config("busybox", "sleeper", &["sleep", "100000"]))
        .await;
    let agent = f.c.pid().context("crius serve is not running")?;
    let monitor = f.c.monitor_bin();
    // Warm-up: the runtime's worker threads, the listener's buffers and the first helper exec are made once.
    for i in 0..10 {
        session(&f, &container, i).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = fd_count(agent)?;
    let rss_kib_before = measure::sample(agent)?.rss_kib;
    let started = Instant::now();
    let mut latency = Vec::with_capacity(params.sessions);
    let mut failures = Vec::new();
    let mut next = 0;
    while next < params.sessions {
        let batch: Vec<usize> = (next..params.sessions.min(next + params.concurrency)).collect();
        next += batch.len();
        let runs = batch.iter().map(|&i| session(&f, &container, i));
        for r in futures_util::future::join_all(runs).await {
            match r {
                Ok(d) => latency.push(d),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    let total = started.elapsed();
    // Helpers and connections end right after their sessions; give stragglers a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds_after = fd_count(agent)?;
    while fds_after > fds_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = fd_count(agent)?;
    }
    let rss_kib_after = measure::sample(agent)?.rss_kib;
    let helpers_left = exec_helpers(&monitor);
    f.stop_and_remove(&container).await;
    f.c.stop_and_remove(&pod.id).await;
    let leaks = f.c.leaks().await;
    if !leaks.is_empty() {
        failures.extend(leaks.into_iter().map(|l| format!("left behind: {l}")));
    }
    Ok(StreamingReport {
        sessions: params.sessions,
        concurrency: params.concurrency,
        latency,
        total,
        fds_before,
        fds_after,
        rss_kib_before,
        rss_kib_after,
        helpers_left,
        failures,
    })
}

impl StreamingReport {
    /// What is wrong: failed sessions, descriptors not given back, helpers left.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.failures.clone();
        if self.fds_after > self.fds_before {
            p.push(format!(
                "the agent holds {} descriptors after the sessions, {} before",
                self.fds_after, self.fds_before
            ));
        }
        p.extend(
            self.helpers_left
                .iter()
                .map(|pid| format!("exec helper {pid} still alive")),
        );
        p
    }

    pub fn table(&self) -> String {
        let ms = |p: f64| percentile(&self.latency, p).as_secs_f64() * 1000.0;
        format!(
            "{} exec sessions over WebSocket, {} at a time, in {:.1} s\n\
             session (Exec RPC + upgrade + output + status) p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms\n\
             agent descriptors: {} before, {} after\n\
             agent RSS KiB: {} before, {} after\n\
             exec helpers left: {}; failed sessions: {}\n",
            self.sessions,
            self.concurrency,
            self.total.as_secs_f64(),
            ms(50.0),
            ms(95.0),
            ms(99.0),
            self.fds_before,
            self.fds_after,
            self.rss_kib_before,
            self.rss_kib_after,
            self.helpers_left.len(),
            self.failures.len()
        )
    }

    pub fn json(&self) -> Value {
        let ms = |p: f64| percentile(&self.latency, p).as_secs_f64() * 1000.0;
        json!({ "streaming": {
            "sessions": self.sessions,
            "concurrency": self.concurrency,
            "total_s": self.total.as_secs_f64(),
            "session_p50_ms": ms(50.0),
            "session_p95_ms": ms(95.0),
            "session_p99_ms": ms(99.0),
            "agent_fds_before": self.fds_before,
            "agent_fds_after": self.fds_after,
            "agent_rss_kib_before": self.rss_kib_before,
            "agent_rss_kib_after": self.rss_kib_after,
            "helpers_left": self.helpers_left,
            "failures": self.failures,
        }})
    }
}
