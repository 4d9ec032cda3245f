//! Plugin execution against fake plugins (tests/fake-plugin.sh): no root needed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_cni::{
    Attachment, Cni, CniError, NetworkConfigList, PortMapping, RuntimeConfig, parse_conflist,
};
use serde_json::{Value, json};

/// A temp plugin dir with fake plugins, a cache dir, and readers for what the plugins logged.
struct Fake {
    tmp: tempfile::TempDir,
}

impl Fake {
    fn new(plugins: &[(&str, &str)]) -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("bin")).unwrap();
        std::fs::create_dir(tmp.path().join("bin2")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-plugin.sh");
        for (name, conf) in plugins {
            std::os::unix::fs::symlink(&script, tmp.path().join("bin").join(name)).unwrap();
            std::fs::write(tmp.path().join("bin").join(format!("{name}.conf")), conf).unwrap();
        }
        Fake { tmp }
    }

    fn bin(&self) -> PathBuf {
        self.tmp.path().join("bin")
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn cni(&self, timeout: Duration) -> Cni {
        Cni::new(
            vec![self.tmp.path().join("bin2"), self.bin()],
            self.cache(),
            timeout,
        )
    }

    fn calls(&self) -> Vec<String> {
        match std::fs::read_to_string(self.bin().join("log/calls")) {
            Ok(s) => s.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn stdin(&self, plugin: &str, command: &str) -> Value {
        let text =
            std::fs::read_to_string(self.bin().join(format!("log/{plugin}.{command}.stdin")))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn env(&self, plugin: &str, command: &str) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.bin().join(format!("log/{plugin}.{command}.env")))
            .unwrap();
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn clear_log(&self) {
        let _ = std::fs::remove_dir_all(self.bin().join("log"));
    }

    fn cache_file(&self, net: &str, att: &Attachment) -> PathBuf {
        self.cache()
            .join("results")
            .join(format!("{net}-{}-{}", att.container_id, att.ifname))
    }
}

fn list(version: &str, plugins: Value) -> NetworkConfigList {
    let text = json!({"cniVersion": version, "name": "testnet", "plugins": plugins}).to_string();
    parse_conflist(text.as_bytes(), None).unwrap()
}

fn attachment() -> Attachment {
    Attachment {
        container_id: "pod1".into(),
        netns: "/run/netns/fake".into(),
        ifname: "eth0".into(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), "web".into()),
        ],
        runtime_config: RuntimeConfig {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..Default::default()
        },
    }
}

const SECOND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn add_runs_plugins_in_order_chaining_prev_result() {
    let fake = Fake::new(&[("a", "ip=2"), ("b", "ip=3"), ("c", "ip=4")]);
    let net = list(
        "1.0.0",
        json!([{"type": "a", "extra": {"x": 1}}, {"type": "b", "capabilities": {"portMappings": true}}, {"type": "c"}]),
    );
    let att = attachment();
    let result = fake.cni(SECOND).add(&net, &att).await.unwrap();

    assert_eq!(fake.calls(), ["a ADD", "b ADD", "c ADD"]);
    let a = fake.stdin("a", "ADD");
    assert_eq!(
        (&a["cniVersion"], &a["name"], &a["extra"]),
        (&json!("1.0.0"), &json!("testnet"), &json!({"x": 1}))
    );
    assert!(a.get("prevResult").is_none());
    assert!(a.get("runtimeConfig").is_none(), "a declares no capability");
    let b = fake.stdin("b", "ADD");
    assert_eq!(b["prevResult"]["from"], json!("a"));
    assert_eq!(
        b["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    let c = fake.stdin("c", "ADD");
    assert_eq!(c["prevResult"]["from"], json!("b"));
    assert!(c.get("runtimeConfig").is_none());

    let env = fake.env("b", "ADD");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "pod1");
    assert_eq!(env["CNI_NETNS"], "/run/netns/fake");
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
    );
    assert_eq!(
        env["CNI_PATH"],
        format!(
            "{}:{}",
            fake.tmp.path().join("bin2").display(),
            fake.bin().display()
        )
    );

    assert_eq!(result.raw["from"], json!("c"));
    assert_eq!(
        result.pod_ips("eth0"),
        vec!["10.0.0.4".parse::<IpAddr>().unwrap()]
    );

    // the cache holds the exact list and the final result
    assert!(fake.cache_file("testnet", &att).is_file());
    let cached = fake.cni(SECOND).cached("testnet", "pod1", "eth0").unwrap();
    assert_eq!(cached.config, net);
    assert_eq!(cached.result, result);
    assert_eq!(cached.netns, att.netns);
    assert_eq!(cached.cni_args, att.args);
}

#[tokio::test]
async fn del_runs_cached_list_in_reverse_with_cached_result_then_is_idempotent() {
    let fake = Fake::new(&[("a", ""), ("b", ""), ("c", "ip=9"), ("x", "")]);
    let cni = fake.cni(SECOND);
    let att = attachment();
    let added = list(
        "1.0.0",
        json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]),
    );
    cni.add(&added, &att).await.unwrap();
    fake.clear_log();

    // The config changed since ADD: DEL still tears down what ADD set up.
    let changed = list("1.0.0", json!([{"type": "x"}]));
    cni.del(&changed, &att).await.unwrap();
    assert_eq!(fake.calls(), ["c DEL", "b DEL", "a DEL"]);
    for p in ["a", "b", "c"] {
        let stdin = fake.stdin(p, "DEL");
        assert_eq!(stdin["prevResult"]["from"], json!("c"), "{p}");
        assert_eq!(
            stdin["prevResult"]["ips"][0]["address"],
            json!("10.0.0.9/24")
        );
        assert_eq!(fake.env(p, "DEL")["CNI_COMMAND"], "DEL");
    }
    assert!(!fake.cache_file("testnet", &att).exists());
    assert!(cni.cached("testnet", "pod1", "eth0").is_none());

    // No cache any more: DEL runs the given list, without prevResult, and succeeds again.
    fake.clear_log();
    cni.del(&changed, &att).await.unwrap();
    assert_eq!(fake.calls(), ["x DEL"]);
    assert!(fake.stdin("x", "DEL").get("prevResult").is_none());
}

#[tokio::test]
async fn del_gives_no_prev_result_before_0_4_0() {
    let fake = Fake::new(&[("a", "version=0.3.1")]);
    let cni = fake.cni(SECOND);
    let att = attachment();
    let net = list("0.3.1", json!([{"type": "a"}]));
    let r = cni.add(&net, &att).await.unwrap();
    assert_eq!(r.cni_version, "0.3.1");
    cni.del(&net, &att).await.unwrap();
    assert!(fake.stdin("a", "DEL").get("prevResult").is_none());
    assert_eq!(fake.stdin("a", "DEL")["cniVersion"], json!("0.3.1"));
    assert!(!fake.cache_file("testnet", &att).exists());
}

#[tokio::test]
async fn add_stops_at_plugin_error_and_del_still_works() {
    let fake = Fake::new(&[("a", ""), ("b", "mode=fail_add"), ("c", "")]);
    let cni = fake.cni(SECOND);
    let att = attachment();
    let net = list(
        "1.0.0",
        json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]),
    );
    match cni.add(&net, &att).await {
        Err(CniError::Plugin {
            plugin,
            code,
            msg,
            details,
        }) => {
            assert_eq!(
                (plugin.as_str(), code, msg.as_str(), details.as_str()),
                ("b", 7, "invalid config", "from b")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.calls(), ["a ADD", "b ADD"]);
    assert!(
        !fake.cache_file("testnet", &att).exists(),
        "a failed ADD is not cached"
    );

    fake.clear_log();
    cni.del(&net, &att).await.unwrap();
    assert_eq!(fake.calls(), ["c DEL", "b DEL", "a DEL"]);
    assert!(fake.stdin("a", "DEL").get("prevResult").is_none());
}

#[tokio::test]
async fn plugin_error_json_and_stderr_fallback() {
    let fake = Fake::new(&[
        ("busy", "mode=fail"),
        ("loud", "mode=stderr"),
        ("junk", "mode=garbage"),
    ]);
    let cni = fake.cni(SECOND);
    let att = attachment();
    let err = cni
        .add(&list("1.0.0", json!([{"type": "busy"}])), &att)
        .await
        .unwrap_err();
    assert!(err.is_try_again_later(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cni plugin busy failed (code 11): try again later (busy: ADD)"
    );

    match cni
        .add(&list("1.0.0", json!([{"type": "loud"}])), &att)
        .await
    {
        Err(CniError::Plugin {
            plugin, code, msg, ..
        }) => {
            assert_eq!(
                (plugin.as_str(), code, msg.as_str()),
                ("loud", crius_cni::CODE_UNPARSED_ERROR, "boom on stderr")
            );
        }
        other => panic!("{other:?}"),
    }
    match cni
        .add(&list("1.0.0", json!([{"type": "junk"}])), &att)
        .await
    {
        Err(CniError::InvalidResult { plugin, reason }) => {
            assert_eq!(plugin, "junk");
            assert!(reason.contains("not JSON"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // DEL reports plugin errors too
    assert!(matches!(
        cni.del(&list("1.0.0", json!([{"type": "busy"}])), &att)
            .await,
        Err(CniError::Plugin { code: 11, .. })
    ));
}

fn process_gone(pid: i32) -> bool {
    // A reaped process has no /proc entry; a zombie would still have one.
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn timeout_kills_and_reaps_a_sleeping_plugin() {
    let fake = Fake::new(&[("slow", "mode=sleep")]);
    let cni = fake.cni(Duration::from_millis(500));
    let start = Instant::now();
    match cni
        .add(&list("1.0.0", json!([{"type": "slow"}])), &attachment())
        .await
    {
        Err(CniError::Timeout { plugin, after }) => {
            assert_eq!(
                (plugin.as_str(), after),
                ("slow", Duration::from_millis(500))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let pid = read_pid(&fake.bin().join("log/slow.pid"));
    assert!(process_gone(pid), "plugin {pid} still exists");
}

#[tokio::test]
async fn timeout_kills_the_plugins_process_group() {
    // The plugin's child is orphaned when the group dies; become its reaper so it can be reaped
    // here (this machine's PID 1 does not reap).
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let fake = Fake::new(&[("forky", "mode=sleep_group")]);
    let cni = fake.cni(Duration::from_millis(500));
    let err = cni
        .add(&list("1.0.0", json!([{"type": "forky"}])), &attachment())
        .await
        .unwrap_err();
    assert!(matches!(err, CniError::Timeout { .. }), "{err:?}");
    let child = nix::unistd::Pid::from_raw(read_pid(&fake.bin().join("log/forky.child")));
    let status = nix::sys::wait::waitpid(child, None).unwrap();
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Signaled(child, nix::sys::signal::Signal::SIGKILL, false)
    );
}

#[tokio::test]
async fn missing_plugin_is_reported_before_anything_runs() {
    let fake = Fake::new(&[("a", "")]);
    std::fs::write(fake.bin().join("noexec"), "#!/bin/sh\n").unwrap();
    let cni = fake.cni(SECOND);
    assert_eq!(cni.find_plugin("a"), Some(fake.bin().join("a")));
    assert_eq!(cni.find_plugin("noexec"), None, "not executable");
    assert_eq!(cni.find_plugin("../bin/a"), None);
    let net = list(
        "1.0.0",
        json!([{"type": "nope"}, {"type": "a"}, {"type": "noexec"}, {"type": "nope"}]),
    );
    assert_eq!(cni.missing_plugins(&net), ["nope", "noexec"]);
    match cni.add(&net, &attachment()).await {
        Err(CniError::PluginNotFound { plugin, dirs }) => {
            assert_eq!(plugin, "nope");
            assert_eq!(dirs, cni.plugin_dirs());
        }
        other => panic!("{other:?}"),
    }
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn invalid_attachment_runs_nothing() {
    let fake = Fake::new(&[("a", "")]);
    let cni = fake.cni(SECOND);
    let net = list("1.0.0", json!([{"type": "a"}]));
    let bad_id = Attachment {
        container_id: "-x".into(),
        ..attachment()
    };
    assert!(matches!(
        cni.add(&net, &bad_id).await,
        Err(CniError::InvalidAttachment {
            field: "container id",
            ..
        })
    ));
    let bad_if = Attachment {
        ifname: "eth0:1".into(),
        ..attachment()
    };
    assert!(matches!(
        cni.del(&net, &bad_if).await,
        Err(CniError::InvalidAttachment {
            field: "ifname",
            ..
        })
    ));
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn check_uses_cached_result_and_honours_disable_check() {
    let fake = Fake::new(&[("a", "ip=5"), ("b", "ip=6")]);
    let cni = fake.cni(SECOND);
    let att = attachment();
    let net = list("1.0.0", json!([{"type": "a"}, {"type": "b"}]));
    assert!(matches!(
        cni.check(&net, &att).await,
        Err(CniError::NotAdded { .. })
    ));
    cni.add(&net, &att).await.unwrap();
    fake.clear_log();
    cni.check(&net, &att).await.unwrap();
    assert_eq!(fake.calls(), ["a CHECK", "b CHECK"]);
    assert_eq!(fake.stdin("a", "CHECK")["prevResult"]["from"], json!("b"));
    assert_eq!(fake.stdin("b", "CHECK")["prevResult"]["from"], json!("b"));

    fake.clear_log();
    let text = json!({"cniVersion": "1.0.0", "name": "testnet", "disableCheck": true, "plugins": [{"type": "a"}]});
    let disabled = parse_conflist(text.to_string().as_bytes(), None).unwrap();
    cni.check(&disabled, &att).await.unwrap();
    assert!(fake.calls().is_empty());

    let old = list("0.3.1", json!([{"type": "a"}]));
    assert!(matches!(
        cni.check(&old, &att).await,
        Err(CniError::Unsupported {
            command: "CHECK",
            ..
        })
    ));
}

#[tokio::test]
async fn status_runs_plugins_only_from_1_1_without_attachment_env() {
    let fake = Fake::new(&[("a", "version=1.1.0")]);
    let cni = fake.cni(SECOND);
    cni.status(&list("1.0.0", json!([{"type": "a"}])))
        .await
        .unwrap();
    assert!(fake.calls().is_empty());
    cni.status(&list("1.1.0", json!([{"type": "a"}])))
        .await
        .unwrap();
    assert_eq!(fake.calls(), ["a STATUS"]);
    let env = fake.env("a", "STATUS");
    assert!(
        !env.contains_key("CNI_CONTAINERID") && !env.contains_key("CNI_IFNAME"),
        "{env:?}"
    );
    assert!(matches!(
        cni.status(&list("1.1.0", json!([{"type": "gone"}]))).await,
        Err(CniError::PluginNotFound { .. })
    ));
}

#[tokio::test]
async fn gc_deletes_stale_cached_attachments_then_runs_plugin_gc() {
    let fake = Fake::new(&[("a", "version=1.1.0"), ("b", "version=1.1.0")]);
    let cni = fake.cni(SECOND);
    let net = list("1.1.0", json!([{"type": "a"}, {"type": "b"}]));
    let att = |id: &str, ifname: &str| Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
        ..attachment()
    };
    for (id, ifname) in [("pod1", "eth0"), ("pod2", "eth0"), ("pod1", "eth1")] {
        cni.add(&net, &att(id, ifname)).await.unwrap();
    }
    // another network's record that shares the name prefix is not touched
    let other = parse_conflist(
        br#"{"cniVersion":"1.1.0","name":"testnet-x","plugins":[{"type":"a"}]}"#,
        None,
    )
    .unwrap();
    cni.add(&other, &att("pod9", "eth0")).await.unwrap();
    fake.clear_log();

    cni.gc(&net, &[("pod1".into(), "eth0".into())])
        .await
        .unwrap();
    assert_eq!(
        fake.calls(),
        ["b DEL", "a DEL", "b DEL", "a DEL", "a GC", "b GC"]
    );
    let remaining: Vec<_> = cni
        .cached_attachments("testnet")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.container_id, c.ifname))
        .collect();
    assert_eq!(remaining, [("pod1".to_owned(), "eth0".to_owned())]);
    assert!(cni.cached("testnet-x", "pod9", "eth0").is_some());
    let gc = fake.stdin("a", "GC");
    assert_eq!(
        gc["cni.dev/valid-attachments"],
        json!([{"containerID": "pod1", "ifname": "eth0"}])
    );
    assert!(gc.get("prevResult").is_none());
    let env = fake.env("a", "GC");
    assert_eq!(env["CNI_COMMAND"], "GC");
    assert!(!env.contains_key("CNI_CONTAINERID"), "{env:?}");
    // the stale DELs used the cached netns and args
    assert_eq!(fake.env("a", "DEL")["CNI_NETNS"], "/run/netns/fake");
    assert_eq!(
        fake.env("a", "DEL")["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
    );

    // Before 1.1 there is no GC verb: only the stale attachments are deleted.
    let old = list("1.0.0", json!([{"type": "a"}]));
    cni.add(&old, &att("pod5", "eth0")).await.unwrap();
    fake.clear_log();
    cni.gc(&old, &[]).await.unwrap();
    assert_eq!(
        fake.calls(),
        ["b DEL", "a DEL", "a DEL"],
        "pod1 with its cached two-plugin list, then pod5 with its one-plugin list"
    );
    assert!(cni.cached_attachments("testnet").await.unwrap().is_empty());
}
