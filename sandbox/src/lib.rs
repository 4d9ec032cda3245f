//! Every call crius makes into the kernel, behind small safe APIs.
//!
//! `unsafe` is allowed only in the modules that say so, each block with a `// SAFETY:` line.
#![deny(unsafe_code)]

pub mod cgroup;
pub mod container;
pub mod crilog;
#[allow(unsafe_code)]
pub mod fdpass;
pub mod identity;
pub mod sysctl;

#[allow(unsafe_code)]
mod sys;

pub mod layer;
pub mod monitor;
pub mod mount;
pub mod ns;
pub mod pause;
pub mod process;
#[allow(unsafe_code)]
pub mod pty;
pub mod seccomp;
