//! `crius check`: can this machine run pods? One line per requirement and a verdict.

use std::path::Path;

use crate::config::{Config, monitor_binary};
use crate::network::Network;
use crate::readiness;
use crate::runtime::{CgroupReport, cgroup_manager};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Level {
    Ok,
    Warn,
    Missing,
}

struct Line {
    level: Level,
    what: &'static str,
    detail: String,
}

/// Prints the report; returns whether the machine is ready.
pub fn run(config: &Config) -> bool {
    let lines = gather(config);
    for l in &lines {
        let tag = match l.level {
            Level::Ok => "ok     ",
            Level::Warn => "warn   ",
            Level::Missing => "missing",
        };
        println!("{tag} {}: {}", l.what, l.detail);
    }
    let ready = lines.iter().all(|l| l.level != Level::Missing);
    println!("verdict: {}", if ready { "ready" } else { "not ready" });
    ready
}

fn gather(config: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    let missing_ns: Vec<&str> = ["net", "ipc", "uts", "pid", "mnt", "user", "cgroup"]
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    out.push(if missing_ns.is_empty() {
        line(
            Level::Ok,
            "namespaces",
            "net ipc uts pid mnt user cgroup".into(),
        )
    } else {
        line(
            Level::Missing,
            "namespaces",
            format!("kernel lacks {}", missing_ns.join(" ")),
        )
    });
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    out.push(
        if fs
            .lines()
            .any(|l| l.trim_end().ends_with("\toverlay") || l.trim() == "nodev\toverlay")
        {
            line(Level::Ok, "overlayfs", "supported".into())
        } else {
            line(
                Level::Warn,
                "overlayfs",
                "not in /proc/filesystems (the overlay module may load on first use)".into(),
            )
        },
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    out.push(if status.lines().any(|l| l.starts_with("Seccomp:")) {
        line(Level::Ok, "seccomp", "supported".into())
    } else {
        line(
            Level::Missing,
            "seccomp",
            "kernel built without CONFIG_SECCOMP".into(),
        )
    });
    let report = CgroupReport::of(&cgroup_manager(config));
    match (&report.mount, &report.problem) {
        (Some(mount), _) => {
            out.push(line(
                Level::Ok,
                "cgroup v2",
                format!(
                    "{} (usable controllers: {})",
                    mount.display(),
                    if report.usable_controllers.is_empty() {
                        "none".to_owned()
                    } else {
                        report.usable_controllers.join(" ")
                    }
                ),
            ));
            if !report.unenforceable.is_empty() {
                out.push(line(
                    Level::Warn,
                    "cgroup limits",
                    format!(
                        "cannot be enforced here: {} (controllers not enabled in the v2 tree); pods still run",
                        report.unenforceable.join(" ")
                    ),
                ));
            }
            let kill = kernel_at_least(5, 14);
            out.push(line(
                if kill { Level::Ok } else { Level::Warn },
                "cgroup.kill",
                if kill {
                    "available".into()
                } else {
                    "kernel older than 5.14: processes are killed one by one".into()
                },
            ));
        }
        (None, problem) => out.push(line(
            Level::Missing,
            "cgroup v2",
            problem
                .clone()
                .unwrap_or_else(|| "no cgroup2 mount found".into()),
        )),
    }
    // RuntimeReady is false without either program.
    for (what, path, hint) in [
        ("pause", config.pause_binary(), "set pause_binary"),
        (
            "monitor",
            monitor_binary(),
            "install crius-monitor next to crius",
        ),
    ] {
        out.push(if readiness::executable(&path) {
            line(Level::Ok, what, path.display().to_string())
        } else {
            line(
                Level::Missing,
                what,
                format!(
                    "{} is missing or not executable ({hint}; RuntimeReady false)",
                    path.display()
                ),
            )
        });
    }
    let network = Network::new(config);
    match network.choose() {
        Ok(choice) => {
            out.push(line(
                Level::Ok,
                "cni config",
                format!("network {:?} from {}", choice.list.name, choice.origin),
            ));
            if !choice.ignored.is_empty() {
                out.push(line(
                    Level::Warn,
                    "cni config",
                    format!(
                        "no valid config in {}, so the embedded default is used: {}",
                        config.network.conf_dir.display(),
                        choice.ignored.join("; ")
                    ),
                ));
            }
            out.push(if choice.missing_plugins.is_empty() {
                line(
                    Level::Ok,
                    "cni plugins",
                    format!("all found in {}", network.cni_dirs()),
                )
            } else {
                line(
                    Level::Missing,
                    "cni plugins",
                    format!(
                        "{} not found in {} (NetworkReady false)",
                        choice.missing_plugins.join(", "),
                        network.cni_dirs()
                    ),
                )
            });
        }
        Err(e) => out.push(line(
            Level::Missing,
            "cni config",
            format!("{} (NetworkReady false)", crate::error::chain(&e)),
        )),
    }
    out
}

fn line(level: Level, what: &'static str, detail: String) -> Line {
    Line {
        level,
        what,
        detail,
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}
