//! The attachment cache: the exact config list and final result of a successful ADD, kept for
//! DEL and CHECK in `<cache_dir>/results/<network>-<container id>-<ifname>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::NetworkConfigList;
use crate::error::CniError;
use crate::result::CniResult;

/// The cache record format written by this crate (libcni's own is `cniCacheV1`, not read here).
pub const CACHE_KIND: &str = "criusCniCacheV1";

/// What a successful ADD left behind.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    pub network_name: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub cni_args: Vec<(String, String)>,
    /// The config list exactly as used for the ADD.
    pub config: NetworkConfigList,
    /// The final ADD result.
    pub result: CniResult,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    kind: String,
    network_name: String,
    container_id: String,
    if_name: String,
    netns: PathBuf,
    cni_args: Vec<(String, String)>,
    config: NetworkConfigList,
    result: Value,
}

pub(crate) fn path(cache_dir: &Path, net: &str, container_id: &str, ifname: &str) -> PathBuf {
    cache_dir
        .join("results")
        .join(format!("{net}-{container_id}-{ifname}"))
}

/// Writes the record atomically: temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn write(cache_dir: &Path, a: &CachedAttachment) -> Result<(), CniError> {
    let record = Record {
        kind: CACHE_KIND.into(),
        network_name: a.network_name.clone(),
        container_id: a.container_id.clone(),
        if_name: a.ifname.clone(),
        netns: a.netns.clone(),
        cni_args: a.cni_args.clone(),
        config: a.config.clone(),
        result: a.result.raw.clone(),
    };
    let target = path(cache_dir, &a.network_name, &a.container_id, &a.ifname);
    let dir = cache_dir.join("results");
    let what = |op: &str, p: &Path| format!("{op} cni cache {}", p.display());
    std::fs::create_dir_all(&dir).map_err(|e| CniError::io(what("create", &dir), e))?;
    let bytes =
        serde_json::to_vec(&record).map_err(|e| CniError::io(what("encode", &target), e.into()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("entry")
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(CniError::io(what("write", &target), e));
    }
    Ok(())
}

/// Reads a record; `Ok(None)` when there is none.
pub(crate) fn read(
    cache_dir: &Path,
    net: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Option<CachedAttachment>, CniError> {
    read_path(&path(cache_dir, net, container_id, ifname))
}

fn read_path(p: &Path) -> Result<Option<CachedAttachment>, CniError> {
    let bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CniError::io(format!("read cni cache {}", p.display()), e)),
    };
    let bad = |reason: String| CniError::config(format!("cache {}", p.display()), reason);
    let r: Record = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if r.kind != CACHE_KIND {
        return Err(bad(format!("unknown kind {:?}", r.kind)));
    }
    let result = CniResult::parse(r.result, Some(&r.config.cni_version)).map_err(bad)?;
    Ok(Some(CachedAttachment {
        network_name: r.network_name,
        container_id: r.container_id,
        ifname: r.if_name,
        netns: r.netns,
        cni_args: r.cni_args,
        config: r.config,
        result,
    }))
}

/// Every readable record of network `net` (records of other networks sharing the name prefix
/// are told apart by their content); unreadable ones are skipped with a warning.
pub(crate) fn list(cache_dir: &Path, net: &str) -> Result<Vec<CachedAttachment>, CniError> {
    let dir = cache_dir.join("results");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::io(
                format!("read cni cache dir {}", dir.display()),
                e,
            ));
        }
    };
    let prefix = format!("{net}-");
    let mut found = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| CniError::io(format!("read cni cache dir {}", dir.display()), e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.starts_with(&prefix) {
            continue;
        }
        match read_path(&entry.path()) {
            Ok(Some(a)) if a.network_name == net => found.push(a),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping unreadable cni cache record"),
        }
    }
    found.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    Ok(found)
}

/// Removes a record; a missing one is fine.
pub(crate) fn remove(
    cache_dir: &Path,
    net: &str,
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let p = path(cache_dir, net, container_id, ifname);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::io(format!("remove cni cache {}", p.display()), e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::loopback_network;

    fn sample() -> CachedAttachment {
        CachedAttachment {
            network_name: "cni-loopback".into(),
            container_id: "c1".into(),
            ifname: "lo".into(),
            netns: "/run/netns/x".into(),
            cni_args: vec![("A".into(), "b".into())],
            config: loopback_network("1.0.0"),
            result: CniResult::parse(
                json!({"cniVersion": "1.0.0", "ips": [{"address": "127.0.0.1/8"}]}),
                None,
            )
            .unwrap(),
        }
    }

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let a = sample();
        assert_eq!(read(dir.path(), "cni-loopback", "c1", "lo").unwrap(), None);
        write(dir.path(), &a).unwrap();
        let p = dir.path().join("results/cni-loopback-c1-lo");
        assert!(p.is_file());
        let names: Vec<_> = std::fs::read_dir(dir.path().join("results"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cni-loopback-c1-lo"], "no temp file left behind");
        assert_eq!(
            read(dir.path(), "cni-loopback", "c1", "lo").unwrap(),
            Some(a)
        );
        remove(dir.path(), "cni-loopback", "c1", "lo").unwrap();
        assert!(!p.exists());
        remove(dir.path(), "cni-loopback", "c1", "lo").unwrap();
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        std::fs::write(
            dir.path().join("results/n-c-eth0"),
            "{\"kind\":\"cniCacheV1\"}",
        )
        .unwrap();
        assert!(read(dir.path(), "n", "c", "eth0").is_err());
    }
}
