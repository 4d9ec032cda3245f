//! Reading one cgroup v2 directory: cpu.stat (in every cgroup, with or without the cpu controller), memory.current,
//! memory.stat, memory.max, memory.events, memory.swap.* (memory controller), pids.current and pids.max (pids
//! controller), and cgroup.procs of the cgroup and its descendants. A file that does not exist is a figure the
//! host cannot provide: `Ok(None)`, never a zero.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::StatsError;
use super::model::{CpuUsage, MemoryUsage, ProcessUsage, SwapUsage, Throttling};
use super::source::StatsFs;

/// How deep below a container's or pod's cgroup the process count looks (a container may make its own
/// sub-cgroups; a bound stops a pathological tree from making a stats call slow).
const MAX_DEPTH: usize = 8;

/// The content of an interface file, `None` when it does not exist.
fn read_opt(fs: &dyn StatsFs, path: PathBuf) -> Result<Option<String>, StatsError> {
    match fs.read(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StatsError::Read { path, source }),
    }
}

/// A flat-keyed file (`key value` lines: cpu.stat, memory.stat, memory.events).
pub fn flat_keyed(text: &str) -> Result<HashMap<&str, u64>, String> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {line:?} is not `key value`"));
        };
        let value = value
            .parse()
            .map_err(|_| format!("{key} has a non-numeric value {value:?}"))?;
        out.insert(key, value);
    }
    Ok(out)
}

/// A single-value file: a number, or `max` (no limit: `None`) when `max_allowed`.
fn single(text: &str, max_allowed: bool) -> Result<Option<u64>, String> {
    let t = text.trim();
    if max_allowed && t == "max" {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| format!("{t:?} is not a number"))
}

fn parse_err(path: PathBuf, reason: String) -> StatsError {
    StatsError::Parse { path, reason }
}

/// A number file (memory.current, pids.current); `None` when absent.
fn number(fs: &dyn StatsFs, dir: &Path, file: &str) -> Result<Option<u64>, StatsError> {
    let path = dir.join(file);
    match read_opt(fs, path.clone())? {
        None => Ok(None),
        Some(text) => single(&text, false).map_err(|r| parse_err(path, r)),
    }
}

/// A limit file (memory.max, pids.max): `Ok(None)` when absent, `Ok(Some(None))` when `max`.
fn limit(fs: &dyn StatsFs, dir: &Path, file: &str) -> Result<Option<Option<u64>>, StatsError> {
    let path = dir.join(file);
    match read_opt(fs, path.clone())? {
        None => Ok(None),
        Some(text) => single(&text, true)
            .map(Some)
            .map_err(|r| parse_err(path, r)),
    }
}

/// Calls `f` with the parsed flat-keyed file, `None` when absent.
fn keyed<T>(
    fs: &dyn StatsFs,
    dir: &Path,
    file: &str,
    f: impl FnOnce(&HashMap<&str, u64>) -> T,
) -> Result<Option<T>, StatsError> {
    let path = dir.join(file);
    match read_opt(fs, path.clone())? {
        None => Ok(None),
        Some(text) => {
            let map = flat_keyed(&text).map_err(|r| parse_err(path, r))?;
            Ok(Some(f(&map)))
        }
    }
}

/// cpu.stat; `usage_nano_cores` is left `None` for the sampler to fill.
pub fn cpu(fs: &dyn StatsFs, dir: &Path, timestamp: i64) -> Result<Option<CpuUsage>, StatsError> {
    let path = dir.join("cpu.stat");
    let parsed = keyed(fs, dir, "cpu.stat", |m| {
        let usec = |k: &str| m.get(k).map(|v| v.saturating_mul(1000));
        let throttling = match (
            m.get("nr_periods"),
            m.get("nr_throttled"),
            usec("throttled_usec"),
        ) {
            (Some(&periods), Some(&throttled_periods), Some(throttled_nanos)) => Some(Throttling {
                periods,
                throttled_periods,
                throttled_nanos,
            }),
            _ => None,
        };
        usec("usage_usec").map(|usage_core_nanos| CpuUsage {
            timestamp,
            usage_core_nanos,
            usage_nano_cores: None,
            user_nanos: usec("user_usec"),
            system_nanos: usec("system_usec"),
            throttling,
        })
    })?;
    match parsed {
        None => Ok(None),
        Some(None) => Err(parse_err(path, "no usage_usec".into())),
        Some(Some(cpu)) => Ok(Some(cpu)),
    }
}

/// memory.current and friends; `None` without the memory controller (no memory.current).
pub fn memory(
    fs: &dyn StatsFs,
    dir: &Path,
    timestamp: i64,
) -> Result<Option<MemoryUsage>, StatsError> {
    let Some(usage) = number(fs, dir, "memory.current")? else {
        return Ok(None);
    };
    let mut m = MemoryUsage {
        timestamp,
        usage_bytes: Some(usage),
        ..Default::default()
    };
    if let Some(stat) = keyed(fs, dir, "memory.stat", |s| {
        let get = |k: &str| s.get(k).copied();
        (
            get("inactive_file"),
            get("anon"),
            get("file"),
            get("file_mapped"),
            get("pgfault"),
            get("pgmajfault"),
        )
    })? {
        let (inactive_file, anon, file, mapped, pgfault, pgmajfault) = stat;
        m.working_set_bytes = inactive_file.map(|i| usage.saturating_sub(i));
        m.rss_bytes = anon;
        m.cache_bytes = file;
        m.mapped_file_bytes = mapped;
        m.page_faults = pgfault;
        m.major_page_faults = pgmajfault;
    }
    m.limit_bytes = limit(fs, dir, "memory.max")?.flatten();
    if let (Some(limit), Some(ws)) = (m.limit_bytes, m.working_set_bytes) {
        m.available_bytes = Some(limit.saturating_sub(ws));
    }
    m.oom_kills = keyed(fs, dir, "memory.events", |e| e.get("oom_kill").copied())?.flatten();
    Ok(Some(m))
}

/// memory.swap.current and memory.swap.max; `None` without swap accounting.
pub fn swap(fs: &dyn StatsFs, dir: &Path, timestamp: i64) -> Result<Option<SwapUsage>, StatsError> {
    let Some(usage_bytes) = number(fs, dir, "memory.swap.current")? else {
        return Ok(None);
    };
    let available_bytes = limit(fs, dir, "memory.swap.max")?
        .flatten()
        .map(|max| max.saturating_sub(usage_bytes));
    Ok(Some(SwapUsage {
        timestamp,
        usage_bytes,
        available_bytes,
    }))
}

/// The processes of the cgroup and its descendants (cgroup.procs), and pids.current/pids.max when present;
/// `None` when the cgroup does not exist.
pub fn process(
    fs: &dyn StatsFs,
    dir: &Path,
    timestamp: i64,
) -> Result<Option<ProcessUsage>, StatsError> {
    let Some(own) = read_opt(fs, dir.join("cgroup.procs"))? else {
        return Ok(None);
    };
    let mut processes = count_lines(&own);
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for d in &level {
            match fs.subdirs(d) {
                Ok(children) => next.extend(children),
                // Removed while we walked: nothing below it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StatsError::Read {
                        path: d.clone(),
                        source,
                    });
                }
            }
        }
        for child in &next {
            if let Some(text) = read_opt(fs, child.join("cgroup.procs"))? {
                processes += count_lines(&text);
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(Some(ProcessUsage {
        timestamp,
        processes,
        threads: number(fs, dir, "pids.current")?,
        threads_max: limit(fs, dir, "pids.max")?.flatten(),
    }))
}

fn count_lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::source::RealFs;
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn flat_keyed_files() {
        let m = flat_keyed("usage_usec 12\nuser_usec 7\n\n").unwrap();
        assert_eq!((m["usage_usec"], m["user_usec"]), (12, 7));
        assert!(flat_keyed("usage_usec twelve").is_err());
        assert!(flat_keyed("usage_usec 1 2").is_err());
        assert!(flat_keyed("").unwrap().is_empty());
    }

    #[test]
    fn cpu_stat_without_and_with_the_cpu_controller() {
        let t = tempfile::tempdir().unwrap();
        // What a hybrid host's cgroup has: usage only.
        write(
            t.path(),
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnice_usec 0\n",
        );
        let c = cpu(&RealFs, t.path(), 42).unwrap().unwrap();
        assert_eq!(c.timestamp, 42);
        assert_eq!(c.usage_core_nanos, 1_500_000);
        assert_eq!(c.user_nanos, Some(1_000_000));
        assert_eq!(c.system_nanos, Some(500_000));
        assert_eq!((c.usage_nano_cores, c.throttling), (None, None));
        write(
            t.path(),
            "cpu.stat",
            "usage_usec 10\nnr_periods 5\nnr_throttled 2\nthrottled_usec 3\nnr_bursts 0\nburst_usec 0\n",
        );
        let c = cpu(&RealFs, t.path(), 1).unwrap().unwrap();
        assert_eq!(
            c.throttling,
            Some(Throttling {
                periods: 5,
                throttled_periods: 2,
                throttled_nanos: 3000
            })
        );
        assert_eq!(c.user_nanos, None);
        write(t.path(), "cpu.stat", "user_usec 10\n");
        assert!(matches!(
            cpu(&RealFs, t.path(), 1),
            Err(StatsError::Parse { .. })
        ));
        assert!(cpu(&RealFs, &t.path().join("gone"), 1).unwrap().is_none());
    }

    #[test]
    fn memory_is_absent_without_the_controller() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "cpu.stat", "usage_usec 1\n");
        assert_eq!(memory(&RealFs, t.path(), 1).unwrap(), None);
        assert_eq!(swap(&RealFs, t.path(), 1).unwrap(), None);
    }

    #[test]
    fn memory_working_set_rss_faults_and_available() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "memory.current", "10000\n");
        write(
            t.path(),
            "memory.stat",
            "anon 6000\nfile 4000\nfile_mapped 1000\ninactive_file 2500\nactive_file 1500\npgfault 77\npgmajfault 3\n",
        );
        write(t.path(), "memory.max", "max\n");
        write(
            t.path(),
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        );
        let m = memory(&RealFs, t.path(), 9).unwrap().unwrap();
        assert_eq!(m.usage_bytes, Some(10000));
        assert_eq!(m.working_set_bytes, Some(7500));
        assert_eq!(m.rss_bytes, Some(6000));
        assert_eq!(m.cache_bytes, Some(4000));
        assert_eq!(m.mapped_file_bytes, Some(1000));
        assert_eq!((m.page_faults, m.major_page_faults), (Some(77), Some(3)));
        assert_eq!(m.oom_kills, Some(1));
        // Unlimited: nothing is "available" in the CRI's sense.
        assert_eq!((m.limit_bytes, m.available_bytes), (None, None));
        write(t.path(), "memory.max", "16384\n");
        let m = memory(&RealFs, t.path(), 9).unwrap().unwrap();
        assert_eq!(
            (m.limit_bytes, m.available_bytes),
            (Some(16384), Some(8884))
        );
        // inactive_file above usage (racy reads) never underflows.
        write(t.path(), "memory.stat", "inactive_file 20000\n");
        let m = memory(&RealFs, t.path(), 9).unwrap().unwrap();
        assert_eq!(m.working_set_bytes, Some(0));
        assert_eq!(m.rss_bytes, None);
        write(t.path(), "memory.current", "lots\n");
        assert!(memory(&RealFs, t.path(), 9).is_err());
    }

    #[test]
    fn swap_usage_and_limit() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "memory.swap.current", "100\n");
        write(t.path(), "memory.swap.max", "max\n");
        let s = swap(&RealFs, t.path(), 3).unwrap().unwrap();
        assert_eq!((s.usage_bytes, s.available_bytes), (100, None));
        write(t.path(), "memory.swap.max", "1000\n");
        let s = swap(&RealFs, t.path(), 3).unwrap().unwrap();
        assert_eq!(s.available_bytes, Some(900));
    }

    #[test]
    fn processes_are_counted_through_the_subtree() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path();
        write(pod, "cgroup.procs", "");
        write(&pod.join("crius-sandbox"), "cgroup.procs", "10\n");
        write(&pod.join("crius-ctr"), "cgroup.procs", "11\n12\n");
        write(&pod.join("crius-ctr/nested"), "cgroup.procs", "13\n");
        let p = process(&RealFs, pod, 5).unwrap().unwrap();
        assert_eq!(p.processes, 4);
        assert_eq!((p.threads, p.threads_max), (None, None));
        write(pod, "pids.current", "6\n");
        write(pod, "pids.max", "max\n");
        let p = process(&RealFs, pod, 5).unwrap().unwrap();
        assert_eq!((p.threads, p.threads_max), (Some(6), None));
        write(pod, "pids.max", "100\n");
        assert_eq!(
            process(&RealFs, pod, 5).unwrap().unwrap().threads_max,
            Some(100)
        );
        assert_eq!(process(&RealFs, &pod.join("gone"), 5).unwrap(), None);
    }
}
