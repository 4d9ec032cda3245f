//! `crius-bench`: benchmarks crius side by side with containerd (and other tools) in one run, and prints a
//! table plus JSON. See the README ("Benchmarks") and docs/PERFORMANCE.md.
//!
//! ```text
//! crius-bench pull [--sizes 50,200] [--layers 5] [--runs 3] [--tools crius,containerd,skopeo] [--json FILE]
//! crius-bench container [--pods 10] [--containers 1] [--runtimes crius,containerd] [--json FILE]
//! crius-bench streaming [--sessions 1000] [--concurrency 1] [--json FILE]
//! crius-bench cri [--runtimes crius,containerd] [--endpoint [NAME=]unix:///PATH ...] [--pid [NAME=]PID ...]
//!     [--image REF] [--samples 50] [--pods 110] [--batch 10] [--churn 1000] [--churn-kind container|pod]
//!     [--json FILE]
//! ```
//! The crius binary is the harness' (`$CRIUS_BIN`, else `target/debug/crius`; `make bench` uses the release
//! build). Run as root: crius needs it, and so does containerd. `container` runs crius with `RUST_LOG=warn`
//! unless RUST_LOG is set (the harness would otherwise turn on crius' debug logs; containerd logs at warn); so do
//! `cri` and `streaming`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use crius_e2e::bench::{container, cri, measure, pull, streaming};

#[derive(Parser)]
#[command(name = "crius-bench", about = "crius vs containerd, side by side")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pull a multi-layer image from a local docker-registry with each tool, on fresh instances.
    Pull {
        /// Image sizes in MiB (uncompressed), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "50,200")]
        sizes: Vec<u64>,
        /// Data layers per image (a busybox base layer comes on top of these).
        #[arg(long, default_value_t = 5)]
        layers: usize,
        /// Pulls per tool and size (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Tools to run: crius, containerd, skopeo.
        #[arg(long, value_delimiter = ',', default_value = "crius,containerd,skopeo")]
        tools: Vec<String>,
        /// Also write the results as JSON to this file (`-` for stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Start N pods with busybox sleep containers on each runtime: RPC latencies, per-pod and daemon memory,
    /// then tear down and check that nothing is left.
    Container {
        /// Pods per runtime.
        #[arg(long, default_value_t = 10)]
        pods: usize,
        /// Containers per pod (`--pods 20 --containers 5`: 100 containers, monitors holding 5 each).
        #[arg(long, default_value_t = 1)]
        containers: usize,
        /// Runtimes to run: crius, containerd.
        #[arg(long, value_delimiter = ',', default_value = "crius,containerd")]
        runtimes: Vec<String>,
        /// Also write the results as JSON to this file (`-` for stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Many short exec sessions over WebSocket against one container: session latency, and the agent's
    /// descriptors and RSS before and after (leaks), and exec helpers left.
    Streaming {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Sessions at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Also write the results as JSON to this file (`-` for stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// kubelet's view of a runtime: pod and container RPC latencies, density (110 pods started 10 at a time,
    /// the runtime's memory at 0, 1, 10 and 110 pods), churn (descriptors and RSS before and after); on crius
    /// and a private containerd started side by side, or on CRI endpoints already running.
    Cri {
        /// Runtimes to start: crius, containerd (default both; none when --endpoint is given).
        #[arg(long, value_delimiter = ',')]
        runtimes: Option<Vec<String>>,
        /// A CRI endpoint already running, `[NAME=]unix:///PATH` (repeatable): driven, never started or stopped.
        #[arg(long)]
        endpoint: Vec<String>,
        /// An endpoint's daemon pid, `[NAME=]PID` (repeatable), to measure its memory and descriptors.
        #[arg(long)]
        pid: Vec<String>,
        /// The workload image for the endpoints (a busybox with `sleep`); default: the local registry's.
        #[arg(long)]
        image: Option<String>,
        /// Pods started one after the other for the RPC latencies.
        #[arg(long, default_value_t = 50)]
        samples: usize,
        /// Pods in the density phase.
        #[arg(long, default_value_t = 110)]
        pods: usize,
        /// Pods started (and torn down) at a time in the density phase.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Churn cycles.
        #[arg(long, default_value_t = 1000)]
        churn: usize,
        /// What a churn cycle is: `container` (create+start+stop+rm in one pod) or `pod`.
        #[arg(long, default_value = "container")]
        churn_kind: String,
        /// Also write the results as JSON to this file (`-` for stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run a command as this process' only child and print its wall time, CPU time and peak RSS as JSON.
    #[command(hide = true)]
    Rusage {
        program: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Rusage { program, args } => measure::rusage_of_child(&program, &args),
        Cmd::Pull {
            sizes,
            layers,
            runs,
            tools,
            json,
        } => {
            let tools = tools
                .iter()
                .map(|t| pull::Tool::parse(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let params = pull::PullParams {
                sizes_mib: sizes,
                layers,
                runs,
                tools,
                bench_binary: std::env::current_exe().context("cannot find myself")?,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let rows = rt.block_on(pull::run(&params))?;
            print!("{}", pull::table(&rows));
            write_json(json, &pull::json(&rows))
        }
        Cmd::Streaming {
            sessions,
            concurrency,
            json,
        } => {
            quiet_children()?;
            let params = streaming::StreamingParams {
                sessions,
                concurrency,
            };
            let report = tokio::runtime::Runtime::new()?.block_on(streaming::run(&params))?;
            let problems = report.problems();
            publish(
                &report.table(),
                json,
                &report.json(),
                problems,
                "streaming problems",
            )
        }
        Cmd::Cri {
            runtimes,
            endpoint,
            pid,
            image,
            samples,
            pods,
            batch,
            churn,
            churn_kind,
            json,
        } => {
            quiet_children()?;
            let default = if endpoint.is_empty() {
                vec!["crius".to_string(), "containerd".to_string()]
            } else {
                Vec::new()
            };
            let runtimes = runtimes
                .unwrap_or(default)
                .iter()
                .map(|r| container::Runtime::parse(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut endpoints = endpoint
                .iter()
                .enumerate()
                .map(|(n, e)| container::EndpointSpec::parse(e, n + 1))
                .collect::<anyhow::Result<Vec<_>>>()?;
            container::EndpointSpec::assign_pids(&mut endpoints, &pid)?;
            for e in &mut endpoints {
                e.image.clone_from(&image);
            }
            let params = cri::CriParams {
                runtimes,
                endpoints,
                samples,
                pods,
                batch,
                churn,
                churn_kind: cri::ChurnKind::parse(&churn_kind)?,
            };
            let report = tokio::runtime::Runtime::new()?.block_on(cri::run(&params))?;
            let (table, value) = (cri::table(&report), cri::json(&report));
            let what = "left behind, misplaced or leaked";
            publish(&table, json, &value, report.problems(), what)
        }
        Cmd::Container {
            pods,
            containers,
            runtimes,
            json,
        } => {
            quiet_children()?;
            let runtimes = runtimes
                .iter()
                .map(|r| container::Runtime::parse(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let params = container::ContainerParams {
                pods,
                containers,
                runtimes,
            };
            let report = tokio::runtime::Runtime::new()?.block_on(container::run(&params))?;
            let (table, value) = (container::table(&report), container::json(&report));
            publish(
                &table,
                json,
                &value,
                report.problems(),
                "left behind or misplaced",
            )
        }
    }
}

/// crius serve inherits our environment: without RUST_LOG, run ourselves again with RUST_LOG=warn (exec
/// replaces this process; it returns only on failure).
fn quiet_children() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        let err = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("RUST_LOG", "warn")
            .exec();
        return Err(err).context("cannot run myself again with RUST_LOG=warn");
    }
    Ok(())
}

/// Prints the table, writes the JSON, then fails listing the `problems` (under `what`) if there are any.
fn publish(
    table: &str,
    json: Option<PathBuf>,
    value: &serde_json::Value,
    problems: Vec<String>,
    what: &str,
) -> anyhow::Result<()> {
    print!("{table}");
    write_json(json, value)?;
    if !problems.is_empty() {
        bail!("{what}:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

fn write_json(to: Option<PathBuf>, value: &serde_json::Value) -> anyhow::Result<()> {
    let Some(path) = to else { return Ok(()) };
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
