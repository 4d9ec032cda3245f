//! CRI container messages to the domain and back, and the field names their errors carry.

use super::*;

fn config() -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "app".into(),
            attempt: 2,
        }),
        image: Some(v1::ImageSpec {
            image: "busybox:latest".into(),
            user_specified_image: "busybox".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into()],
        args: vec!["-c".into(), "sleep 1".into()],
        working_dir: "/work".into(),
        envs: vec![v1::KeyValue {
            key: "A".into(),
            value: "1".into(),
        }],
        mounts: vec![
            v1::Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: v1::MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            },
            v1::Mount {
                // kubelet passes mountPath as written.
                container_path: "/cache/".into(),
                host_path: "/srv/cache".into(),
                ..Default::default()
            },
        ],
        devices: vec![v1::Device {
            container_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }],
        log_path: "app/2.log".into(),
        tty: true,
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(v1::LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 128 << 20,
                oom_score_adj: 100,
                ..Default::default()
            }),
            security_context: Some(v1::LinuxContainerSecurityContext {
                capabilities: Some(v1::Capability {
                    add_capabilities: vec!["net_admin".into()],
                    drop_capabilities: vec!["ALL".into()],
                    add_ambient_capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
                }),
                run_as_user: Some(v1::Int64Value { value: 1000 }),
                run_as_group: Some(v1::Int64Value { value: 3000 }),
                supplemental_groups: vec![4000],
                supplemental_groups_policy: v1::SupplementalGroupsPolicy::Strict as i32,
                seccomp: Some(v1::SecurityProfile {
                    profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                namespace_options: Some(v1::NamespaceOption {
                    pid: v1::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                no_new_privs: true,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn sc(c: &mut v1::ContainerConfig) -> &mut v1::LinuxContainerSecurityContext {
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
}

fn field_of(r: Result<ContainerConfig>) -> String {
    match r {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn converts_a_full_config() {
    let c = container_config(config()).unwrap();
    assert_eq!((c.name.as_str(), c.attempt), ("app", 2));
    assert_eq!(c.image.image, "busybox:latest");
    assert_eq!(c.image.user_specified_image, "busybox");
    assert_eq!(c.args, ["-c", "sleep 1"]);
    assert_eq!(c.envs[0].key, "A");
    assert_eq!(c.mounts[0].propagation, Propagation::HostToContainer);
    assert_eq!(c.mounts[1].container_path, "/cache");
    assert!(c.mounts[0].readonly);
    assert_eq!(c.devices[0].permissions, "rwm");
    assert!(c.tty);
    let r = c.resources.as_ref().unwrap();
    assert_eq!((r.cpu_shares, r.oom_score_adj), (512, 100));
    let s = &c.security;
    assert_eq!(s.capabilities.add, ["CAP_NET_ADMIN"]);
    assert_eq!(s.capabilities.drop, ["ALL"]);
    assert_eq!(s.capabilities.add_ambient, ["CAP_NET_BIND_SERVICE"]);
    assert_eq!((s.run_as_user, s.run_as_group), (Some(1000), Some(3000)));
    assert_eq!(s.supplemental_groups, [4000]);
    assert_eq!(s.supplemental_groups_policy, GroupsPolicy::Strict);
    assert_eq!(s.seccomp, SeccompProfile::RuntimeDefault);
    assert_eq!(s.namespaces.pid, NsMode::Container);
    assert_eq!(s.namespaces.network, NsMode::Pod);
    assert!(s.no_new_privs);
    let back = resources_out(r);
    assert_eq!(back.memory_limit_in_bytes, 128 << 20);
    assert_eq!(
        mounts_out(&c.mounts)[0].propagation,
        v1::MountPropagation::PropagationHostToContainer as i32
    );
}

#[test]
fn the_request_needs_a_pod_and_a_config() {
    let req = |id: &str, config| v1::CreateContainerRequest {
        pod_sandbox_id: id.into(),
        config,
        sandbox_config: None,
    };
    let (id, c) = create_request(req("p1", Some(config()))).unwrap();
    assert_eq!((id.as_str(), c.name.as_str()), ("p1", "app"));
    assert!(
        matches!(create_request(req("", Some(config()))), Err(Error::InvalidArgument { field, .. }) if field == "pod_sandbox_id")
    );
    assert!(
        matches!(create_request(req("p1", None)), Err(Error::InvalidArgument { field, .. }) if field == "config")
    );
}

#[test]
fn errors_name_the_protobuf_field() {
    type Mutation = Box<dyn Fn(&mut v1::ContainerConfig)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|c| c.metadata = None), "config.metadata"),
        (Box::new(|c| c.image = None), "config.image"),
        (
            Box::new(|c| c.image.as_mut().unwrap().image.clear()),
            "config.image.image",
        ),
        (
            Box::new(|c| c.metadata.as_mut().unwrap().name.clear()),
            "config.metadata.name",
        ),
        (
            Box::new(|c| c.log_path = "../escape.log".into()),
            "config.log_path",
        ),
        (
            Box::new(|c| c.log_path = "/var/log/x.log".into()),
            "config.log_path",
        ),
        (
            Box::new(|c| c.working_dir = "relative".into()),
            "config.working_dir",
        ),
        (
            Box::new(|c| c.mounts[0].container_path = "data".into()),
            "config.mounts[0].container_path",
        ),
        (
            Box::new(|c| c.mounts[0].propagation = 9),
            "config.mounts[0].propagation",
        ),
        (
            Box::new(|c| c.mounts[0].recursive_read_only = true),
            "config.mounts[0].recursive_read_only",
        ),
        (
            Box::new(|c| {
                c.mounts[0].image = Some(v1::ImageSpec {
                    image: "x".into(),
                    ..Default::default()
                })
            }),
            "config.mounts[0].image",
        ),
        (
            Box::new(|c| c.devices[0].permissions = "x".into()),
            "config.devices[0].permissions",
        ),
        (
            Box::new(|c| {
                c.cdi_devices = vec![v1::CdiDevice {
                    name: "v/gpu=0".into(),
                }]
            }),
            "config.CDI_devices",
        ),
        (
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .resources
                    .as_mut()
                    .unwrap()
                    .cpu_shares = 300_000
            }),
            "config.linux.resources.cpu_shares",
        ),
        (
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .resources
                    .as_mut()
                    .unwrap()
                    .cpu_period = 10
            }),
            "config.linux.resources.cpu_period",
        ),
        (
            Box::new(|c| sc(c).run_as_user = Some(v1::Int64Value { value: -1 })),
            "config.linux.security_context.run_as_user",
        ),
        (
            Box::new(|c| sc(c).run_as_group = Some(v1::Int64Value { value: 1 << 40 })),
            "config.linux.security_context.run_as_group",
        ),
        (
            Box::new(|c| {
                sc(c).run_as_user = None;
            }),
            "config.linux.security_context.run_as_group",
        ),
        (
            Box::new(|c| sc(c).run_as_username = "app".into()),
            "config.linux.security_context.run_as_username",
        ),
        (
            Box::new(|c| sc(c).supplemental_groups = vec![1, -5]),
            "config.linux.security_context.supplemental_groups[1]",
        ),
        (
            Box::new(|c| sc(c).supplemental_groups_policy = 7),
            "config.linux.security_context.supplemental_groups_policy",
        ),
        (
            Box::new(|c| {
                sc(c)
                    .capabilities
                    .as_mut()
                    .unwrap()
                    .add_capabilities
                    .push("CAP_FLY".into())
            }),
            "config.linux.security_context.capabilities.add_capabilities[1]",
        ),
        (
            Box::new(|c| {
                sc(c).capabilities.as_mut().unwrap().drop_capabilities =
                    vec!["chown".into(), "x".into()]
            }),
            "config.linux.security_context.capabilities.drop_capabilities[1]",
        ),
        (
            Box::new(|c| {
                sc(c)
                    .capabilities
                    .as_mut()
                    .unwrap()
                    .add_ambient_capabilities = vec!["ALL".into()]
            }),
            "config.linux.security_context.capabilities.add_ambient_capabilities[0]",
        ),
        (
            Box::new(|c| {
                sc(c).seccomp = Some(v1::SecurityProfile {
                    profile_type: v1::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "relative.json".into(),
                })
            }),
            "config.linux.security_context.seccomp.localhost_ref",
        ),
        (
            Box::new(|c| {
                sc(c).seccomp = Some(v1::SecurityProfile {
                    profile_type: v1::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: String::new(),
                })
            }),
            "config.linux.security_context.seccomp.localhost_ref",
        ),
        (
            Box::new(|c| {
                sc(c).seccomp = None;
                #[allow(deprecated)]
                {
                    sc(c).seccomp_profile_path = "localhost/relative.json".into();
                }
            }),
            "config.linux.security_context.seccomp_profile_path",
        ),
        (
            Box::new(|c| {
                sc(c).namespace_options.as_mut().unwrap().network =
                    v1::NamespaceMode::Container as i32
            }),
            "config.linux.security_context.namespace_options.network",
        ),
        (
            Box::new(|c| sc(c).namespace_options.as_mut().unwrap().pid = 12),
            "config.linux.security_context.namespace_options.pid",
        ),
        (
            Box::new(|c| {
                sc(c).namespace_options.as_mut().unwrap().pid = v1::NamespaceMode::Target as i32
            }),
            "config.linux.security_context.namespace_options.target_id",
        ),
        (
            Box::new(|c| {
                sc(c).namespace_options.as_mut().unwrap().userns_options = Some(v1::UserNamespace {
                    mode: v1::NamespaceMode::Pod as i32,
                    ..Default::default()
                })
            }),
            "config.linux.security_context.namespace_options.userns_options",
        ),
        (
            Box::new(|c| sc(c).masked_paths = vec!["proc/kcore".into()]),
            "config.linux.security_context.masked_paths[0]",
        ),
    ];
    for (mutate, field) in cases {
        let mut c = config();
        mutate(&mut c);
        assert_eq!(field_of(container_config(c)), field);
    }
}

#[test]
fn deprecated_seccomp_paths() {
    let with = |p: &str| {
        let mut c = config();
        sc(&mut c).seccomp = None;
        #[allow(deprecated)]
        {
            sc(&mut c).seccomp_profile_path = p.into();
        }
        container_config(c).map(|c| c.security.seccomp)
    };
    assert_eq!(with("").unwrap(), SeccompProfile::Unconfined);
    assert_eq!(with("unconfined").unwrap(), SeccompProfile::Unconfined);
    assert_eq!(
        with("runtime/default").unwrap(),
        SeccompProfile::RuntimeDefault
    );
    assert_eq!(
        with("docker/default").unwrap(),
        SeccompProfile::RuntimeDefault
    );
    assert_eq!(
        with("localhost//var/lib/kubelet/seccomp/p.json").unwrap(),
        SeccompProfile::Localhost("/var/lib/kubelet/seccomp/p.json".into())
    );
    assert!(with("bogus").is_err());
    // The SecurityProfile field wins over the deprecated path.
    let mut c = config();
    #[allow(deprecated)]
    {
        sc(&mut c).seccomp_profile_path = "unconfined".into();
    }
    assert_eq!(
        container_config(c).unwrap().security.seccomp,
        SeccompProfile::RuntimeDefault
    );
    // Nothing at all: Unconfined.
    let mut c = config();
    sc(&mut c).seccomp = None;
    assert_eq!(
        container_config(c).unwrap().security.seccomp,
        SeccompProfile::Unconfined
    );
}

#[test]
fn apparmor_and_selinux_are_refused() {
    let precondition = |c: v1::ContainerConfig| match container_config(c) {
        Err(Error::FailedPrecondition(m)) => m,
        other => panic!("expected FailedPrecondition, got {other:?}"),
    };
    let mut c = config();
    sc(&mut c).apparmor = Some(v1::SecurityProfile {
        profile_type: v1::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "k8s-apparmor-example".into(),
    });
    assert!(precondition(c).contains("apparmor is not available on this host"));
    let mut c = config();
    #[allow(deprecated)]
    {
        sc(&mut c).apparmor_profile = "localhost/k8s-apparmor-example".into();
    }
    assert!(precondition(c).contains("apparmor_profile"));
    let mut c = config();
    sc(&mut c).selinux_options = Some(v1::SeLinuxOption {
        level: "s0:c123,c456".into(),
        ..Default::default()
    });
    assert!(precondition(c).contains("SELinux"));
    // Unconfined and RuntimeDefault (also the meaning of an empty message) are no profile on these hosts.
    for t in [
        v1::security_profile::ProfileType::Unconfined,
        v1::security_profile::ProfileType::RuntimeDefault,
    ] {
        let mut c = config();
        sc(&mut c).apparmor = Some(v1::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: String::new(),
        });
        container_config(c).unwrap();
    }
    let mut c = config();
    sc(&mut c).selinux_options = Some(v1::SeLinuxOption::default());
    container_config(c).unwrap();
    let mut c = config();
    #[allow(deprecated)]
    {
        sc(&mut c).apparmor_profile = "weird".into();
    }
    assert_eq!(
        field_of(container_config(c)),
        "config.linux.security_context.apparmor_profile"
    );
}

#[test]
fn update_resources_use_their_own_prefix() {
    let r = v1::LinuxContainerResources {
        memory_limit_in_bytes: 1024,
        ..Default::default()
    };
    match container_resources(&r, "linux") {
        Err(Error::InvalidArgument { field, .. }) => {
            assert_eq!(field, "linux.memory_limit_in_bytes")
        }
        other => panic!("{other:?}"),
    }
}
