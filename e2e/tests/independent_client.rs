//! The same CRI, spoken by a client that shares nothing with crius' own stack: Python's gRPC C-core with stubs
//! generated at run time from k8s-cri's `proto/v1.proto` (e2e/python/cri_client.py). A wire-level
//! misunderstanding that a tonic client and a tonic server would share cannot hide here.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use crius_e2e::{Crius, Options, procfs};

/// k8s-cri's v1.proto, found through cargo's own metadata (the crate's source in the cargo registry).
fn cri_proto() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "k8s-cri")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("k8s-cri in cargo metadata");
    let proto = Path::new(manifest).parent().unwrap().join("proto/v1.proto");
    assert!(proto.exists(), "{} missing", proto.display());
    proto
}

#[tokio::test]
async fn python_grpc_client_runs_a_pod_through_its_life() {
    let python_ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        python_ok,
        "python3 with grpcio and grpcio-tools is needed (`make setup` installs them)"
    );
    let crius = Crius::start(Options::new()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cri_client.py");
    let uid = "py-uid-1";
    let parent = crius.pod_cgroup_parent(uid);
    let out = Command::new("python3")
        .arg(&script)
        .arg(&crius.paths().socket)
        .arg(cri_proto())
        .arg(&parent)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}\ncrius log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        crius.log()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["version"]["runtime_name"], "crius");
    assert_eq!(seen["version"]["runtime_api_version"], "v1");
    assert_eq!(seen["conditions"]["RuntimeReady"], true);
    assert_eq!(seen["conditions"]["NetworkReady"], true);
    assert_eq!(seen["status_info_keys"], serde_json::json!(["info"]));
    assert_eq!(seen["id"].as_str().unwrap().len(), 64);
    assert_eq!(seen["state"], "SANDBOX_READY");
    assert!(crius.in_subnet(seen["ip"].as_str().unwrap()), "{seen}");
    assert_eq!(seen["labels"]["client"], "python");
    assert_eq!(seen["annotations"]["note"], "independent");
    assert_eq!(seen["duplicate"], "ALREADY_EXISTS");
    assert_eq!(seen["unknown_status"], "NOT_FOUND");
    // The pod has no containers yet.
    assert_eq!(seen["list_containers"], "OK 0");
    assert_eq!(seen["listed"], serde_json::json!([seen["id"]]));
    assert_eq!(seen["state_after_stop"], "SANDBOX_NOTREADY");
    assert_eq!(seen["listed_after_remove"], 0);
    let pid = seen["pid"].as_i64().unwrap() as i32;
    crius.track_pause_pid(pid);
    assert!(
        !procfs::is_alive(pid),
        "pause {pid} outlived RemovePodSandbox"
    );
    crius.assert_no_leaks().await;
}
