//! The benchmark tool's parts (`crius-bench`, in `src/bin/`): measuring processes, a private containerd to
//! compare against, and the benchmarks themselves. Not a test: it prints figures, side by side in one run.

pub mod container;
pub mod containerd;
pub mod cri;
pub mod measure;
pub mod pull;
pub mod streaming;
