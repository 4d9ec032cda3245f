//! Tests of the harness itself: the leak check sees what a pod leaves, orphaned pause processes are adopted
//! and reaped by the test process, and dropping a `Crius` removes everything even when the test did not.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use crius_e2e::{Crius, Options, procfs, wait_until};

#[tokio::test]
async fn leak_check_sees_a_running_pod_and_drop_removes_it() {
    let c = Crius::start(Options::new()).await;
    let id = c
        .run_pod(c.pod_config("left-behind"))
        .await
        .expect("RunPodSandbox");
    let pid = c.pod_status(&id).await.unwrap().pid().expect("pid");
    let leaks = c.leaks().await;
    for needle in [
        "pod record",
        "pause pid",
        "/netns/",
        "/utsns/",
        "/ipcns/",
        "/pods/",
        "IP reservation",
        "interface still on bridge",
        "cgroup left",
        "mount left",
    ] {
        assert!(
            leaks.iter().any(|l| l.contains(needle)),
            "the leak check misses {needle:?}:\n{leaks:#?}"
        );
    }
    let bridge = c.bridge().to_string();
    let cgroup = c.cgroup_dir();
    let dir = c.paths().dir.clone();
    assert!(Path::new("/sys/class/net").join(&bridge).exists());

    drop(c);
    assert!(!procfs::is_alive(pid), "pause {pid} survived the drop");
    let reaped = wait_until(Duration::from_secs(5), async || procfs::stat(pid).is_none()).await;
    assert!(
        reaped,
        "pause zombie {pid} not reaped: {:?}",
        procfs::stat(pid)
    );
    assert!(
        procfs::mounts_under(&dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} left"
    );
    assert!(!cgroup.exists(), "cgroup {} left", cgroup.display());
    assert!(!dir.exists(), "{} left", dir.display());
}

#[tokio::test]
async fn pause_orphaned_by_a_stopped_crius_is_adopted_and_reaped() {
    let mut c = Crius::start(Options::new()).await;
    let id = c
        .run_pod(c.pod_config("orphan"))
        .await
        .expect("RunPodSandbox");
    let pid = c.pod_status(&id).await.unwrap().pid().expect("pid");
    let crius_pid = c.pid().unwrap();
    assert_eq!(
        procfs::stat(pid).unwrap().ppid,
        crius_pid,
        "pause is not crius' child"
    );
    assert!(c.stop().success());
    let me = std::process::id() as i32;
    assert_eq!(
        procfs::stat(pid).map(|s| s.ppid),
        Some(me),
        "the orphaned pause did not re-parent to the test process (subreaper)"
    );
    drop(c);
    let reaped = wait_until(Duration::from_secs(5), async || procfs::stat(pid).is_none()).await;
    assert!(reaped, "pause {pid} not reaped: {:?}", procfs::stat(pid));
}
