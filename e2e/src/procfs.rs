//! Reading `/proc`: process state, parent, command name, cgroup, executable, namespaces; and running helper
//! commands with a deadline.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The fields of `/proc/<pid>/stat` the harness needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// The command name (at most 15 bytes), without the parentheses.
    pub comm: String,
    /// R, S, D, Z, T, X, ...
    pub state: char,
    pub ppid: i32,
}

/// Parses `/proc/<pid>/stat`; `None` when the process does not exist (any more).
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name may itself contain ") ", so split at the LAST closing parenthesis.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
    })
}

/// Every pid listed in `/proc` right now.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid` names a process that is still running (not a zombie, not gone).
pub fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// The process' path in the cgroup v2 hierarchy (the `0::` line of `/proc/<pid>/cgroup`).
pub fn cgroup_v2_path(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The executable of `pid` (`/proc/<pid>/exe`), with a " (deleted)" suffix removed.
pub fn exe(pid: i32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = link.to_string_lossy();
    Some(PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s)))
}

/// The inode of a namespace of `pid` (`ns` is `net`, `uts`, `ipc`, `pid`, ...); `pid` 0 means this process.
pub fn ns_inode(pid: i32, ns: &str) -> Option<u64> {
    let path = if pid == 0 {
        format!("/proc/self/ns/{ns}")
    } else {
        format!("/proc/{pid}/ns/{ns}")
    };
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The inode of a namespace file bind mount (e.g. `<state>/netns/<id>`).
pub fn file_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The `NSpid:` line of `/proc/<pid>/status`: the pid as seen in each nested PID namespace, outermost first.
pub fn nspid(pid: i32) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// One line of `/proc/self/mountinfo`, the fields the harness needs.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// Per-mount options (`rw,nosuid,...`).
    pub mount_options: String,
    /// Superblock options (`rw,size=65536k,...`).
    pub super_options: String,
    /// The raw line, for messages.
    pub line: String,
}

/// Parses `/proc/self/mountinfo`.
pub fn mounts() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    Some(MountInfo {
        mount_point: PathBuf::from(unescape_octal(left.get(4)?)),
        mount_options: left.get(5)?.to_string(),
        fs_type: right.first()?.to_string(),
        super_options: right.get(2).unwrap_or(&"").to_string(),
        line: line.to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d[0] <= b'3' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<MountInfo> {
    let mut found: Vec<MountInfo> = mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    found
}

/// Runs `cmd` to completion with its output captured, killing it after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let mut stdout = child.stdout.take().context("stdout is piped")?;
    let mut stderr = child.stderr.take().context("stderr is piped")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs a command, returning its stdout; fails (with stderr) on a non-zero exit. 30 s deadline.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = output_with_timeout(Command::new(program).args(args), Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parenthesis_in_comm() {
        let s = parse_stat("42 (a) b) S 7 42 42 0 -1").unwrap();
        assert_eq!(s.pid, 42);
        assert_eq!(s.comm, "a) b");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 7);
    }

    #[test]
    fn mountinfo_line() {
        let m =
            parse_mountinfo_line("36 35 0:33 / /run/a\\040b rw,nosuid - tmpfs shm rw,size=65536k")
                .unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/run/a b"));
        assert_eq!(m.fs_type, "tmpfs");
        assert_eq!(m.super_options, "rw,size=65536k");
        assert_eq!(m.mount_options, "rw,nosuid");
    }

    #[test]
    fn this_process_is_alive() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert_eq!(stat(me).unwrap().pid, me);
        assert!(ns_inode(0, "net").is_some());
    }
}
