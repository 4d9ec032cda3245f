//! Who the container runs as: the CRI security context's user, or the image's `User`, resolved against the
//! image's /etc/passwd and /etc/group the way containerd does (`WithUser`, `WithAdditionalGIDs`).
//!
//! Precedence: run_as_username, then run_as_user (with run_as_group), then the image's `User`
//! ("name", "uid", "name:group", "uid:gid", ...), else root. Names must exist in the image; a numeric uid need not
//! (its gid is then 0 unless one is given). Supplemental groups: the primary gid first (always: containerd
//! CVE-2023-25173, otherwise the process would keep no record of it and lose access granted to it), then, with the
//! Merge policy, every /etc/group entry listing the user by name, then the CRI's supplemental_groups.

use std::path::PathBuf;

use super::config::GroupsPolicy;
use super::layered;
use crate::error::{Error, Result};

/// The largest /etc/passwd or /etc/group crius reads from an image.
const MAX_DB_SIZE: u64 = 4 << 20;

/// The image's user database: the contents of its /etc/passwd and /etc/group, `None` when absent.
pub trait UserDb {
    fn passwd(&self) -> Option<String>;
    fn group(&self) -> Option<String>;
}

/// The user database of an unpacked image: etc/passwd and etc/group read from the layer directories, topmost first,
/// as the container's overlay rootfs will show them (whiteouts honoured, symlinks resolved inside the image, never
/// outside it; see [`layered`]).
///
/// The sandbox's openat2(RESOLVE_IN_ROOT) resolver is crate-private there and works on one directory, not a stack
/// of layers, so this resolves the union itself with std calls only: every path component is inspected with
/// `symlink_metadata` (never followed) and symlinks are re-resolved from the image root.
#[derive(Debug, Clone)]
pub struct LayerUsers {
    layers: Vec<PathBuf>,
}

impl LayerUsers {
    /// `layers`: the unpacked layer directories, topmost first.
    pub fn new(layers: Vec<PathBuf>) -> LayerUsers {
        LayerUsers { layers }
    }

    fn read(&self, path: &str) -> Option<String> {
        match layered::read_file(&self.layers, path, MAX_DB_SIZE) {
            Ok(bytes) => bytes.map(|b| String::from_utf8_lossy(&b).into_owned()),
            Err(e) => {
                // Treated like a missing file (as containerd does): names then fail to resolve with a clear error.
                tracing::warn!(file = path, error = %e, "cannot read the image's user database");
                None
            }
        }
    }
}

impl UserDb for LayerUsers {
    fn passwd(&self) -> Option<String> {
        self.read("etc/passwd")
    }

    fn group(&self) -> Option<String> {
        self.read("etc/group")
    }
}

/// A fixed user database, for tests.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct StaticUsers {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

#[cfg(test)]
impl UserDb for StaticUsers {
    fn passwd(&self) -> Option<String> {
        self.passwd.clone()
    }

    fn group(&self) -> Option<String> {
        self.group.clone()
    }
}

/// What the container asks to run as.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRequest<'a> {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_username: Option<&'a str>,
    /// The image config's `User` (may be empty).
    pub image_user: &'a str,
    pub supplemental_groups: &'a [u32],
    pub policy: GroupsPolicy,
}

/// The resolved identity of the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary gid first, no duplicates.
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0].is_empty() || f[0].starts_with(['#', '+', '-']) {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].trim(),
            uid: f[2].trim().parse().ok()?,
            gid: f[3].trim().parse().ok()?,
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 3 || f[0].is_empty() || f[0].starts_with(['#', '+', '-']) {
            return None;
        }
        Some(GroupEntry {
            name: f[0].trim(),
            gid: f[2].trim().parse().ok()?,
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

/// Where a user name came from, for the error that says it is missing.
#[derive(Clone, Copy)]
enum Origin {
    Username,
    Image,
}

impl Origin {
    fn missing(self, what: &str, spec: &str) -> Error {
        match self {
            Origin::Username => Error::invalid(
                "config.linux.security_context.run_as_username",
                format!("no user {spec:?} in the image's /etc/passwd"),
            ),
            Origin::Image => Error::invalid(
                "config.image",
                format!(
                    "the image's User names {what} that is not in the image's {}",
                    match what {
                        w if w.starts_with("group") => "/etc/group",
                        _ => "/etc/passwd",
                    }
                ),
            ),
        }
    }
}

/// Resolves the container's uid, gid and supplemental groups.
pub fn resolve(req: &UserRequest, db: &dyn UserDb) -> Result<ResolvedUser> {
    let passwd = db.passwd();
    let passwd = passwd.as_deref().unwrap_or("");
    // (uid, gid, the user name for group memberships)
    let (uid, gid, name): (u32, u32, Option<String>) = if let Some(username) = req.run_as_username {
        let e = by_name(passwd, username)
            .ok_or_else(|| Origin::Username.missing("a user", username))?;
        (
            e.uid,
            req.run_as_group.unwrap_or(e.gid),
            Some(username.to_owned()),
        )
    } else if let Some(uid) = req.run_as_user {
        let entry = by_uid(passwd, uid);
        let gid = req
            .run_as_group
            .or(entry.as_ref().map(|e| e.gid))
            .unwrap_or(0);
        (uid, gid, entry.map(|e| e.name.to_owned()))
    } else {
        image_user(req.image_user, passwd, db)?
    };
    let mut gids = vec![gid];
    if req.policy == GroupsPolicy::Merge
        && let Some(name) = &name
        && let Some(group) = db.group()
    {
        for g in group_entries(&group) {
            if g.members.contains(&name.as_str()) {
                gids.push(g.gid);
            }
        }
    }
    gids.extend_from_slice(req.supplemental_groups);
    let mut additional_gids = Vec::with_capacity(gids.len());
    for g in gids {
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

fn by_name<'a>(passwd: &'a str, name: &str) -> Option<PasswdEntry<'a>> {
    passwd_entries(passwd).find(|e| e.name == name)
}

fn by_uid(passwd: &str, uid: u32) -> Option<PasswdEntry<'_>> {
    passwd_entries(passwd).find(|e| e.uid == uid)
}

/// The image config's `User`: "", "user", "uid", "user:group", "uid:gid" and the mixed forms.
fn image_user(spec: &str, passwd: &str, db: &dyn UserDb) -> Result<(u32, u32, Option<String>)> {
    let spec = spec.trim();
    if spec.is_empty() {
        let name = by_uid(passwd, 0).map(|e| e.name.to_owned());
        return Ok((0, 0, name));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(Error::invalid(
            "config.image",
            format!(
                "the image's User {spec:?} is not \"user\", \"uid\", \"user:group\" or \"uid:gid\""
            ),
        ));
    }
    let (uid, passwd_gid, name) = match user.parse::<u32>() {
        Ok(uid) => {
            let e = by_uid(passwd, uid);
            (
                uid,
                e.as_ref().map_or(0, |e| e.gid),
                e.map(|e| e.name.to_owned()),
            )
        }
        Err(_) => {
            let e = by_name(passwd, user)
                .ok_or_else(|| Origin::Image.missing(&format!("user {user:?}"), spec))?;
            (e.uid, e.gid, Some(user.to_owned()))
        }
    };
    let gid = match group {
        None => passwd_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = db.group().unwrap_or_default();
                group_entries(&groups)
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| Origin::Image.missing(&format!("group {g:?}"), spec))?
            }
        },
    };
    Ok((uid, gid, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1::/:/sbin/nologin\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken:x:notanumber:1::/:\n\
        web:x:33:33::/var/www:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,app\n\
        app:x:1000:\n\
        audio:x:29:web, app\n\
        video:x:44:web\n\
        staff:x:50\n";

    fn db() -> StaticUsers {
        StaticUsers {
            passwd: Some(PASSWD.into()),
            group: Some(GROUP.into()),
        }
    }

    fn image(user: &str) -> Result<ResolvedUser> {
        resolve(
            &UserRequest {
                image_user: user,
                ..Default::default()
            },
            &db(),
        )
    }

    fn ids(r: &ResolvedUser) -> (u32, u32, Vec<u32>) {
        (r.uid, r.gid, r.additional_gids.clone())
    }

    #[test]
    fn image_user_forms() {
        assert_eq!(ids(&image("").unwrap()), (0, 0, vec![0, 10]));
        assert_eq!(
            ids(&image("app").unwrap()),
            (1000, 1000, vec![1000, 10, 29])
        );
        assert_eq!(
            ids(&image("1000").unwrap()),
            (1000, 1000, vec![1000, 10, 29])
        );
        assert_eq!(ids(&image("app:audio").unwrap()), (1000, 29, vec![29, 10]));
        assert_eq!(ids(&image("app:44").unwrap()), (1000, 44, vec![44, 10, 29]));
        assert_eq!(ids(&image("33:video").unwrap()), (33, 44, vec![44, 29]));
        assert_eq!(ids(&image("1234:5678").unwrap()), (1234, 5678, vec![5678]));
        // A uid not in passwd is fine, with gid 0.
        assert_eq!(ids(&image("4242").unwrap()), (4242, 0, vec![0]));
    }

    #[test]
    fn bad_image_users() {
        for bad in ["nobody", "app:nogroup", ":10", "app:", "a:b:c"] {
            match image(bad) {
                Err(Error::InvalidArgument { field, reason }) => {
                    assert_eq!(field, "config.image", "{bad}");
                    assert!(reason.contains("User"), "{reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Without an /etc/passwd, names cannot resolve, uids can.
        let empty = StaticUsers::default();
        let req = |u| UserRequest {
            image_user: u,
            ..Default::default()
        };
        assert!(resolve(&req("app"), &empty).is_err());
        assert_eq!(
            ids(&resolve(&req("1000"), &empty).unwrap()),
            (1000, 0, vec![0])
        );
        assert_eq!(ids(&resolve(&req(""), &empty).unwrap()), (0, 0, vec![0]));
    }

    #[test]
    fn cri_user_wins_over_the_image() {
        let r = resolve(
            &UserRequest {
                run_as_user: Some(33),
                image_user: "app:audio",
                ..Default::default()
            },
            &db(),
        )
        .unwrap();
        assert_eq!(ids(&r), (33, 33, vec![33, 29, 44]));
        let r = resolve(
            &UserRequest {
                run_as_user: Some(33),
                run_as_group: Some(7),
                image_user: "app",
                ..Default::default()
            },
            &db(),
        )
        .unwrap();
        assert_eq!(ids(&r), (33, 7, vec![7, 29, 44]));
        // A uid missing from passwd: gid 0, no memberships.
        let r = resolve(
            &UserRequest {
                run_as_user: Some(5000),
                image_user: "app",
                ..Default::default()
            },
            &db(),
        )
        .unwrap();
        assert_eq!(ids(&r), (5000, 0, vec![0]));
    }

    #[test]
    fn run_as_username() {
        let req = |name| UserRequest {
            run_as_username: Some(name),
            image_user: "33",
            ..Default::default()
        };
        assert_eq!(
            ids(&resolve(&req("app"), &db()).unwrap()),
            (1000, 1000, vec![1000, 10, 29])
        );
        match resolve(&req("ghost"), &db()) {
            Err(Error::InvalidArgument { field, .. }) => {
                assert_eq!(field, "config.linux.security_context.run_as_username")
            }
            other => panic!("{other:?}"),
        }
        let r = resolve(
            &UserRequest {
                run_as_username: Some("app"),
                run_as_group: Some(44),
                ..Default::default()
            },
            &db(),
        )
        .unwrap();
        assert_eq!(ids(&r), (1000, 44, vec![44, 10, 29]));
    }

    #[test]
    fn supplemental_groups_policy() {
        let merge = UserRequest {
            run_as_user: Some(1000),
            supplemental_groups: &[500, 29, 1000],
            ..Default::default()
        };
        assert_eq!(
            ids(&resolve(&merge, &db()).unwrap()),
            (1000, 1000, vec![1000, 10, 29, 500])
        );
        let strict = UserRequest {
            policy: GroupsPolicy::Strict,
            ..merge
        };
        assert_eq!(
            ids(&resolve(&strict, &db()).unwrap()),
            (1000, 1000, vec![1000, 500, 29])
        );
        // The primary gid is there even with no groups at all.
        let strict = UserRequest {
            policy: GroupsPolicy::Strict,
            supplemental_groups: &[],
            run_as_user: Some(1000),
            run_as_group: Some(3),
            ..Default::default()
        };
        assert_eq!(resolve(&strict, &db()).unwrap().additional_gids, vec![3]);
    }

    #[test]
    fn layer_users_read_the_union() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        let bottom = tmp.path().join("bottom");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(bottom.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(top.join("etc/passwd"), PASSWD).unwrap();
        let users = LayerUsers::new(vec![top, bottom]);
        assert_eq!(users.passwd().as_deref(), Some(PASSWD));
        assert_eq!(users.group().as_deref(), Some("root:x:0:\n"));
        let r = resolve(
            &UserRequest {
                image_user: "app",
                ..Default::default()
            },
            &users,
        )
        .unwrap();
        assert_eq!(ids(&r), (1000, 1000, vec![1000]));
        assert_eq!(
            LayerUsers::new(vec![tmp.path().join("none")]).passwd(),
            None
        );
    }
}
