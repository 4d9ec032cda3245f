//! Cgroup paths: kubelet's `cgroup_parent` in either driver's form, and the sandbox's child cgroup.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{CgroupDriver, CgroupError};

/// The longest name of one cgroup directory (the kernel's NAME_MAX).
const NAME_MAX: usize = 255;

/// A validated cgroup path relative to the cgroup2 mount, written absolute: `/kubepods/burstable/pod1`, or
/// `/` for the root cgroup. No empty, `.` or `..` components; no NUL or newline.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupPath(String);

impl CgroupPath {
    /// Validates an absolute cgroupfs path such as `/kubepods/burstable/pod1`.
    pub fn new(path: &str) -> Result<Self, CgroupError> {
        let invalid = |reason| {
            Err(CgroupError::InvalidPath {
                path: path.to_string(),
                reason,
            })
        };
        let Some(rest) = path.strip_prefix('/') else {
            return invalid("a cgroupfs path must be absolute (start with '/')");
        };
        if rest.is_empty() {
            return Ok(Self::root());
        }
        for name in rest.split('/') {
            if let Err(reason) = check_name(name) {
                return invalid(reason);
            }
        }
        Ok(Self(path.to_string()))
    }

    /// The root of the cgroup2 tree.
    pub fn root() -> Self {
        Self("/".to_string())
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its leading `/` (empty for the root), to join onto the mount point.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// The directory names from the top, e.g. `["kubepods", "burstable", "pod1"]`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.relative().split('/').filter(|c| !c.is_empty())
    }

    /// How many directories below the root (0 for the root).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The child `name` of this cgroup.
    pub fn join(&self, name: &str) -> Result<Self, CgroupError> {
        check_name(name).map_err(|reason| CgroupError::InvalidPath {
            path: name.to_string(),
            reason,
        })?;
        Ok(self.join_valid(name))
    }

    fn join_valid(&self, name: &str) -> Self {
        if self.is_root() {
            Self(format!("/{name}"))
        } else {
            Self(format!("{}/{name}", self.0))
        }
    }

    /// The parent cgroup, `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        match self.0.rfind('/') {
            Some(0) | None => Some(Self::root()),
            Some(i) => Some(Self(self.0[..i].to_string())),
        }
    }

    /// This path and every ancestor below the root, top first: `/a`, `/a/b`, `/a/b/c`.
    pub fn lineage(&self) -> Vec<Self> {
        let mut out = Vec::new();
        let mut current = Self::root();
        for name in self.components() {
            current = current.join_valid(name);
            out.push(current.clone());
        }
        out
    }

    /// Whether `self` is `other` or lies below it (whole components, so `/ab` is not below `/a`).
    pub fn is_within(&self, other: &Self) -> bool {
        other.is_root() || self.0 == other.0 || self.0.starts_with(&format!("{}/", other.0))
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it has an empty component");
    }
    if name == "." || name == ".." {
        return Err("it has a '.' or '..' component");
    }
    if name.contains('/') {
        return Err("a cgroup name cannot contain '/'");
    }
    if name.contains('\0') || name.contains('\n') {
        return Err("it contains a NUL or newline character");
    }
    if name.len() > NAME_MAX {
        return Err("a component is longer than 255 bytes");
    }
    Ok(())
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl TryFrom<String> for CgroupPath {
    type Error = CgroupError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<CgroupPath> for String {
    fn from(value: CgroupPath) -> Self {
        value.0
    }
}

/// Turns kubelet's `cgroup_parent` into a path under the cgroup2 mount, whatever the configured driver:
///
/// - a cgroupfs path (`/kubepods/burstable/pod<uid>`) is kept as it is;
/// - a systemd slice name (`kubepods-burstable-pod<uid>.slice`) is expanded the way systemd nests slices,
///   each dash adding a level: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
///   (`-.slice` is the root slice).
pub fn expand_parent(parent: &str) -> Result<CgroupPath, CgroupError> {
    if parent.is_empty() {
        return Err(CgroupError::InvalidPath {
            path: String::new(),
            reason: "it is empty",
        });
    }
    if parent.starts_with('/') {
        return CgroupPath::new(parent);
    }
    if parent.ends_with(".slice") && !parent.contains('/') {
        return expand_slice(parent);
    }
    Err(CgroupError::InvalidPath {
        path: parent.to_string(),
        reason: "a cgroupfs path must be absolute; a systemd slice name must end in \".slice\" and contain no '/'",
    })
}

fn expand_slice(name: &str) -> Result<CgroupPath, CgroupError> {
    let invalid = |reason| {
        Err(CgroupError::InvalidSlice {
            name: name.to_string(),
            reason,
        })
    };
    if name == "-.slice" {
        return Ok(CgroupPath::root());
    }
    let stem = name.strip_suffix(".slice").unwrap_or(name);
    if stem.is_empty() {
        return invalid("the name before \".slice\" is empty");
    }
    if stem.starts_with('-') || stem.ends_with('-') {
        return invalid("a slice name cannot start or end with '-'");
    }
    if stem.contains("--") {
        return invalid("a slice name cannot contain \"--\"");
    }
    let mut path = CgroupPath::root();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path = path
            .join(&format!("{prefix}.slice"))
            .map_err(|_| CgroupError::InvalidSlice {
                name: name.to_string(),
                reason: "it is not a valid cgroup name",
            })?;
    }
    Ok(path)
}

/// The sandbox's own cgroup below the pod cgroup: `<pod>/crius-<id>` with the cgroupfs driver,
/// `<pod>/crius-<id>.scope` with systemd. Sandbox ids are hex; should one ever contain '/', NUL or a newline,
/// those characters are replaced by '_' so the result stays one directory below `pod`.
pub fn sandbox_child(driver: CgroupDriver, pod: &CgroupPath, id: &str) -> CgroupPath {
    let id: String = id
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\0' | '\n') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let name = match driver {
        CgroupDriver::Cgroupfs => format!("crius-{id}"),
        CgroupDriver::Systemd => format!("crius-{id}.scope"),
    };
    pod.join_valid(&name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn expand(s: &str) -> String {
        expand_parent(s).unwrap().to_string()
    }

    #[test]
    fn cgroupfs_paths_are_kept() {
        assert_eq!(
            expand("/kubepods/burstable/pod123"),
            "/kubepods/burstable/pod123"
        );
        assert_eq!(
            expand("/kubepods.slice/kubepods-besteffort.slice"),
            "/kubepods.slice/kubepods-besteffort.slice"
        );
        assert_eq!(expand("/"), "/");
        assert!(expand_parent("/").unwrap().is_root());
    }

    #[test]
    fn slices_are_nested_like_systemd() {
        assert_eq!(
            expand("kubepods-burstable-pod1234_5678.slice"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice"
        );
        assert_eq!(expand("a-b-c.slice"), "/a.slice/a-b.slice/a-b-c.slice");
        assert_eq!(expand("kubepods.slice"), "/kubepods.slice");
        assert_eq!(expand("-.slice"), "/");
    }

    #[test]
    fn bad_parents_are_refused() {
        for bad in [
            "",
            "kubepods/burstable",
            "pod123",
            "/kubepods/../etc",
            "/kubepods//pod",
            "/kubepods/./x",
            "/a/\0b",
        ] {
            assert!(
                matches!(expand_parent(bad), Err(CgroupError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
        assert!(
            expand_parent("/kubepods/").is_err(),
            "trailing slash is an empty component"
        );
        for bad in ["-a.slice", "a-.slice", "a--b.slice", ".slice", "-a-b.slice"] {
            let err = expand_parent(bad).unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidSlice { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(expand_parent("a/b.slice").is_err());
        assert!(expand_parent(&format!("/{}", "x".repeat(256))).is_err());
    }

    #[test]
    fn sandbox_child_names_follow_the_driver() {
        let pod = expand_parent("/kubepods/pod1").unwrap();
        assert_eq!(
            sandbox_child(CgroupDriver::Cgroupfs, &pod, "abc").to_string(),
            "/kubepods/pod1/crius-abc"
        );
        let slice = expand_parent("kubepods-pod1.slice").unwrap();
        assert_eq!(
            sandbox_child(CgroupDriver::Systemd, &slice, "abc").to_string(),
            "/kubepods.slice/kubepods-pod1.slice/crius-abc.scope"
        );
        assert_eq!(
            sandbox_child(CgroupDriver::Cgroupfs, &pod, "a/../b").to_string(),
            "/kubepods/pod1/crius-a_.._b"
        );
        assert_eq!(
            sandbox_child(CgroupDriver::Cgroupfs, &CgroupPath::root(), "x").to_string(),
            "/crius-x"
        );
    }

    #[test]
    fn path_helpers() {
        let p = CgroupPath::new("/a/b/c").unwrap();
        assert_eq!(p.depth(), 3);
        assert_eq!(p.parent().unwrap().to_string(), "/a/b");
        assert_eq!(
            CgroupPath::new("/a").unwrap().parent().unwrap(),
            CgroupPath::root()
        );
        assert_eq!(CgroupPath::root().parent(), None);
        let lineage: Vec<String> = p.lineage().iter().map(ToString::to_string).collect();
        assert_eq!(lineage, ["/a", "/a/b", "/a/b/c"]);
        assert!(p.is_within(&CgroupPath::new("/a/b").unwrap()));
        assert!(
            !CgroupPath::new("/ab")
                .unwrap()
                .is_within(&CgroupPath::new("/a").unwrap())
        );
        assert!(p.join("..").is_err());
        assert_eq!(p.relative(), "a/b/c");
    }

    #[test]
    fn serde_round_trip_validates() {
        let p = CgroupPath::new("/a/b").unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"/a/b\"");
        assert_eq!(serde_json::from_str::<CgroupPath>(&json).unwrap(), p);
        assert!(serde_json::from_str::<CgroupPath>("\"/a/../b\"").is_err());
    }
}
