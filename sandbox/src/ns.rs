//! Pinning a process's namespaces by bind-mounting /proc/<pid>/ns/<kind> onto a file, so the
//! namespace outlives the process (CNI_NETNS, `ip netns exec`, joining from container init).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::mount;

/// The namespaces a pause holds for its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
    Pid,
}

impl NsKind {
    /// The name under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Pid => "pid",
        }
    }

    /// /proc/<pid>/ns/<kind>.
    pub fn proc_path(self, pid: i32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/ns/{}", self.proc_name()))
    }
}

/// Errors from binding namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inspect {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bind-mount {source_path} onto {target}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{target} already holds a different namespace")]
    AlreadyBound { target: PathBuf },
    #[error("unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bind-mounts `pid`'s `kind` namespace onto `target` (parent directories and an empty file
/// are created). Binding the same namespace again is a no-op; a different one is an error.
///
/// `pid` must be a process that cannot be reused under us (e.g. our unreaped child).
pub fn bind(pid: i32, kind: NsKind, target: &Path) -> Result<(), NsError> {
    let source_path = kind.proc_path(pid);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|source| NsError::Create {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    if mount::is_mountpoint(target) {
        let stat = |p: &Path| {
            fs::metadata(p).map_err(|source| NsError::Stat {
                path: p.to_path_buf(),
                source,
            })
        };
        let (want, have) = (stat(&source_path)?, stat(target)?);
        if (want.dev(), want.ino()) == (have.dev(), have.ino()) {
            return Ok(());
        }
        return Err(NsError::AlreadyBound {
            target: target.to_path_buf(),
        });
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(target)
        .map_err(|source| NsError::Create {
            path: target.to_path_buf(),
            source,
        })?;
    nix::mount::mount(
        Some(&source_path),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NsError::Bind {
        source_path,
        target: target.to_path_buf(),
        source,
    })
}

/// Detaches the namespace mount at `target` and removes the file. Missing, or not mounted,
/// is fine: this is safe to repeat.
pub fn unbind(target: &Path) -> Result<(), NsError> {
    mount::detach_all(target).map_err(|source| NsError::Unmount {
        path: target.to_path_buf(),
        source,
    })?;
    match fs::remove_file(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NsError::Remove {
            path: target.to_path_buf(),
            source,
        }),
    }
}

/// A TCP connection to localhost:`port` inside the network namespace pinned at `netns` (none: ours), for
/// port-forwarding. The socket is made by a short-lived thread that joins the namespace (a namespace is a
/// per-thread property; the thread ends with the connection made, and the socket stays in the namespace it was
/// created in). 127.0.0.1 first, then ::1, as kubelet's runtimes do.
pub fn connect_localhost_in(
    netns: Option<&Path>,
    port: u16,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    let netns = netns.map(Path::to_path_buf);
    let worker = std::thread::Builder::new()
        .name("crius-netns-connect".into())
        .spawn(move || -> io::Result<std::net::TcpStream> {
            if let Some(path) = &netns {
                let f = fs::File::open(path)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            }
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            match std::net::TcpStream::connect_timeout(&v4, timeout) {
                Ok(s) => Ok(s),
                Err(e4) => {
                    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                    std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4)
                }
            }
        })?;
    worker
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// `/proc/net/dev` (per-interface byte, packet, error and drop counters) as seen inside each network namespace
/// pinned at `netns`, in order. One short-lived thread joins the namespaces in turn and reads
/// `/proc/thread-self/net/dev` after each join (`/proc/self/net` would show the main thread's namespace, and
/// sysfs the namespace it was mounted in). An entry whose namespace cannot be joined is that error, and nothing
/// is read for it: never another namespace's counters. The outer error: the thread could not run.
pub fn read_net_dev_in(netns: &[PathBuf]) -> io::Result<Vec<io::Result<String>>> {
    if netns.is_empty() {
        return Ok(Vec::new());
    }
    let netns = netns.to_vec();
    let worker = std::thread::Builder::new()
        .name("crius-netns-stats".into())
        .spawn(move || {
            netns
                .iter()
                .map(|path| {
                    let f = fs::File::open(path)?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    fs::read_to_string("/proc/thread-self/net/dev")
                })
                .collect()
        })?;
    worker
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_of_a_missing_namespace_is_an_error_for_that_entry_only() {
        assert!(read_net_dev_in(&[]).unwrap().is_empty());
        let d = tempfile::tempdir().unwrap();
        let out = read_net_dev_in(&[d.path().join("gone"), d.path().join("gone2")]).unwrap();
        assert_eq!(out.len(), 2);
        for r in out {
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
        }
    }

    #[test]
    fn connects_to_localhost_in_our_own_namespace() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = connect_localhost_in(None, port, std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
        drop(l);
        let e = connect_localhost_in(None, port, std::time::Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn proc_names() {
        let names: Vec<_> = [NsKind::Net, NsKind::Ipc, NsKind::Uts, NsKind::Pid]
            .iter()
            .map(|k| k.proc_name())
            .collect();
        assert_eq!(names, ["net", "ipc", "uts", "pid"]);
        assert_eq!(NsKind::Net.proc_path(42), Path::new("/proc/42/ns/net"));
    }

    #[test]
    fn unbind_missing_is_ok() {
        let d = tempfile::tempdir().unwrap();
        unbind(&d.path().join("nothing-here")).unwrap();
    }

    #[test]
    fn unbind_plain_file_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("netns");
        fs::write(&f, b"").unwrap();
        unbind(&f).unwrap();
        assert!(!f.exists());
    }
}
