//! The seam in front of the kernel: the few file and process operations the cgroup manager needs.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// File system (and signal) operations on a cgroup2 tree. Paths are absolute (the mount point joined with
/// the cgroup path). [`RealFs`] talks to the kernel; [`super::fake::FakeCgroupFs`] emulates a cgroup2 mount
/// in a tempdir for unit tests.
pub trait CgroupFs: Send + Sync + fmt::Debug {
    /// Creates one cgroup directory; `AlreadyExists` if it is there.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Removes one (empty) cgroup directory; `NotFound` if it is gone, `EBUSY` while it has processes or children.
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes `value` to an existing interface file in one write.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Names of the child cgroups (subdirectories) of `path`.
    fn children(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Sends SIGKILL to one process (`pid > 0`); `ESRCH` if it is gone.
    fn sigkill(&self, pid: i32) -> io::Result<()>;
}

/// The real cgroup2 file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl CgroupFs for RealFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // Interface files exist or not; never create or truncate one. One write: the kernel parses each write
        // on its own.
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }

    fn exists(&self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn children(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }

    fn sigkill(&self, pid: i32) -> io::Result<()> {
        // kill(0) or kill(-n) would signal whole process groups (or everything): never.
        if pid <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to signal pid {pid}"),
            ));
        }
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))
    }
}
