//! Reaping orphans: PID 1 on these machines does not reap, so the test process adopts them.
//!
//! [`install`] makes the test process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so pause processes orphaned
//! by a stopped or killed `crius serve` re-parent to the test process instead of PID 1, and starts one background
//! thread that reaps zombie children whose command name starts with `crius-` (`crius-pause`, later monitors).
//! It never reaps anything else: a `crius serve` child (command name `crius`) or a helper like `ip` is waited for
//! by whoever spawned it, and reaping it here would break that `wait`.

use std::collections::HashSet;
use std::sync::{Mutex, Once};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::procfs;

static INSTALL: Once = Once::new();
static PROTECTED: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// How often the sweeper looks for zombies.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Makes this process a child subreaper and starts the sweeper, once per process. Panics if the kernel refuses.
pub fn install() {
    INSTALL.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect(
            "prctl(PR_SET_CHILD_SUBREAPER) failed: orphaned pause processes would never be reaped",
        );
        std::thread::Builder::new()
            .name("crius-e2e-reaper".into())
            .spawn(|| {
                loop {
                    sweep();
                    std::thread::sleep(SWEEP_INTERVAL);
                }
            })
            .expect("cannot start the reaper thread");
    });
}

/// Marks `pid` as a child the harness waits for itself: the sweeper never touches it.
pub fn protect(pid: i32) {
    if let Ok(mut set) = PROTECTED.lock() {
        set.get_or_insert_with(HashSet::new).insert(pid);
    }
}

/// Undoes [`protect`] once the harness has waited for `pid`.
pub fn unprotect(pid: i32) {
    if let Ok(mut set) = PROTECTED.lock()
        && let Some(set) = set.as_mut()
    {
        set.remove(&pid);
    }
}

fn is_protected(pid: i32) -> bool {
    PROTECTED
        .lock()
        .map(|set| set.as_ref().is_some_and(|s| s.contains(&pid)))
        .unwrap_or(true)
}

/// Reaps every zombie child of ours named `crius-*` that is not protected.
pub fn sweep() {
    let me = std::process::id() as i32;
    for pid in procfs::all_pids() {
        let Some(st) = procfs::stat(pid) else {
            continue;
        };
        if st.state == 'Z' && st.ppid == me && st.comm.starts_with("crius-") && !is_protected(pid) {
            // WNOHANG: it is a zombie already, so this returns at once; an error means someone else reaped it.
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}
