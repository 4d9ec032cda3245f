//! One collection: for each container and pod asked about, its cgroup files, its writable layer (cached) and, for
//! pods, its network namespace (one thread visits every pod's). Whatever cannot be read is absent; an unexpected
//! failure is logged here, once, at debug level (a stats call never fails because one file did).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StatsError;
use super::cgroup;
use super::cpu::{self, CpuSampler};
use super::disk::{self, DiskCache, Lookup};
use super::model::{
    CgroupStats, ContainerInfo, ContainerStats, FsUsage, NetworkUsage, PodInfo, PodStats,
};
use super::net;
use super::source::StatsFs;

/// A container to measure: who it is and where its parts are.
#[derive(Debug, Clone)]
pub struct ContainerSource {
    pub info: ContainerInfo,
    /// Its cgroup on the v2 tree (none when crius runs without cgroups).
    pub cgroup_dir: Option<PathBuf>,
    /// The overlay upper dir: its writable layer.
    pub upper_dir: PathBuf,
}

/// A pod to measure, with the containers to include.
#[derive(Debug, Clone)]
pub struct PodSource {
    pub info: PodInfo,
    pub cgroup_dir: Option<PathBuf>,
    /// Its pinned network namespace, while it has one.
    pub netns: Option<PathBuf>,
    pub containers: Vec<ContainerSource>,
}

/// The measuring half of the stats service: the filesystem seam and what is kept between calls.
pub struct Collector {
    fs: Box<dyn StatsFs>,
    cpu: CpuSampler,
    disk: DiskCache,
    first_walk_budget: Duration,
    /// The file system of writable layers, as ImageFsInfo names it.
    mountpoint: PathBuf,
}

/// The writable-layer walks of one collection: the time left for first walks, the layers to walk behind.
struct Walks {
    deadline: Instant,
    stale: Vec<PathBuf>,
}

/// Stats, and the writable layers whose cached usage is stale: the caller walks them in the background.
pub struct Collected<T> {
    pub stats: T,
    pub stale_layers: Vec<PathBuf>,
}

/// `Ok(None)` and errors alike are absent; errors are logged.
fn absent<T>(what: &'static str, dir: &Path, r: Result<Option<T>, StatsError>) -> Option<T> {
    match r {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %crate::error::chain(&e), "cannot read {what}");
            None
        }
    }
}

impl Collector {
    pub fn new(fs: Box<dyn StatsFs>, mountpoint: PathBuf) -> Collector {
        Collector::with_timing(fs, mountpoint, cpu::MIN_WINDOW, disk::MAX_AGE)
    }

    /// [`Collector::new`] with explicit nano-cores window and writable-layer cache age (tests).
    pub fn with_timing(
        fs: Box<dyn StatsFs>,
        mountpoint: PathBuf,
        min_window: Duration,
        max_age: Duration,
    ) -> Collector {
        Collector {
            fs,
            cpu: CpuSampler::new(min_window),
            disk: DiskCache::new(max_age),
            first_walk_budget: disk::FIRST_WALK_BUDGET,
            mountpoint,
        }
    }

    pub fn containers(&self, sources: &[ContainerSource]) -> Collected<Vec<ContainerStats>> {
        let mut walks = self.walks();
        let stats = sources
            .iter()
            .map(|c| self.container(c, &mut walks))
            .collect();
        self.forget_idle();
        Collected {
            stats,
            stale_layers: walks.stale,
        }
    }

    pub fn pods(&self, sources: &[PodSource]) -> Collected<Vec<PodStats>> {
        let mut walks = self.walks();
        let networks = self.networks(sources);
        let stats = sources
            .iter()
            .zip(networks)
            .map(|(p, network)| PodStats {
                info: p.info.clone(),
                cgroup: self.cgroup(&format!("pod:{}", p.info.id), p.cgroup_dir.as_deref()),
                network,
                containers: p
                    .containers
                    .iter()
                    .map(|c| self.container(c, &mut walks))
                    .collect(),
            })
            .collect();
        self.forget_idle();
        Collected {
            stats,
            stale_layers: walks.stale,
        }
    }

    fn walks(&self) -> Walks {
        Walks {
            deadline: Instant::now() + self.first_walk_budget,
            stale: Vec::new(),
        }
    }

    /// The background half of the writable-layer cache.
    pub fn refresh_layers(&self, dirs: &[PathBuf]) {
        self.disk.refresh(self.fs.as_ref(), dirs);
    }

    fn forget_idle(&self) {
        let now = Instant::now();
        self.cpu.forget_idle(now, cpu::FORGET_AFTER);
        self.disk.forget_idle(now, cpu::FORGET_AFTER);
    }

    fn container(&self, c: &ContainerSource, walks: &mut Walks) -> ContainerStats {
        ContainerStats {
            info: c.info.clone(),
            cgroup: self.cgroup(&format!("ctr:{}", c.info.id), c.cgroup_dir.as_deref()),
            writable_layer: self.layer(&c.upper_dir, walks),
        }
    }

    fn cgroup(&self, key: &str, dir: Option<&Path>) -> CgroupStats {
        let Some(dir) = dir else {
            return CgroupStats::default();
        };
        let fs = self.fs.as_ref();
        let ts = crate::pod::now_nanos();
        let now = Instant::now();
        let mut cpu = absent("cpu.stat", dir, cgroup::cpu(fs, dir, ts));
        if let Some(c) = &mut cpu {
            c.usage_nano_cores = self.cpu.observe(key, now, c.usage_core_nanos);
        }
        CgroupStats {
            cpu,
            memory: absent("memory usage", dir, cgroup::memory(fs, dir, ts)),
            swap: absent("swap usage", dir, cgroup::swap(fs, dir, ts)),
            process: absent("processes", dir, cgroup::process(fs, dir, ts)),
        }
    }

    fn layer(&self, upper: &Path, walks: &mut Walks) -> Option<FsUsage> {
        let m = match self.disk.lookup(upper, Instant::now()) {
            Lookup::Hit(m, schedule) => {
                if schedule {
                    walks.stale.push(upper.to_path_buf());
                }
                m
            }
            Lookup::Pending => return None,
            Lookup::Miss => match self
                .disk
                .measure(self.fs.as_ref(), upper, Some(walks.deadline))
            {
                Ok(Some(m)) => m,
                Ok(None) => {
                    walks.stale.push(upper.to_path_buf());
                    return None;
                }
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::debug!(dir = %upper.display(), error = %e, "cannot measure a writable layer");
                    }
                    return None;
                }
            },
        };
        Some(FsUsage {
            timestamp: m.timestamp,
            mountpoint: self.mountpoint.clone(),
            bytes: m.bytes,
            inodes: m.inodes,
        })
    }

    /// Each pod's network usage, read in its namespace (all of them by one thread).
    fn networks(&self, pods: &[PodSource]) -> Vec<Option<NetworkUsage>> {
        let wanted: Vec<PathBuf> = pods.iter().filter_map(|p| p.netns.clone()).collect();
        let mut texts = self.fs.net_dev(&wanted).into_iter();
        let ts = crate::pod::now_nanos();
        pods.iter()
            .map(|p| {
                let netns = p.netns.as_ref()?;
                let parsed = match texts.next()? {
                    Ok(text) => net::parse_net_dev(&text).map_err(|reason| StatsError::Parse {
                        path: netns.join("net/dev"),
                        reason,
                    }),
                    Err(source) => Err(StatsError::Net {
                        netns: netns.clone(),
                        source,
                    }),
                };
                absent("network devices", netns, parsed.map(Some))
                    .map(|ifs| net::network_usage(ts, ifs))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::super::source::RealFs;
    use super::*;

    /// The real file system for tempdirs, and canned /proc/net/dev texts by namespace path.
    struct FakeFs(HashMap<PathBuf, String>);

    impl StatsFs for FakeFs {
        fn read(&self, path: &Path) -> std::io::Result<String> {
            RealFs.read(path)
        }
        fn subdirs(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
            RealFs.subdirs(dir)
        }
        fn disk_usage(
            &self,
            dir: &Path,
            deadline: Option<Instant>,
        ) -> std::io::Result<Option<(u64, u64)>> {
            RealFs.disk_usage(dir, deadline)
        }
        fn net_dev(&self, netns: &[PathBuf]) -> Vec<std::io::Result<String>> {
            netns
                .iter()
                .map(|n| {
                    self.0
                        .get(n)
                        .cloned()
                        .ok_or_else(|| std::io::ErrorKind::NotFound.into())
                })
                .collect()
        }
    }

    fn info(id: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            pod_id: "p".into(),
            name: id.into(),
            attempt: 0,
            image: "busybox".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn put(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    const NET: &str = "h\nh\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  eth0: 500 5 1 0 0 0 0 0 300 3 2 0 0 0 0 0\n";

    #[test]
    fn a_hybrid_host_gives_cpu_and_processes_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let cg = t.path().join("cg");
        put(
            &cg,
            "cpu.stat",
            "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\n",
        );
        put(&cg, "cgroup.procs", "1\n2\n");
        put(&t.path().join("upper"), "f", "x");
        let c = Collector::with_timing(
            Box::new(RealFs),
            PathBuf::from("/root/containers"),
            Duration::ZERO,
            Duration::from_secs(60),
        );
        let src = ContainerSource {
            info: info("a"),
            cgroup_dir: Some(cg.clone()),
            upper_dir: t.path().join("upper"),
        };
        let out = c.containers(std::slice::from_ref(&src));
        let s = &out.stats[0];
        let cpu = s.cgroup.cpu.as_ref().unwrap();
        assert_eq!(cpu.usage_core_nanos, 2_000_000);
        assert_eq!(cpu.usage_nano_cores, None, "no earlier sample");
        assert_eq!(s.cgroup.memory, None);
        assert_eq!(s.cgroup.swap, None);
        let p = s.cgroup.process.as_ref().unwrap();
        assert_eq!((p.processes, p.threads), (2, None));
        let layer = s.writable_layer.as_ref().unwrap();
        assert_eq!(layer.mountpoint, Path::new("/root/containers"));
        assert_eq!(layer.inodes, 2);
        assert!(out.stale_layers.is_empty());
        // A second sample: an average (the window is not bounded in this test).
        put(&cg, "cpu.stat", "usage_usec 3000000\n");
        let out = c.containers(std::slice::from_ref(&src));
        assert!(
            out.stats[0]
                .cgroup
                .cpu
                .as_ref()
                .unwrap()
                .usage_nano_cores
                .is_some()
        );
        // No cgroup at all (crius without cgroups), no upper dir: nothing.
        let bare = ContainerSource {
            info: info("b"),
            cgroup_dir: None,
            upper_dir: t.path().join("none"),
        };
        let s = &c.containers(&[bare]).stats[0];
        assert_eq!(s.cgroup, CgroupStats::default());
        assert_eq!(s.writable_layer, None);
    }

    #[test]
    fn stale_layers_are_handed_back_for_a_background_walk() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        let c = Collector::with_timing(
            Box::new(RealFs),
            PathBuf::from("/c"),
            Duration::ZERO,
            Duration::ZERO,
        );
        let src = ContainerSource {
            info: info("a"),
            cgroup_dir: None,
            upper_dir: upper.clone(),
        };
        assert!(
            c.containers(std::slice::from_ref(&src))
                .stale_layers
                .is_empty()
        );
        std::fs::write(upper.join("new"), b"data").unwrap();
        let out = c.containers(std::slice::from_ref(&src));
        assert_eq!(out.stale_layers, vec![upper.clone()]);
        assert_eq!(out.stats[0].writable_layer.as_ref().unwrap().inodes, 1);
        c.refresh_layers(&out.stale_layers);
        let out = c.containers(std::slice::from_ref(&src));
        assert_eq!(out.stats[0].writable_layer.as_ref().unwrap().inodes, 2);
    }

    #[test]
    fn pods_get_their_network_from_their_own_namespace() {
        let t = tempfile::tempdir().unwrap();
        let cg = t.path().join("pod");
        put(&cg, "cpu.stat", "usage_usec 1\n");
        put(&cg, "cgroup.procs", "");
        put(&cg.join("crius-sandbox"), "cgroup.procs", "7\n");
        let ns_a = t.path().join("netns-a");
        let fs = FakeFs([(ns_a.clone(), NET.to_string())].into_iter().collect());
        let c = Collector::new(Box::new(fs), PathBuf::from("/c"));
        let pod = |id: &str, netns: Option<PathBuf>| PodSource {
            info: PodInfo {
                id: id.into(),
                name: id.into(),
                namespace: "ns".into(),
                uid: "u".into(),
                attempt: 0,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            cgroup_dir: Some(cg.clone()),
            netns,
            containers: Vec::new(),
        };
        let out = c.pods(&[
            pod("none", None),
            pod("a", Some(ns_a)),
            pod("broken", Some(t.path().join("netns-gone"))),
        ]);
        assert_eq!(out.stats.len(), 3);
        assert_eq!(out.stats[0].network, None);
        let n = out.stats[1].network.as_ref().unwrap();
        let eth0 = n.default_interface.as_ref().unwrap();
        assert_eq!(
            (eth0.rx_bytes, eth0.tx_bytes, eth0.rx_errors, eth0.tx_errors),
            (500, 300, 1, 2)
        );
        assert_eq!(n.interfaces[0].name, "lo");
        assert_eq!(out.stats[2].network, None);
        assert_eq!(out.stats[1].cgroup.process.as_ref().unwrap().processes, 1);
    }
}
