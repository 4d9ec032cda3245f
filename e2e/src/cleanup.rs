//! Best-effort removal of whatever a (failed) test left, run by `Drop for Crius` after crius is killed.
//! Touches only what belongs to the instance: processes in its cgroup parent or pause pids it saw, mounts
//! under its dir, its bridge, its cgroup parent. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::instance::Crius;
use crate::procfs;

pub(crate) fn everything(c: &Crius) {
    kill_pod_processes(c);
    unmount_all(&c.paths.dir);
    delete_bridge(c.bridge());
    remove_cgroups(&c.cgroup_dir());
}

fn kill_pod_processes(c: &Crius) {
    let victims: Vec<i32> = c.leaked_pids().into_iter().map(|(pid, _)| pid).collect();
    for &pid in &victims {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // They are children of crius (dead now) and so re-parented to us: the reaper thread collects them.
    let deadline = Instant::now() + Duration::from_secs(3);
    while victims.iter().any(|&p| procfs::is_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unmount_all(dir: &Path) {
    for m in procfs::mounts_under(dir) {
        let _ = umount2(&m.mount_point, MntFlags::MNT_DETACH);
    }
}

fn delete_bridge(bridge: &str) {
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = procfs::run("ip", &["link", "del", bridge]);
    }
}

fn remove_cgroups(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let mut dirs: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            dirs.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
        i += 1;
    }
    // Children before parents: rmdir only works on a cgroup without child cgroups.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
}
