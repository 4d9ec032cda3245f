//! The CNI client: finds plugins and runs a network config list for ADD, DEL, CHECK and STATUS.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::attachment::{Attachment, plugin_stdin};
use crate::cache::{self, CachedAttachment};
use crate::config::{NetworkConfigList, PluginConf};
use crate::error::CniError;
use crate::exec::{self, Invocation};
use crate::result::CniResult;
use crate::version::{self, Version};

/// A CNI client bound to plugin directories, a cache directory and a per-call timeout.
///
/// Like libcni, it relies on the caller for the spec's ordering rules: no two operations for the
/// same attachment at once, no second ADD without a DEL in between (a second ADD overwrites the
/// cached record and logs a warning), and a DEL after every ADD, including a failed one.
#[derive(Debug, Clone)]
pub struct Cni {
    plugin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
}

impl Cni {
    pub fn new(plugin_dirs: Vec<PathBuf>, cache_dir: PathBuf, timeout: Duration) -> Self {
        Cni {
            plugin_dirs,
            cache_dir,
            timeout,
        }
    }

    pub fn plugin_dirs(&self) -> &[PathBuf] {
        &self.plugin_dirs
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The first executable file named `plugin_type` in the plugin directories.
    pub fn find_plugin(&self, plugin_type: &str) -> Option<PathBuf> {
        if plugin_type.is_empty()
            || plugin_type.contains('/')
            || plugin_type == "."
            || plugin_type == ".."
        {
            return None;
        }
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    /// The plugin types of `net` that are not found, each once, in list order.
    pub fn missing_plugins(&self, net: &NetworkConfigList) -> Vec<String> {
        let mut missing: Vec<String> = Vec::new();
        for p in &net.plugins {
            if !missing.contains(&p.plugin_type) && self.find_plugin(&p.plugin_type).is_none() {
                missing.push(p.plugin_type.clone());
            }
        }
        missing
    }

    /// ADD: the plugins in order, each given the previous one's result; stops at the first error.
    /// On success the final result and the exact list are cached for DEL and CHECK.
    pub async fn add(
        &self,
        net: &NetworkConfigList,
        att: &Attachment,
    ) -> Result<CniResult, CniError> {
        att.validate(true)?;
        if self.read_cache(&net.name, att).await.is_some() {
            tracing::warn!(network = %net.name, container_id = %att.container_id, ifname = %att.ifname,
                "cni ADD for an attachment that is still cached (no DEL since the last ADD); replacing the cache");
        }
        let offers = att.runtime_config.offers();
        let mut prev: Option<CniResult> = None;
        for plugin in &net.plugins {
            let out = self
                .invoke(
                    "ADD",
                    net,
                    plugin,
                    att,
                    &offers,
                    prev.as_ref().map(|r| &r.raw),
                )
                .await?;
            let bad = |reason: String| CniError::InvalidResult {
                plugin: plugin.plugin_type.clone(),
                reason,
            };
            let raw: Value =
                serde_json::from_slice(&out).map_err(|e| bad(format!("not JSON: {e}")))?;
            prev = Some(CniResult::parse(raw, Some(&net.cni_version)).map_err(bad)?);
        }
        // A parsed list has at least one plugin, so there is a result.
        let result = prev.ok_or_else(|| CniError::config(&net.name, "the list has no plugins"))?;
        let record = CachedAttachment {
            network_name: net.name.clone(),
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
            netns: att.netns.clone(),
            cni_args: att.args.clone(),
            config: net.clone(),
            result: result.clone(),
        };
        let dir = self.cache_dir.clone();
        blocking(move || cache::write(&dir, &record)).await?;
        Ok(result)
    }

    /// DEL: the plugins in reverse order. Uses the list and result cached at ADD time when there
    /// are some (the list given may have changed since); without a cache it runs `net` without
    /// `prevResult`. Removes the cache after success. Safe to repeat.
    pub async fn del(&self, net: &NetworkConfigList, att: &Attachment) -> Result<(), CniError> {
        att.validate(false)?;
        let cached = self.read_cache(&net.name, att).await;
        let (list, prev) = match &cached {
            Some(c) => {
                let prev =
                    CniResult::prev_result_allowed(&c.config.cni_version).then_some(&c.result.raw);
                (&c.config, prev)
            }
            None => (net, None),
        };
        let offers = att.runtime_config.offers();
        for plugin in list.plugins.iter().rev() {
            self.invoke("DEL", list, plugin, att, &offers, prev).await?;
        }
        let (dir, name, id, ifname) = (
            self.cache_dir.clone(),
            net.name.clone(),
            att.container_id.clone(),
            att.ifname.clone(),
        );
        blocking(move || cache::remove(&dir, &name, &id, &ifname)).await
    }

    /// CHECK: the plugins in order, each given the cached ADD result. Skipped (Ok) when the list
    /// sets `disableCheck`; an error when the version has no CHECK or the attachment was not added.
    pub async fn check(&self, net: &NetworkConfigList, att: &Attachment) -> Result<(), CniError> {
        if net.disable_check {
            return Ok(());
        }
        if version::of(&net.cni_version) < Version::V0_4_0 {
            return Err(CniError::Unsupported {
                command: "CHECK",
                version: net.cni_version.clone(),
            });
        }
        att.validate(true)?;
        let not_added = || CniError::NotAdded {
            network: net.name.clone(),
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
        };
        let cached = self
            .read_cache(&net.name, att)
            .await
            .ok_or_else(not_added)?;
        let offers = att.runtime_config.offers();
        for plugin in &net.plugins {
            self.invoke("CHECK", net, plugin, att, &offers, Some(&cached.result.raw))
                .await?;
        }
        Ok(())
    }

    /// STATUS (spec 1.1): whether the network is ready for ADDs. For older versions, which have
    /// no STATUS, only that every plugin is present.
    pub async fn status(&self, net: &NetworkConfigList) -> Result<(), CniError> {
        if let Some(plugin) = self.missing_plugins(net).into_iter().next() {
            return Err(CniError::PluginNotFound {
                plugin,
                dirs: self.plugin_dirs.clone(),
            });
        }
        if version::of(&net.cni_version) < Version::V1_1_0 {
            return Ok(());
        }
        let none = Attachment::default();
        for plugin in &net.plugins {
            self.invoke("STATUS", net, plugin, &none, &Map::new(), None)
                .await?;
        }
        Ok(())
    }

    /// GC (spec 1.1): DELs every cached attachment of `net` that is not in `valid` (pairs of
    /// container id and ifname), using the cached list, netns and args; then, for lists of
    /// version 1.1 or later without `disableGC`, runs GC on each plugin with
    /// `cni.dev/valid-attachments`. Every step is attempted; the first error is returned.
    /// Must not run concurrently with ADD or DEL on the same network.
    pub async fn gc(
        &self,
        net: &NetworkConfigList,
        valid: &[(String, String)],
    ) -> Result<(), CniError> {
        let mut first_err = None;
        for stale in self.cached_attachments(&net.name).await? {
            if valid
                .iter()
                .any(|(id, ifname)| *id == stale.container_id && *ifname == stale.ifname)
            {
                continue;
            }
            let att = Attachment {
                container_id: stale.container_id.clone(),
                netns: stale.netns.clone(),
                ifname: stale.ifname.clone(),
                args: stale.cni_args.clone(),
                runtime_config: Default::default(),
            };
            tracing::info!(network = %net.name, container_id = %att.container_id, ifname = %att.ifname,
                "cni gc: deleting stale attachment");
            if let Err(e) = self.del(&stale.config, &att).await {
                first_err.get_or_insert(e);
            }
        }
        if !net.disable_gc && version::of(&net.cni_version) >= Version::V1_1_0 {
            let attachments: Vec<Value> = valid
                .iter()
                .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
                .collect();
            let mut extra = Map::new();
            extra.insert(
                "cni.dev/valid-attachments".into(),
                Value::Array(attachments),
            );
            let none = Attachment::default();
            for plugin in &net.plugins {
                if let Err(e) = self
                    .invoke_with("GC", net, plugin, &none, &Map::new(), None, &extra)
                    .await
                {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Every cached attachment of the network `net_name` (unreadable records are skipped with a warning).
    pub async fn cached_attachments(
        &self,
        net_name: &str,
    ) -> Result<Vec<CachedAttachment>, CniError> {
        let (dir, name) = (self.cache_dir.clone(), net_name.to_owned());
        blocking(move || cache::list(&dir, &name)).await
    }

    /// The config and result persisted by the last successful ADD of this attachment.
    pub fn cached(
        &self,
        net_name: &str,
        container_id: &str,
        ifname: &str,
    ) -> Option<CachedAttachment> {
        match cache::read(&self.cache_dir, net_name, container_id, ifname) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable cni cache record");
                None
            }
        }
    }

    async fn read_cache(&self, net_name: &str, att: &Attachment) -> Option<CachedAttachment> {
        let this = self.clone();
        let (name, id, ifname) = (
            net_name.to_owned(),
            att.container_id.clone(),
            att.ifname.clone(),
        );
        tokio::task::spawn_blocking(move || this.cached(&name, &id, &ifname))
            .await
            .ok()
            .flatten()
    }

    async fn invoke(
        &self,
        command: &'static str,
        net: &NetworkConfigList,
        plugin: &PluginConf,
        att: &Attachment,
        offers: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, CniError> {
        self.invoke_with(command, net, plugin, att, offers, prev, &Map::new())
            .await
    }

    /// [`Cni::invoke`] with extra top-level keys in the plugin's stdin config.
    #[allow(clippy::too_many_arguments)]
    async fn invoke_with(
        &self,
        command: &'static str,
        net: &NetworkConfigList,
        plugin: &PluginConf,
        att: &Attachment,
        offers: &Map<String, Value>,
        prev: Option<&Value>,
        extra: &Map<String, Value>,
    ) -> Result<Vec<u8>, CniError> {
        let path =
            self.find_plugin(&plugin.plugin_type)
                .ok_or_else(|| CniError::PluginNotFound {
                    plugin: plugin.plugin_type.clone(),
                    dirs: self.plugin_dirs.clone(),
                })?;
        let mut stdin = plugin_stdin(net, plugin, offers, prev);
        if let Some(obj) = stdin.as_object_mut() {
            obj.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let cni_args = att.cni_args();
        tracing::debug!(command, network = %net.name, plugin = %plugin.plugin_type,
            container_id = %att.container_id, ifname = %att.ifname, "running cni plugin");
        exec::run(&Invocation {
            plugin: &plugin.plugin_type,
            path: &path,
            command,
            per_attachment: !matches!(command, "STATUS" | "GC"),
            container_id: &att.container_id,
            netns: &att.netns,
            ifname: &att.ifname,
            cni_args: &cni_args,
            cni_path: &self.plugin_dirs,
            stdin: &stdin,
            timeout: self.timeout,
        })
        .await
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CniError> + Send + 'static,
) -> Result<T, CniError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(CniError::io("run cni cache task", std::io::Error::other(e))))
}
