//! Support for the end-to-end tests: start a real `crius serve`, talk CRI to it over its socket, check that
//! nothing leaks. The tests themselves are in `e2e/tests/`.
//!
//! ```no_run
//! # async fn example() {
//! use crius_e2e::{Crius, Options};
//! let crius = Crius::start(Options::new()).await;    // private root, state, socket, bridge, subnet, cgroup parent
//! let id = crius.run_pod(crius.pod_config("web")).await.unwrap();
//! let status = crius.pod_status(&id).await.unwrap(); // verbose; remembers the pause pid
//! assert!(crius.in_subnet(status.ip()));
//! crius.stop_and_remove(&id).await;
//! crius.assert_no_leaks().await;
//! # }
//! ```
//!
//! Stable API (used by other test files, e.g. `tests/vm_cgroup.rs`):
//! - [`Crius::start`], [`Crius::try_start`], [`Crius::prepare`] + [`Crius::launch`] (also to restart),
//!   [`Crius::stop`] (SIGTERM, returns the exit status), [`Crius::stop_with`], [`Crius::kill`],
//!   [`Crius::serve_command`]; `Drop` kills crius and removes everything left, printing crius' log when the
//!   test failed.
//! - [`Options`]: [`Options::driver`], [`Options::set`] (dotted key, raw TOML value), [`Options::base_config`],
//!   [`Options::conflist`], [`Options::plugin`], [`Options::stale_socket`]; [`bridge_conflist`]; placeholders
//!   `@DIR@ @BRIDGE@ @SUBNET@ @GATEWAY@ @IPAM_DIR@ @PLUGIN_DIR@` in strings given to them.
//! - Clients: [`Crius::runtime`], [`Crius::images`]; [`client::connect`] for any socket.
//! - Pods: [`Crius::pod_config`], [`Crius::run_pod`], [`Crius::pod_status`] ([`PodStatus`]), [`Crius::stop_pod`],
//!   [`Crius::remove_pod`], [`Crius::stop_and_remove`], [`Crius::list_pods`], [`Crius::pod_cgroup_dir`],
//!   [`Crius::ns_file`], [`Crius::pod_dir`].
//! - Checks: [`Crius::leaks`], [`Crius::assert_no_leaks`]; [`procfs`] helpers.
//!
//! The test process becomes a child subreaper on first use ([`reaper`]): pause processes orphaned by a stopped
//! crius are reaped by the harness, since PID 1 on these machines does not reap.
#![deny(unsafe_code)]

mod binary;
mod cleanup;
pub mod client;
mod config;
mod instance;
mod leaks;
mod pod;
pub mod procfs;
pub mod reaper;

pub use config::{Driver, Options, bridge_conflist};
pub use crius_proto::v1;
pub use instance::{Crius, Paths, START_TIMEOUT, STOP_TIMEOUT, detect_cgroup2_mount};
pub use pod::{NAMESPACE, PodStatus, namespaces, spawn_in_netns, wait_until};
pub mod bench;
pub mod containers;
pub mod images;
pub mod registry;
pub mod spdy_client;
pub mod stats;
pub mod streaming;
pub mod vm;
pub mod ws_client;
