//! The whole spec, built from fixtures against a fake host.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use super::linux::{MASKED_PATHS, READONLY_PATHS};
use super::*;
use crate::container::config::{
    CapabilityChanges, ContainerResources, Device, EnvVar, ImageRef, Mount as CriMount,
    Propagation, SeccompProfile,
};
use crate::container::user::StaticUsers;
use crate::error::Error;
use crate::pod::spec::{NamespaceModes, NsMode};

struct FakeHost {
    caps: BTreeSet<&'static str>,
    mountinfo: String,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            caps: caps::all_names().collect(),
            mountinfo: "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n".into(),
        }
    }
}

impl Host for FakeHost {
    fn capabilities(&self) -> BTreeSet<&'static str> {
        self.caps.clone()
    }
    fn hostname(&self) -> String {
        "node-1".into()
    }
    fn mountinfo(&self) -> io::Result<String> {
        Ok(self.mountinfo.clone())
    }
}

/// Everything a spec is built from; tests change what they need and call [`Fixture::build`].
struct Fixture {
    config: ContainerConfig,
    image: ImageRecord,
    pod: PodSpec,
    namespaces: BTreeMap<String, PathBuf>,
    pod_dir: PathBuf,
    shm: Option<PathBuf>,
    target_pid: Option<i32>,
    users: StaticUsers,
    host: FakeHost,
    _tmp: tempfile::TempDir,
}

fn pod_spec() -> PodSpec {
    PodSpec {
        name: "web".into(),
        namespace: "default".into(),
        uid: "u1".into(),
        attempt: 0,
        hostname: "web-0".into(),
        log_directory: String::new(),
        dns: None,
        ports: vec![],
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        cgroup_parent: String::new(),
        namespaces: NamespaceModes {
            network: NsMode::Pod,
            pid: NsMode::Pod,
            ipc: NsMode::Pod,
        },
        sysctls: BTreeMap::new(),
        resources: None,
        overhead: None,
        runtime_handler: String::new(),
    }
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let pod_dir = tmp.path().join("pod");
        std::fs::create_dir_all(&pod_dir).unwrap();
        let namespaces = [
            ("net", "/run/crius/netns/p1"),
            ("uts", "/run/crius/utsns/p1"),
            ("ipc", "/run/crius/ipcns/p1"),
            ("pid", "/run/crius/pidns/p1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
        .collect();
        Fixture {
            config: ContainerConfig {
                name: "app".into(),
                image: ImageRef {
                    image: "busybox:latest".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            image: ImageRecord {
                id: "sha256:1".into(),
                repo_tags: vec![],
                repo_digests: vec![],
                size: 0,
                user: String::new(),
                chain_ids: vec![],
                manifest_digest: String::new(),
                config: serde_json::json!({"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}}),
            },
            pod: pod_spec(),
            namespaces,
            shm: Some(pod_dir.join("shm")),
            pod_dir,
            target_pid: None,
            users: StaticUsers {
                passwd: Some(
                    "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into(),
                ),
                group: Some("root:x:0:\nwheel:x:10:app\n".into()),
            },
            host: FakeHost::default(),
            _tmp: tmp,
        }
    }

    fn tmp(&self) -> &Path {
        self._tmp.path()
    }

    fn build(&self) -> Result<Spec> {
        self.config.validate()?;
        let inputs = SpecInputs {
            id: "c1",
            config: &self.config,
            image: &self.image,
            sandbox: SandboxView {
                pod_id: "p1",
                pod: &self.pod,
                namespaces: &self.namespaces,
                pod_dir: &self.pod_dir,
                shm: self.shm.as_deref(),
                target_pid: self.target_pid,
            },
            rootfs: Path::new("/var/lib/crius/containers/c1/rootfs"),
            cgroup_path: "/kubepods/podu1/crius-c1",
            users: &self.users,
        };
        build_on(&inputs, &self.host)
    }
}

fn destinations(spec: &Spec) -> Vec<String> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect()
}

fn mount_at<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap()
}

fn options(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

fn invalid_field(r: Result<Spec>) -> String {
    match r {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn precondition(r: Result<Spec>) -> String {
    match r {
        Err(Error::FailedPrecondition(m)) => m,
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
}

#[test]
fn a_default_container() {
    let f = Fixture::new();
    let spec = f.build().unwrap();
    assert_eq!(spec.version(), OCI_VERSION);
    assert_eq!(spec.hostname(), &None);
    let root = spec.root().as_ref().unwrap();
    assert_eq!(
        root.path(),
        Path::new("/var/lib/crius/containers/c1/rootfs")
    );
    assert_eq!(root.readonly(), Some(false));

    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &["sh"]);
    assert_eq!(p.env().as_ref().unwrap(), &["PATH=/bin", "HOSTNAME=web-0"]);
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!(p.terminal(), Some(false));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(p.user().additional_gids().as_deref(), Some(&[0][..]));
    assert_eq!(p.no_new_privileges(), Some(false));
    assert_eq!(p.oom_score_adj(), None);
    assert_eq!(p.rlimits(), &None);
    let c = p.capabilities().as_ref().unwrap();
    let bounding = c.bounding().as_ref().unwrap();
    assert_eq!(bounding.len(), caps::DEFAULT.len());
    assert!(
        bounding.contains(&Capability::NetBindService) && !bounding.contains(&Capability::SysAdmin)
    );
    assert_eq!(c.effective(), c.bounding());
    assert_eq!(c.permitted(), c.bounding());
    assert!(c.inheritable().as_ref().unwrap().is_empty());
    assert!(c.ambient().as_ref().unwrap().is_empty());

    assert_eq!(
        destinations(&spec),
        [
            "/proc",
            "/dev",
            "/sys",
            "/dev/pts",
            "/dev/mqueue",
            "/dev/shm",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/etc/hosts",
            "/sys/fs/cgroup"
        ]
    );
    assert_eq!(options(mount_at(&spec, "/sys")).last().unwrap(), "ro");
    let cg = mount_at(&spec, "/sys/fs/cgroup");
    assert_eq!(cg.typ().as_deref(), Some("cgroup2"));
    assert_eq!(options(cg), ["nosuid", "noexec", "nodev", "relatime", "ro"]);
    let shm = mount_at(&spec, "/dev/shm");
    assert_eq!(
        shm.source().as_deref(),
        Some(f.pod_dir.join("shm").as_path())
    );
    assert_eq!(options(shm), ["rbind", "nosuid", "nodev", "noexec", "rw"]);
    let hosts = mount_at(&spec, "/etc/hosts");
    assert_eq!(
        hosts.source().as_deref(),
        Some(f.pod_dir.join("hosts").as_path())
    );
    assert_eq!(options(hosts), ["rbind", "rprivate", "rw"]);

    let lx = spec.linux().as_ref().unwrap();
    assert_eq!(
        lx.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/podu1/crius-c1"))
    );
    assert_eq!(lx.rootfs_propagation().as_deref(), Some("rslave"));
    assert_eq!(
        lx.masked_paths().as_ref().unwrap().len(),
        MASKED_PATHS.len()
    );
    assert_eq!(
        lx.readonly_paths().as_ref().unwrap().len(),
        READONLY_PATHS.len()
    );
    assert!(lx.seccomp().is_none(), "Unconfined is the CRI default");
    assert!(lx.devices().as_ref().unwrap().is_empty());
    let rules = lx.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(!rules[0].allow());
    assert_eq!(
        namespaces(&spec),
        [
            (
                LinuxNamespaceType::Pid,
                Some(PathBuf::from("/run/crius/pidns/p1"))
            ),
            (
                LinuxNamespaceType::Network,
                Some(PathBuf::from("/run/crius/netns/p1"))
            ),
            (
                LinuxNamespaceType::Ipc,
                Some(PathBuf::from("/run/crius/ipcns/p1"))
            ),
            (
                LinuxNamespaceType::Uts,
                Some(PathBuf::from("/run/crius/utsns/p1"))
            ),
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Cgroup, None),
        ]
    );
    let ann = spec.annotations().as_ref().unwrap();
    assert_eq!(ann["io.kubernetes.cri.container-type"], "container");
    assert_eq!(ann["io.kubernetes.cri.sandbox-id"], "p1");
    assert_eq!(ann["io.kubernetes.cri.container-name"], "app");
    assert_eq!(ann["io.kubernetes.cri.image-name"], "busybox:latest");
    // It serializes as the OCI JSON the executor reads.
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["linux"]["rootfsPropagation"], "rslave");
    assert_eq!(
        json["process"]["capabilities"]["inheritable"],
        serde_json::json!([])
    );
}

#[test]
fn process_fields_from_the_request() {
    let mut f = Fixture::new();
    f.config.command = vec!["/bin/app".into()];
    f.config.args = vec!["--x".into()];
    f.config.working_dir = "/srv".into();
    f.config.tty = true;
    f.config.envs = vec![EnvVar {
        key: "PATH".into(),
        value: "/opt/bin".into(),
    }];
    f.config.security.no_new_privs = true;
    f.config.resources = Some(ContainerResources {
        oom_score_adj: 500,
        memory_limit_in_bytes: 64 << 20,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        ..Default::default()
    });
    let spec = f.build().unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &["/bin/app", "--x"]);
    assert_eq!(
        p.env().as_ref().unwrap(),
        &["PATH=/opt/bin", "HOSTNAME=web-0"]
    );
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(p.oom_score_adj(), Some(500));
    let r = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(resources(&f.config).memory_limit, Some(64 << 20));
}

#[test]
fn user_from_the_image_and_the_request() {
    let mut f = Fixture::new();
    f.image.config = serde_json::json!({"config": {"Cmd": ["sh"], "User": "app"}});
    let p = f.build().unwrap().process().clone().unwrap();
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(p.user().additional_gids().as_deref(), Some(&[1000, 10][..]));
    f.config.security.run_as_user = Some(0);
    f.config.security.supplemental_groups = vec![5];
    let p = f.build().unwrap().process().clone().unwrap();
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(p.user().additional_gids().as_deref(), Some(&[0, 5][..]));
    f.config.security.run_as_user = None;
    f.config.security.run_as_username = Some("ghost".into());
    assert_eq!(
        invalid_field(f.build()),
        "config.linux.security_context.run_as_username"
    );
    f.config.security.run_as_username = None;
    f.image.config = serde_json::json!({"config": {"Cmd": ["sh"], "User": "nobody"}});
    assert_eq!(invalid_field(f.build()), "config.image");
}

#[test]
fn nothing_to_run() {
    let mut f = Fixture::new();
    f.image.config = serde_json::json!({"config": {}});
    assert_eq!(invalid_field(f.build()), "config.command");
}

#[test]
fn privileged_containers() {
    let mut f = Fixture::new();
    f.host.caps.remove("CAP_SYS_RESOURCE");
    f.config.security.privileged = true;
    f.config.security.seccomp = SeccompProfile::RuntimeDefault;
    f.config.security.masked_paths = vec!["/proc/x".into()];
    f.config.security.capabilities.drop = vec!["ALL".into()];
    let spec = f.build().unwrap();
    let lx = spec.linux().as_ref().unwrap();
    assert!(lx.masked_paths().as_ref().unwrap().is_empty());
    assert!(lx.readonly_paths().as_ref().unwrap().is_empty());
    assert!(lx.seccomp().is_none());
    let rules = lx.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(rules.len() == 1 && rules[0].allow() && rules[0].access().as_deref() == Some("rwm"));
    assert_eq!(options(mount_at(&spec, "/sys")).last().unwrap(), "rw");
    assert_eq!(
        options(mount_at(&spec, "/sys/fs/cgroup")).last().unwrap(),
        "rw"
    );
    let c = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    let b = c.bounding().clone().unwrap();
    assert_eq!(b.len(), 40);
    assert!(b.contains(&Capability::SysAdmin) && !b.contains(&Capability::SysResource));
    assert!(c.inheritable().as_ref().unwrap().is_empty());
}

#[test]
fn capabilities_the_agent_does_not_hold() {
    let mut f = Fixture::new();
    f.host.caps.remove("CAP_SYS_RESOURCE");
    f.host.caps.remove("CAP_MKNOD");
    f.config.security.capabilities = CapabilityChanges {
        add: vec!["CAP_SYS_RESOURCE".into()],
        ..Default::default()
    };
    let m = precondition(f.build());
    assert!(
        m.contains("add_capabilities[0]") && m.contains("CAP_SYS_RESOURCE"),
        "{m}"
    );
    // Dropped again: fine. A default the agent lacks (MKNOD) is left out quietly.
    f.config.security.capabilities.drop = vec!["SYS_RESOURCE".into()];
    let spec = f.build().unwrap();
    let b = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert!(!b.contains(&Capability::Mknod) && b.contains(&Capability::Chown));
    f.config.security.capabilities = CapabilityChanges {
        add: vec!["ALL".into()],
        ..Default::default()
    };
    let b = f
        .build()
        .unwrap()
        .process()
        .clone()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert_eq!(b.len(), 39);
}

#[test]
fn masked_and_readonly_paths_from_the_request() {
    let mut f = Fixture::new();
    f.config.security.masked_paths = vec!["/proc/kcore".into()];
    f.config.security.readonly_paths = vec!["/proc/sys".into(), "/proc/bus".into()];
    let spec = f.build().unwrap();
    let lx = spec.linux().as_ref().unwrap();
    assert_eq!(lx.masked_paths().as_ref().unwrap(), &["/proc/kcore"]);
    assert_eq!(
        lx.readonly_paths().as_ref().unwrap(),
        &["/proc/sys", "/proc/bus"]
    );
}

#[test]
fn seccomp_selection() {
    let mut f = Fixture::new();
    f.config.security.seccomp = SeccompProfile::RuntimeDefault;
    assert!(
        f.build()
            .unwrap()
            .linux()
            .as_ref()
            .unwrap()
            .seccomp()
            .is_some()
    );
    f.config.security.seccomp = SeccompProfile::Unconfined;
    assert!(
        f.build()
            .unwrap()
            .linux()
            .as_ref()
            .unwrap()
            .seccomp()
            .is_none()
    );
    let missing = f.tmp().join("missing.json").display().to_string();
    f.config.security.seccomp = SeccompProfile::Localhost(missing);
    assert_eq!(
        invalid_field(f.build()),
        "config.linux.security_context.seccomp.localhost_ref"
    );
    let garbage = f.tmp().join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    f.config.security.seccomp = SeccompProfile::Localhost(garbage.display().to_string());
    assert_eq!(
        invalid_field(f.build()),
        "config.linux.security_context.seccomp.localhost_ref"
    );
    let good = f.tmp().join("good.json");
    std::fs::write(
        &good,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
    f.config.security.seccomp = SeccompProfile::Localhost(good.display().to_string());
    let spec = f.build().unwrap();
    assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
}

fn cri_mount(container_path: &str, host_path: &Path) -> CriMount {
    CriMount {
        container_path: container_path.into(),
        host_path: host_path.display().to_string(),
        ..Default::default()
    }
}

#[test]
fn cri_mounts_order_replacement_and_options() {
    let mut f = Fixture::new();
    let data = f.tmp().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    let hosts = f.tmp().join("etc-hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let link = f.tmp().join("link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let mut ro = cri_mount("/data/sub", &data.join("sub"));
    ro.readonly = true;
    ro.recursive_read_only = true;
    let mut slave = cri_mount("/data", &link);
    slave.propagation = Propagation::HostToContainer;
    f.config.mounts = vec![
        ro,
        slave,
        cri_mount("/etc/hosts", &hosts),
        cri_mount("/dev/termination-log", &hosts),
    ];
    let spec = f.build().unwrap();
    let d = destinations(&spec);
    // Parents before children; the CRI's /etc/hosts replaces the pod's.
    assert!(d.iter().position(|x| x == "/data") < d.iter().position(|x| x == "/data/sub"));
    assert_eq!(d.iter().filter(|x| *x == "/etc/hosts").count(), 1);
    assert_eq!(
        mount_at(&spec, "/etc/hosts").source().as_deref(),
        Some(hosts.as_path())
    );
    assert_eq!(
        options(mount_at(&spec, "/etc/hosts")),
        ["rbind", "rprivate", "rw"]
    );
    assert!(d.contains(&"/dev/termination-log".to_owned()));
    assert_eq!(
        options(mount_at(&spec, "/data/sub")),
        ["rbind", "rprivate", "rro"]
    );
    // The symlink is followed: the real directory is mounted.
    let m = mount_at(&spec, "/data");
    assert_eq!(
        m.source().as_deref(),
        Some(std::fs::canonicalize(&data).unwrap().as_path())
    );
    assert_eq!(m.typ().as_deref(), Some("bind"));
    assert_eq!(options(m), ["rbind", "rslave", "rw"]);
    assert_eq!(
        spec.linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rslave")
    );

    // Bidirectional: rshared everywhere; needs a shared host mount.
    f.config.mounts = vec![CriMount {
        propagation: Propagation::Bidirectional,
        ..cri_mount("/data", &data)
    }];
    let spec = f.build().unwrap();
    assert_eq!(
        options(mount_at(&spec, "/data")),
        ["rbind", "rshared", "rw"]
    );
    assert_eq!(
        spec.linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rshared")
    );
    f.host.mountinfo = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n".into();
    let m = precondition(f.build());
    assert!(m.contains("config.mounts[0].propagation"), "{m}");

    // A missing host path names the field.
    f.config.mounts = vec![cri_mount("/x", &f.tmp().join("nope"))];
    assert_eq!(invalid_field(f.build()), "config.mounts[0].host_path");
}

#[test]
fn a_cri_dev_mount_replaces_the_dev_defaults() {
    let mut f = Fixture::new();
    f.config.mounts = vec![cri_mount("/dev", f.tmp())];
    let d = destinations(&f.build().unwrap());
    assert_eq!(
        d.iter()
            .filter(|x| x.starts_with("/dev"))
            .collect::<Vec<_>>(),
        ["/dev"]
    );
}

#[test]
fn readonly_rootfs_makes_the_pod_files_readonly() {
    let mut f = Fixture::new();
    f.config.security.readonly_rootfs = true;
    let spec = f.build().unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    for dest in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
        assert_eq!(
            options(mount_at(&spec, dest)).last().unwrap(),
            "ro",
            "{dest}"
        );
    }
}

#[test]
fn shm_without_a_pod_shm() {
    let mut f = Fixture::new();
    f.shm = None;
    let spec = f.build().unwrap();
    let m = mount_at(&spec, "/dev/shm");
    assert_eq!(m.typ().as_deref(), Some("tmpfs"));
    assert!(options(m).contains(&"size=65536k".to_owned()));
    f.pod.namespaces.ipc = NsMode::Node;
    let spec = f.build().unwrap();
    let m = mount_at(&spec, "/dev/shm");
    assert_eq!(m.source().as_deref(), Some(Path::new("/dev/shm")));
}

#[test]
fn pid_namespace_modes() {
    let pid_entry = |f: &Fixture| {
        namespaces(&f.build().unwrap())
            .into_iter()
            .find(|(t, _)| *t == LinuxNamespaceType::Pid)
            .map(|(_, p)| p)
    };
    let mut f = Fixture::new();
    assert_eq!(
        pid_entry(&f),
        Some(Some(PathBuf::from("/run/crius/pidns/p1")))
    );
    f.config.security.namespaces.pid = NsMode::Container;
    assert_eq!(pid_entry(&f), Some(None));
    f.config.security.namespaces.pid = NsMode::Node;
    assert_eq!(pid_entry(&f), None);
    f.config.security.namespaces.pid = NsMode::Target;
    f.config.security.namespaces.target_id = "c0".into();
    f.target_pid = Some(4242);
    assert_eq!(
        pid_entry(&f),
        Some(Some(PathBuf::from("/proc/4242/ns/pid")))
    );
    f.target_pid = None;
    assert!(precondition(f.build()).contains("target_id"));
    // POD mode in pods that share no PID namespace.
    f.config.security.namespaces.pid = NsMode::Pod;
    f.namespaces.remove("pid");
    f.pod.namespaces.pid = NsMode::Container;
    assert_eq!(pid_entry(&f), Some(None));
    f.pod.namespaces.pid = NsMode::Node;
    assert_eq!(pid_entry(&f), None);
}

#[test]
fn host_network_and_ipc() {
    let mut f = Fixture::new();
    f.pod.namespaces.network = NsMode::Node;
    f.pod.namespaces.ipc = NsMode::Node;
    f.namespaces.retain(|k, _| k == "pid");
    let spec = f.build().unwrap();
    let kinds: Vec<LinuxNamespaceType> = namespaces(&spec).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        kinds,
        [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup
        ]
    );
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"HOSTNAME=node-1".to_owned()), "{env:?}");
}

#[test]
fn devices() {
    let mut f = Fixture::new();
    f.config.devices = vec![Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let spec = f.build().unwrap();
    let lx = spec.linux().as_ref().unwrap();
    let d = &lx.devices().as_ref().unwrap()[0];
    assert_eq!(d.path(), Path::new("/dev/mynull"));
    assert_eq!((d.typ(), d.major(), d.minor()), (LinuxDeviceType::C, 1, 3));
    let rules = lx.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert_eq!(rules.len(), 2);
    assert!(
        rules[1].allow()
            && rules[1].major() == Some(1)
            && rules[1].access().as_deref() == Some("rw")
    );

    f.config.devices[0].host_path = f.tmp().join("nodev").display().to_string();
    assert_eq!(invalid_field(f.build()), "config.devices[0].host_path");
    let file = f.tmp().join("file");
    std::fs::write(&file, "").unwrap();
    f.config.devices[0].host_path = file.display().to_string();
    assert_eq!(invalid_field(f.build()), "config.devices[0].host_path");
    // Privileged: no device list, every device allowed.
    f.config.security.privileged = true;
    let spec = f.build().unwrap();
    assert!(
        spec.linux()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn stop_signals() {
    let mut f = Fixture::new();
    assert_eq!(stop_signal(&f.image), None);
    f.image.config = serde_json::json!({"config": {"StopSignal": "QUIT"}});
    assert_eq!(stop_signal(&f.image).as_deref(), Some("SIGQUIT"));
    f.image.config = serde_json::json!({"config": {"StopSignal": "9"}});
    assert_eq!(stop_signal(&f.image).as_deref(), Some("SIGKILL"));
    f.image.config = serde_json::json!({"config": {"StopSignal": "SIGBOGUS"}});
    assert_eq!(stop_signal(&f.image), None);
}
