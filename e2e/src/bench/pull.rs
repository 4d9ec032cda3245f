//! The image pull benchmark: a multi-layer image built from busybox plus generated data, pushed to a local
//! docker-registry, pulled by crius, by containerd (CRI PullImage) and by `skopeo copy` into an OCI dir, each
//! on a fresh instance, in one run. Reports wall time, CPU time and peak RSS per tool and image size.
//!
//! What each tool does differs in one way worth saying: crius and containerd download, verify, decompress and
//! unpack every layer (ready for overlayfs); skopeo downloads and verifies only. skopeo is the floor for the
//! network part.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crius_proto::v1::{ImageSpec, PullImageRequest, RemoveImageRequest};
use serde_json::{Value, json};

use super::containerd::{self, Containerd};
use super::measure::{self, Usage};
use crate::images::{Compression, Image, ImageBuilder, LayerBuilder};
use crate::registry::Registry;
use crate::{Crius, Options, client};

/// Who pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Crius,
    Containerd,
    Skopeo,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Crius => "crius",
            Tool::Containerd => "containerd",
            Tool::Skopeo => "skopeo",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Tool> {
        match s {
            "crius" => Ok(Tool::Crius),
            "containerd" => Ok(Tool::Containerd),
            "skopeo" => Ok(Tool::Skopeo),
            other => bail!("unknown tool {other:?} (crius, containerd, skopeo)"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PullParams {
    /// Image sizes (uncompressed, MiB); one image per size.
    pub sizes_mib: Vec<u64>,
    /// Data layers per image (plus the busybox base layer).
    pub layers: usize,
    /// Pulls per tool and size, each on a fresh instance; the median is reported.
    pub runs: usize,
    pub tools: Vec<Tool>,
    /// This benchmark's own binary (for `rusage`).
    pub bench_binary: PathBuf,
}

/// One measured pull.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_kib: u64,
}

/// The medians of one (tool, size).
#[derive(Debug, Clone)]
pub struct Row {
    pub tool: Tool,
    pub size_mib: u64,
    pub compressed_mib: f64,
    pub samples: Vec<Sample>,
}

impl Row {
    fn median<T: Copy + PartialOrd>(&self, f: impl Fn(&Sample) -> T) -> T {
        let mut v: Vec<T> = self.samples.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    }
    pub fn wall(&self) -> Duration {
        self.median(|s| s.wall)
    }
    pub fn cpu(&self) -> Duration {
        self.median(|s| s.cpu)
    }
    pub fn peak_rss_kib(&self) -> u64 {
        self.median(|s| s.peak_rss_kib)
    }
}

/// Builds the images, pushes them, runs every tool on every size.
pub async fn run(params: &PullParams) -> anyhow::Result<Vec<Row>> {
    if params.runs == 0 || params.sizes_mib.is_empty() || params.layers == 0 {
        bail!("need at least one run, one size and one layer");
    }
    let registry = Registry::try_start(None).context("cannot start docker-registry")?;
    let mut rows = Vec::new();
    for &size in &params.sizes_mib {
        let image = bench_image(size, params.layers);
        let compressed: u64 = image.layers.iter().map(|l| l.blob.size()).sum();
        let repository = format!("bench/pull{size}");
        image.push(&registry, &repository, "latest")?;
        let reference = format!("{}/{repository}:latest", registry.host());
        eprintln!(
            "pull: {size} MiB image ({} layers, {:.1} MiB compressed) at {reference}",
            image.layers.len(),
            compressed as f64 / 1048576.0
        );
        for &tool in &params.tools {
            let mut samples = Vec::new();
            for run in 0..params.runs {
                let s = match tool {
                    Tool::Crius => pull_crius(&reference, &image).await,
                    Tool::Containerd => pull_containerd(&registry, &reference, &image).await,
                    Tool::Skopeo => pull_skopeo(&params.bench_binary, &reference),
                }
                .with_context(|| format!("{} pull of {reference}", tool.name()))?;
                eprintln!(
                    "  {:<10} run {}: {:.2} s wall, {:.2} s cpu, {:.1} MiB peak RSS",
                    tool.name(),
                    run + 1,
                    s.wall.as_secs_f64(),
                    s.cpu.as_secs_f64(),
                    s.peak_rss_kib as f64 / 1024.0
                );
                samples.push(s);
            }
            rows.push(Row {
                tool,
                size_mib: size,
                compressed_mib: compressed as f64 / 1048576.0,
                samples,
            });
        }
    }
    Ok(rows)
}

/// A busybox base layer plus `layers` gzip layers of generated files adding up to `size_mib` MiB. The data
/// compresses about 2:1 (half of each MiB is pseudo-random, half is text), like typical image content.
pub fn bench_image(size_mib: u64, layers: usize) -> Image {
    let mut builder = ImageBuilder::new().layer(LayerBuilder::busybox().build(Compression::Gzip));
    let total_mib = size_mib.max(1) as usize;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ size_mib;
    for layer in 0..layers {
        let mib = total_mib / layers + usize::from(layer < total_mib % layers);
        let mut lb = LayerBuilder::new().dir(&format!("data{layer}"));
        for file in 0..mib {
            lb = lb.file(&format!("data{layer}/f{file}"), mib_of_data(&mut seed));
        }
        builder = builder.layer(lb.build(Compression::Gzip));
    }
    builder.cmd(&["sleep", "3600"]).build()
}

fn mib_of_data(seed: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    while out.len() < 1 << 19 {
        // xorshift64: fast, deterministic, incompressible enough.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    while out.len() < 1 << 20 {
        out.extend_from_slice(line);
    }
    out.truncate(1 << 20);
    out
}

fn spec(reference: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: reference.to_string(),
        ..Default::default()
    })
}

async fn cri_pull(
    channel: tonic::transport::Channel,
    reference: &str,
    image: &Image,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let reply = client::images(channel.clone())
        .pull_image(PullImageRequest {
            image: spec(reference),
            auth: None,
            sandbox_config: None,
        })
        .await?
        .into_inner();
    let wall = start.elapsed();
    if !reply.image_ref.contains(image.id()) && !reply.image_ref.contains(image.digest()) {
        bail!(
            "pull returned {:?}, not {} or {}",
            reply.image_ref,
            image.id(),
            image.digest()
        );
    }
    client::images(channel)
        .remove_image(RemoveImageRequest {
            image: spec(reference),
        })
        .await?;
    Ok(wall)
}

/// Peak RSS and CPU of the runtime process around a pull done by it on a fresh instance.
async fn around_pull(
    pid: i32,
    channel: tonic::transport::Channel,
    reference: &str,
    image: &Image,
) -> anyhow::Result<Sample> {
    let before = measure::sample(pid)?;
    let wall = cri_pull(channel, reference, image).await?;
    let after = measure::sample(pid)?;
    Ok(Sample {
        wall,
        cpu: after.cpu.saturating_sub(before.cpu),
        peak_rss_kib: after.hwm_kib,
    })
}

async fn pull_crius(reference: &str, image: &Image) -> anyhow::Result<Sample> {
    let crius = Crius::try_start(Options::new().set("log_level", "\"info\"")).await?;
    let pid = crius.pid().context("crius is not running")?;
    let channel = client::connect(&crius.paths().socket).await?;
    around_pull(pid, channel, reference, image).await
}

async fn pull_containerd(
    registry: &Registry,
    reference: &str,
    image: &Image,
) -> anyhow::Result<Sample> {
    if !containerd::available() {
        bail!(
            "{} is missing (apt-get install containerd)",
            containerd::binary().display()
        );
    }
    let c = Containerd::start(&[registry.host()]).await?;
    let pid = c.pid().context("containerd is not running")?;
    around_pull(pid, c.channel(), reference, image)
        .await
        .with_context(|| format!("containerd log:\n{}", c.log()))
}

fn pull_skopeo(bench: &Path, reference: &str) -> anyhow::Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix("crius-bench-skopeo-")
        .tempdir()?;
    let args: Vec<String> = [
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:latest", dir.path().join("oci").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Usage {
        wall,
        cpu,
        max_rss_kib,
    } = measure::measure_command(bench, "skopeo", &args)?;
    Ok(Sample {
        wall,
        cpu,
        peak_rss_kib: max_rss_kib,
    })
}

/// The rows as a table (medians), with crius/other ratios per size.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "tool        size MiB  gz MiB   wall s    cpu s  peak RSS MiB   wall ratio  cpu ratio  RSS ratio\n",
    );
    for row in rows {
        let crius = rows
            .iter()
            .find(|r| r.tool == Tool::Crius && r.size_mib == row.size_mib);
        let ratio = |f: &dyn Fn(&Row) -> f64| match crius {
            Some(c) if row.tool != Tool::Crius && f(row) > 0.0 => format!("{:.2}", f(c) / f(row)),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<10} {:>9} {:>7.1} {:>8.2} {:>8.2} {:>13.1} {:>12} {:>10} {:>10}\n",
            row.tool.name(),
            row.size_mib,
            row.compressed_mib,
            row.wall().as_secs_f64(),
            row.cpu().as_secs_f64(),
            row.peak_rss_kib() as f64 / 1024.0,
            ratio(&|r| r.wall().as_secs_f64()),
            ratio(&|r| r.cpu().as_secs_f64()),
            ratio(&|r| r.peak_rss_kib() as f64),
        ));
    }
    out.push_str("ratios are crius / that tool (below 1: crius is faster or smaller)\n");
    out
}

/// The rows as JSON: every sample, the medians and the crius/other ratios.
pub fn json(rows: &[Row]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "tool": r.tool.name(),
                "size_mib": r.size_mib,
                "compressed_mib": r.compressed_mib,
                "wall_s": r.wall().as_secs_f64(),
                "cpu_s": r.cpu().as_secs_f64(),
                "peak_rss_kib": r.peak_rss_kib(),
                "samples": r.samples.iter().map(|s| json!({
                    "wall_s": s.wall.as_secs_f64(),
                    "cpu_s": s.cpu.as_secs_f64(),
                    "peak_rss_kib": s.peak_rss_kib,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "pull": rows })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_half_compressible() {
        let (mut a, mut b) = (1u64, 1u64);
        let x = mib_of_data(&mut a);
        assert_eq!(x, mib_of_data(&mut b));
        assert_eq!(x.len(), 1 << 20);
        let gz = crate::images::compress(&x, Compression::Gzip);
        let ratio = gz.len() as f64 / x.len() as f64;
        assert!((0.4..0.7).contains(&ratio), "gzip ratio {ratio}");
    }

    #[test]
    fn image_has_the_asked_size_in_layers() {
        let image = bench_image(5, 2);
        assert_eq!(image.layers.len(), 3);
        let data: usize = image.layers[1..]
            .iter()
            .map(|l| {
                crate::images::decompress(&l.blob.bytes, Compression::Gzip)
                    .unwrap()
                    .len()
            })
            .sum();
        assert!(data >= 5 << 20, "{data}");
    }

    #[test]
    fn table_has_ratios_against_crius() {
        let s = |w: f64| Sample {
            wall: Duration::from_secs_f64(w),
            cpu: Duration::from_secs_f64(w / 2.0),
            peak_rss_kib: (w * 1024.0) as u64,
        };
        let rows = vec![
            Row {
                tool: Tool::Crius,
                size_mib: 10,
                compressed_mib: 5.0,
                samples: vec![s(1.0)],
            },
            Row {
                tool: Tool::Skopeo,
                size_mib: 10,
                compressed_mib: 5.0,
                samples: vec![s(4.0), s(2.0), s(9.0)],
            },
        ];
        let t = table(&rows);
        assert!(t.lines().nth(2).unwrap().contains("0.25"), "{t}");
        let j = json(&rows);
        assert_eq!(j["pull"][1]["wall_s"].as_f64(), Some(4.0));
    }
}
