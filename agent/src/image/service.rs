//! The image service: pulls (single-flight, bounded parallel layer downloads, progress timeout, cancellation),
//! image metadata in the state store, list/status/remove, usage.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ImageError;
use super::content::{self, HashingFile, Paths, RemoveOnDrop};
use super::reference::Reference;
use super::registry::{self, Credentials, Remote};
use crate::config::RegistryConfig;
use crate::metrics;
use crate::store::{CONTAINERS, IMAGES, LAYERS, Store};

/// An image as recorded in the state store (key: its id, the config digest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Unpacked size: the sum of the layers' uncompressed tar sizes.
    pub size: u64,
    /// The config's User, as written there.
    pub user: String,
    /// Layer chain ids, bottom first; each names `<root>/images/layers/<hex>`.
    pub chain_ids: Vec<String>,
    pub manifest_digest: String,
    /// The image config, as the registry served it.
    pub config: serde_json::Value,
}

/// An unpacked layer (key: chain id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    pub size: u64,
}

/// How pulls behave.
#[derive(Debug, Clone)]
pub struct PullSettings {
    pub registries: BTreeMap<String, RegistryConfig>,
    pub progress_timeout: Duration,
    pub max_concurrent_downloads: usize,
}

static FLIGHT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

type Outcome = Option<Result<String, ImageError>>;

struct Flight {
    id: u64,
    rx: watch::Receiver<Outcome>,
    waiters: AtomicUsize,
    /// Set when the last caller leaves: the pull stops at its next chunk and cleans up after itself (an abort
    /// would skip the cleanup and leave unpacked layers without a record).
    cancel: Arc<watch::Sender<bool>>,
}

pub struct Images {
    paths: Paths,
    store: Arc<Store>,
    settings: PullSettings,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// Chain ids that pulls in progress use: never garbage-collected under them.
    active: Mutex<HashMap<String, usize>>,
    /// Serialises metadata read-modify-writes (tags moving, removal and layer GC).
    meta: tokio::sync::Mutex<()>,
}

/// Usage of a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

impl Images {
    /// Opens the store under `images_root`: clears leftovers of interrupted pulls, drops layers no image uses.
    pub fn open(
        images_root: std::path::PathBuf,
        store: Arc<Store>,
        settings: PullSettings,
    ) -> Result<Images, ImageError> {
        let paths = Paths::new(images_root);
        paths.prepare()?;
        let images = Images {
            paths,
            store,
            settings,
            flights: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            meta: tokio::sync::Mutex::new(()),
        };
        images.collect_garbage()?;
        Ok(images)
    }

    pub fn root(&self) -> &std::path::Path {
        &self.paths.root
    }

    /// The directory of a layer (an overlayfs lowerdir).
    pub fn layer_dir(&self, chain_id: &str) -> std::path::PathBuf {
        self.paths.layer(chain_id)
    }

    /// Pulls `reference` and returns the image id. Concurrent pulls of one reference share one download; the
    /// download is cancelled when every caller has gone.
    pub async fn pull(
        self: &Arc<Self>,
        reference: Reference,
        credentials: Credentials,
    ) -> Result<String, ImageError> {
        let key = reference.to_string();
        let flight = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(f) => {
                    f.waiters.fetch_add(1, Ordering::SeqCst);
                    tracing::debug!(image = %key, "joining a pull in progress");
                    f.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    let me = self.clone();
                    let (r, k) = (reference.clone(), key.clone());
                    let id = FLIGHT_SEQ.fetch_add(1, Ordering::Relaxed);
                    let cancel = Arc::new(watch::channel(false).0);
                    let stop = cancel.clone();
                    tokio::spawn(async move {
                        let out = me.pull_once(&r, &credentials, &stop).await;
                        let mut flights = lock(&me.flights);
                        if flights.get(&k).is_some_and(|f| f.id == id) {
                            flights.remove(&k);
                        }
                        let _ = tx.send(Some(out));
                    });
                    let f = Arc::new(Flight {
                        id,
                        rx,
                        waiters: AtomicUsize::new(1),
                        cancel,
                    });
                    flights.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let waiter = Waiter {
            images: self,
            key: &key,
            flight: flight.clone(),
        };
        let mut rx = flight.rx.clone();
        let out = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| {
                Err(ImageError::Cancelled {
                    reference: key.clone(),
                })
            }),
            Err(_) => Err(ImageError::Cancelled {
                reference: key.clone(),
            }),
        };
        drop(waiter);
        out
    }

    /// One pull; on failure (or cancellation), the layers it unpacked that nothing uses are removed again.
    async fn pull_once(
        &self,
        reference: &Reference,
        credentials: &Credentials,
        stop: &watch::Sender<bool>,
    ) -> Result<String, ImageError> {
        let mut chain_ids = Vec::new();
        let start = std::time::Instant::now();
        let out = self
            .pull_inner(reference, credentials, stop, &mut chain_ids)
            .await;
        let outcome = match &out {
            Ok(_) => metrics::PullResult::Success,
            Err(ImageError::Cancelled { .. }) => metrics::PullResult::Cancelled,
            Err(_) => metrics::PullResult::Failure,
        };
        metrics::image_pull(outcome, start.elapsed());
        if out.is_err() && !chain_ids.is_empty() {
            let _meta = self.meta.lock().await;
            let doomed = self.unused_layers(&chain_ids)?;
            let (paths, store) = (self.paths.clone(), self.store.clone());
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || remove_layers(&paths, &store, &doomed)).await
            {
                tracing::warn!(error = %crate::error::chain(&e), "cannot remove the layers of a failed pull");
            }
        }
        out
    }

    async fn pull_inner(
        &self,
        reference: &Reference,
        credentials: &Credentials,
        stop: &watch::Sender<bool>,
        pulled_chain_ids: &mut Vec<String>,
    ) -> Result<String, ImageError> {
        let name = reference.to_string();
        let cancelled = || ImageError::Cancelled {
            reference: name.clone(),
        };
        let auth = credentials.to_registry_auth()?;
        let endpoints = registry::endpoints(&self.settings.registries, &reference.registry)?;
        let ca_files = self
            .settings
            .registries
            .get(&reference.registry)
            .map(|c| c.ca_files.clone())
            .unwrap_or_default();
        let timeout = self.settings.progress_timeout;
        let mut last = None;
        let mut found = None;
        for endpoint in endpoints {
            let remote = Remote::new(
                reference,
                endpoint.clone(),
                &ca_files,
                auth.clone(),
                timeout.min(Duration::from_secs(10)),
            )?;
            let resolved = tokio::select! {
                r = tokio::time::timeout(timeout, remote.resolve(&name)) => r.unwrap_or_else(|_| {
                    Err(ImageError::Stalled {
                        reference: name.clone(),
                        after: timeout,
                    })
                }),
                _ = stopped(stop) => return Err(cancelled()),
            };
            match resolved {
                Ok(r) => {
                    found = Some((remote, r));
                    break;
                }
                Err(e) => {
                    if endpoint.mirror {
                        tracing::warn!(image = %name, mirror = %endpoint.host, error = %crate::error::chain(&e), "mirror failed, trying the next endpoint");
                    }
                    // When every endpoint fails, report the most telling failure: an air-gapped node's mirror
                    // saying "not found" matters more than the unreachable upstream tried after it.
                    last = Some(match last.take() {
                        Some(prev) if telling(&prev) >= telling(&e) => prev,
                        _ => e,
                    });
                }
            }
        }
        let (remote, resolved) = match found {
            Some(f) => f,
            None => return Err(last.ok_or_else(|| ImageError::BadConfig("no endpoint".into()))?),
        };
        let config_digest = resolved.manifest.config.digest.clone();
        content::check_sha256(&config_digest)?;
        let config: serde_json::Value = serde_json::from_slice(&resolved.config)
            .map_err(|e| ImageError::BadImage(format!("config {config_digest}: {e}")))?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| {
                ImageError::BadImage(format!("config {config_digest} has no rootfs.diff_ids"))
            })?;
        let layers = &resolved.manifest.layers;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::BadImage(format!(
                "manifest has {} layers but config {config_digest} lists {} diff ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        for d in diff_ids.iter().chain(layers.iter().map(|l| &l.digest)) {
            content::check_sha256(d)?;
        }
        let chain_ids = content::chain_ids(&diff_ids);
        // Registered under the metadata lock: a concurrent remove either finished deleting these layers before
        // (and the pull downloads them again) or sees them in use and keeps them.
        let _active = {
            let _meta = self.meta.lock().await;
            ActiveLayers::new(self, &chain_ids)
        };
        pulled_chain_ids.clone_from(&chain_ids);
        tracing::info!(image = %name, endpoint = %remote.endpoint.host, id = %config_digest, layers = layers.len(), "pulling");

        let remote = &remote;
        let mut jobs = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let (diff_id, chain_id) = (diff_ids[i].clone(), chain_ids[i].clone());
            let name = name.clone();
            let layer = layer.clone();
            let job: futures_util::future::BoxFuture<'_, Result<u64, ImageError>> =
                Box::pin(async move {
                    let r = self
                        .pull_layer(remote, &name, &layer, diff_id, chain_id, stop, timeout)
                        .await;
                    if r.is_err() {
                        stop.send_replace(true);
                    }
                    r
                });
            jobs.push(job);
        }
        // Every job runs to its end (a first failure stops the others at their next chunk) so that no unpack is
        // still running when a failed pull cleans up.
        let results: Vec<Result<u64, ImageError>> = futures_util::stream::iter(jobs)
            .buffered(self.settings.max_concurrent_downloads.max(1))
            .collect()
            .await;
        let mut sizes = Vec::with_capacity(results.len());
        let mut failure: Option<ImageError> = None;
        for r in results {
            match r {
                Ok(size) => sizes.push(size),
                // The first real failure, not the cancellations it caused.
                Err(e) => match &failure {
                    Some(ImageError::Cancelled { .. }) | None => failure = Some(e),
                    Some(_) => {}
                },
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }

        let user = config
            .pointer("/config/User")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let repo_digest = reference
            .with_digest(resolved.repo_digest.clone())
            .to_string();
        let tag = reference.tag.as_ref().map(|_| {
            let mut r = reference.clone();
            r.digest = None;
            r.to_string()
        });
        let _meta = self.meta.lock().await;
        let mut record = self
            .store
            .get::<ImageRecord>(IMAGES, &config_digest)?
            .unwrap_or(ImageRecord {
                id: config_digest.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size: 0,
                user: String::new(),
                chain_ids: Vec::new(),
                manifest_digest: String::new(),
                config: serde_json::Value::Null,
            });
        record.size = sizes.iter().sum();
        record.user = user;
        record.chain_ids = chain_ids;
        record.manifest_digest = resolved.manifest_digest.clone();
        record.config = config;
        push_unique(&mut record.repo_digests, repo_digest);
        if let Some(tag) = &tag {
            // A tag names one image: it moves from whichever image had it.
            for mut other in self.store.list::<ImageRecord>(IMAGES)? {
                if other.id != record.id && other.repo_tags.contains(tag) {
                    other.repo_tags.retain(|t| t != tag);
                    self.store.put(IMAGES, &other.id, &other)?;
                }
            }
            push_unique(&mut record.repo_tags, tag.clone());
        }
        self.store.put(IMAGES, &record.id, &record)?;
        tracing::info!(image = %name, id = %record.id, size = record.size, "pulled");
        Ok(record.id)
    }

    /// Downloads, verifies and unpacks one layer unless it is already present; returns its unpacked size.
    #[allow(clippy::too_many_arguments)]
    async fn pull_layer(
        &self,
        remote: &Remote,
        name: &str,
        layer: &oci_client::manifest::OciDescriptor,
        diff_id: String,
        chain_id: String,
        stop: &watch::Sender<bool>,
        timeout: Duration,
    ) -> Result<u64, ImageError> {
        let cancelled = || ImageError::Cancelled {
            reference: name.to_owned(),
        };
        if *stop.borrow() {
            return Err(cancelled());
        }
        if self.paths.layer(&chain_id).exists()
            && let Some(rec) = self.store.get::<LayerRecord>(LAYERS, &chain_id)?
        {
            tracing::debug!(image = %name, layer = %layer.digest, "layer already present");
            return Ok(rec.size);
        }
        let blob = self
            .download(remote, name, &layer.digest, timeout, stop)
            .await?;
        let paths = self.paths.clone();
        let media_type = layer.media_type.clone();
        let (d, c) = (diff_id.clone(), chain_id.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            content::unpack_layer(&paths, &blob, &media_type, &d, &c)
        })
        .await
        .map_err(|e| ImageError::BadImage(format!("unpack task failed: {e}")))??;
        self.store.put(
            LAYERS,
            &chain_id,
            &LayerRecord {
                chain_id: chain_id.clone(),
                diff_id,
                size: unpacked.size,
            },
        )?;
        tracing::info!(image = %name, layer = %layer.digest, size = unpacked.size, "layer unpacked");
        Ok(unpacked.size)
    }

    /// Streams one blob into tmp/, verifying its digest; a stall longer than `timeout` fails the download.
    async fn download(
        &self,
        remote: &Remote,
        name: &str,
        digest: &str,
        timeout: Duration,
        stop: &watch::Sender<bool>,
    ) -> Result<std::path::PathBuf, ImageError> {
        let stalled = || ImageError::Stalled {
            reference: name.to_owned(),
            after: timeout,
        };
        let cancelled = || ImageError::Cancelled {
            reference: name.to_owned(),
        };
        let mut stream = tokio::select! {
            s = tokio::time::timeout(timeout, remote.blob(name, digest)) => s.map_err(|_| stalled())??,
            _ = stopped(stop) => return Err(cancelled()),
        };
        let path = self.paths.tmp_path("blob");
        let mut guard = RemoveOnDrop(Some(path.clone()));
        let mut file = HashingFile::create(path)?;
        let mut last_log = std::time::Instant::now();
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(timeout, stream.next()) => c.map_err(|_| stalled())?,
                _ = stopped(stop) => return Err(cancelled()),
            };
            match chunk {
                None => break,
                Some(Ok(bytes)) => {
                    metrics::image_bytes(bytes.len());
                    file.write(&bytes)?
                }
                Some(Err(e)) => {
                    // oci-client checks the digest as the stream ends (as we do after it).
                    if let Some(oci_client::errors::DigestError::VerificationError {
                        expected,
                        actual,
                    }) = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<oci_client::errors::DigestError>())
                    {
                        return Err(ImageError::DigestMismatch {
                            expected: expected.clone(),
                            actual: actual.clone(),
                        });
                    }
                    return Err(ImageError::Registry {
                        host: remote.endpoint.host.clone(),
                        source: Arc::new(e),
                    });
                }
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(image = %name, layer = %digest, bytes = file.len, "downloading");
                last_log = std::time::Instant::now();
            }
        }
        let path = file.finish(digest)?;
        guard.0 = None;
        Ok(path)
    }

    /// Every image, or those `filter` (a reference or id) names.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>, ImageError> {
        match filter {
            Some(f) if !f.is_empty() => Ok(self.find(f)?.map(|(r, _)| r).into_iter().collect()),
            _ => Ok(self.store.list(IMAGES)?),
        }
    }

    /// The image `spec` (id, tag or digest reference) names, if any.
    pub fn status(&self, spec: &str) -> Result<Option<ImageRecord>, ImageError> {
        Ok(self.find(spec)?.map(|(r, _)| r))
    }

    /// Finds an image; the flag says whether `spec` named it by tag.
    fn find(&self, spec: &str) -> Result<Option<(ImageRecord, Option<String>)>, ImageError> {
        let all: Vec<ImageRecord> = self.store.list(IMAGES)?;
        let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let id = format!("sha256:{hex}");
            return Ok(all.into_iter().find(|r| r.id == id).map(|r| (r, None)));
        }
        let reference = Reference::parse(spec).map_err(|source| ImageError::BadReference {
            spec: spec.to_owned(),
            source,
        })?;
        if let Some(d) = &reference.digest {
            let want = reference.with_digest(d.clone()).to_string();
            return Ok(all
                .into_iter()
                .find(|r| r.repo_digests.contains(&want))
                .map(|r| (r, None)));
        }
        let tag = reference.to_string();
        Ok(all
            .into_iter()
            .find(|r| r.repo_tags.contains(&tag))
            .map(|r| (r, Some(tag))))
    }

    /// Removes what `spec` names: one tag when the image keeps others, else the image and the layers nothing else
    /// uses. Removing what is gone succeeds.
    pub async fn remove(&self, spec: &str) -> Result<(), ImageError> {
        let _meta = self.meta.lock().await;
        let Some((mut record, by_tag)) = self.find(spec)? else {
            return Ok(());
        };
        if let Some(tag) = by_tag
            && record.repo_tags.len() > 1
        {
            record.repo_tags.retain(|t| *t != tag);
            self.store.put(IMAGES, &record.id, &record)?;
            tracing::info!(id = %record.id, %tag, "untagged");
            return Ok(());
        }
        self.store.delete(IMAGES, &record.id)?;
        tracing::info!(id = %record.id, tags = ?record.repo_tags, "image removed");
        let paths = self.paths.clone();
        let store = self.store.clone();
        let doomed = self.unused_layers(&record.chain_ids)?;
        tokio::task::spawn_blocking(move || remove_layers(&paths, &store, &doomed))
            .await
            .map_err(|e| ImageError::BadImage(format!("layer removal task failed: {e}")))?
    }

    /// Of `candidates`, the chain ids no image record and no pull in progress uses.
    fn unused_layers(&self, candidates: &[String]) -> Result<Vec<String>, ImageError> {
        let mut used: HashSet<String> = lock(&self.active).keys().cloned().collect();
        for r in self.store.list::<ImageRecord>(IMAGES)? {
            used.extend(r.chain_ids);
        }
        // A container's rootfs stacks its image's layers: they stay while it exists, even if its image is removed.
        for c in self.store.list::<serde_json::Value>(CONTAINERS)? {
            if let Some(ids) = c.get("chain_ids").and_then(|v| v.as_array()) {
                used.extend(ids.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
        }
        Ok(candidates
            .iter()
            .filter(|c| !used.contains(*c))
            .cloned()
            .collect())
    }

    /// At startup: layer directories and records no image uses are removed.
    fn collect_garbage(&self) -> Result<(), ImageError> {
        let mut candidates: Vec<String> = self
            .store
            .list::<LayerRecord>(LAYERS)?
            .into_iter()
            .map(|l| l.chain_id)
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.paths.layers()) {
            for e in entries.flatten() {
                candidates.push(format!("sha256:{}", e.file_name().to_string_lossy()));
            }
        }
        candidates.sort();
        candidates.dedup();
        let doomed = self.unused_layers(&candidates)?;
        if !doomed.is_empty() {
            tracing::info!(layers = doomed.len(), "removing layers no image uses");
        }
        remove_layers(&self.paths, &self.store, &doomed)
    }

    /// Usage of the image store.
    pub fn usage(&self) -> Usage {
        let (bytes, inodes) = content::usage(&self.paths.root);
        Usage { bytes, inodes }
    }
}

fn remove_layers(paths: &Paths, store: &Store, chain_ids: &[String]) -> Result<(), ImageError> {
    for c in chain_ids {
        content::remove_layer(paths, c)?;
        store.delete(LAYERS, c)?;
        tracing::debug!(chain_id = %c, "layer removed");
    }
    Ok(())
}

/// Resolves once `stop` is set.
async fn stopped(stop: &watch::Sender<bool>) {
    let mut rx = stop.subscribe();
    // An error means the sender is gone, which cannot happen while we borrow it.
    let _ = rx.wait_for(|s| *s).await;
}

/// How much a failed endpoint's error says about the image, for choosing which one to report.
fn telling(e: &ImageError) -> u8 {
    match e {
        ImageError::NotFound { .. } => 3,
        ImageError::Unauthenticated { .. } | ImageError::Denied { .. } => 2,
        ImageError::Unavailable { .. } | ImageError::Stalled { .. } => 0,
        _ => 1,
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One caller of a pull; the last one to leave before the pull ends cancels it.
struct Waiter<'a> {
    images: &'a Images,
    key: &'a str,
    flight: Arc<Flight>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut flights = lock(&self.images.flights);
        if self.flight.waiters.fetch_sub(1, Ordering::SeqCst) == 1
            && self.flight.rx.borrow().is_none()
        {
            tracing::info!(image = %self.key, "pull cancelled: no caller is waiting for it");
            self.flight.cancel.send_replace(true);
            if flights
                .get(self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(self.key);
            }
        }
    }
}

/// Marks chain ids as used by a pull in progress for as long as it lives.
struct ActiveLayers<'a> {
    images: &'a Images,
    chain_ids: Vec<String>,
}

impl<'a> ActiveLayers<'a> {
    fn new(images: &'a Images, chain_ids: &[String]) -> ActiveLayers<'a> {
        let mut active = lock(&images.active);
        for c in chain_ids {
            *active.entry(c.clone()).or_insert(0) += 1;
        }
        ActiveLayers {
            images,
            chain_ids: chain_ids.to_vec(),
        }
    }
}

impl Drop for ActiveLayers<'_> {
    fn drop(&mut self) {
        let mut active = lock(&self.images.active);
        for c in &self.chain_ids {
            if let Some(n) = active.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    active.remove(c);
                }
            }
        }
    }
}
