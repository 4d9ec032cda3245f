//! Image configs, manifests and indexes (OCI or Docker schema 2), and pushing them.

use serde_json::{Map, Value, json};

use super::{
    Blob, DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Format, Layer, OCI_CONFIG,
    OCI_INDEX, OCI_MANIFEST,
};
use crate::registry::Registry;

/// The platform of an image (an index entry's `platform`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    fn json(&self) -> Value {
        let mut p = json!({"os": self.os, "architecture": self.architecture});
        if let Some(variant) = &self.variant {
            p["variant"] = json!(variant);
        }
        p
    }
}

/// Builds an image: layers (bottom first), platform, and the runtime config (`User`, `Env`, `Cmd`, ...).
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    platform: Platform,
    format: Format,
    config: Map<String, Value>,
}

impl Default for ImageBuilder {
    fn default() -> ImageBuilder {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// linux/amd64, OCI, `Env` = `PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`, no layers.
    pub fn new() -> ImageBuilder {
        let mut config = Map::new();
        config.insert(
            "Env".to_string(),
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
        );
        ImageBuilder {
            layers: Vec::new(),
            platform: Platform::new("amd64", None),
            format: Format::Oci,
            config,
        }
    }

    /// Adds a layer on top of the ones so far.
    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    /// Sets architecture and variant (os stays linux).
    pub fn platform(mut self, architecture: &str, variant: Option<&str>) -> ImageBuilder {
        self.platform = Platform::new(architecture, variant);
        self
    }

    pub fn format(mut self, format: Format) -> ImageBuilder {
        self.format = format;
        self
    }

    /// Docker schema 2 media types instead of OCI ones.
    pub fn docker(self) -> ImageBuilder {
        self.format(Format::Docker)
    }

    /// `config.User` (`name`, `uid`, `uid:gid`, `name:group`).
    pub fn user(self, user: &str) -> ImageBuilder {
        self.config("User", json!(user))
    }

    /// Appends `KEY=value` to `config.Env`.
    pub fn env(mut self, entry: &str) -> ImageBuilder {
        match self.config.get_mut("Env").and_then(Value::as_array_mut) {
            Some(env) => env.push(json!(entry)),
            None => {
                self.config.insert("Env".to_string(), json!([entry]));
            }
        }
        self
    }

    pub fn cmd(self, cmd: &[&str]) -> ImageBuilder {
        self.config("Cmd", json!(cmd))
    }

    pub fn entrypoint(self, entrypoint: &[&str]) -> ImageBuilder {
        self.config("Entrypoint", json!(entrypoint))
    }

    pub fn working_dir(self, dir: &str) -> ImageBuilder {
        self.config("WorkingDir", json!(dir))
    }

    /// Adds `path` to `config.Volumes`.
    pub fn volume(mut self, path: &str) -> ImageBuilder {
        let volumes = self.config.entry("Volumes").or_insert_with(|| json!({}));
        if let Some(volumes) = volumes.as_object_mut() {
            volumes.insert(path.to_string(), json!({}));
        }
        self
    }

    /// Sets any key of the runtime `config` object to any JSON (for untrusted-config tests).
    pub fn config(mut self, key: &str, value: Value) -> ImageBuilder {
        self.config.insert(key.to_string(), value);
        self
    }

    pub fn build(self) -> Image {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let history: Vec<Value> = self
            .layers
            .iter()
            .map(|_| json!({"created": "2023-11-14T22:13:20Z", "created_by": "crius e2e ImageBuilder"}))
            .collect();
        let mut config = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": Value::Object(self.config),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(variant) = &self.platform.variant {
            config["variant"] = json!(variant);
        }
        let (config_type, manifest_type) = match self.format {
            Format::Oci => (OCI_CONFIG, OCI_MANIFEST),
            Format::Docker => (DOCKER_CONFIG, DOCKER_MANIFEST),
        };
        let config = Blob::new(config_type, to_bytes(&config));
        let layers: Vec<Layer> = self
            .layers
            .into_iter()
            .map(|mut layer| {
                layer.blob.media_type = layer.compression.media_type(self.format).to_string();
                layer
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        Image {
            manifest: Blob::new(manifest_type, to_bytes(&manifest)),
            config,
            layers,
            platform: self.platform,
            format: self.format,
        }
    }
}

/// A built image: config blob, layer blobs, manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Layer>,
    /// The manifest; `manifest.media_type` is the manifest's media type.
    pub manifest: Blob,
    pub platform: Platform,
    pub format: Format,
}

impl Image {
    /// The image id a runtime reports: the config digest.
    pub fn id(&self) -> &str {
        &self.config.digest
    }

    /// The manifest digest (what `repo@digest` pins).
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Uploads the layers and the config of this image to `repository`, skipping blobs already there.
    pub fn push_blobs(&self, registry: &Registry, repository: &str) -> anyhow::Result<()> {
        for layer in &self.layers {
            registry.push_blob(repository, &layer.blob.bytes)?;
        }
        registry.push_blob(repository, &self.config.bytes)?;
        Ok(())
    }

    /// Pushes blobs and manifest, tagged `tag`; returns the manifest digest.
    pub fn push(&self, registry: &Registry, repository: &str, tag: &str) -> anyhow::Result<String> {
        self.push_blobs(registry, repository)?;
        registry.push_manifest(
            repository,
            tag,
            &self.manifest.media_type,
            &self.manifest.bytes,
        )
    }

    /// Pushes blobs and manifest by digest only (no tag), as an index's children are.
    pub fn push_untagged(&self, registry: &Registry, repository: &str) -> anyhow::Result<String> {
        self.push_blobs(registry, repository)?;
        registry.push_manifest(
            repository,
            self.digest(),
            &self.manifest.media_type,
            &self.manifest.bytes,
        )
    }
}

/// A multi-platform image: an OCI index (or a Docker manifest list when the images are Docker ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub images: Vec<Image>,
    pub manifest: Blob,
}

impl Index {
    /// One entry per image, with the image's platform. The format follows the first image.
    pub fn new(images: Vec<Image>) -> Index {
        let format = images.first().map_or(Format::Oci, |i| i.format);
        let media_type = match format {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        };
        let manifests: Vec<Value> = images
            .iter()
            .map(|image| {
                let mut entry = image.manifest.descriptor();
                entry["platform"] = image.platform.json();
                entry
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
        Index {
            manifest: Blob::new(media_type, to_bytes(&index)),
            images,
        }
    }

    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Pushes every image by digest, then the index under `tag`; returns the index digest.
    pub fn push(&self, registry: &Registry, repository: &str, tag: &str) -> anyhow::Result<String> {
        for image in &self.images {
            image.push_untagged(registry, repository)?;
        }
        registry.push_manifest(
            repository,
            tag,
            &self.manifest.media_type,
            &self.manifest.bytes,
        )
    }

    /// The image for `architecture` (and `variant`, when given).
    pub fn image(&self, architecture: &str, variant: Option<&str>) -> Option<&Image> {
        self.images.iter().find(|i| {
            i.platform.architecture == architecture
                && (variant.is_none() || i.platform.variant.as_deref() == variant)
        })
    }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    // Serialising a Value built here cannot fail (string keys only).
    serde_json::to_vec(value).unwrap_or_default()
}
