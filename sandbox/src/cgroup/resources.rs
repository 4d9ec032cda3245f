//! Pod and container limits, and the cgroup v2 interface files they become.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// The default CFS period (µs) when only a quota is given.
const DEFAULT_CPU_PERIOD: u64 = 100_000;
/// `cgroup.*` files that only crius manages: writing them through `unified` would move processes or change
/// the cgroup's shape behind the manager's back.
const RESERVED_UNIFIED: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.kill",
    "cgroup.type",
];

/// Limits for one cgroup, in CRI/OCI units (the agent fills them from `LinuxContainerResources` or the pod's
/// resources). `None` and the CRI "unset" value 0 both mean "leave the kernel default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// CFS period in µs (`cpu.max` second field); 0 or `None` → 100000 when a quota is set.
    pub cpu_period: Option<u64>,
    /// CFS quota in µs per period; `<= 0` → no limit ("max").
    pub cpu_quota: Option<i64>,
    /// cgroup v1 CPU shares, converted to `cpu.weight` with [`shares_to_weight`].
    pub cpu_shares: Option<u64>,
    /// Bytes; -1 → "max".
    pub memory_limit: Option<i64>,
    /// Memory plus swap in bytes (the v1 meaning); `memory.swap.max` gets the difference; -1 → "max".
    pub memory_swap_limit: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Number of tasks; `< 0` → "max".
    pub pids_limit: Option<i64>,
    /// Page size as the kernel names it ("2MB", "1GB") and the limit in bytes.
    pub hugepage_limits: Vec<(String, u64)>,
    /// Raw cgroup v2 files and values (CRI `unified`), written last so they win.
    pub unified: BTreeMap<String, String>,
}

/// Where a planned write came from: a missing interface file means "unenforceable" for a structured limit
/// but "no such file" (a mistake) for a raw `unified` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Limit,
    Unified,
}

/// One interface file write derived from [`Resources`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    /// The controller that provides the file, or "cgroup" for core files (always present).
    pub controller: String,
    pub file: String,
    pub value: String,
    pub origin: Origin,
}

impl Setting {
    fn limit(controller: &str, file: impl Into<String>, value: impl ToString) -> Self {
        Self {
            controller: controller.to_string(),
            file: file.into(),
            value: value.to_string(),
            origin: Origin::Limit,
        }
    }
}

/// CPU shares (cgroup v1, 2..=262144) → `cpu.weight` (1..=10000), the conversion Kubernetes and runc use:
/// `1 + ((shares - 2) * 9999) / 262142`, clamped.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    (1 + ((shares - 2) * 9999) / 262_142).clamp(1, 10_000)
}

fn invalid(field: &str, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidResource {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl Resources {
    /// The pod's limits plus the runtime-class overhead, the way kubelet sizes a pod cgroup: requests (CPU
    /// shares) always grow by the overhead; a limit (memory, memory+swap, CPU quota, hugepages) grows only
    /// when the pod has one — an unlimited pod stays unlimited. The overhead's quota is rescaled to the
    /// pod's CPU period. Everything else (cpuset, pids, unified) is the pod's.
    pub fn plus(&self, overhead: &Resources) -> Resources {
        let mut out = self.clone();
        let add_limit = |pod: Option<i64>, extra: Option<i64>| match (pod, extra) {
            (Some(p), Some(e)) if p > 0 && e > 0 => Some(p.saturating_add(e)),
            (pod, _) => pod,
        };
        out.memory_limit = add_limit(self.memory_limit, overhead.memory_limit);
        out.memory_swap_limit = add_limit(self.memory_swap_limit, overhead.memory_limit);
        out.cpu_shares = match (self.cpu_shares, overhead.cpu_shares) {
            (None, None) => None,
            (pod, extra) => Some(pod.unwrap_or(0).saturating_add(extra.unwrap_or(0))),
        };
        let period = |p: Option<u64>| p.filter(|&p| p > 0).unwrap_or(DEFAULT_CPU_PERIOD);
        if let (Some(q), Some(e)) = (self.cpu_quota, overhead.cpu_quota)
            && q > 0
            && e > 0
        {
            let scaled = i128::from(e) * i128::from(period(self.cpu_period))
                / i128::from(period(overhead.cpu_period));
            out.cpu_quota = Some(q.saturating_add(i64::try_from(scaled).unwrap_or(i64::MAX)));
        }
        for (size, limit) in &mut out.hugepage_limits {
            let extra: u64 = overhead
                .hugepage_limits
                .iter()
                .filter(|(s, _)| s == size)
                .map(|(_, l)| *l)
                .sum();
            *limit = limit.saturating_add(extra);
        }
        out
    }

    /// Whether applying these resources would write nothing.
    pub fn is_empty(&self) -> bool {
        self.settings().is_ok_and(|s| s.is_empty())
    }

    /// The interface files to write, in order, or why the resources are invalid.
    pub(crate) fn settings(&self) -> Result<Vec<Setting>, CgroupError> {
        let mut out = Vec::new();
        self.memory(&mut out)?;
        self.cpu(&mut out)?;
        for (field, file, value) in [
            ("cpuset_cpus", "cpuset.cpus", &self.cpuset_cpus),
            ("cpuset_mems", "cpuset.mems", &self.cpuset_mems),
        ] {
            match value.as_deref() {
                None | Some("") => {}
                Some(v)
                    if v.bytes()
                        .all(|b| b.is_ascii_digit() || b == b',' || b == b'-') =>
                {
                    out.push(Setting::limit("cpuset", file, v));
                }
                Some(_) => return Err(invalid(field, "only digits, ',' and '-' are allowed")),
            }
        }
        match self.pids_limit {
            None | Some(0) => {}
            Some(n) if n < 0 => out.push(Setting::limit("pids", "pids.max", "max")),
            Some(n) => out.push(Setting::limit("pids", "pids.max", n)),
        }
        for (size, limit) in &self.hugepage_limits {
            if !valid_page_size(size) {
                return Err(invalid(
                    "hugepage_limits",
                    format!("page size {size:?} is not like \"2MB\" or \"1GB\""),
                ));
            }
            out.push(Setting::limit(
                "hugetlb",
                format!("hugetlb.{size}.max"),
                limit,
            ));
        }
        for (key, value) in &self.unified {
            out.push(unified_setting(key, value)?);
        }
        Ok(out)
    }

    fn memory(&self, out: &mut Vec<Setting>) -> Result<(), CgroupError> {
        let memory = match self.memory_limit {
            None | Some(0) => None,
            Some(-1) => Some("max".to_string()),
            Some(m) if m > 0 => Some(m.to_string()),
            Some(_) => {
                return Err(invalid(
                    "memory_limit",
                    "must be positive, 0 (unset) or -1 (unlimited)",
                ));
            }
        };
        let swap = match self.memory_swap_limit {
            None | Some(0) => None,
            Some(-1) => Some("max".to_string()),
            Some(s) if s > 0 => match self.memory_limit {
                Some(m) if m > 0 && s >= m => Some((s - m).to_string()),
                Some(m) if m > 0 => {
                    return Err(invalid("memory_swap_limit", "is smaller than memory_limit"));
                }
                _ => {
                    return Err(invalid(
                        "memory_swap_limit",
                        "a swap limit needs a memory limit",
                    ));
                }
            },
            Some(_) => {
                return Err(invalid(
                    "memory_swap_limit",
                    "must be positive, 0 (unset) or -1 (unlimited)",
                ));
            }
        };
        out.extend(memory.map(|v| Setting::limit("memory", "memory.max", v)));
        out.extend(swap.map(|v| Setting::limit("memory", "memory.swap.max", v)));
        Ok(())
    }

    fn cpu(&self, out: &mut Vec<Setting>) -> Result<(), CgroupError> {
        let period = self.cpu_period.filter(|&p| p > 0);
        let quota = self.cpu_quota.filter(|&q| q != 0);
        if let Some(p) = period
            && !(1_000..=1_000_000).contains(&p)
        {
            return Err(invalid("cpu_period", "must be between 1000 and 1000000 µs"));
        }
        if let Some(q) = quota
            && (1..1_000).contains(&q)
        {
            return Err(invalid("cpu_quota", "must be at least 1000 µs"));
        }
        if period.is_some() || quota.is_some() {
            let quota = quota
                .filter(|&q| q > 0)
                .map_or_else(|| "max".to_string(), |q| q.to_string());
            let value = format!("{quota} {}", period.unwrap_or(DEFAULT_CPU_PERIOD));
            out.push(Setting::limit("cpu", "cpu.max", value));
        }
        if let Some(shares) = self.cpu_shares.filter(|&s| s > 0) {
            out.push(Setting::limit(
                "cpu",
                "cpu.weight",
                shares_to_weight(shares),
            ));
        }
        Ok(())
    }
}

/// A hugetlb page size as the kernel names its files: digits then KB, MB or GB.
fn valid_page_size(size: &str) -> bool {
    let number = ["KB", "MB", "GB"]
        .iter()
        .find_map(|unit| size.strip_suffix(unit));
    number.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn unified_setting(key: &str, value: &str) -> Result<Setting, CgroupError> {
    let field = format!("unified[{key:?}]");
    if key.is_empty() || key.contains('/') || key.contains("..") || key.contains(['\0', '\n']) {
        return Err(invalid(
            &field,
            "a key must be a single interface file name (no '/', no \"..\")",
        ));
    }
    let Some((controller, _)) = key.split_once('.') else {
        return Err(invalid(&field, "a key must look like <controller>.<file>"));
    };
    if controller.is_empty() {
        return Err(invalid(&field, "a key must look like <controller>.<file>"));
    }
    if RESERVED_UNIFIED.contains(&key) {
        return Err(invalid(&field, "this file is managed by crius"));
    }
    if value.contains('\0') {
        return Err(invalid(&field, "the value contains a NUL byte"));
    }
    Ok(Setting {
        controller: controller.to_string(),
        file: key.to_string(),
        value: value.to_string(),
        origin: Origin::Unified,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn files(r: &Resources) -> Vec<(String, String)> {
        r.settings()
            .unwrap()
            .into_iter()
            .map(|s| (s.file, s.value))
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn shares_convert_like_kubernetes() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(1_000_000), 10_000);
    }

    #[test]
    fn settings_cover_every_limit() {
        let r = Resources {
            cpu_period: Some(50_000),
            cpu_quota: Some(25_000),
            cpu_shares: Some(1024),
            memory_limit: Some(256 << 20),
            memory_swap_limit: Some(384 << 20),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: Some("0".into()),
            pids_limit: Some(100),
            hugepage_limits: vec![("2MB".into(), 4 << 20)],
            unified: [("memory.high".to_string(), "200000000".to_string())].into(),
        };
        assert_eq!(
            files(&r),
            pairs(&[
                ("memory.max", "268435456"),
                ("memory.swap.max", "134217728"),
                ("cpu.max", "25000 50000"),
                ("cpu.weight", "39"),
                ("cpuset.cpus", "0-1"),
                ("cpuset.mems", "0"),
                ("pids.max", "100"),
                ("hugetlb.2MB.max", "4194304"),
                ("memory.high", "200000000"),
            ])
        );
        assert!(!r.is_empty());
    }

    #[test]
    fn unset_and_unlimited_values() {
        assert!(Resources::default().is_empty());
        let unset = Resources {
            cpu_quota: Some(0),
            cpu_shares: Some(0),
            memory_limit: Some(0),
            pids_limit: Some(0),
            ..Default::default()
        };
        assert!(unset.is_empty());
        let r = Resources {
            cpu_quota: Some(-1),
            memory_limit: Some(-1),
            memory_swap_limit: Some(-1),
            pids_limit: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            files(&r),
            pairs(&[
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
                ("cpu.max", "max 100000"),
                ("pids.max", "max")
            ])
        );
        let period_only = Resources {
            cpu_period: Some(100_000),
            cpu_quota: Some(0),
            ..Default::default()
        };
        assert_eq!(files(&period_only), pairs(&[("cpu.max", "max 100000")]));
        let quota_only = Resources {
            cpu_quota: Some(50_000),
            ..Default::default()
        };
        assert_eq!(files(&quota_only), pairs(&[("cpu.max", "50000 100000")]));
        let no_swap = Resources {
            memory_limit: Some(1 << 20),
            memory_swap_limit: Some(1 << 20),
            ..Default::default()
        };
        assert_eq!(
            files(&no_swap),
            pairs(&[("memory.max", "1048576"), ("memory.swap.max", "0")])
        );
    }

    #[test]
    fn invalid_resources_name_the_field() {
        let cases = [
            (
                Resources {
                    memory_limit: Some(-5),
                    ..Default::default()
                },
                "memory_limit",
            ),
            (
                Resources {
                    memory_swap_limit: Some(10),
                    ..Default::default()
                },
                "memory_swap_limit",
            ),
            (
                Resources {
                    memory_limit: Some(20),
                    memory_swap_limit: Some(10),
                    ..Default::default()
                },
                "memory_swap_limit",
            ),
            (
                Resources {
                    cpu_period: Some(10),
                    ..Default::default()
                },
                "cpu_period",
            ),
            (
                Resources {
                    cpu_quota: Some(10),
                    ..Default::default()
                },
                "cpu_quota",
            ),
            (
                Resources {
                    cpuset_cpus: Some("0\n1".into()),
                    ..Default::default()
                },
                "cpuset_cpus",
            ),
            (
                Resources {
                    hugepage_limits: vec![("2M".into(), 1)],
                    ..Default::default()
                },
                "hugepage_limits",
            ),
            (
                Resources {
                    hugepage_limits: vec![("MB".into(), 1)],
                    ..Default::default()
                },
                "hugepage_limits",
            ),
        ];
        for (r, field) in cases {
            let err = r.settings().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
            assert!(!r.is_empty());
        }
    }

    #[test]
    fn unified_keys_are_single_files() {
        for key in [
            "../memory.max",
            "memory/max",
            "",
            "nodot",
            ".max",
            "cgroup.procs",
            "cgroup.subtree_control",
            "a\nb.c",
        ] {
            let r = Resources {
                unified: [(key.to_string(), "1".to_string())].into(),
                ..Default::default()
            };
            assert!(
                matches!(r.settings(), Err(CgroupError::InvalidResource { .. })),
                "{key:?}"
            );
        }
        let r = Resources {
            unified: [("cgroup.max.depth".to_string(), "3".to_string())].into(),
            ..Default::default()
        };
        let s = r.settings().unwrap();
        assert_eq!(
            (s[0].controller.as_str(), s[0].origin),
            ("cgroup", Origin::Unified)
        );
    }

    #[test]
    fn plus_adds_overhead_only_to_set_limits() {
        let pod = Resources {
            cpu_period: Some(100_000),
            cpu_quota: Some(200_000),
            cpu_shares: Some(2048),
            memory_limit: Some(1000),
            memory_swap_limit: Some(1000),
            pids_limit: Some(50),
            hugepage_limits: vec![("2MB".into(), 10)],
            ..Default::default()
        };
        let overhead = Resources {
            cpu_period: Some(50_000),
            cpu_quota: Some(5_000),
            cpu_shares: Some(102),
            memory_limit: Some(100),
            hugepage_limits: vec![("2MB".into(), 1), ("1GB".into(), 7)],
            ..Default::default()
        };
        let sum = pod.plus(&overhead);
        assert_eq!(
            sum.cpu_quota,
            Some(210_000),
            "overhead quota rescaled to the pod's period"
        );
        assert_eq!(sum.cpu_period, Some(100_000));
        assert_eq!(sum.cpu_shares, Some(2150));
        assert_eq!(sum.memory_limit, Some(1100));
        assert_eq!(sum.memory_swap_limit, Some(1100));
        assert_eq!(sum.pids_limit, Some(50));
        assert_eq!(sum.hugepage_limits, vec![("2MB".to_string(), 11)]);

        let unlimited = Resources {
            memory_limit: Some(-1),
            ..Default::default()
        };
        let sum = unlimited.plus(&overhead);
        assert_eq!(
            sum.memory_limit,
            Some(-1),
            "an unlimited pod stays unlimited"
        );
        assert_eq!(sum.cpu_quota, None);
        assert_eq!(
            sum.cpu_shares,
            Some(102),
            "requests always include the overhead"
        );
        assert_eq!(
            Resources::default().plus(&Resources::default()),
            Resources::default()
        );
    }

    #[test]
    fn resources_round_trip_through_serde() {
        let r = Resources {
            memory_limit: Some(5),
            hugepage_limits: vec![("2MB".into(), 1)],
            ..Default::default()
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Resources>("{}").unwrap(),
            Resources::default()
        );
    }
}
