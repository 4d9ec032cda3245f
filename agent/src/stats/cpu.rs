//! `usage_nano_cores`: CPU time used per second of wall time, averaged between two samples of cpu.stat.
//!
//! The sampler keeps the previous sample of every container and pod (by key) with its monotonic time. The first
//! stats call after a container starts (or after crius starts) has nothing to compare with and reports the
//! figure as absent (kubelet then computes its own from two cumulative readings) rather than sleeping to take a
//! second sample: stats calls stay fast. A later call at least [`MIN_WINDOW`] after the kept sample computes the
//! average over that window and keeps its own sample; a call sooner than that reports the last average again
//! (a window of a few milliseconds would be noise). Whoever calls (kubelet, crictl, metrics) shares the samples.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest window an average is computed over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

/// Samples not used for this long are forgotten (their container or pod is gone).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    usage_ns: u64,
    rate: Option<u64>,
    used: Instant,
}

#[derive(Debug)]
pub struct CpuSampler {
    min_window: Duration,
    samples: Mutex<HashMap<String, Sample>>,
}

/// Nanoseconds of CPU per second between two cumulative readings; `None` for a counter that went backwards
/// (a new cgroup under the same key) or an empty window.
pub fn nano_cores(prev_usage_ns: u64, usage_ns: u64, window: Duration) -> Option<u64> {
    let used = usage_ns.checked_sub(prev_usage_ns)?;
    let window_ns = window.as_nanos();
    if window_ns == 0 {
        return None;
    }
    let rate = u128::from(used) * 1_000_000_000 / window_ns;
    Some(u64::try_from(rate).unwrap_or(u64::MAX))
}

impl CpuSampler {
    pub fn new(min_window: Duration) -> CpuSampler {
        CpuSampler {
            min_window,
            samples: Mutex::new(HashMap::new()),
        }
    }

    /// The average for `key` given its cumulative usage now (see the module comment).
    pub fn observe(&self, key: &str, now: Instant, usage_ns: u64) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Sample {
            at: now,
            usage_ns,
            rate: None,
            used: now,
        };
        let Some(prev) = samples.get_mut(key) else {
            samples.insert(key.to_string(), fresh);
            return None;
        };
        prev.used = now;
        if usage_ns < prev.usage_ns {
            *prev = fresh;
            return None;
        }
        let window = now.saturating_duration_since(prev.at);
        if window < self.min_window {
            return prev.rate;
        }
        let rate = nano_cores(prev.usage_ns, usage_ns, window);
        *prev = Sample { rate, ..fresh };
        rate
    }

    /// Drops samples unused since `now - idle`.
    pub fn forget_idle(&self, now: Instant, idle: Duration) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|_, s| now.saturating_duration_since(s.used) < idle);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn arithmetic() {
        // One full core for two seconds.
        assert_eq!(nano_cores(0, 2_000_000_000, 2 * S), Some(1_000_000_000));
        // A quarter of a core.
        assert_eq!(nano_cores(1_000, 250_001_000, S), Some(250_000_000));
        assert_eq!(nano_cores(10, 5, S), None);
        assert_eq!(nano_cores(0, 5, Duration::ZERO), None);
        assert_eq!(
            nano_cores(0, u64::MAX, Duration::from_nanos(1)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn first_sample_has_no_average_then_windows_of_at_least_the_minimum() {
        let s = CpuSampler::new(S);
        let t0 = Instant::now();
        assert_eq!(s.observe("c", t0, 1_000_000_000), None);
        // Too soon: still nothing to report.
        assert_eq!(
            s.observe("c", t0 + Duration::from_millis(10), 1_010_000_000),
            None
        );
        // Half a core over 2 s since the kept sample.
        assert_eq!(s.observe("c", t0 + 2 * S, 2_000_000_000), Some(500_000_000));
        // Too soon again: the last average.
        assert_eq!(
            s.observe("c", t0 + 2 * S + Duration::from_millis(5), 2_000_000_001),
            Some(500_000_000)
        );
        // Idle for 1 s.
        assert_eq!(s.observe("c", t0 + 3 * S, 2_000_000_000), Some(0));
        // Other keys are separate.
        assert_eq!(s.observe("p", t0 + 3 * S, 5), None);
    }

    #[test]
    fn a_counter_going_backwards_starts_over() {
        let s = CpuSampler::new(S);
        let t0 = Instant::now();
        s.observe("c", t0, 5_000);
        assert_eq!(s.observe("c", t0 + 2 * S, 1_000), None);
        assert_eq!(
            s.observe("c", t0 + 4 * S, 2_000_001_000),
            Some(1_000_000_000)
        );
    }

    #[test]
    fn idle_samples_are_forgotten() {
        let s = CpuSampler::new(S);
        let t0 = Instant::now();
        s.observe("old", t0, 1);
        s.observe("new", t0 + 100 * S, 1);
        s.forget_idle(t0 + 100 * S, 50 * S);
        assert_eq!(s.len(), 1);
        assert_eq!(s.observe("new", t0 + 102 * S, 1), Some(0));
    }
}
