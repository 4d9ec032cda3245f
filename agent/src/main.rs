//! `crius`: a Kubernetes CRI runtime. `crius serve` is the daemon kubelet talks to.
#![deny(unsafe_code)]

mod check;
mod config;
mod container;
mod error;
mod grpc;
#[allow(dead_code)] // the ImageService (issue 3) is wired up next
mod image;
mod metrics;
mod network;
mod pod;
mod readiness;
mod runtime;
mod server;
mod stats;
mod store;
mod streaming;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogLevel};

const DEFAULT_CONFIG: &str = "/etc/crius/config.toml";

#[derive(Parser)]
#[command(
    name = "crius",
    version,
    about = "A Kubernetes container runtime (CRI v1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve the CRI on a unix socket.
    Serve {
        #[command(flatten)]
        opts: ConfigOpts,
        /// Persistent state directory (overrides `root`).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Runtime state directory (overrides `state`).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The CRI socket path (overrides `listen`).
        #[arg(long)]
        listen: Option<PathBuf>,
        /// Log level (overrides `log_level`; RUST_LOG wins over both).
        #[arg(long)]
        log_level: Option<LogLevel>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Preflight: can this machine run pods?
    Check {
        #[command(flatten)]
        opts: ConfigOpts,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration as commented TOML.
    Default,
}

#[derive(clap::Args)]
struct ConfigOpts {
    /// Configuration file (default /etc/crius/config.toml, optional).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ConfigOpts {
    fn load(&self) -> anyhow::Result<Config> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        Config::load(&path, required).map_err(|e| anyhow::anyhow!(error::chain(&e)))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crius: {}", error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!("crius {} (CRI v1)", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { opts } => {
            let config = opts.load()?;
            Ok(if check::run(&config) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Serve {
            opts,
            root,
            state,
            listen,
            log_level,
        } => {
            let mut config = opts.load()?;
            if let Some(r) = root {
                config.root = r;
            }
            if let Some(s) = state {
                // A private state dir implies a private socket unless one is given.
                if listen.is_none() && config.listen == Config::default().listen {
                    config.listen = s.join("crius.sock");
                }
                config.state = s;
            }
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(level) = log_level {
                config.log_level = level;
            }
            config
                .validate()
                .map_err(|e| anyhow::anyhow!(error::chain(&e)))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                // Inside the runtime: the OTLP exporter's gRPC connection lives on it.
                let telemetry = telemetry::init(config.log_level, &config.tracing)
                    .map_err(|e| anyhow::anyhow!(error::chain(&e)))?;
                let served = server::serve(config).await;
                telemetry.shutdown().await;
                served
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
