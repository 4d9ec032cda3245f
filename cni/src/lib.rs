//! A CNI (spec 1.1) client: loads network config lists, runs the plugins for ADD, DEL, CHECK
//! and STATUS, parses their results and caches what DEL needs.
//!
//! The agent picks a list ([`load_from_dir`], else [`default_network`]), describes each
//! attachment ([`Attachment`]) and calls [`Cni::add`] / [`Cni::del`]. The list and result of a
//! successful ADD are kept under `<cache_dir>/results/`, so a DEL tears down exactly what was set
//! up even if the configuration changed in between.
#![deny(unsafe_code)]

mod attachment;
mod cache;
mod client;
mod config;
mod error;
mod exec;
mod result;
mod version;

pub use attachment::{Attachment, Bandwidth, Dns, PortMapping, RuntimeConfig};
pub use cache::{CACHE_KIND, CachedAttachment};
pub use client::Cni;
pub use config::{
    DefaultNetwork, NetworkConfigList, PluginConf, default_network, load_from_dir,
    loopback_network, parse_conflist,
};
pub use error::{CODE_TRY_AGAIN_LATER, CniError};
pub use exec::CODE_UNPARSED_ERROR;
pub use result::{CniResult, Interface, IpConfig, ResultDns, Route};
pub use version::SUPPORTED_VERSIONS;
