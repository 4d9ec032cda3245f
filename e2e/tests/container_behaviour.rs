//! What a container sees: end-to-end tests that run busybox containers in real pods through crius' CRI socket
//! and read back, from inside the container (its CRI log or ExecSync) or from the host, the process, identity,
//! capabilities, filesystem, namespaces, logs and streams the CRI asked for. Leak check after each test.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crius_e2e::containers::{
    Finished, Fixture, HostMount, Pod, bind, busybox_image, cap_mask, caps, joined, log_records,
    pid_mode, pod_with_pid, seccomp, security, settled_log, status_field, strings, wait_log,
};
use crius_e2e::images::{Compression, Group, LayerBuilder, User};
use crius_e2e::procfs;
use crius_e2e::v1::{self, ContainerConfig, NamespaceMode};
use tonic::Code;

/// Three images over one busybox layer:
/// - `busybox`: Cmd `sh`;
/// - `merge`: Entrypoint `echo ep`, Cmd `from-cmd`, Env FROM_IMAGE / OVERRIDE, WorkingDir `/srv/app` (not in
///   the layers);
/// - `users`: a second layer with users app (1000, member of extra and more), other (2000, member of more), and
///   `User` `app`.
async fn fixture() -> Fixture {
    let users = LayerBuilder::new()
        .dir("etc")
        .users(
            &[
                User::new("root", 0, 0),
                User::new("app", 1000, 1000),
                User::new("other", 2000, 2000),
            ],
            &[
                Group::new("root", 0, &[]),
                Group::new("app", 1000, &[]),
                Group::new("other", 2000, &[]),
                Group::new("extra", 3000, &["app"]),
                Group::new("more", 3001, &["other", "app"]),
            ],
        )
        .build(Compression::Gzip);
    Fixture::start(&[
        ("busybox", busybox_image().cmd(&["sh"]).build()),
        (
            "merge",
            busybox_image()
                .env("FROM_IMAGE=image")
                .env("OVERRIDE=image")
                .entrypoint(&["echo", "ep"])
                .cmd(&["from-cmd"])
                .working_dir("/srv/app")
                .build(),
        ),
        (
            "users",
            busybox_image()
                .layer(users)
                .user("app")
                .cmd(&["sh"])
                .build(),
        ),
    ])
    .await
}

/// The numbers `ls` prints, one per word.
fn numbers(out: &str) -> BTreeSet<u32> {
    out.split_whitespace().map(|w| w.parse().unwrap()).collect()
}

#[tokio::test]
async fn args_merge_with_the_image_entrypoint_and_cmd_and_cri_env_overrides_the_image() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("args")).await;
    // Neither command nor args: Entrypoint + Cmd.
    let out = f.run(&pod, f.config("merge", "neither", &[])).await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "ep from-cmd\n"));
    // A command replaces both Entrypoint and Cmd.
    let out = f
        .run(&pod, f.config("merge", "command", &["echo", "cri"]))
        .await;
    assert_eq!(out.stdout, "cri\n");
    let mut both = f.config("merge", "both", &["echo", "cri"]);
    both.args = strings(&["a1", "a2"]);
    assert_eq!(f.run(&pod, both).await.stdout, "cri a1 a2\n");
    // Args alone replace only Cmd.
    let mut args = f.config("merge", "args", &[]);
    args.args = strings(&["a1", "a2"]);
    assert_eq!(f.run(&pod, args).await.stdout, "ep a1 a2\n");

    let mut env = f.config("merge", "env", &["env"]);
    env.envs = vec![
        v1::KeyValue {
            key: "OVERRIDE".into(),
            value: "cri".into(),
        },
        v1::KeyValue {
            key: "ADDED".into(),
            value: "with = and spaces".into(),
        },
    ];
    let out = f.run(&pod, env).await;
    let vars: Vec<&str> = out.stdout.lines().collect();
    for want in [
        "PATH=/bin",
        "FROM_IMAGE=image",
        "OVERRIDE=cri",
        "ADDED=with = and spaces",
        "HOSTNAME=args",
    ] {
        assert!(vars.contains(&want), "{want} missing from {vars:?}");
    }
    let overrides = vars.iter().filter(|v| v.starts_with("OVERRIDE=")).count();
    assert_eq!(overrides, 1, "{vars:?}");
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn the_working_dir_is_the_cri_one_or_the_image_one_and_is_created_when_missing() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("workdir")).await;
    let script = ["sh", "-c", "pwd; stat -c %F ."];
    let mut cri = f.config("merge", "cri", &script);
    cri.working_dir = "/made/by/crius".into();
    let out = f.run(&pod, cri).await;
    assert_eq!(out.stdout, "/made/by/crius\ndirectory\n", "{out:?}");
    // The image's WorkingDir is not in its layers either.
    let out = f.run(&pod, f.config("merge", "image", &script)).await;
    assert_eq!(out.stdout, "/srv/app\ndirectory\n", "{out:?}");
    let out = f.run(&pod, f.config("busybox", "none", &script)).await;
    assert_eq!(out.stdout, "/\ndirectory\n", "{out:?}");
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// Who a container runs as, seen from inside: `id` and /proc/self/status.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    uid: u32,
    gid: u32,
    groups: BTreeSet<u32>,
}

async fn identity(f: &Fixture, pod: &Pod, mut config: ContainerConfig) -> (Identity, String) {
    config.command = strings(&["sh", "-c", "id; cat /proc/self/status"]);
    let out = f.run(pod, config).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let status = &out.stdout;
    let first = |key: &str| -> u32 {
        let v = status_field(status, key).unwrap_or_else(|| panic!("no {key} in {status}"));
        v.split_whitespace().next().unwrap().parse().unwrap()
    };
    let groups = status_field(status, "Groups")
        .unwrap_or("")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    let id_line = out.stdout.lines().next().unwrap_or("").to_string();
    (
        Identity {
            uid: first("Uid"),
            gid: first("Gid"),
            groups,
        },
        id_line,
    )
}

fn who(uid: u32, gid: u32, groups: &[u32]) -> Identity {
    Identity {
        uid,
        gid,
        groups: groups.iter().copied().collect(),
    }
}

#[tokio::test]
async fn users_and_groups_come_from_the_cri_and_the_image_with_the_primary_gid_included() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("users")).await;
    // The image's User "app": its gid from /etc/passwd, its memberships from /etc/group.
    let (got, id) = identity(&f, &pod, f.config("users", "image-user", &[])).await;
    assert_eq!(got, who(1000, 1000, &[1000, 3000, 3001]), "{id}");
    assert!(
        id.starts_with("uid=1000(app) gid=1000(app)") && id.contains("3000(extra)"),
        "{id}"
    );
    // run_as_user overrides the image's user; gid and groups are that uid's.
    let mut c = f.config("users", "run-as-user", &[]);
    security(&mut c).run_as_user = Some(v1::Int64Value { value: 2000 });
    let (got, id) = identity(&f, &pod, c).await;
    assert_eq!(got, who(2000, 2000, &[2000, 3001]), "{id}");
    assert!(id.starts_with("uid=2000(other) gid=2000(other)"), "{id}");
    // run_as_username likewise.
    let mut c = f.config("users", "run-as-username", &[]);
    security(&mut c).run_as_username = "other".into();
    let (got, id) = identity(&f, &pod, c).await;
    assert_eq!(got, who(2000, 2000, &[2000, 3001]), "{id}");
    // run_as_group replaces the primary gid, which is still among the groups; supplemental groups are added
    // to the user's memberships (policy Merge, the default).
    let mut c = f.config("users", "run-as-group", &[]);
    let sc = security(&mut c);
    sc.run_as_user = Some(v1::Int64Value { value: 1000 });
    sc.run_as_group = Some(v1::Int64Value { value: 4000 });
    sc.supplemental_groups = vec![5000, 6000];
    let (got, id) = identity(&f, &pod, c).await;
    assert_eq!(
        got,
        who(1000, 4000, &[4000, 3000, 3001, 5000, 6000]),
        "{id}"
    );
    assert!(id.starts_with("uid=1000(app) gid=4000"), "{id}");
    // Policy Strict: the image's memberships are left out, the primary gid is not.
    let mut c = f.config("users", "strict", &[]);
    let sc = security(&mut c);
    sc.supplemental_groups = vec![5000];
    sc.supplemental_groups_policy = v1::SupplementalGroupsPolicy::Strict as i32;
    let (got, id) = identity(&f, &pod, c).await;
    assert_eq!(got, who(1000, 1000, &[1000, 5000]), "{id}");
    // No user anywhere: root.
    let (got, id) = identity(&f, &pod, f.config("busybox", "root", &[])).await;
    assert_eq!(got, who(0, 0, &[0]), "{id}");
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// containerd's default capabilities, by bit (capabilities(7)): CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL,
/// SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
const DEFAULT_CAP_BITS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];
const CAP_CHOWN: u32 = 0;
const CAP_KILL: u32 = 5;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_TIME: u32 = 25;

fn mask(bits: &[u32]) -> u64 {
    bits.iter().fold(0, |m, b| m | 1 << b)
}

/// The capability sets of a container's process, as /proc/self/status shows them.
async fn cap_sets(f: &Fixture, pod: &Pod, mut config: ContainerConfig) -> [u64; 5] {
    config.command = strings(&["cat", "/proc/self/status"]);
    let out = f.run(pod, config).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(|k| {
        cap_mask(status_field(&out.stdout, k).unwrap_or_else(|| panic!("no {k} in {out:?}")))
    })
}

#[tokio::test]
async fn capabilities_are_containerds_defaults_changed_by_add_and_drop_and_all_for_privileged() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("caps")).await;
    let default = mask(DEFAULT_CAP_BITS);
    let [inh, prm, eff, bnd, amb] = cap_sets(&f, &pod, f.config("busybox", "default", &[])).await;
    assert_eq!(eff, default, "CapEff {eff:016x}, want {default:016x}");
    assert_eq!((prm, bnd), (default, default));
    assert_eq!((inh, amb), (0, 0), "the inheritable set must be empty");

    let mut c = f.config("busybox", "add-drop", &[]);
    caps(&mut c, &["NET_ADMIN", "CAP_SYS_TIME"], &["CHOWN", "kill"]);
    let want = (default | mask(&[CAP_NET_ADMIN, CAP_SYS_TIME])) & !mask(&[CAP_CHOWN, CAP_KILL]);
    let [_, _, eff, bnd, _] = cap_sets(&f, &pod, c).await;
    assert_eq!(
        (eff, bnd),
        (want, want),
        "CapEff {eff:016x}, want {want:016x}"
    );

    let mut c = f.config("busybox", "drop-all", &[]);
    caps(&mut c, &["NET_BIND_SERVICE"], &["ALL"]);
    let [_, _, eff, _, _] = cap_sets(&f, &pod, c).await;
    assert_eq!(eff, mask(&[CAP_NET_BIND_SERVICE]), "CapEff {eff:016x}");

    // Privileged: every capability the host lets crius have (its bounding set).
    let crius = std::fs::read_to_string(format!("/proc/{}/status", f.c.pid().unwrap())).unwrap();
    let host = cap_mask(status_field(&crius, "CapBnd").unwrap());
    let mut c = f.config("busybox", "privileged", &[]);
    security(&mut c).privileged = true;
    let [_, prm, eff, bnd, _] = cap_sets(&f, &pod, c).await;
    assert_eq!(eff, host, "CapEff {eff:016x}, crius' CapBnd {host:016x}");
    assert_eq!((prm, bnd), (host, host));
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn a_readonly_rootfs_refuses_writes_but_a_bind_mount_takes_them() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("rofs")).await;
    let data = tempfile::tempdir().unwrap();
    let mut c = f.config(
        "busybox",
        "ro",
        &[
            "sh",
            "-c",
            "touch /rootfile; echo root=$?; echo hi > /data/written; echo data=$?",
        ],
    );
    security(&mut c).readonly_rootfs = true;
    c.mounts = vec![bind(
        data.path(),
        "/data",
        false,
        v1::MountPropagation::PropagationPrivate,
    )];
    let out = f.run(&pod, c).await;
    assert_eq!(out.stdout, "root=1\ndata=0\n", "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("written")).unwrap(),
        "hi\n"
    );
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// Both unshares refused with EPERM, and the status lines as given.
fn assert_blocked(out: &Finished, status: &str) {
    assert!(out.stdout.starts_with(status), "{out:?}");
    assert!(
        out.stdout.contains("userns=1\n") && out.stdout.contains("mntns=1\n"),
        "{out:?}"
    );
    assert_eq!(
        out.stderr.matches("Operation not permitted").count(),
        2,
        "{out:?}"
    );
}

#[tokio::test]
async fn runtime_default_seccomp_blocks_unshare_with_eperm_and_unconfined_allows_it() {
    use v1::security_profile::ProfileType;
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("seccomp")).await;
    // A user namespace needs no capability: only the filter can refuse it.
    let script = [
        "sh",
        "-c",
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
         unshare -U true; echo userns=$?; unshare -m true; echo mntns=$?",
    ];
    let mut c = f.config("busybox", "default", &script);
    seccomp(&mut c, ProfileType::RuntimeDefault);
    let out = f.run(&pod, c).await;
    assert_blocked(&out, "NoNewPrivs:\t0\nSeccomp:\t2\n");
    // With no_new_privs the filter goes in at another point of the init: the same result.
    let mut c = f.config("busybox", "default-nnp", &script);
    seccomp(&mut c, ProfileType::RuntimeDefault);
    security(&mut c).no_new_privs = true;
    assert_blocked(&f.run(&pod, c).await, "NoNewPrivs:\t1\nSeccomp:\t2\n");

    let mut c = f.config("busybox", "unconfined", &script);
    seccomp(&mut c, ProfileType::Unconfined);
    let out = f.run(&pod, c).await;
    assert!(
        out.stdout.starts_with("NoNewPrivs:\t0\nSeccomp:\t0\n"),
        "{out:?}"
    );
    assert!(out.stdout.contains("userns=0\n"), "{out:?}");
    // Without CAP_SYS_ADMIN a mount namespace is refused by the kernel, not by a filter.
    assert!(out.stdout.contains("mntns=1\n"), "{out:?}");

    let mut c = f.config("busybox", "unconfined-admin", &script);
    seccomp(&mut c, ProfileType::Unconfined);
    caps(&mut c, &["SYS_ADMIN"], &[]);
    let out = f.run(&pod, c).await;
    assert!(
        out.stdout.contains("userns=0\n") && out.stdout.contains("mntns=0\n"),
        "{out:?}"
    );
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn proc_and_sys_are_masked_and_proc_sys_is_read_only_unless_privileged() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("masked")).await;
    // Kernels without /proc/kcore (like these VMs') show nothing there either way.
    let script = [
        "sh",
        "-c",
        "echo kcore=$(cat /proc/kcore 2>/dev/null | wc -c); echo keys=$(cat /proc/keys | wc -c); \
         echo keys-type=$(stat -c %F /proc/keys); echo timer-type=$(stat -c %F /proc/timer_list); \
         echo firmware=$(ls -A /sys/firmware | wc -l); \
         echo procsys-mounts=$(grep -c ' /proc/sys ' /proc/self/mountinfo)",
    ];
    let out = f.run(&pod, f.config("busybox", "plain", &script)).await;
    for want in [
        "kcore=0",
        "keys=0",
        "keys-type=character special file",
        "timer-type=character special file",
        "firmware=0",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == want),
            "{want} not in {out:?}"
        );
    }
    assert!(!out.stdout.contains("procsys-mounts=0"), "{out:?}");
    // Writing the pod's own host name back to itself would change nothing even if it were allowed.
    let write = [
        "sh",
        "-c",
        "echo \"$(cat /proc/sys/kernel/hostname)\" > /proc/sys/kernel/hostname; echo rc=$?",
    ];
    let out = f.run(&pod, f.config("busybox", "write", &write)).await;
    assert_eq!(out.stdout, "rc=1\n", "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");

    let mut c = f.config("busybox", "privileged", &script);
    security(&mut c).privileged = true;
    let out = f.run(&pod, c).await;
    for unmasked in ["keys-type=regular", "timer-type=regular"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(unmasked)),
            "{unmasked} not in {out:?}"
        );
    }
    let firmware: usize = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("firmware="))
        .unwrap()
        .parse()
        .unwrap();
    let host_firmware = std::fs::read_dir("/sys/firmware").unwrap().count();
    assert_eq!(firmware, host_firmware, "{out:?}");
    assert!(out.stdout.contains("procsys-mounts=0\n"), "{out:?}");
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn bind_mounts_are_readonly_or_writable_need_their_source_and_propagate_host_mounts() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("binds")).await;
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("f"), "from the host\n").unwrap();
    let rw = tempfile::tempdir().unwrap();
    // The missing source is refused naming the field, and nothing of the container is left.
    let mut c = f.config("busybox", "binds", &["sleep", "1000"]);
    c.mounts = vec![bind(
        &ro.path().join("missing"),
        "/missing",
        false,
        v1::MountPropagation::PropagationPrivate,
    )];
    let e = f.create(&pod, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("config.mounts[0].host_path"), "{e:?}");
    assert!(f.list().await.is_empty());
    let containers = f.c.paths().root.join("containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // Host-to-container propagation needs a shared (or slave) source: a bind mount of our own, made rshared.
    let top = tempfile::tempdir().unwrap();
    let shared = HostMount::new(&["--bind", top.path().to_str().unwrap()], top.path());
    procfs::run("mount", &["--make-rshared", top.path().to_str().unwrap()]).unwrap();
    let src = top.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();

    // The same name again: the failed create released it.
    let mut c = f.config("busybox", "binds", &["sleep", "1000"]);
    c.mounts = vec![
        bind(
            ro.path(),
            "/ro",
            true,
            v1::MountPropagation::PropagationPrivate,
        ),
        bind(
            rw.path(),
            "/rw",
            false,
            v1::MountPropagation::PropagationPrivate,
        ),
        bind(
            &src,
            "/prop",
            false,
            v1::MountPropagation::PropagationHostToContainer,
        ),
    ];
    let id = f.spawn(&pod, c).await;
    assert_eq!(f.exec_ok(&id, &["cat", "/ro/f"]).await, "from the host\n");
    let r = f.exec(&id, &["touch", "/ro/x"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Read-only file system"),
        "{r:?}"
    );
    assert!(!ro.path().join("x").exists());
    f.exec_ok(&id, &["sh", "-c", "echo inside > /rw/out"]).await;
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out")).unwrap(),
        "inside\n"
    );

    // A mount made on the host after the start shows up inside; its unmount too.
    let late = HostMount::new(&["-t", "tmpfs", "tmpfs"], &src.join("sub"));
    std::fs::write(src.join("sub/late"), "late\n").unwrap();
    assert_eq!(f.exec_ok(&id, &["cat", "/prop/sub/late"]).await, "late\n");
    drop(late);
    assert_eq!(f.exec_ok(&id, &["ls", "-A", "/prop/sub"]).await, "");
    f.stop_and_remove(&id).await;
    drop(shared);
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn hostname_hosts_and_resolv_conf_come_from_the_pod() {
    let f = fixture().await;
    let mut config = f.c.pod_config("dns-pod");
    config.dns_config = Some(v1::DnsConfig {
        servers: strings(&["10.0.0.10"]),
        searches: strings(&["ns.svc.cluster.local", "cluster.local"]),
        options: strings(&["ndots:5"]),
    });
    let pod = f.pod(config).await;
    let ip = f.c.pod_status(&pod.id).await.unwrap().ip().to_string();
    let id = f
        .spawn(&pod, f.config("busybox", "reader", &["sleep", "1000"]))
        .await;
    assert_eq!(f.exec_ok(&id, &["hostname"]).await, "dns-pod\n");
    let dir = f.c.pod_dir(&pod.id);
    for (file, host_file) in [
        ("/etc/hostname", "hostname"),
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        let inside = f.exec_ok(&id, &["cat", file]).await;
        let pods = std::fs::read_to_string(dir.join(host_file)).unwrap();
        assert_eq!(inside, pods, "{file} is not the pod's");
    }
    assert_eq!(f.exec_ok(&id, &["cat", "/etc/hostname"]).await, "dns-pod\n");
    let resolv = f.exec_ok(&id, &["cat", "/etc/resolv.conf"]).await;
    for want in [
        "nameserver 10.0.0.10",
        "search ns.svc.cluster.local cluster.local",
        "options ndots:5",
    ] {
        assert!(
            resolv.lines().any(|l| l == want),
            "{want} not in {resolv:?}"
        );
    }
    let hosts = f.exec_ok(&id, &["cat", "/etc/hosts"]).await;
    let has = |addr: &str, name: &str| {
        hosts.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(addr) && w.any(|n| n == name)
        })
    };
    assert!(has("127.0.0.1", "localhost"), "{hosts:?}");
    assert!(
        !ip.is_empty() && has(&ip, "dns-pod"),
        "{ip} dns-pod not in {hosts:?}"
    );
    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// `(pid, args)` of every process `ps` shows.
async fn processes(f: &Fixture, id: &str) -> Vec<(u32, String)> {
    f.exec_ok(id, &["ps", "-o", "pid,args"])
        .await
        .lines()
        .skip(1)
        .map(|l| {
            let (pid, args) = l.trim().split_once(' ').unwrap();
            (pid.parse().unwrap(), args.trim().to_string())
        })
        .collect()
}

#[tokio::test]
async fn containers_share_the_pods_pid_namespace_in_pod_mode_and_have_their_own_otherwise() {
    let f = fixture().await;
    let pod = f
        .pod(pod_with_pid(&f.c, "sharedpid", NamespaceMode::Pod))
        .await;
    let mut ids = Vec::new();
    for (name, secs) in [("one", "1001"), ("two", "1002")] {
        let mut c = f.config("busybox", name, &["sleep", secs]);
        pid_mode(&mut c, NamespaceMode::Pod);
        ids.push(f.spawn(&pod, c).await);
    }
    let seen = processes(&f, &ids[0]).await;
    assert!(seen.iter().any(|(_, a)| a == "sleep 1001"), "{seen:?}");
    assert!(seen.iter().any(|(_, a)| a == "sleep 1002"), "{seen:?}");
    assert_eq!(
        f.exec_ok(&ids[1], &["cat", "/proc/1/comm"]).await,
        "crius-pause\n"
    );
    for id in &ids {
        f.stop_and_remove(id).await;
    }
    f.c.stop_and_remove(&pod.id).await;

    let pod = f
        .pod(pod_with_pid(&f.c, "ownpid", NamespaceMode::Container))
        .await;
    let mut ids = Vec::new();
    for (name, secs) in [("one", "1003"), ("two", "1004")] {
        let mut c = f.config("busybox", name, &["sleep", secs]);
        pid_mode(&mut c, NamespaceMode::Container);
        ids.push(f.spawn(&pod, c).await);
    }
    for (id, secs) in ids.iter().zip(["1003", "1004"]) {
        let seen = processes(&f, id).await;
        let others: Vec<_> = seen.iter().filter(|(_, a)| a != "ps -o pid,args").collect();
        assert_eq!(others, [&(1, format!("sleep {secs}"))], "{seen:?}");
    }
    for id in &ids {
        f.stop_and_remove(id).await;
    }
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn a_long_line_is_split_into_16k_partial_records_and_ends_in_a_final_one() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("longline")).await;
    let out = f
        .run(
            &pod,
            f.config(
                "busybox",
                "long",
                &["sh", "-c", "head -c 102400 /dev/zero | tr '\\000' a; echo"],
            ),
        )
        .await;
    let stdout: Vec<_> = out
        .records
        .iter()
        .filter(|r| r.stream == "stdout")
        .collect();
    let shape: Vec<(&str, usize)> = stdout
        .iter()
        .map(|r| (r.tag.as_str(), r.content.len()))
        .collect();
    let mut want = vec![("P", 16384); 6];
    want.push(("F", 102400 - 6 * 16384));
    assert_eq!(shape, want);
    assert_eq!(
        joined(&out.records, "stdout"),
        format!("{}\n", "a".repeat(102400))
    );
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// The numbers of `lineN` records, in order.
fn line_numbers(path: &Path) -> Vec<u64> {
    log_records(path)
        .iter()
        .map(|r| {
            assert_eq!(
                (r.stream.as_str(), r.tag.as_str()),
                ("stdout", "F"),
                "{r:?}"
            );
            r.content.strip_prefix("line").unwrap().parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn reopen_container_log_after_a_rename_loses_and_duplicates_nothing() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("rotate")).await;
    let script = "i=0; while true; do i=$((i+1)); echo line$i; sleep 0.02; done";
    let id = f
        .spawn(&pod, f.config("busybox", "ticker", &["sh", "-c", script]))
        .await;
    let log = pod.log_dir().join("ticker.log");
    let rotated = pod.log_dir().join("ticker.log.1");
    wait_log(&log, |r| r.len() >= 10).await;
    std::fs::rename(&log, &rotated).unwrap();
    // kubelet renames, then asks; lines written in between still go to the renamed file.
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.reopen_log(&id).await.unwrap();
    let more = wait_log(&log, |r| r.len() >= 10).await;
    assert!(more.len() >= 10, "nothing in the new file: {more:?}");
    f.stop(&id, 0).await;
    settled_log(&log).await;
    let old = line_numbers(&rotated);
    let new = line_numbers(&log);
    let all: Vec<u64> = old.iter().chain(&new).copied().collect();
    let want: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, want, "old {old:?} new {new:?}");
    assert!(old.len() >= 10 && new.len() >= 10);

    // A stopped container: an error, and (the CRI) no new log file created.
    std::fs::rename(&log, pod.log_dir().join("ticker.log.2")).unwrap();
    let e = f.reopen_log(&id).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert!(
        !log.exists(),
        "ReopenContainerLog of a stopped container created {}",
        log.display()
    );
    f.remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn no_descriptor_of_crius_reaches_a_container_and_its_exe_is_the_workload() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("fds")).await;
    // The workload itself: 0, 1, 2 and the directory ls has open.
    let out = f
        .run(&pod, f.config("busybox", "ls", &["ls", "/proc/self/fd"]))
        .await;
    assert_eq!(
        numbers(&out.stdout),
        BTreeSet::from([0, 1, 2, 3]),
        "{out:?}"
    );

    let id = f
        .spawn(&pod, f.config("busybox", "sleeper", &["sleep", "1000"]))
        .await;
    assert_eq!(
        numbers(&f.exec_ok(&id, &["ls", "/proc/1/fd"]).await),
        BTreeSet::from([0, 1, 2])
    );
    assert_eq!(
        numbers(&f.exec_ok(&id, &["ls", "/proc/self/fd"]).await),
        BTreeSet::from([0, 1, 2, 3])
    );
    assert_eq!(
        f.exec_ok(&id, &["readlink", "/proc/1/exe"]).await,
        "/bin/busybox\n"
    );
    assert_eq!(
        f.exec_ok(&id, &["readlink", "/proc/self/exe"]).await,
        "/bin/busybox\n"
    );
    // From the host: the same three descriptors, and not one of crius' binaries.
    let pid = f.pid(&id).await;
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(fds.len(), 3, "{fds:?}");
    let exe = procfs::exe(pid).unwrap();
    for crius in [
        f.c.binary().to_path_buf(),
        f.c.monitor_bin(),
        f.c.pause_binary().to_path_buf(),
    ] {
        assert_ne!(
            exe,
            crius,
            "the container's process runs {}",
            crius.display()
        );
    }
    assert!(exe.ends_with("bin/busybox"), "{}", exe.display());
    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// The monitor and the exec helper are Rust programs, which ignore SIGPIPE, and block the signals they read
/// from a signalfd; neither may reach the workload (an ignored SIGPIPE survives exec: `yes | head` would
/// never end).
#[tokio::test]
async fn the_workload_and_an_exec_start_with_no_signal_ignored_or_blocked() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("signals")).await;
    let out = f
        .run(
            &pod,
            f.config("busybox", "status", &["cat", "/proc/self/status"]),
        )
        .await;
    for key in ["SigIgn", "SigBlk"] {
        assert_eq!(
            status_field(&out.stdout, key),
            Some("0000000000000000"),
            "{key} of the workload:\n{}",
            out.stdout
        );
    }
    let id = f
        .spawn(&pod, f.config("busybox", "sleeper", &["sleep", "1000"]))
        .await;
    let status = f.exec_ok(&id, &["cat", "/proc/self/status"]).await;
    for key in ["SigIgn", "SigBlk"] {
        assert_eq!(
            status_field(&status, key),
            Some("0000000000000000"),
            "{key} of an exec:\n{status}"
        );
    }
    // And the pipe ends as it should: head exits, cat gets SIGPIPE.
    let piped = f
        .exec(&id, &["sh", "-c", "cat /dev/zero | head -c 4 | wc -c"], 20)
        .await
        .unwrap();
    assert_eq!(
        (
            piped.exit_code,
            String::from_utf8_lossy(&piped.stdout).trim()
        ),
        (0, "4")
    );
    f.stop_and_remove(&id).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

/// A file outside the log directory, the target of a planted symlink.
fn precious() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious");
    std::fs::write(&file, "precious\n").unwrap();
    (dir, file)
}

async fn assert_nothing_created(f: &Fixture) {
    assert!(f.list().await.is_empty());
    let containers = f.c.paths().root.join("containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_symlink_at_the_log_path_fails_create_container_and_its_target_is_untouched() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("logsymlink")).await;
    let (_dir, target) = precious();
    std::fs::create_dir_all(pod.log_dir()).unwrap();
    std::os::unix::fs::symlink(&target, pod.log_dir().join("evil.log")).unwrap();
    let mut c = f.config("busybox", "evil", &["sh", "-c", "echo written"]);
    c.log_path = "evil.log".into();
    let e = f.create(&pod, c).await.unwrap_err();
    assert!(e.message().contains("evil.log"), "{e:?}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert_nothing_created(&f).await;
    // The name is free again (with a log path that is no symlink).
    let mut c = f.config("busybox", "evil", &["echo", "fine"]);
    c.log_path = "fine.log".into();
    assert_eq!(f.run(&pod, c).await.stdout, "fine\n");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn a_symlinked_directory_in_the_log_path_is_not_followed() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("logdirlink")).await;
    let (dir, target) = precious();
    std::fs::create_dir_all(pod.log_dir()).unwrap();
    std::os::unix::fs::symlink(dir.path(), pod.log_dir().join("linked")).unwrap();
    let mut c = f.config("busybox", "linked", &["sh", "-c", "echo written"]);
    c.log_path = "linked/0.log".into();
    let created = f.create(&pod, c).await;
    let in_target: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        in_target,
        [target],
        "a file was created through the symlinked directory (CreateContainer: {created:?})"
    );
    let e = created.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("log_path") && e.message().contains("linked"),
        "{e:?}"
    );
    assert_nothing_created(&f).await;
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}

#[tokio::test]
async fn a_tty_container_sees_a_terminal_and_its_output_is_logged_as_stdout() {
    let f = fixture().await;
    let pod = f.pod(f.c.pod_config("tty")).await;
    let script = [
        "sh",
        "-c",
        "if test -t 1; then echo tty; else echo notty; fi; echo to-stderr >&2",
    ];
    let mut c = f.config("busybox", "tty", &script);
    c.tty = true;
    let out = f.run(&pod, c).await;
    // A terminal ends lines with \r\n; the log keeps whatever the line held before the \n.
    let lines: Vec<(&str, &str, &str)> = out
        .records
        .iter()
        .map(|r| {
            (
                r.stream.as_str(),
                r.tag.as_str(),
                r.content.trim_end_matches('\r'),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [("stdout", "F", "tty"), ("stdout", "F", "to-stderr")],
        "{out:?}"
    );

    let out = f.run(&pod, f.config("busybox", "notty", &script)).await;
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("notty\n", "to-stderr\n")
    );
    f.c.stop_and_remove(&pod.id).await;
    f.c.assert_no_leaks().await;
}
