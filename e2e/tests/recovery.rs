//! Crash recovery: crius killed (SIGKILL) in the middle of RunPodSandbox leaves a pod half built — pause
//! running, namespaces bind-mounted, an IP taken, cgroups made. The next start must undo all of it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use crius_e2e::v1::{ListPodSandboxRequest, RunPodSandboxRequest};
use crius_e2e::{Crius, Options, bridge_conflist, procfs, wait_until};

/// A CNI plugin that, on ADD, says it started and then waits for as long as its caller (crius) lives; DEL
/// succeeds. It runs after the bridge plugin, so when crius dies the pod already has a veth and an IP.
const STALL_PLUGIN: &str = r#"#!/bin/sh
case "$CNI_COMMAND" in
ADD)
  : > "@DIR@/stall-started"
  caller=$PPID
  while kill -0 "$caller" 2>/dev/null; do sleep 0.05; done
  exit 1 ;;
*) exit 0 ;;
esac
"#;

/// crius-pause processes that are children of `parent`.
fn pause_children(crius: &Crius, parent: i32) -> Vec<i32> {
    procfs::all_pids()
        .into_iter()
        .filter(|&pid| {
            procfs::stat(pid).is_some_and(|s| s.ppid == parent && s.state != 'Z')
                && procfs::exe(pid).is_some_and(|e| e == crius.pause_binary())
        })
        .collect()
}

#[tokio::test]
async fn a_crash_during_run_pod_sandbox_is_undone_at_the_next_start() {
    let opts = Options::new().plugin("stall", STALL_PLUGIN).conflist(
        "10-stall.conflist",
        &bridge_conflist("stall", &[serde_json::json!({"type": "stall"})]),
    );
    let mut crius = Crius::start(opts).await;
    let marker = crius.paths().dir.join("stall-started");
    let cfg = crius.pod_config("crash");
    let mut rt = crius.runtime();
    let run = tokio::spawn(async move {
        rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await
    });
    assert!(
        wait_until(Duration::from_secs(30), async || marker.exists()).await,
        "the stalling plugin never ran:\n{}",
        crius.log()
    );
    let crius_pid = crius.pid().unwrap();
    let pauses = pause_children(&crius, crius_pid);
    assert_eq!(
        pauses.len(),
        1,
        "one pause expected mid-creation: {pauses:?}"
    );
    for &p in &pauses {
        crius.track_pause_pid(p);
    }
    // Half a pod exists now: an IP in the IPAM dir, a netns file, a cgroup.
    let netns_dir = crius.paths().state.join("netns");
    assert_eq!(std::fs::read_dir(&netns_dir).unwrap().count(), 1);
    crius.kill();
    assert!(
        run.await.unwrap().is_err(),
        "RunPodSandbox cannot succeed when crius dies"
    );
    crius.launch().await.unwrap();
    let pods = crius
        .runtime()
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "the half-built pod must be gone: {pods:?}");
    for &p in &pauses {
        assert!(
            wait_until(Duration::from_secs(10), async || !procfs::is_alive(p)).await,
            "pause {p} of the interrupted pod is still alive"
        );
    }
    assert!(
        crius
            .log()
            .contains("undoing a RunPodSandbox interrupted by a restart"),
        "{}",
        crius.log()
    );
    assert_eq!(
        std::fs::read_dir(&netns_dir)
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    assert!(
        !Path::new(&crius.paths().state.join("pods"))
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );
    crius.assert_no_leaks().await;
}
