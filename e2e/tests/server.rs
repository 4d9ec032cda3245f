//! End-to-end tests of the daemon itself: CLI, config, socket, lock, signals, Version/Status/RuntimeConfig,
//! unimplemented RPCs. Each test starts its own `crius serve` on private directories (root required).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crius_e2e::procfs::{self, output_with_timeout};
use crius_e2e::v1::{self, CgroupDriver, RuntimeConfigRequest, StatusRequest, VersionRequest};
use crius_e2e::{Crius, Driver, Options, bridge_conflist, client};
use tonic::Code;

fn condition(resp: &v1::StatusResponse, kind: &str) -> v1::RuntimeCondition {
    resp.status
        .as_ref()
        .expect("Status without status")
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {resp:?}"))
        .clone()
}

async fn status(c: &Crius, verbose: bool) -> v1::StatusResponse {
    c.runtime()
        .status(StatusRequest { verbose })
        .await
        .expect("Status")
        .into_inner()
}

#[tokio::test]
async fn version_names_crius_and_cri_v1() {
    let c = Crius::start(Options::new()).await;
    let v = c
        .runtime()
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "crius");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(
        !v.runtime_version.is_empty(),
        "empty runtime_version: {v:?}"
    );
    assert!(!v.version.is_empty(), "empty version: {v:?}");
    c.assert_no_leaks().await;
}

#[test]
fn version_subcommand_prints_name_and_version() {
    let c = Crius::prepare(Options::new()).expect("prepare");
    let out = std::process::Command::new(c.binary())
        .arg("version")
        .output()
        .expect("crius version");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("crius ") && text.contains(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
}

#[tokio::test]
async fn status_reports_ready_conditions_and_info_only_when_verbose() {
    let c = Crius::start(Options::new()).await;
    let plain = status(&c, false).await;
    assert!(condition(&plain, "RuntimeReady").status, "{plain:?}");
    assert!(condition(&plain, "NetworkReady").status, "{plain:?}");
    assert!(
        plain.info.is_empty(),
        "non-verbose Status carries info: {:?}",
        plain.info
    );
    let verbose = status(&c, true).await;
    assert!(!verbose.info.is_empty(), "verbose Status has no info");
    for (k, v) in &verbose.info {
        assert!(
            serde_json::from_str::<serde_json::Value>(v).is_ok(),
            "verbose info {k} is not JSON: {v}"
        );
    }
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn network_not_ready_without_plugins() {
    // Only the instance's empty private plugin dir: no CNI plugin can be found.
    let c = Crius::start(Options::new().set("network.plugin_dirs", "[\"@PLUGIN_DIR@\"]")).await;
    let s = status(&c, false).await;
    let net = condition(&s, "NetworkReady");
    assert!(!net.status, "NetworkReady with no plugins: {net:?}");
    assert!(
        !net.reason.is_empty(),
        "NetworkReady=false without a reason: {net:?}"
    );
    assert!(
        !net.message.is_empty(),
        "NetworkReady=false without a message: {net:?}"
    );
    assert!(condition(&s, "RuntimeReady").status, "{s:?}");
    // A pod cannot get a network, and trying leaves nothing behind.
    let err = c
        .run_pod(c.pod_config("no-net"))
        .await
        .expect_err("a pod ran without CNI plugins");
    assert_ne!(err.code(), Code::Ok);
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn status_and_check_say_which_network_config_is_used() {
    // No conflist: the embedded default on the instance's bridge.
    let c = Crius::start(Options::new()).await;
    let info: String = status(&c, true).await.info.into_values().collect();
    assert!(
        info.contains("embedded") && info.contains(c.bridge()),
        "verbose Status does not say the embedded default is used: {info}"
    );
    let (_, lines) = check_output(&c);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok") && l.contains("embedded")),
        "crius check does not say the embedded default is used: {lines:#?}"
    );
    drop(c);

    // A conflist in conf_dir: that file.
    let c = Crius::start(
        Options::new().conflist("10-mine.conflist", &bridge_conflist("e2e-mine", &[])),
    )
    .await;
    let file = c.paths().conf_dir.join("10-mine.conflist");
    let info: String = status(&c, true).await.info.into_values().collect();
    assert!(
        info.contains(file.to_str().unwrap()),
        "verbose Status does not name {}: {info}",
        file.display()
    );
    let (_, lines) = check_output(&c);
    assert!(
        lines.iter().any(|l| l.contains(file.to_str().unwrap())),
        "crius check does not name {}: {lines:#?}",
        file.display()
    );
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn runtime_config_reports_cgroupfs_driver() {
    let c = Crius::start(Options::new()).await;
    let rc = c
        .runtime()
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        rc.linux.expect("linux").cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn runtime_config_reports_systemd_driver() {
    let c = Crius::start(Options::new().driver(Driver::Systemd)).await;
    let rc = c
        .runtime()
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        rc.linux.expect("linux").cgroup_driver,
        CgroupDriver::Systemd as i32
    );
    c.assert_no_leaks().await;
}

/// "ListContainers" → "listcontainers": messages may spell the RPC in CamelCase or snake_case.
fn names(message: &str, rpc: &str) -> bool {
    let norm = |s: &str| s.to_lowercase().replace(['_', ' ', '/'], "");
    norm(message).contains(&norm(rpc))
}

#[tokio::test]
async fn unimplemented_rpcs_say_which() {
    let c = Crius::start(Options::new()).await;
    let mut rt = c.runtime();
    // The ImageService is implemented (issue 3; e2e/tests/images.rs), and so are Exec, Attach and PortForward
    // (e2e/tests/streaming_*.rs) and the stats and metrics RPCs (e2e/tests/stats.rs).
    let results = vec![(
        "CheckpointContainer",
        rt.checkpoint_container(v1::CheckpointContainerRequest::default())
            .await
            .map(|_| ()),
    )];
    for (rpc, result) in results {
        let err = result.expect_err(&format!("{rpc} succeeded"));
        assert_eq!(err.code(), Code::Unimplemented, "{rpc}: {err:?}");
        assert!(
            names(err.message(), rpc),
            "{rpc}: message does not name it: {:?}",
            err.message()
        );
    }
    // The server is still fine afterwards.
    rt.version(VersionRequest::default())
        .await
        .expect("Version after Unimplemented");
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn big_messages_up_to_16_mib_pass() {
    let c = Crius::start(Options::new()).await;
    // tonic's default limit is 4 MiB; kubelet's is 16 MiB each way.
    let big = "v".repeat(6 << 20);
    c.runtime()
        .version(VersionRequest { version: big })
        .await
        .expect("a 6 MiB request was refused: the server's limit is below 16 MiB");
    // And the other way: a 6 MiB ListPodSandbox answer (three pods with a 2 MiB annotation each).
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut cfg = c.pod_config(&format!("big{n}"));
        cfg.annotations.insert("big".into(), "a".repeat(2 << 20));
        ids.push(
            c.run_pod(cfg)
                .await
                .expect("RunPodSandbox with a 2 MiB annotation"),
        );
    }
    let pods = c
        .list_pods(None)
        .await
        .expect("a 6 MiB response was refused: the server's send limit is below 16 MiB");
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p.annotations["big"].len() == 2 << 20));
    for id in &ids {
        c.stop_and_remove(id).await;
    }
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn socket_has_mode_0660() {
    let c = Crius::start(Options::new()).await;
    let meta = std::fs::symlink_metadata(&c.paths().socket).expect("socket");
    assert!(
        meta.file_type().is_socket(),
        "{:?} is not a socket",
        c.paths().socket
    );
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let c = Crius::start(Options::new().stale_socket()).await;
    c.runtime()
        .version(VersionRequest::default())
        .await
        .expect("Version over the replaced socket");
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn second_instance_on_same_root_refuses() {
    let c = Crius::start(Options::new()).await;
    let mut second = c.serve_command();
    second
        .arg("--listen")
        .arg(c.paths().dir.join("second.sock"));
    let out = output_with_timeout(&mut second, Duration::from_secs(15))
        .expect("the second crius kept running on a root that is in use");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second instance exited 0: {stderr}");
    assert!(
        stderr.contains("already running"),
        "unclear message: {stderr}"
    );
    // The first instance is unharmed.
    c.runtime()
        .version(VersionRequest::default())
        .await
        .expect("first instance after the second one failed");
    assert!(c.paths().socket.exists());
}

#[tokio::test]
async fn sigterm_leaves_pods_running_and_a_restart_adopts_them() {
    let mut c = Crius::start(Options::new()).await;
    let id = c
        .run_pod(c.pod_config("survivor"))
        .await
        .expect("RunPodSandbox");
    let before = c.pod_status(&id).await.expect("status");
    let pause = before.pid().expect("pause pid in verbose info");
    assert!(procfs::is_alive(pause));

    let exit = c.stop();
    assert_eq!(exit.code(), Some(0), "crius exited with {exit} on SIGTERM");
    assert!(
        procfs::is_alive(pause),
        "pause {pause} died with crius ({:?})",
        procfs::stat(pause)
    );
    assert!(
        c.ns_file("netns", &id).exists(),
        "netns file gone after crius stopped"
    );

    c.launch()
        .await
        .expect("restart on the same root and state");
    let pods = c.list_pods(None).await.expect("ListPodSandbox");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, id);
    let after = c.pod_status(&id).await.expect("status after restart");
    assert!(after.is_ready(), "{:?}", after.status);
    assert_eq!(after.pid(), Some(pause));
    assert_eq!(after.ip(), before.ip());

    c.stop_and_remove(&id).await;
    assert!(
        !procfs::is_alive(pause),
        "pause {pause} survived StopPodSandbox after a restart"
    );
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn sigint_also_stops_gracefully_and_leaves_pods() {
    let mut c = Crius::start(Options::new()).await;
    let id = c.run_pod(c.pod_config("int")).await.expect("RunPodSandbox");
    let pause = c.pod_status(&id).await.unwrap().pid().unwrap();
    let exit = c.stop_with(nix::sys::signal::Signal::SIGINT);
    assert_eq!(exit.code(), Some(0), "crius exited with {exit} on SIGINT");
    assert!(procfs::is_alive(pause), "pause died with crius");
    assert!(
        !c.paths().socket.exists(),
        "socket left after a graceful stop"
    );
    c.launch().await.expect("restart");
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

fn serve_fails_naming(opts: Options, needle: &str) {
    let c = Crius::prepare(opts).expect("prepare");
    let out = output_with_timeout(&mut c.serve_command(), Duration::from_secs(15))
        .expect("crius kept running with a bad config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "crius accepted the config: {stderr}");
    assert!(
        stderr.contains(needle),
        "the error does not name {needle:?}: {stderr}"
    );
    assert!(!c.paths().socket.exists(), "a socket was created");
}

#[test]
fn unknown_config_key_stops_startup() {
    serve_fails_naming(Options::new().set("network.bogus_key", "1"), "bogus_key");
    serve_fails_naming(
        Options::new().set("no_such_top_level", "\"x\""),
        "no_such_top_level",
    );
}

#[test]
fn bad_config_value_stops_startup() {
    serve_fails_naming(Options::new().set("pod.shm_size", "\"lots\""), "shm_size");
    serve_fails_naming(
        Options::new().set("cgroup.driver", "\"cgroupv3\""),
        "driver",
    );
    serve_fails_naming(
        Options::new().set("network.plugin_timeout", "\"soon\""),
        "plugin_timeout",
    );
}

#[tokio::test]
async fn default_config_parses_and_serves() {
    let c = Crius::prepare(Options::new()).expect("prepare");
    let out = output_with_timeout(
        c.command().args(["config", "default"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with('#')),
        "no comments:\n{text}"
    );
    let t: toml::Table = toml::from_str(&text).expect("`crius config default` is not TOML");
    let get =
        |path: &str| lookup(&t, path).unwrap_or_else(|| panic!("default config lacks {path}"));
    assert_eq!(get("root").as_str(), Some("/var/lib/crius"));
    assert_eq!(get("state").as_str(), Some("/run/crius"));
    assert_eq!(get("listen").as_str(), Some("/run/crius/crius.sock"));
    assert_eq!(get("cgroup.driver").as_str(), Some("cgroupfs"));
    assert_eq!(get("network.conf_dir").as_str(), Some("/etc/cni/net.d"));
    assert_eq!(get("network.default_bridge").as_str(), Some("crius0"));
    let shm = get("pod.shm_size");
    assert!(
        shm.as_str() == Some("64Mi") || shm.as_integer() == Some(64 << 20),
        "pod.shm_size default is {shm}, not 64 MiB"
    );
    assert_eq!(get("pod.pause_oom_score_adj").as_integer(), Some(-998));

    // The file as printed, with only the paths overridden on the command line.
    let dir = &c.paths().dir;
    let file = dir.join("default.toml");
    std::fs::write(&file, &text).unwrap();
    let socket = dir.join("default.sock");
    let mut child = Command::new(c.binary())
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--root")
        .arg(dir.join("root2"))
        .arg("--state")
        .arg(dir.join("state2"))
        .arg("--listen")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("default.log")).unwrap())
        .spawn()
        .expect("spawn crius");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = false;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        if let Ok(ch) = client::connect(&socket).await
            && client::runtime(ch)
                .version(VersionRequest::default())
                .await
                .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exit = wait_bounded(&mut child, Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.join("default.log")).unwrap_or_default();
    assert!(
        answered,
        "crius with the default config did not answer:\n{log}"
    );
    assert_eq!(exit, Some(0), "exit after SIGTERM:\n{log}");

    // And the default merged with the harness' keys runs a pod.
    drop(c);
    let c = Crius::start(Options::new().base_config(&text)).await;
    let id = c
        .run_pod(c.pod_config("defaults"))
        .await
        .expect("RunPodSandbox");
    c.stop_and_remove(&id).await;
    c.assert_no_leaks().await;
}

fn lookup<'a>(t: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let (first, rest) = match dotted.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (dotted, None),
    };
    let v = t.get(first)?;
    match rest {
        None => Some(v),
        Some(rest) => lookup(v.as_table()?, rest),
    }
}

fn wait_bounded(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn check_output(c: &Crius) -> (bool, Vec<String>) {
    let out = output_with_timeout(
        c.command()
            .arg("check")
            .arg("--config")
            .arg(&c.paths().config),
        Duration::from_secs(30),
    )
    .expect("crius check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        stdout.lines().map(str::to_string).collect(),
    )
}

#[test]
fn check_prints_lines_and_a_verdict() {
    let c = Crius::prepare(Options::new()).expect("prepare");
    let (ok, lines) = check_output(&c);
    let (verdict, body) = lines.split_last().expect("no output");
    for l in body {
        let tag = l.split_whitespace().next().unwrap_or("");
        assert!(matches!(tag, "ok" | "missing" | "warn"), "bad line {l:?}");
        assert!(l.contains(':'), "line without detail {l:?}");
    }
    // Each preflight item has its own line.
    for item in [
        "namespaces:",
        "overlayfs:",
        "seccomp:",
        "cgroup v2:",
        "cgroup.kill:",
        "pause:",
        "cni config:",
        "cni plugins:",
    ] {
        assert!(
            body.iter().any(|l| l.contains(item)),
            "no {item} line: {lines:#?}"
        );
    }
    // Where the v2 tree lacks the memory controller (this hybrid host), check says which limits cannot be
    // enforced, as a warning that does not fail the verdict.
    let controllers =
        std::fs::read_to_string(c.cgroup_mount().join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        let limits = body
            .iter()
            .find(|l| l.contains("cgroup limits:"))
            .unwrap_or_else(|| panic!("no cgroup limits line: {lines:#?}"));
        assert!(
            limits.starts_with("warn") && limits.contains("memory"),
            "{limits}"
        );
    }
    // This machine has namespaces, a cgroup2 tree and Debian's CNI plugins.
    assert_eq!(verdict, "verdict: ready", "{lines:#?}");
    assert!(ok, "exit status is not 0 with verdict ready");

    let c = Crius::prepare(Options::new().set("network.plugin_dirs", "[\"@PLUGIN_DIR@\"]"))
        .expect("prepare");
    let (ok, lines) = check_output(&c);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("verdict: not ready"),
        "{lines:#?}"
    );
    assert!(!ok, "exit status 0 with verdict not ready");
    assert!(lines.iter().any(|l| l.starts_with("missing")), "{lines:#?}");
}

#[tokio::test]
async fn status_reports_runtime_handlers_and_features_as_the_cri_defines() {
    let c = Crius::start(Options::new()).await;
    let s = status(&c, false).await;
    // The default handler ("") and the names RunPodSandbox accepts for it, with what crius implements: no user
    // namespaces, no recursive read-only mounts; SupplementalGroupsPolicy (and ContainerStatus.user) yes.
    let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["", "crius", "runc"], "{s:?}");
    for h in &s.runtime_handlers {
        let f = h.features.expect("a runtime handler without features");
        assert!(!f.user_namespaces && !f.recursive_read_only_mounts, "{h:?}");
    }
    assert!(s.features.expect("no features").supplemental_groups_policy);
    for handler in names {
        let mut config = c.pod_config("handler");
        config.metadata.as_mut().unwrap().name = format!("handler-{handler}");
        let id = c
            .runtime()
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("runtime handler {handler:?} reported but refused: {e}"))
            .into_inner()
            .pod_sandbox_id;
        c.pod_status(&id).await.unwrap();
        c.stop_and_remove(&id).await;
    }
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn runtime_not_ready_names_a_missing_pause_program_in_status_log_and_check() {
    let c = Crius::start(Options::new().set("pause_binary", "\"@DIR@/no-such-pause\"")).await;
    let s = status(&c, true).await;
    let rt = condition(&s, "RuntimeReady");
    assert!(!rt.status, "RuntimeReady without a pause program: {rt:?}");
    assert_eq!(rt.reason, "PauseBinaryNotFound", "{rt:?}");
    assert!(rt.message.contains("no-such-pause"), "{rt:?}");
    let info: String = s.info.into_values().collect();
    assert!(info.contains("no-such-pause"), "verbose info: {info}");
    // Said once in the log at startup, with the cause.
    let log = c.log();
    let said = log
        .lines()
        .filter(|l| l.contains("RuntimeReady is false") && l.contains("no-such-pause"))
        .count();
    assert_eq!(said, 1, "{log}");
    let (ok, lines) = check_output(&c);
    assert!(!ok, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("missing")
            && l.contains("pause:")
            && l.contains("no-such-pause")),
        "{lines:#?}"
    );
    c.assert_no_leaks().await;
}

#[tokio::test]
async fn invalid_cni_configs_are_named_when_the_embedded_default_is_used() {
    let c = Crius::start(Options::new().conflist("10-broken.conflist", "{ not json")).await;
    let s = status(&c, true).await;
    assert!(condition(&s, "NetworkReady").status, "{s:?}");
    let info: String = s.info.into_values().collect();
    assert!(
        info.contains("embedded") && info.contains("10-broken.conflist"),
        "verbose Status does not say why the default is used: {info}"
    );
    let (_, lines) = check_output(&c);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warn") && l.contains("10-broken.conflist")),
        "{lines:#?}"
    );
    c.assert_no_leaks().await;
}
