//! The domain config's validation and conversions.

use super::*;

fn field_of(r: Result<()>) -> String {
    match r {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn base() -> ContainerConfig {
    ContainerConfig {
        name: "app".into(),
        image: ImageRef {
            image: "busybox".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_minimal_config_is_valid() {
    base().validate().unwrap();
}

#[test]
fn log_paths() {
    for ok in ["", "app/0.log", "0.log", "a/b/c.log", "..x/y.log"] {
        validate_log_path(ok).unwrap();
    }
    for bad in [
        "/var/log/x.log",
        "../x.log",
        "a/../../x.log",
        "a//b.log",
        "a/",
        "./a.log",
        "a/./b",
        "a\0b",
    ] {
        assert_eq!(
            field_of(validate_log_path(bad)),
            "config.log_path",
            "{bad:?}"
        );
    }
}

#[test]
fn names_and_paths_name_their_field() {
    type Mutation = Box<dyn Fn(&mut ContainerConfig)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|c| c.name.clear()), "config.metadata.name"),
        (Box::new(|c| c.name = "a/b".into()), "config.metadata.name"),
        (Box::new(|c| c.image.image.clear()), "config.image.image"),
        (
            Box::new(|c| c.working_dir = "rel".into()),
            "config.working_dir",
        ),
        (
            Box::new(|c| c.command = vec!["a\0".into()]),
            "config.command[0]",
        ),
        (
            Box::new(|c| c.args = vec!["x".into(), "\0".into()]),
            "config.args[1]",
        ),
        (
            Box::new(|c| {
                c.envs = vec![EnvVar {
                    key: "A=B".into(),
                    value: String::new(),
                }]
            }),
            "config.envs[0].key",
        ),
        (
            Box::new(|c| {
                c.envs = vec![EnvVar {
                    key: "A".into(),
                    value: "\0".into(),
                }]
            }),
            "config.envs[0].value",
        ),
        (Box::new(|c| c.log_path = "/abs".into()), "config.log_path"),
    ];
    for (mutate, field) in cases {
        let mut c = base();
        mutate(&mut c);
        assert_eq!(field_of(c.validate()), field);
    }
}

fn mount(container_path: &str) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }
}

#[test]
fn mounts_are_checked() {
    let with = |ms: Vec<Mount>| {
        let mut c = base();
        c.mounts = ms;
        c.validate()
    };
    with(vec![mount("/data"), mount("/etc/hosts")]).unwrap();
    assert_eq!(
        field_of(with(vec![mount("data")])),
        "config.mounts[0].container_path"
    );
    assert_eq!(
        field_of(with(vec![mount("/a"), mount("/b/../c")])),
        "config.mounts[1].container_path"
    );
    assert_eq!(
        field_of(with(vec![mount("/a/")])),
        "config.mounts[0].container_path"
    );
    assert_eq!(
        field_of(with(vec![mount("/")])),
        "config.mounts[0].container_path"
    );
    // Two mounts on one path: the later wins, as with containerd.
    with(vec![mount("/a"), mount("/a")]).unwrap();
    let mut m = mount("/a");
    m.host_path.clear();
    assert_eq!(field_of(with(vec![m])), "config.mounts[0].host_path");
    let mut m = mount("/a");
    m.host_path = "relative".into();
    assert_eq!(field_of(with(vec![m])), "config.mounts[0].host_path");
    let mut m = mount("/a");
    m.recursive_read_only = true;
    assert_eq!(
        field_of(with(vec![m.clone()])),
        "config.mounts[0].recursive_read_only"
    );
    m.readonly = true;
    with(vec![m.clone()]).unwrap();
    m.propagation = Propagation::HostToContainer;
    assert_eq!(
        field_of(with(vec![m])),
        "config.mounts[0].recursive_read_only"
    );
}

#[test]
fn devices_are_checked() {
    let dev = |c: &str, h: &str, p: &str| Device {
        container_path: c.into(),
        host_path: h.into(),
        permissions: p.into(),
    };
    let with = |d: Device| {
        let mut c = base();
        c.devices = vec![d];
        c.validate()
    };
    with(dev("/dev/fuse", "/dev/fuse", "rwm")).unwrap();
    with(dev("/dev/fuse", "/dev/fuse", "r")).unwrap();
    assert_eq!(
        field_of(with(dev("dev/x", "/dev/x", "r"))),
        "config.devices[0].container_path"
    );
    assert_eq!(
        field_of(with(dev("/dev/x", "x", "r"))),
        "config.devices[0].host_path"
    );
    assert_eq!(
        field_of(with(dev("/dev/x", "/dev/x", ""))),
        "config.devices[0].permissions"
    );
    assert_eq!(
        field_of(with(dev("/dev/x", "/dev/x", "rwx"))),
        "config.devices[0].permissions"
    );
}

#[test]
fn clean_paths() {
    assert_eq!(normalize_container_path("/data/"), "/data");
    assert_eq!(normalize_container_path("//a/./b"), "/a/b");
    assert_eq!(normalize_container_path("/a/../b"), "/a/../b");
    assert_eq!(normalize_container_path("rel/"), "rel/");
    assert_eq!(clean_path("/a//b/./c/").as_deref(), Some("/a/b/c"));
    assert_eq!(clean_path("/").as_deref(), Some("/"));
    assert_eq!(clean_path("/a/../b"), None);
}

fn res_field(r: ContainerResources) -> String {
    field_of(r.validate("config.linux.resources"))
}

#[test]
fn resources_validation() {
    let ok = ContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 1024,
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        oom_score_adj: -997,
        cpuset_cpus: "0-1,3".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 1 << 21,
        }],
        unified: [("memory.high".to_owned(), "max".to_owned())].into(),
    };
    ok.validate("config.linux.resources").unwrap();
    ContainerResources::default().validate("x").unwrap();
    let unlimited = ContainerResources {
        cpu_quota: -1,
        memory_limit_in_bytes: -1,
        memory_swap_limit_in_bytes: -1,
        ..Default::default()
    };
    unlimited.validate("x").unwrap();

    type Mutation = Box<dyn Fn(&mut ContainerResources)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|r| r.cpu_period = 999), "cpu_period"),
        (Box::new(|r| r.cpu_period = 1_000_001), "cpu_period"),
        (Box::new(|r| r.cpu_period = -5), "cpu_period"),
        (Box::new(|r| r.cpu_quota = 999), "cpu_quota"),
        (Box::new(|r| r.cpu_quota = -2), "cpu_quota"),
        (Box::new(|r| r.cpu_quota = 1 << 50), "cpu_quota"),
        (Box::new(|r| r.cpu_shares = 262_145), "cpu_shares"),
        (Box::new(|r| r.cpu_shares = 1), "cpu_shares"),
        (Box::new(|r| r.cpu_shares = -3), "cpu_shares"),
        (
            Box::new(|r| r.memory_limit_in_bytes = -2),
            "memory_limit_in_bytes",
        ),
        (
            Box::new(|r| r.memory_limit_in_bytes = 4096),
            "memory_limit_in_bytes",
        ),
        (
            Box::new(|r| r.memory_swap_limit_in_bytes = 32 << 20),
            "memory_swap_limit_in_bytes",
        ),
        (
            Box::new(|r| r.memory_swap_limit_in_bytes = -7),
            "memory_swap_limit_in_bytes",
        ),
        (Box::new(|r| r.oom_score_adj = 1001), "oom_score_adj"),
        (Box::new(|r| r.cpuset_cpus = "3-1".into()), "cpuset_cpus"),
        (Box::new(|r| r.cpuset_mems = "0,,1".into()), "cpuset_mems"),
        (
            Box::new(|r| r.hugepage_limits[0].page_size = "2M".into()),
            "hugepage_limits[0].page_size",
        ),
        (
            Box::new(|r| {
                r.unified.insert("cgroup.procs".into(), "1".into());
            }),
            "unified[\"cgroup.procs\"]",
        ),
        (
            Box::new(|r| {
                r.unified.insert("../memory.max".into(), "1".into());
            }),
            "unified[\"../memory.max\"]",
        ),
    ];
    for (mutate, field) in cases {
        let mut r = ok.clone();
        mutate(&mut r);
        assert_eq!(res_field(r), format!("config.linux.resources.{field}"));
    }
    let swap_without_memory = ContainerResources {
        memory_swap_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    assert_eq!(
        field_of(swap_without_memory.validate("linux")),
        "linux.memory_swap_limit_in_bytes"
    );
}

#[test]
fn resources_become_cgroup_limits() {
    let r = ContainerResources {
        cpu_period: 100_000,
        cpu_quota: -1,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0".into(),
        hugepage_limits: vec![HugepageLimit {
            page_size: "1GB".into(),
            limit: 1 << 30,
        }],
        ..Default::default()
    };
    let c = r.to_cgroup();
    assert_eq!(c.cpu_period, Some(100_000));
    assert_eq!(c.cpu_quota, Some(-1));
    assert_eq!(c.cpu_shares, Some(512));
    assert_eq!(c.memory_limit, Some(64 << 20));
    assert_eq!(c.memory_swap_limit, None);
    assert_eq!(c.cpuset_cpus.as_deref(), Some("0"));
    assert_eq!(c.cpuset_mems, None);
    assert_eq!(c.hugepage_limits, vec![("1GB".to_owned(), 1 << 30)]);
    assert_eq!(
        ContainerResources::default().to_cgroup(),
        Resources::default()
    );
    assert!(!c.is_empty());
}

#[test]
fn security_context_rules() {
    let with = |f: &dyn Fn(&mut SecurityContext)| {
        let mut c = base();
        f(&mut c.security);
        c.validate()
    };
    assert_eq!(
        field_of(with(&|s| s.run_as_group = Some(5))),
        "config.linux.security_context.run_as_group"
    );
    with(&|s| {
        s.run_as_group = Some(5);
        s.run_as_user = Some(1000);
    })
    .unwrap();
    with(&|s| {
        s.run_as_group = Some(5);
        s.run_as_username = Some("app".into());
    })
    .unwrap();
    assert_eq!(
        field_of(with(&|s| {
            s.run_as_user = Some(1);
            s.run_as_username = Some("app".into());
        })),
        "config.linux.security_context.run_as_username"
    );
    assert_eq!(
        field_of(with(
            &|s| s.masked_paths = vec!["/proc/kcore".into(), "proc".into()]
        )),
        "config.linux.security_context.masked_paths[1]"
    );
    assert_eq!(
        field_of(with(&|s| s.readonly_paths = vec!["x".into()])),
        "config.linux.security_context.readonly_paths[0]"
    );
    assert_eq!(
        field_of(with(
            &|s| s.seccomp = SeccompProfile::Localhost("profile.json".into())
        )),
        "config.linux.security_context.seccomp.localhost_ref"
    );
    assert_eq!(
        field_of(with(&|s| s.namespaces.network = NsMode::Container)),
        "config.linux.security_context.namespace_options.network"
    );
    assert_eq!(
        field_of(with(&|s| s.namespaces.ipc = NsMode::Target)),
        "config.linux.security_context.namespace_options.ipc"
    );
    assert_eq!(
        field_of(with(&|s| s.namespaces.pid = NsMode::Target)),
        "config.linux.security_context.namespace_options.target_id"
    );
}

#[test]
fn ids() {
    assert_eq!(id_from(0, "f").unwrap(), 0);
    assert_eq!(id_from(4_294_967_294, "f").unwrap(), u32::MAX - 1);
    assert!(id_from(-1, "f").is_err());
    assert!(id_from(4_294_967_295, "f").is_err());
}

#[test]
fn round_trips_through_json() {
    let mut c = base();
    c.security.seccomp = SeccompProfile::Localhost("/p.json".into());
    c.resources = Some(ContainerResources {
        cpu_shares: 2,
        ..Default::default()
    });
    c.mounts = vec![mount("/data")];
    let json = serde_json::to_string(&c).unwrap();
    let back: ContainerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
}
