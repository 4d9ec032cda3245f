//! The parts of an image config that shape a container: `config.Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`,
//! `StopSignal`. Image configs come from registries and are untrusted: wrong types are an error, odd values are
//! checked where they are used.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::{ImageError, ImageRecord};

/// The runtime part of an OCI/Docker image config (its `config` object).
///
/// `Volumes` is deliberately not read: containerd creates an anonymous directory for each image volume, Kubernetes
/// never relies on that (a pod declares its volumes), and crius leaves them out: the path is simply part of the
/// container's rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// The runtime config of an image record; an image without one (`config` absent or null) has none of these.
    pub fn of(image: &ImageRecord) -> Result<ImageConfig> {
        match image.config.get("config") {
            None | Some(serde_json::Value::Null) => Ok(ImageConfig::default()),
            Some(v) => ImageConfig::deserialize(v).map_err(|e| {
                Error::Image(ImageError::BadImage(format!(
                    "the config of image {} has a malformed runtime section: {e}",
                    image.id
                )))
            }),
        }
    }
}

/// Signal names and numbers on Linux (x86 and arm numbering, which agree on these).
const SIGNALS: &[(&str, u8)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

/// A stop signal as images write it ("SIGQUIT", "QUIT", "sigquit", "3", "SIGRTMIN+3") in its canonical name, or
/// `None` when it is no signal.
pub fn parse_signal(raw: &str) -> Option<String> {
    let s = raw.trim();
    if let Ok(n) = s.parse::<u8>() {
        return SIGNALS
            .iter()
            .find(|(_, num)| *num == n)
            .map(|(name, _)| (*name).to_owned());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let alias = match name.as_str() {
        "SIGIOT" => "SIGABRT",
        "SIGPOLL" => "SIGIO",
        "SIGCLD" => "SIGCHLD",
        other => other,
    };
    if let Some((known, _)) = SIGNALS.iter().find(|(n, _)| *n == alias) {
        return Some((*known).to_owned());
    }
    // Real-time signals: SIGRTMIN, SIGRTMIN+n, SIGRTMAX, SIGRTMAX-n (glibc has 31 of them).
    let rt = |base: &str, sep: char| -> Option<String> {
        let rest = alias.strip_prefix(base)?;
        if rest.is_empty() {
            return Some(base.to_owned());
        }
        let n: u8 = rest.strip_prefix(sep)?.parse().ok()?;
        (n <= 30).then(|| format!("{base}{sep}{n}"))
    };
    rt("SIGRTMIN", '+').or_else(|| rt("SIGRTMAX", '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(config: serde_json::Value) -> ImageRecord {
        ImageRecord {
            id: "sha256:abc".into(),
            repo_tags: vec![],
            repo_digests: vec![],
            size: 0,
            user: String::new(),
            chain_ids: vec![],
            manifest_digest: String::new(),
            config,
        }
    }

    #[test]
    fn reads_the_runtime_config() {
        let rec = record(serde_json::json!({
            "architecture": "amd64",
            "config": {
                "Entrypoint": ["/bin/app"],
                "Cmd": null,
                "Env": ["PATH=/bin", "A=1"],
                "WorkingDir": "/srv",
                "User": "app",
                "StopSignal": "SIGQUIT",
                "Volumes": {"/data": {}},
            }
        }));
        let c = ImageConfig::of(&rec).unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/bin/app".to_owned()]));
        assert_eq!(c.cmd, None);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(
            ImageConfig::of(&record(serde_json::Value::Null)).unwrap(),
            ImageConfig::default()
        );
        let bad = record(serde_json::json!({"config": {"Cmd": "not a list"}}));
        assert!(matches!(
            ImageConfig::of(&bad),
            Err(Error::Image(ImageError::BadImage(_)))
        ));
    }

    #[test]
    fn signals() {
        for (raw, want) in [
            ("SIGQUIT", Some("SIGQUIT")),
            ("QUIT", Some("SIGQUIT")),
            ("sigterm", Some("SIGTERM")),
            ("3", Some("SIGQUIT")),
            ("15", Some("SIGTERM")),
            (" SIGINT ", Some("SIGINT")),
            ("SIGIOT", Some("SIGABRT")),
            ("RTMIN+3", Some("SIGRTMIN+3")),
            ("SIGRTMAX", Some("SIGRTMAX")),
            ("SIGRTMAX-2", Some("SIGRTMAX-2")),
            ("SIGRTMIN+31", None),
            ("0", None),
            ("99", None),
            ("SIGNOPE", None),
            ("", None),
            ("-9", None),
        ] {
            assert_eq!(parse_signal(raw).as_deref(), want, "{raw:?}");
        }
    }
}
