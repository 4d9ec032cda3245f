//! Dropping to the container's user and capabilities.
//!
//! Called in the forked, single-threaded container init (or an exec'd process) right before
//! execve, after the mounts and pivot_root. Credentials and capabilities are per thread: the
//! process must be single-threaded for the result to hold for the whole process.
//!
//! What the workload ends up with after execve (see capabilities(7), "Transformation of
//! capabilities during execve()"), given that inheritable and ambient are always empty here:
//! - as root (uid 0), the kernel treats the file's sets as full, so the new permitted and
//!   effective sets equal the bounding set: the spec's `bounding` list is what matters;
//! - as any other uid, the new permitted set is what file capabilities grant within the
//!   bounding set, and a program without file capabilities runs with none (as with runc,
//!   containerd and CRI-O defaults for non-root containers).

use caps::errors::CapsError;
use caps::{CapSet, Capability as KernelCap, CapsHashSet};
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, User};

/// The umask when the spec gives none.
pub const DEFAULT_UMASK: u32 = 0o022;

const LAST_CAP_PATH: &str = "/proc/sys/kernel/cap_last_cap";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    #[error(
        "the kernel has capabilities up to number {last_cap}, past those this build can drop from the bounding set"
    )]
    KernelCapsUnknown { last_cap: u8 },
    #[error("set supplementary groups to {groups:?}")]
    SetGroups {
        groups: Vec<u32>,
        #[source]
        source: Errno,
    },
    #[error("setresgid to {gid}")]
    SetGid {
        gid: u32,
        #[source]
        source: Errno,
    },
    #[error("set PR_SET_KEEPCAPS to {on}")]
    KeepCaps {
        on: bool,
        #[source]
        source: Errno,
    },
    #[error("setresuid to {uid}")]
    SetUid {
        uid: u32,
        #[source]
        source: Errno,
    },
    #[error("read the current capabilities")]
    ReadCaps(#[source] CapsError),
    #[error("{cap} is asked for but the runtime does not hold it")]
    NotHeld { cap: KernelCap },
    #[error("drop {cap} from the bounding set")]
    DropBounding {
        cap: KernelCap,
        #[source]
        source: CapsError,
    },
    #[error("set the {set} capability set")]
    SetCaps {
        set: &'static str,
        #[source]
        source: CapsError,
    },
    #[error("clear the ambient capability set")]
    ClearAmbient(#[source] CapsError),
    #[error("set no_new_privs")]
    NoNewPrivs(#[source] Errno),
}

/// Applies, in this order: supplementary groups (the additional gids plus the primary gid,
/// nothing inherited: containerd CVE-2023-25173), setresgid, PR_SET_KEEPCAPS + setresuid (so
/// capabilities survive a switch to a non-root uid), then the capability sets from `caps`, then
/// clears KEEPCAPS, then no_new_privs when asked. `None` caps means: drop all capabilities.
///
/// Capability sets:
/// - bounding: everything not listed is dropped, while CAP_SETPCAP is still effective;
/// - effective and permitted as listed (effective limited to permitted, as the kernel demands);
/// - inheritable is always emptied, whatever the spec says (runc CVE-2022-29162);
/// - ambient is always cleared and the spec's ambient list is not raised: the kernel raises an
///   ambient capability only if it is in both permitted and inheritable, and inheritable is
///   empty, so nothing could be raised; clearing also drops anything inherited.
///
/// Capabilities the running kernel does not have (past CAP_LAST_CAP) are ignored. All names
/// are resolved before any credential changes, so an error there leaves the process untouched.
pub fn apply(
    user: &User,
    caps: Option<&LinuxCapabilities>,
    no_new_privileges: bool,
) -> Result<(), IdentityError> {
    let supported = kernel_caps()?;
    let plan = CapPlan::new(caps, &supported)?;

    // Groups first, while we are still allowed to (CAP_SETGID), and never keep the
    // runtime's own supplementary groups.
    let groups = group_list(user);
    setgroups(&groups).map_err(|source| IdentityError::SetGroups {
        groups: groups.iter().map(|g| g.as_raw()).collect(),
        source,
    })?;
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(|source| IdentityError::SetGid {
        gid: user.gid(),
        source,
    })?;

    // Leaving uid 0 clears permitted and effective unless KEEPCAPS is set; with it, permitted
    // survives (effective is still cleared, ambient always is).
    set_keepcaps(true)?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(|source| IdentityError::SetUid {
        uid: user.uid(),
        source,
    })?;

    apply_caps(&plan, &supported)?;
    set_keepcaps(false)?;

    if no_new_privileges {
        prctl::set_no_new_privs().map_err(IdentityError::NoNewPrivs)?;
    }
    Ok(())
}

/// umask from the spec user (default 0o022).
pub fn apply_umask(user: &User) {
    let mask = user.umask().unwrap_or(DEFAULT_UMASK);
    umask(Mode::from_bits_truncate(mask));
}

/// A capability name as CRI and OCI write it: `CAP_NET_ADMIN` or `NET_ADMIN`, any case.
/// An unknown name is an error naming it.
pub fn parse_capability(name: &str) -> Result<Capability, IdentityError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>()
        .map_err(|_| IdentityError::UnknownCapability(name.to_string()))
}

/// The supplementary groups: the additional gids in order, then the primary gid unless
/// already listed.
fn group_list(user: &User) -> Vec<Gid> {
    let mut groups: Vec<u32> = Vec::new();
    let additional = user.additional_gids().iter().flatten().copied();
    for gid in additional.chain(std::iter::once(user.gid())) {
        if !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    groups.into_iter().map(Gid::from_raw).collect()
}

/// The capabilities the running kernel has. The bounding set is probed for each capability
/// this build knows (no /proc needed after pivot_root); where /proc still says how many the
/// kernel has, a kernel with more than we can name is refused, since one of those could not
/// be dropped from the bounding set.
fn kernel_caps() -> Result<CapsHashSet, IdentityError> {
    if let Some(last_cap) = std::fs::read_to_string(LAST_CAP_PATH)
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
    {
        let known_last = caps::all().iter().map(|c| c.index()).max().unwrap_or(0);
        if last_cap > known_last {
            return Err(IdentityError::KernelCapsUnknown { last_cap });
        }
    }
    Ok(caps::runtime::thread_all_supported())
}

/// The spec's capability type to the kernel's.
fn kernel_cap(cap: Capability) -> Result<KernelCap, IdentityError> {
    let name = format!("CAP_{cap}");
    name.parse::<KernelCap>()
        .map_err(|_| IdentityError::UnknownCapability(name))
}

/// The capability sets to end up with, resolved and limited to what the kernel has.
#[derive(Debug, Default, PartialEq, Eq)]
struct CapPlan {
    bounding: CapsHashSet,
    permitted: CapsHashSet,
    effective: CapsHashSet,
}

impl CapPlan {
    fn new(
        caps: Option<&LinuxCapabilities>,
        supported: &CapsHashSet,
    ) -> Result<CapPlan, IdentityError> {
        let Some(caps) = caps else {
            return Ok(CapPlan::default());
        };
        let resolve = |set: &Option<Capabilities>| -> Result<CapsHashSet, IdentityError> {
            let mut out = CapsHashSet::new();
            for cap in set.iter().flatten() {
                let cap = kernel_cap(*cap)?;
                if supported.contains(&cap) {
                    out.insert(cap);
                }
            }
            Ok(out)
        };
        let bounding = resolve(caps.bounding())?;
        let permitted = resolve(caps.permitted())?;
        let effective = resolve(caps.effective())?;
        // Resolve the ignored sets too, so an unknown name is an error wherever it is.
        resolve(caps.inheritable())?;
        resolve(caps.ambient())?;
        let effective = effective.intersection(&permitted).copied().collect();
        Ok(CapPlan {
            bounding,
            permitted,
            effective,
        })
    }
}

fn set_keepcaps(on: bool) -> Result<(), IdentityError> {
    prctl::set_keepcaps(on).map_err(|source| IdentityError::KeepCaps { on, source })
}

fn set_caps(set: CapSet, name: &'static str, value: &CapsHashSet) -> Result<(), IdentityError> {
    caps::set(None, set, value).map_err(|source| IdentityError::SetCaps { set: name, source })
}

/// Runs after setresuid with KEEPCAPS set: permitted is what the runtime had, effective may
/// have been cleared by the uid change.
fn apply_caps(plan: &CapPlan, supported: &CapsHashSet) -> Result<(), IdentityError> {
    let held = caps::read(None, CapSet::Permitted).map_err(IdentityError::ReadCaps)?;
    if let Some(cap) = plan.permitted.difference(&held).next() {
        // capset would refuse with EPERM; say which capability instead.
        return Err(IdentityError::NotHeld { cap: *cap });
    }

    // Dropping from the bounding set needs CAP_SETPCAP in effective, which a switch away from
    // uid 0 cleared: raise effective back to the (kept) permitted set first.
    set_caps(CapSet::Effective, "effective", &held)?;
    for cap in supported {
        if plan.bounding.contains(cap) {
            continue;
        }
        let present = caps::has_cap(None, CapSet::Bounding, *cap)
            .map_err(|source| IdentityError::DropBounding { cap: *cap, source })?;
        if present {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|source| IdentityError::DropBounding { cap: *cap, source })?;
        }
    }

    // Each capset must keep effective within permitted: shrink effective before permitted.
    set_caps(CapSet::Inheritable, "inheritable", &CapsHashSet::new())?;
    set_caps(CapSet::Effective, "effective", &plan.effective)?;
    set_caps(CapSet::Permitted, "permitted", &plan.permitted)?;
    caps::clear(None, CapSet::Ambient).map_err(IdentityError::ClearAmbient)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, UserBuilder};

    use super::*;

    fn oci_set(names: &[&str]) -> Capabilities {
        names.iter().map(|n| parse_capability(n).unwrap()).collect()
    }

    fn kernel_set(caps: &[KernelCap]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn parse_capability_accepts_cri_and_oci_spellings() {
        for name in ["CAP_NET_ADMIN", "NET_ADMIN", "net_admin", "cap_net_admin"] {
            assert_eq!(parse_capability(name).unwrap(), Capability::NetAdmin);
        }
    }

    #[test]
    fn unknown_capability_is_named() {
        let err = parse_capability("CAP_BOGUS").unwrap_err();
        assert!(matches!(&err, IdentityError::UnknownCapability(n) if n == "CAP_BOGUS"));
        assert_eq!(err.to_string(), "unknown capability CAP_BOGUS");
    }

    #[test]
    fn every_oci_capability_maps_to_a_kernel_one() {
        for cap in caps::all() {
            let name = cap.to_string();
            let oci = parse_capability(&name).unwrap();
            assert_eq!(kernel_cap(oci).unwrap(), cap, "{name}");
        }
        // And the other way: the 41 names oci-spec knows.
        let json = serde_json::to_string(
            &caps::all()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let oci: Capabilities = serde_json::from_str(&json).unwrap();
        assert_eq!(oci.len(), caps::all().len());
    }

    #[test]
    fn groups_include_the_primary_gid_once() {
        let user = UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .additional_gids(vec![10, 20, 10])
            .build()
            .unwrap();
        let raw: Vec<u32> = group_list(&user).iter().map(|g| g.as_raw()).collect();
        assert_eq!(raw, [10, 20, 1000]);

        let user = UserBuilder::default()
            .gid(5u32)
            .additional_gids(vec![5, 7])
            .build()
            .unwrap();
        let raw: Vec<u32> = group_list(&user).iter().map(|g| g.as_raw()).collect();
        assert_eq!(raw, [5, 7]);

        let user = UserBuilder::default().gid(3u32).build().unwrap();
        let raw: Vec<u32> = group_list(&user).iter().map(|g| g.as_raw()).collect();
        assert_eq!(raw, [3]);
    }

    #[test]
    fn no_caps_plans_nothing() {
        assert_eq!(
            CapPlan::new(None, &caps::all()).unwrap(),
            CapPlan::default()
        );
    }

    #[test]
    fn plan_limits_effective_to_permitted_and_ignores_inheritable_and_ambient() {
        let spec = LinuxCapabilitiesBuilder::default()
            .bounding(oci_set(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"]))
            .permitted(oci_set(&["CAP_CHOWN", "CAP_KILL"]))
            .effective(oci_set(&["CAP_CHOWN", "CAP_NET_RAW"]))
            .inheritable(oci_set(&["CAP_SYS_ADMIN"]))
            .ambient(oci_set(&["CAP_KILL"]))
            .build()
            .unwrap();
        let plan = CapPlan::new(Some(&spec), &caps::all()).unwrap();
        use KernelCap::*;
        assert_eq!(
            plan,
            CapPlan {
                bounding: kernel_set(&[CAP_CHOWN, CAP_KILL, CAP_NET_RAW]),
                permitted: kernel_set(&[CAP_CHOWN, CAP_KILL]),
                effective: kernel_set(&[CAP_CHOWN]),
            }
        );
    }

    #[test]
    fn plan_ignores_capabilities_the_kernel_lacks() {
        // A kernel older than 5.9 has no CAP_CHECKPOINT_RESTORE (and before 5.8 no CAP_BPF).
        let mut supported = caps::all();
        supported.remove(&KernelCap::CAP_CHECKPOINT_RESTORE);
        supported.remove(&KernelCap::CAP_BPF);
        let names = ["CAP_CHOWN", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"];
        let spec = LinuxCapabilitiesBuilder::default()
            .bounding(oci_set(&names))
            .permitted(oci_set(&names))
            .effective(oci_set(&names))
            .build()
            .unwrap();
        let plan = CapPlan::new(Some(&spec), &supported).unwrap();
        let only_chown = kernel_set(&[KernelCap::CAP_CHOWN]);
        assert_eq!(plan.bounding, only_chown);
        assert_eq!(plan.permitted, only_chown);
        assert_eq!(plan.effective, only_chown);
    }
}
