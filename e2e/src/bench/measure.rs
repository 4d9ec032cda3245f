//! What the benchmark reads off a process: CPU time and memory from `/proc`, and the resource usage of a
//! command run to completion (through `crius-bench rusage`, so its peak RSS is its own and nobody else's).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{UsageWho, getrusage};
use nix::unistd::{SysconfVar, sysconf};
use serde_json::{Value, json};

/// CPU time and memory of a live process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// utime + stime.
    pub cpu: Duration,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS since the process started), KiB.
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS, VmHWM).
pub fn sample(pid: i32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("cannot parse /proc/{pid}/stat"))?;
    let per_second = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    Ok(ProcSample {
        cpu: Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / per_second)),
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of `/proc/<pid>/status` or `smaps_rollup`, in KiB.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Proportional set size of a process (`/proc/<pid>/smaps_rollup`), KiB: its fair share of shared pages.
pub fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    status_kib(&text, "Pss:")
}

/// The descriptors `pid` holds open (`/proc/<pid>/fd`).
pub fn fd_count(pid: i32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("process {pid} is gone"))?
        .count())
}

/// What one command used, start to exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
}

/// Runs `program args` as this process' only child, waits for it and prints its [`Usage`] as JSON on stdout
/// (the body of `crius-bench rusage`). Its output goes to our stderr. Fails when it exits non-zero.
pub fn rusage_of_child(program: &str, args: &[String]) -> anyhow::Result<()> {
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    let wall = start.elapsed();
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    if !status.success() {
        bail!("{program} failed: {status}");
    }
    let out = json!({
        "wall_s": wall.as_secs_f64(),
        "cpu_s": (tv(usage.user_time()) + tv(usage.system_time())).as_secs_f64(),
        "max_rss_kib": usage.max_rss(),
    });
    println!("{out}");
    Ok(())
}

/// Runs `program args` under `<bench> rusage` and returns what it used.
pub fn measure_command(bench: &Path, program: &str, args: &[String]) -> anyhow::Result<Usage> {
    let out = Command::new(bench)
        .arg("rusage")
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bench.display()))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("rusage output is not JSON")?;
    let secs = |k: &str| Duration::from_secs_f64(v[k].as_f64().unwrap_or(0.0));
    Ok(Usage {
        wall: secs("wall_s"),
        cpu: secs("cpu_s"),
        max_rss_kib: v["max_rss_kib"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 1 0 99 1000 10";
        assert_eq!(cpu_ticks(line), Some(325));
    }

    #[test]
    fn kib_lines() {
        let text = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kib(text, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(text, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(text, "Pss:"), None);
    }

    #[test]
    fn this_process_has_cpu_and_memory() {
        let s = sample(std::process::id() as i32).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(pss_kib(std::process::id() as i32).unwrap() > 0);
        // The directory being read is open at least.
        assert!(fd_count(std::process::id() as i32).unwrap() > 0);
    }
}
