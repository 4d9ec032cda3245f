//! Manager logic against the fake cgroup2 tree (no root needed).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::fake::FakeCgroupFs;
use super::*;

/// Lets a test keep inspecting the fake after handing it to the manager.
#[derive(Debug, Clone)]
struct Shared(Arc<FakeCgroupFs>);

impl CgroupFs for Shared {
    fn mkdir(&self, p: &Path) -> std::io::Result<()> {
        self.0.mkdir(p)
    }
    fn rmdir(&self, p: &Path) -> std::io::Result<()> {
        self.0.rmdir(p)
    }
    fn read(&self, p: &Path) -> std::io::Result<String> {
        self.0.read(p)
    }
    fn write(&self, p: &Path, v: &str) -> std::io::Result<()> {
        self.0.write(p, v)
    }
    fn exists(&self, p: &Path) -> bool {
        self.0.exists(p)
    }
    fn children(&self, p: &Path) -> std::io::Result<Vec<String>> {
        self.0.children(p)
    }
    fn sigkill(&self, pid: i32) -> std::io::Result<()> {
        self.0.sigkill(pid)
    }
}

struct Env {
    dir: TempDir,
    fake: Arc<FakeCgroupFs>,
    mgr: CgroupManager,
}

impl Env {
    fn with(fake: impl FnOnce(&Path) -> FakeCgroupFs) -> Self {
        let dir = TempDir::new().unwrap();
        let fake = Arc::new(fake(dir.path()));
        let mgr = CgroupManager::with_fs(dir.path().to_path_buf(), Box::new(Shared(fake.clone())));
        Self { dir, fake, mgr }
    }

    /// A v2 tree with every controller, all delegated from the root (a pure cgroup v2 host).
    fn full() -> Self {
        let env = Self::with(|root| {
            FakeCgroupFs::new(root, &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"]).unwrap()
        });
        env.fake
            .delegate_from_root(&["cpuset", "cpu", "io", "memory", "hugetlb", "pids"])
            .unwrap();
        env
    }

    /// This machine's v2 tree: only hugetlb, not delegated from the root.
    fn hybrid() -> Self {
        Self::with(|root| FakeCgroupFs::new(root, &["hugetlb"]).unwrap())
    }

    fn abs(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> String {
        fs::read_to_string(self.abs(p)).unwrap()
    }

    fn writes(&self) -> Vec<(String, String)> {
        let root = self.dir.path();
        self.fake
            .writes()
            .into_iter()
            .map(|(p, v)| (format!("/{}", p.strip_prefix(root).unwrap().display()), v))
            .collect()
    }
}

fn path(p: &str) -> CgroupPath {
    CgroupPath::new(p).unwrap()
}

#[test]
fn driver_parses_and_prints() {
    assert_eq!(
        "systemd".parse::<CgroupDriver>().unwrap(),
        CgroupDriver::Systemd
    );
    assert_eq!(
        "cgroupfs".parse::<CgroupDriver>().unwrap().to_string(),
        "cgroupfs"
    );
    assert!(matches!(
        "docker".parse::<CgroupDriver>(),
        Err(CgroupError::UnknownDriver(_))
    ));
}

#[test]
fn with_root_refuses_a_directory_that_is_not_cgroup2() {
    let dir = TempDir::new().unwrap();
    let err = CgroupManager::with_root(dir.path().to_path_buf()).unwrap_err();
    assert!(matches!(err, CgroupError::NotCgroup2 { .. }), "{err:?}");
}

#[test]
fn controllers_come_from_the_root() {
    let env = Env::hybrid();
    assert_eq!(env.mgr.controllers(), ["hugetlb"]);
    assert!(env.mgr.usable_controllers().is_empty());
    let env = Env::full();
    assert_eq!(env.mgr.usable_controllers().len(), 6);
}

#[test]
fn create_enables_controllers_only_in_directories_it_created() {
    let env = Env::full();
    // kubelet made /kubepods and delegated only cpu and memory from it.
    env.fake.mkdir(&env.abs("/kubepods")).unwrap();
    env.fake
        .write(&env.abs("/kubepods/cgroup.subtree_control"), "+cpu +memory")
        .unwrap();
    let before = env.writes().len();

    let leaf = path("/kubepods/pod1/crius-abc");
    let created = env.mgr.create(&leaf).unwrap();
    assert_eq!(
        created.dirs,
        [path("/kubepods/pod1"), path("/kubepods/pod1/crius-abc")]
    );
    assert!(env.mgr.exists(&leaf));
    let writes = &env.writes()[before..];
    assert_eq!(
        writes,
        [
            (
                "/kubepods/pod1/cgroup.subtree_control".to_string(),
                "+cpu".to_string()
            ),
            (
                "/kubepods/pod1/cgroup.subtree_control".to_string(),
                "+memory".to_string()
            ),
        ],
        "only the created pod dir is written; never /kubepods, never the leaf"
    );
    assert_eq!(
        env.read("/kubepods/pod1/crius-abc/cgroup.controllers"),
        "cpu memory"
    );
    assert_eq!(
        env.read("/kubepods/cgroup.subtree_control"),
        "cpu memory",
        "pre-existing dir untouched"
    );

    // Creating it again creates nothing and writes nothing.
    let again = env.mgr.create(&leaf).unwrap();
    assert!(again.dirs.is_empty());
    assert_eq!(env.writes().len(), before + 2);
}

#[test]
fn create_parent_also_enables_the_leaf() {
    let env = Env::full();
    let pod = path("/kubepods.slice/kubepods-pod1.slice");
    let created = env.mgr.create_parent(&pod).unwrap();
    assert_eq!(created.dirs.len(), 2);
    assert_eq!(
        env.read("/kubepods.slice/kubepods-pod1.slice/cgroup.subtree_control"),
        "cpu cpuset hugetlb io memory pids"
    );
    let child = sandbox_child(CgroupDriver::Systemd, &pod, "abc");
    env.mgr.create(&child).unwrap();
    assert_eq!(
        env.read(&format!("{child}/cgroup.controllers")),
        "cpu cpuset hugetlb io memory pids"
    );
}

#[test]
fn create_on_a_tree_without_delegation_writes_nothing() {
    let env = Env::hybrid();
    let created = env.mgr.create(&path("/crius-test/pod/child")).unwrap();
    assert_eq!(created.dirs.len(), 3);
    assert!(env.writes().is_empty(), "{:?}", env.writes());
    assert!(env.mgr.create(&CgroupPath::root()).is_err());
}

#[test]
fn create_failure_removes_what_it_made() {
    let env = Env::full();
    // A file where a directory should go makes mkdir of the child fail.
    env.fake.mkdir(&env.abs("/a")).unwrap();
    fs::write(env.abs("/a/b"), "").unwrap();
    let err = env.mgr.create(&path("/a/b/c")).unwrap_err();
    assert!(matches!(err, CgroupError::Mkdir { .. }), "{err:?}");
    // The kernel refuses the second level: the first one, which this call made, is removed again.
    let env = Env::full();
    fs::write(env.abs("/cgroup.max.depth"), "1").unwrap();
    let err = env.mgr.create(&path("/x/y")).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Mkdir { source, .. } if source.raw_os_error() == Some(libc::EAGAIN)),
        "{err:?}"
    );
    assert!(!env.mgr.exists(&path("/x")));
}

#[test]
fn apply_writes_every_limit_where_controllers_exist() {
    let env = Env::full();
    let pod = path("/pod");
    env.mgr.create(&pod).unwrap();
    let r = Resources {
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpu_shares: Some(1024),
        memory_limit: Some(1 << 30),
        memory_swap_limit: Some(1 << 30),
        cpuset_cpus: Some("0".into()),
        cpuset_mems: Some("0".into()),
        pids_limit: Some(64),
        hugepage_limits: vec![("2MB".into(), 2 << 20)],
        unified: [("memory.high".to_string(), "900000000".to_string())].into(),
    };
    let unenforced = env.mgr.apply(&pod, &r).unwrap();
    assert!(unenforced.is_empty(), "{unenforced:?}");
    for (file, value) in [
        ("memory.max", "1073741824"),
        ("memory.swap.max", "0"),
        ("cpu.max", "50000 100000"),
        ("cpu.weight", "39"),
        ("cpuset.cpus", "0"),
        ("cpuset.mems", "0"),
        ("pids.max", "64"),
        ("hugetlb.2MB.max", "2097152"),
        ("memory.high", "900000000"),
    ] {
        assert_eq!(env.read(&format!("/pod/{file}")), value, "{file}");
    }
}

#[test]
fn apply_reports_limits_this_tree_cannot_enforce() {
    let env = Env::hybrid();
    let child = path("/t/child");
    env.mgr.create(&child).unwrap();
    let r = Resources {
        memory_limit: Some(1 << 20),
        cpu_shares: Some(512),
        hugepage_limits: vec![("2MB".into(), 0)],
        unified: [("cgroup.max.depth".to_string(), "4".to_string())].into(),
        ..Default::default()
    };
    let unenforced = env.mgr.apply(&child, &r).unwrap();
    let shown: Vec<String> = unenforced.iter().map(ToString::to_string).collect();
    let root = env.dir.path().display();
    assert_eq!(
        shown,
        [
            format!("memory.max: controller memory is not available in the cgroup v2 tree at {root}"),
            format!("cpu.weight: controller cpu is not available in the cgroup v2 tree at {root}"),
            "hugetlb.2MB.max: controller hugetlb is not enabled for /t/child (its parent's cgroup.subtree_control \
             does not delegate it)"
                .to_string(),
        ]
    );
    assert_eq!(unenforced[2].controller, "hugetlb");
    // The core file was still written: unenforceable limits do not stop the others.
    assert_eq!(env.read("/t/child/cgroup.max.depth"), "4");
}

#[test]
fn apply_reports_missing_interface_files_but_refuses_unknown_unified_keys() {
    let env = Env::with(|root| {
        FakeCgroupFs::new(root, &["memory"])
            .unwrap()
            .without_files(&["memory.swap.max"])
    });
    env.fake.delegate_from_root(&["memory"]).unwrap();
    let pod = path("/pod");
    env.mgr.create(&pod).unwrap();
    let r = Resources {
        memory_limit: Some(100 << 20),
        memory_swap_limit: Some(200 << 20),
        ..Default::default()
    };
    let unenforced = env.mgr.apply(&pod, &r).unwrap();
    assert_eq!(unenforced.len(), 1);
    assert_eq!(unenforced[0].limit, "memory.swap.max");
    assert!(
        unenforced[0].reason.contains("provides no memory.swap.max"),
        "{}",
        unenforced[0]
    );
    assert_eq!(env.read("/pod/memory.max"), "104857600");

    let typo = Resources {
        unified: [("memory.hgih".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let err = env.mgr.apply(&pod, &typo).unwrap_err();
    assert!(err.to_string().contains("memory.hgih"), "{err}");
}

#[test]
fn apply_names_the_file_and_value_the_kernel_rejects() {
    let env = Env::full();
    let pod = path("/pod");
    env.mgr.create(&pod).unwrap();
    let r = Resources {
        unified: [("memory.max".to_string(), "lots".to_string())].into(),
        ..Default::default()
    };
    let err = env.mgr.apply(&pod, &r).unwrap_err();
    match &err {
        CgroupError::Write {
            path,
            value,
            source,
        } => {
            assert!(path.ends_with("pod/memory.max"), "{path:?}");
            assert_eq!(value, "lots");
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("\"lots\"") && err.to_string().contains("memory.max"),
        "{err}"
    );
}

#[test]
fn apply_needs_an_existing_non_root_cgroup_unless_there_is_nothing_to_do() {
    let env = Env::full();
    let r = Resources {
        pids_limit: Some(5),
        ..Default::default()
    };
    assert!(matches!(
        env.mgr.apply(&path("/missing"), &r),
        Err(CgroupError::NotFound { .. })
    ));
    assert!(matches!(
        env.mgr.apply(&CgroupPath::root(), &r),
        Err(CgroupError::RootCgroup { .. })
    ));
    assert!(
        env.mgr
            .apply(&path("/missing"), &Resources::default())
            .unwrap()
            .is_empty()
    );
    let bad = Resources {
        memory_limit: Some(-7),
        ..Default::default()
    };
    assert!(matches!(
        env.mgr.apply(&path("/missing"), &bad),
        Err(CgroupError::InvalidResource { .. })
    ));
}

#[test]
fn processes_are_added_and_listed_recursively() {
    let env = Env::full();
    let pod = path("/pod");
    env.mgr.create_parent(&pod).unwrap();
    env.mgr.create(&path("/pod/a")).unwrap();
    env.mgr.create(&path("/pod/b")).unwrap();
    env.mgr.add_process(&path("/pod/a"), 10).unwrap();
    env.mgr.add_process(&path("/pod/b"), 20).unwrap();
    env.mgr.add_process(&path("/pod/b"), 10).unwrap();
    let mut pids = env.mgr.procs(&pod).unwrap();
    pids.sort();
    assert_eq!(pids, [10, 20]);
    assert_eq!(env.mgr.procs(&path("/pod/b")).unwrap(), [20, 10]);
    assert!(env.mgr.procs(&path("/nope")).unwrap().is_empty());
    assert!(matches!(
        env.mgr.add_process(&path("/nope"), 1),
        Err(CgroupError::NotFound { .. })
    ));
    assert!(env.mgr.add_process(&pod, 0).is_err());
    // The pod cgroup has controllers enabled for its children, so the kernel refuses processes in it.
    let err = env.mgr.add_process(&pod, 30).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Write { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
        "{err:?}"
    );
}

#[test]
fn kill_uses_cgroup_kill_when_present() {
    let env = Env::full();
    let pod = path("/pod");
    env.mgr.create_parent(&pod).unwrap();
    env.mgr.create(&path("/pod/c")).unwrap();
    env.fake.place(&env.abs("/pod/c"), &[7, 8]).unwrap();
    env.mgr.kill(&pod).unwrap();
    assert_eq!(
        env.writes().last().unwrap(),
        &("/pod/cgroup.kill".to_string(), "1".to_string())
    );
    assert_eq!(env.fake.killed(), [7, 8]);
    assert!(env.mgr.procs(&pod).unwrap().is_empty());
    env.mgr.kill(&path("/gone")).unwrap();
    assert!(env.mgr.kill(&CgroupPath::root()).is_err());
}

#[test]
fn kill_falls_back_to_signalling_every_pid() {
    let env = Env::with(|root| {
        FakeCgroupFs::new(root, &[])
            .unwrap()
            .with_cgroup_kill(false)
    });
    let pod = path("/pod");
    env.mgr.create_parent(&pod).unwrap();
    env.mgr.create(&path("/pod/c")).unwrap();
    env.fake.place(&env.abs("/pod/c"), &[11, 12]).unwrap();
    env.mgr.kill(&pod).unwrap();
    let mut killed = env.fake.killed();
    killed.sort();
    assert_eq!(killed, [11, 12]);
    assert!(env.mgr.procs(&pod).unwrap().is_empty());
    assert!(
        env.writes()
            .iter()
            .all(|(f, _)| !f.ends_with("cgroup.kill"))
    );
}

#[test]
fn remove_only_removes_what_was_created() {
    let env = Env::full();
    env.fake.mkdir(&env.abs("/kubepods")).unwrap();
    let leaf = path("/kubepods/pod1/crius-abc");
    let created = env.mgr.create(&leaf).unwrap();
    env.mgr
        .remove(&leaf, &created, Duration::from_secs(1))
        .unwrap();
    assert!(!env.mgr.exists(&path("/kubepods/pod1")));
    assert!(
        env.mgr.exists(&path("/kubepods")),
        "pre-existing parent kept"
    );
    // Idempotent.
    env.mgr
        .remove(&leaf, &created, Duration::from_secs(1))
        .unwrap();

    // A second sandbox under a pod cgroup it did not create leaves the pod cgroup alone.
    let first = env.mgr.create(&path("/kubepods/pod2/a")).unwrap();
    let second = env.mgr.create(&path("/kubepods/pod2/b")).unwrap();
    assert_eq!(second.dirs, [path("/kubepods/pod2/b")]);
    env.mgr
        .remove(&path("/kubepods/pod2/b"), &second, Duration::from_secs(1))
        .unwrap();
    assert!(env.mgr.exists(&path("/kubepods/pod2/a")));
    env.mgr
        .remove(&path("/kubepods/pod2/a"), &first, Duration::from_secs(1))
        .unwrap();
    assert!(!env.mgr.exists(&path("/kubepods/pod2")));
}

#[test]
fn remove_refuses_records_that_are_not_on_the_path() {
    let env = Env::full();
    let created = CreatedCgroup {
        dirs: vec![path("/other")],
    };
    assert!(matches!(
        env.mgr.remove(&path("/pod/x"), &created, Duration::ZERO),
        Err(CgroupError::NotOwned { .. })
    ));
    let root = CreatedCgroup {
        dirs: vec![CgroupPath::root()],
    };
    assert!(matches!(
        env.mgr.remove(&path("/pod"), &root, Duration::ZERO),
        Err(CgroupError::RootCgroup { .. })
    ));
}

#[test]
fn remove_retries_while_busy_then_gives_up() {
    let env = Env::full();
    let pod = path("/pod");
    let created = env.mgr.create(&pod).unwrap();
    env.fake.busy(&env.abs("/pod"), 3);
    env.mgr
        .remove(&pod, &created, Duration::from_secs(5))
        .unwrap();
    assert!(!env.mgr.exists(&pod));

    let created = env.mgr.create(&pod).unwrap();
    env.fake.place(&env.abs("/pod"), &[99]).unwrap();
    let err = env
        .mgr
        .remove(&pod, &created, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, CgroupError::RemoveTimeout { .. }), "{err:?}");
    assert!(env.mgr.exists(&pod));
}

#[test]
fn remove_tree_removes_descendants_deepest_first() {
    let env = Env::full();
    env.mgr.create(&path("/orphan/a/x")).unwrap();
    env.mgr.create(&path("/orphan/b")).unwrap();
    env.mgr
        .remove_tree(&path("/orphan"), Duration::from_secs(1))
        .unwrap();
    assert!(!env.mgr.exists(&path("/orphan")));
    env.mgr
        .remove_tree(&path("/orphan"), Duration::from_secs(1))
        .unwrap();
    assert!(
        env.mgr
            .remove_tree(&CgroupPath::root(), Duration::ZERO)
            .is_err()
    );
}

#[test]
fn oom_kills_are_read_from_memory_events() {
    let env = Env::full();
    let pod = path("/pod");
    env.mgr.create(&pod).unwrap();
    assert_eq!(env.mgr.oom_kills(&pod).unwrap(), Some(0));
    fs::write(env.abs("/pod/memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
    assert_eq!(env.mgr.oom_kills(&pod).unwrap(), Some(1));
    let env = Env::hybrid();
    env.mgr.create(&pod).unwrap();
    assert_eq!(env.mgr.oom_kills(&pod).unwrap(), None);
}

#[test]
fn created_cgroup_and_unenforced_serialize() {
    let created = CreatedCgroup {
        dirs: vec![path("/a"), path("/a/b")],
    };
    let json = serde_json::to_string(&created).unwrap();
    assert_eq!(json, r#"{"dirs":["/a","/a/b"]}"#);
    assert_eq!(
        serde_json::from_str::<CreatedCgroup>(&json).unwrap(),
        created
    );
    assert!(serde_json::from_str::<CreatedCgroup>(r#"{"dirs":["a/../b"]}"#).is_err());
}
