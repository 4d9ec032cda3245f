//! Races kubelet produces in practice: a RunPodSandbox whose client gives up before crius is done, and Stop
//! arriving while Remove is tearing the same pod down.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use crius_e2e::v1::{
    ListPodSandboxRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use crius_e2e::{Crius, Options, bridge_conflist, wait_until};
use tonic::Request;

/// Passes the previous result on (a well-behaved chained plugin), after an optional pause and an optional
/// one-time failure, both decided by marker files in the instance dir.
const PLUGIN: &str = r#"#!/bin/sh
conf=$(cat)
case "$CNI_COMMAND" in
ADD)
  if [ -e "@DIR@/fail-once" ]; then
    rm -f "@DIR@/fail-once"
    sleep 2
    : > "@DIR@/failed"
    echo '{"cniVersion":"1.0.0","code":7,"msg":"slow and broken this once"}'
    exit 1
  fi
  printf '%s' "$conf" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))' ;;
DEL)
  [ -e "@DIR@/slow-del" ] && sleep 1.5
  exit 0 ;;
*) exit 0 ;;
esac
"#;

fn options() -> Options {
    Options::new().plugin("tricky", PLUGIN).conflist(
        "10-tricky.conflist",
        &bridge_conflist("tricky", &[serde_json::json!({"type": "tricky"})]),
    )
}

async fn pod_count(crius: &Crius) -> usize {
    crius
        .runtime()
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
        .len()
}

#[tokio::test]
async fn a_run_abandoned_by_its_client_then_failing_does_not_keep_the_name() {
    let crius = Crius::start(options()).await;
    std::fs::write(crius.paths().dir.join("fail-once"), b"").unwrap();
    let cfg = crius.pod_config("impatient");
    let mut req = Request::new(RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    });
    req.set_timeout(Duration::from_millis(700));
    let err = crius.runtime().run_pod_sandbox(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    let failed = crius.paths().dir.join("failed");
    assert!(
        wait_until(Duration::from_secs(20), async || failed.exists()).await,
        "the slow ADD never finished"
    );
    // kubelet retries with the same metadata: once the undo is through, the name must be free again
    // (AlreadyExists only while the failed pod is still being taken apart).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        match crius.run_pod(cfg.clone()).await {
            Ok(id) => break id,
            Err(e)
                if e.code() == tonic::Code::AlreadyExists
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!(
                "retry after an abandoned, failed run: {e:?}\n{}",
                crius.log()
            ),
        }
    };
    assert!(
        crius.log().contains("pod sandbox creation failed"),
        "{}",
        crius.log()
    );
    crius.stop_and_remove(&id).await;
    crius.assert_no_leaks().await;
}

#[tokio::test]
async fn stop_racing_remove_does_not_resurrect_the_pod() {
    let mut crius = Crius::start(options()).await;
    let cfg = crius.pod_config("contested");
    let id = crius.run_pod(cfg.clone()).await.unwrap();
    std::fs::write(crius.paths().dir.join("slow-del"), b"").unwrap();
    let mut rt = crius.runtime();
    let remove_id = id.clone();
    let remove = tokio::spawn(async move {
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: remove_id,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    crius
        .runtime()
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    remove.await.unwrap().unwrap();
    assert_eq!(
        pod_count(&crius).await,
        0,
        "Stop brought the removed pod back"
    );
    // Nor may it come back from the store after a restart, holding the name.
    assert!(crius.stop().success());
    crius.launch().await.unwrap();
    assert_eq!(
        pod_count(&crius).await,
        0,
        "the removed pod came back after a restart"
    );
    std::fs::remove_file(crius.paths().dir.join("slow-del")).unwrap();
    let again = crius.run_pod(cfg).await.expect("the name is free");
    crius.stop_and_remove(&again).await;
    crius.assert_no_leaks().await;
}
