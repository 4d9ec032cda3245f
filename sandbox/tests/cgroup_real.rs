//! Privileged tests of the cgroup manager on this host's real cgroup2 tree. They need root and a cgroup2
//! mount (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`), and fail loudly without them. They only touch
//! cgroups they create (`/crius-cgtest-<pid>-...`) and remove them, and kill and reap only processes they
//! start.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::Duration;

use crius_sandbox::cgroup::{CgroupError, CgroupManager, CgroupPath, Resources};

const TIMEOUT: Duration = Duration::from_secs(5);

fn manager() -> CgroupManager {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "cgroup_real tests need root (they create cgroups)"
    );
    CgroupManager::detect().expect("this host must have a cgroup2 tree")
}

/// Removes the test's cgroups and kills and reaps its process even when an assertion fails.
struct Guard<'a> {
    mgr: &'a CgroupManager,
    top: CgroupPath,
    child: Option<Child>,
}

impl Guard<'_> {
    fn spawn_sleep(&mut self) -> i32 {
        let child = Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        self.child = Some(child);
        pid
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.mgr.kill(&self.top);
        let _ = self.mgr.remove_tree(&self.top, TIMEOUT);
    }
}

fn top(name: &str) -> CgroupPath {
    CgroupPath::new(&format!("/crius-cgtest-{}{name}", std::process::id())).unwrap()
}

#[test]
fn detect_finds_the_cgroup2_tree() {
    let mgr = manager();
    let root = mgr.root().to_str().unwrap();
    assert!(
        root == "/sys/fs/cgroup" || root == "/sys/fs/cgroup/unified",
        "{root}"
    );
    assert!(CgroupManager::with_root(mgr.root().to_path_buf()).is_ok());
    assert!(mgr.root().join("cgroup.procs").exists());
    let on_disk = std::fs::read_to_string(mgr.root().join("cgroup.controllers")).unwrap();
    assert_eq!(mgr.controllers().join(" "), on_disk.trim());
}

#[test]
fn pod_cgroup_lifecycle_on_the_real_tree() {
    let mgr = manager();
    let top = top("");
    let mut guard = Guard {
        mgr: &mgr,
        top: top.clone(),
        child: None,
    };
    let pod = top.join("pod-a").unwrap();
    let child = pod.join("child").unwrap();

    let created = mgr.create(&child).unwrap();
    assert_eq!(created.dirs, [top.clone(), pod.clone(), child.clone()]);
    for dir in &created.dirs {
        assert!(mgr.absolute(dir).is_dir(), "{dir} was not created");
    }

    // Limits: what the tree lacks comes back as unenforced, nothing fails, and what exists is written.
    let resources = Resources {
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpu_shares: Some(512),
        memory_limit: Some(64 << 20),
        pids_limit: Some(32),
        hugepage_limits: vec![("2MB".into(), 2 << 20)],
        unified: [("cgroup.max.depth".to_string(), "3".to_string())].into(),
        ..Default::default()
    };
    let unenforced = mgr.apply(&child, &resources).unwrap();
    let controllers = mgr.controllers();
    let usable = std::fs::read_to_string(mgr.absolute(&child).join("cgroup.controllers")).unwrap();
    for (limit, controller) in [
        ("memory.max", "memory"),
        ("cpu.max", "cpu"),
        ("cpu.weight", "cpu"),
        ("pids.max", "pids"),
    ] {
        let found = unenforced.iter().find(|u| u.limit == limit);
        if usable.split_whitespace().any(|c| c == controller) {
            assert!(
                found.is_none(),
                "{limit} should be enforced here: {unenforced:?}"
            );
        } else {
            let u = found.unwrap_or_else(|| panic!("{limit} missing from {unenforced:?}"));
            assert_eq!(u.controller, controller);
            if !controllers.iter().any(|c| c == controller) {
                assert_eq!(
                    u.to_string(),
                    format!(
                        "{limit}: controller {controller} is not available in the cgroup v2 tree at {}",
                        mgr.root().display()
                    )
                );
            }
        }
    }
    if !usable.split_whitespace().any(|c| c == "hugetlb") {
        let u = unenforced
            .iter()
            .find(|u| u.limit == "hugetlb.2MB.max")
            .expect("hugetlb reported");
        assert!(u.reason.contains("not enabled for"), "{u}");
    }
    assert_eq!(
        std::fs::read_to_string(mgr.absolute(&child).join("cgroup.max.depth"))
            .unwrap()
            .trim(),
        "3"
    );

    // A value the kernel rejects is an error naming the file and the value.
    let bad = Resources {
        unified: [("cgroup.max.depth".to_string(), "banana".to_string())].into(),
        ..Default::default()
    };
    let err = mgr.apply(&child, &bad).unwrap_err();
    assert!(matches!(err, CgroupError::Write { .. }), "{err:?}");
    assert!(
        err.to_string().contains("cgroup.max.depth") && err.to_string().contains("banana"),
        "{err}"
    );

    // A process joins the child cgroup and is seen from the pod cgroup.
    let pid = guard.spawn_sleep();
    mgr.add_process(&child, pid).unwrap();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.lines().any(|l| l == format!("0::{child}")),
        "{membership}"
    );
    assert_eq!(mgr.procs(&child).unwrap(), [pid]);
    assert_eq!(mgr.procs(&top).unwrap(), [pid], "procs is recursive");

    // kill() kills it; we reap it.
    mgr.kill(&child).unwrap();
    let status = guard.child.take().unwrap().wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");

    mgr.remove(&child, &created, TIMEOUT).unwrap();
    for dir in &created.dirs {
        assert!(!mgr.exists(dir), "{dir} still exists");
    }
    mgr.remove(&child, &created, TIMEOUT).unwrap();
    mgr.kill(&child).unwrap();
}

#[test]
fn remove_waits_for_a_busy_cgroup_and_remove_tree_cleans_up() {
    let mgr = manager();
    let top = top("-busy");
    let mut guard = Guard {
        mgr: &mgr,
        top: top.clone(),
        child: None,
    };
    let leaf = top.join("c").unwrap();
    let created = mgr.create(&leaf).unwrap();
    mgr.create(&top.join("other").unwrap()).unwrap();

    let pid = guard.spawn_sleep();
    mgr.add_process(&leaf, pid).unwrap();
    let err = mgr
        .remove(&leaf, &created, Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, CgroupError::RemoveTimeout { .. }), "{err:?}");
    assert!(mgr.exists(&leaf));

    mgr.kill(&top).unwrap();
    let status = guard.child.take().unwrap().wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    mgr.remove_tree(&top, TIMEOUT).unwrap();
    assert!(!mgr.exists(&top));
    assert!(mgr.procs(&top).unwrap().is_empty());
}
