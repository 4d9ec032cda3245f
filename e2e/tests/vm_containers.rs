//! The cgroup v2 VM tier for containers: real container limits (memory.max, cpu.max, cpu.weight), a live
//! UpdateContainerResources and an OOM kill reported as OOMKilled, on a kernel whose cgroup2 hierarchy has every
//! controller. [`container_limits_in_vm`] runs on the host and boots the VM (see `crius_e2e::vm`);
//! [`inside_vm_container_limits`] is the half that runs in it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_e2e::images::{Compression, ImageBuilder, LayerBuilder};
use crius_e2e::registry::Registry;
use crius_e2e::v1::{self, ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig};
use crius_e2e::{Crius, Options};

const INNER: &str = "inside_vm_container_limits";
const VM_TIMEOUT_SECS: u32 = 300;
const MIB: i64 = 1 << 20;

#[test]
fn container_limits_in_vm() {
    crius_e2e::vm::run_inner_test(INNER, VM_TIMEOUT_SECS);
}

fn config(
    image: &str,
    name: &str,
    command: &[&str],
    resources: v1::LinuxContainerResources,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(resources),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn status(c: &Crius, id: &str) -> (v1::ContainerStatus, serde_json::Value) {
    let r = c
        .runtime()
        .container_status(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(&r.info["info"]).expect("verbose info is JSON");
    (r.status.expect("no status"), info)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the cgroup v2 VM, driven by container_limits_in_vm"]
async fn inside_vm_container_limits() {
    crius_e2e::vm::assert_inside(INNER, "container_limits_in_vm");
    let t = Instant::now();
    let registry = Registry::start();
    let image = ImageBuilder::new()
        .layer(LayerBuilder::busybox().build(Compression::Gzip))
        .env("PATH=/bin")
        .build();
    image.push(&registry, "busybox", "1").expect("push");
    let name = format!("{}/busybox:1", registry.host());
    let c = Crius::start(Options::new().set("cgroup.mount", "\"/sys/fs/cgroup\"")).await;
    c.images()
        .pull_image(v1::PullImageRequest {
            image: Some(ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
    println!(
        "[{:5.1?}] registry, crius and the image are ready",
        t.elapsed()
    );
    let pod_config = c.pod_config("limits");
    let pod = c.run_pod(pod_config.clone()).await.expect("RunPodSandbox");
    let mut rt = c.runtime();
    let create = |cfg: ContainerConfig| v1::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(cfg),
        sandbox_config: Some(pod_config.clone()),
    };

    // Limits land in the container's own cgroup, under the pod's.
    let limited = v1::LinuxContainerResources {
        memory_limit_in_bytes: 48 * MIB,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        ..Default::default()
    };
    let id = rt
        .create_container(create(config(
            &name,
            "limited",
            &["sleep", "1000"],
            limited,
        )))
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(v1::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    let (_, info) = status(&c, &id).await;
    let dir = PathBuf::from(
        info["cgroup"]
            .as_str()
            .expect("no cgroup in the verbose info"),
    );
    assert!(dir.starts_with("/sys/fs/cgroup"), "{}", dir.display());
    assert_eq!(read(&dir.join("memory.max")), (48 * MIB).to_string());
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    // Kubernetes' shares -> weight conversion.
    assert_eq!(
        read(&dir.join("cpu.weight")),
        (1 + ((512 - 2) * 9999) / 262142).to_string()
    );
    let pid = info["pid"].as_i64().expect("no pid") as i32;
    let procs = read(&dir.join("cgroup.procs"));
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "init {pid} not in {}: {procs}",
        dir.display()
    );
    println!("[{:5.1?}] limits checked in {}", t.elapsed(), dir.display());

    // Applied live.
    rt.update_container_resources(v1::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 96 * MIB,
            cpu_period: 100_000,
            cpu_quota: 20_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    assert_eq!(read(&dir.join("memory.max")), (96 * MIB).to_string());
    assert_eq!(read(&dir.join("cpu.max")), "20000 100000");
    println!("[{:5.1?}] live update checked", t.elapsed());

    // Over its memory limit: the kernel kills it, and ContainerStatus says OOMKilled.
    let hog = v1::LinuxContainerResources {
        memory_limit_in_bytes: 32 * MIB,
        memory_swap_limit_in_bytes: 32 * MIB,
        ..Default::default()
    };
    // tail keeps its whole input when it has no newline: it grows until the limit.
    let oom = rt
        .create_container(create(config(
            &name,
            "hog",
            &["sh", "-c", "head -c 400000000 /dev/zero | tail"],
            hog,
        )))
        .await
        .expect("CreateContainer hog")
        .into_inner()
        .container_id;
    rt.start_container(v1::StartContainerRequest {
        container_id: oom.clone(),
    })
    .await
    .expect("StartContainer hog");
    let deadline = Instant::now() + Duration::from_secs(120);
    let st = loop {
        let (st, _) = status(&c, &oom).await;
        if st.state == v1::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the memory hog never exited: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_ne!(st.exit_code, 0, "{st:?}");
    println!(
        "[{:5.1?}] OOM kill reported: exit {} {}",
        t.elapsed(),
        st.exit_code,
        st.reason
    );

    for id in [&id, &oom] {
        rt.remove_container(v1::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("RemoveContainer");
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    c.stop_and_remove(&pod).await;
    c.assert_no_leaks().await;
    println!("[{:5.1?}] all removed", t.elapsed());
}
