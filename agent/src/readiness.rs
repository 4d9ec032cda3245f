//! The runtime conditions of Status (RuntimeReady, NetworkReady): each false one carries a reason and a message
//! naming the cause, and is logged when it changes, so the node's NotReady is explained in the log too.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use crate::config::{Config, monitor_binary};
use crate::network::Network;

/// One condition: ready, or the reason (CamelCase, for machines) and a message (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    fn ready(kind: &'static str) -> Condition {
        Condition {
            kind,
            ready: true,
            reason: String::new(),
            message: String::new(),
        }
    }

    fn not_ready(kind: &'static str, reason: &str, message: String) -> Condition {
        Condition {
            kind,
            ready: false,
            reason: reason.to_owned(),
            message,
        }
    }
}

/// RuntimeReady: the programs every pod needs are in place.
pub fn runtime(config: &Config) -> Condition {
    runtime_with(&config.pause_binary(), &monitor_binary())
}

fn runtime_with(pause: &Path, monitor: &Path) -> Condition {
    const KIND: &str = "RuntimeReady";
    if !executable(pause) {
        return Condition::not_ready(
            KIND,
            "PauseBinaryNotFound",
            format!(
                "the pause program {} is missing or not executable: no pod sandbox can start (set pause_binary)",
                pause.display()
            ),
        );
    }
    if !executable(monitor) {
        return Condition::not_ready(
            KIND,
            "MonitorBinaryNotFound",
            format!(
                "the pod monitor {} is missing or not executable: no pod sandbox can start (install crius-monitor next to crius)",
                monitor.display()
            ),
        );
    }
    Condition::ready(KIND)
}

/// NetworkReady, and in words which network is used (or why none can be).
pub fn network(net: &Network) -> (Condition, String) {
    const KIND: &str = "NetworkReady";
    match net.readiness() {
        Ok(origin) => (Condition::ready(KIND), origin),
        Err((reason, message)) => (
            Condition::not_ready(KIND, &reason, message.clone()),
            message,
        ),
    }
}

/// A regular file with an execute bit.
pub fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last state logged, by condition.
static LOGGED: Mutex<BTreeMap<&'static str, (bool, String)>> = Mutex::new(BTreeMap::new());

/// Logs the conditions that changed since the last call: a warning when one is (or becomes) false, with its
/// reason and message; a note when it is true again. A first call logs only the false ones.
pub fn log_changes(conditions: &[&Condition]) {
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    for c in conditions {
        let now = (c.ready, c.reason.clone());
        let before = logged.insert(c.kind, now.clone());
        if before.as_ref() == Some(&now) {
            continue;
        }
        match (c.ready, before) {
            (false, _) => tracing::warn!(
                condition = c.kind,
                reason = %c.reason,
                "{} is false: {}",
                c.kind,
                c.message
            ),
            (true, Some(_)) => tracing::info!(condition = c.kind, "{} is true again", c.kind),
            (true, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("exe");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").expect("write");
        let gone = dir.path().join("gone");

        assert!(runtime_with(&exe, &exe).ready);
        let c = runtime_with(&gone, &exe);
        assert_eq!((c.ready, c.reason.as_str()), (false, "PauseBinaryNotFound"));
        assert!(c.message.contains(gone.to_str().expect("utf-8")), "{c:?}");
        let c = runtime_with(&exe, &plain);
        assert_eq!(c.reason, "MonitorBinaryNotFound");
        assert!(c.message.contains("plain"), "{c:?}");
        // A directory is no program.
        assert!(!runtime_with(dir.path(), &exe).ready);
    }
}
