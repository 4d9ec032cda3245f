//! Containers: the CRI ContainerConfig as a domain type, the OCI runtime spec built from it, the image and the
//! sandbox, and the container lifecycle driven through the pod's monitor.

pub mod attach;
pub mod caps;
pub mod config;
pub mod events;
pub mod exec;
pub mod layered;
pub mod monitor;
pub mod pty;
pub mod record;
pub mod service;
pub mod spec;
pub mod user;
