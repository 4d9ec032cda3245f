//! The one error type of the CNI client.

use std::path::PathBuf;
use std::time::Duration;

/// The CNI error code meaning "try again later" (spec: well-known error codes).
pub const CODE_TRY_AGAIN_LATER: u32 = 11;

/// Everything that can go wrong loading a network configuration or running its plugins.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A plugin exited non-zero; `code`, `msg` and `details` come from the error JSON it printed
    /// (or, when it printed none, `code` 999 and its stderr/stdout as `msg`).
    #[error(
        "cni plugin {plugin} failed (code {code}): {msg}{}",
        details_suffix(details)
    )]
    Plugin {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },

    /// A plugin did not finish in time; it was killed (with its process group).
    #[error("cni plugin {plugin} timed out after {after:?} and was killed")]
    Timeout { plugin: String, after: Duration },

    /// No executable named like the plugin type in any plugin directory.
    #[error("cni plugin {plugin} not found in {}", join_dirs(dirs))]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },

    /// A network configuration (file, embedded or cached) is not valid.
    #[error("invalid cni network configuration {what}: {reason}")]
    InvalidConfig { what: String, reason: String },

    /// An attachment parameter (container id, interface name, netns) is not valid.
    #[error("invalid cni attachment {field}: {reason}")]
    InvalidAttachment { field: &'static str, reason: String },

    /// A plugin printed something that is not a valid result for the requested version.
    #[error("cni plugin {plugin} returned an invalid result: {reason}")]
    InvalidResult { plugin: String, reason: String },

    /// The command needs a cached ADD result and there is none.
    #[error(
        "no cached cni result for network {network}, container {container_id}, interface {ifname}"
    )]
    NotAdded {
        network: String,
        container_id: String,
        ifname: String,
    },

    /// The configuration's cniVersion does not support the command.
    #[error("cni command {command} is not supported by cniVersion {version}")]
    Unsupported {
        command: &'static str,
        version: String,
    },

    /// The plugin could not be started or talked to.
    #[error("cannot run cni plugin {plugin}")]
    Exec {
        plugin: String,
        #[source]
        source: std::io::Error,
    },

    /// A file operation (config dir, cache) failed.
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CniError {
    /// The plugin asked to be retried later (error code 11).
    pub fn is_try_again_later(&self) -> bool {
        matches!(self, CniError::Plugin { code, .. } if *code == CODE_TRY_AGAIN_LATER)
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> CniError {
        CniError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn config(what: impl Into<String>, reason: impl Into<String>) -> CniError {
        CniError::InvalidConfig {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no plugin directories configured)".into();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plugin_error_message_names_plugin_code_and_details() {
        let e = CniError::Plugin {
            plugin: "bridge".into(),
            code: 11,
            msg: "busy".into(),
            details: "lock held".into(),
        };
        assert_eq!(
            e.to_string(),
            "cni plugin bridge failed (code 11): busy (lock held)"
        );
        assert!(e.is_try_again_later());
        let e = CniError::Plugin {
            plugin: "x".into(),
            code: 7,
            msg: "bad".into(),
            details: String::new(),
        };
        assert_eq!(e.to_string(), "cni plugin x failed (code 7): bad");
        assert!(!e.is_try_again_later());
    }

    #[test]
    fn not_found_lists_dirs() {
        let e = CniError::PluginNotFound {
            plugin: "p".into(),
            dirs: vec!["/a".into(), "/b".into()],
        };
        assert_eq!(e.to_string(), "cni plugin p not found in /a:/b");
    }
}
