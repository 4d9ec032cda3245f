//! The writable layer's usage (a walk of the container's overlay upper dir) behind a cache: a walk can be long,
//! stats calls must not be.
//!
//! A value younger than the cache's max age is answered as it is; an older one is answered too, and the caller
//! schedules one background walk for it (never two at once for one dir). A dir never measured is walked during
//! the call while the call's budget lasts (a new container's upper dir is small); a walk that runs out of budget
//! (a big layer after an agent restart) is finished in the background and the layer is absent until then.
//! Answers carry the time they were measured.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::source::StatsFs;

/// How old a measurement may get before a new walk is scheduled.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// How long one stats call may spend walking layers it has never measured.
pub const FIRST_WALK_BUDGET: Duration = Duration::from_millis(50);

/// Bytes allocated and inodes used under `dir`, symlinks never followed, hard links counted once, other file
/// systems not entered. `Ok(None)` when `deadline` passed first; `NotFound` when `dir` is gone.
pub fn walk(dir: &Path, deadline: Option<Instant>) -> io::Result<Option<(u64, u64)>> {
    let root = std::fs::symlink_metadata(dir)?;
    let (mut bytes, mut inodes) = (root.blocks() * 512, 1u64);
    let mut links = HashSet::new();
    let mut stack = if root.is_dir() {
        vec![dir.to_path_buf()]
    } else {
        Vec::new()
    };
    let mut seen = 0u32;
    while let Some(d) = stack.pop() {
        // Entries vanish while a container runs: whatever cannot be read is not counted.
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            seen = seen.wrapping_add(1);
            if seen.is_multiple_of(256) && deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.nlink() > 1 && !meta.is_dir() && !links.insert((meta.dev(), meta.ino())) {
                continue;
            }
            bytes += meta.blocks() * 512;
            inodes += 1;
            if meta.is_dir() && meta.dev() == root.dev() {
                stack.push(entry.path());
            }
        }
    }
    Ok(Some((bytes, inodes)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub bytes: u64,
    pub inodes: u64,
    /// When the walk finished, nanoseconds since the epoch.
    pub timestamp: i64,
}

/// What the cache knows of a dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A value, and whether the caller must schedule a [`DiskCache::refresh`] (stale, none under way; now
    /// marked as under way).
    Hit(Measured, bool),
    /// Being measured in the background for the first time.
    Pending,
    /// Never measured.
    Miss,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    value: Option<Measured>,
    at: Instant,
    refreshing: bool,
    used: Instant,
}

#[derive(Debug)]
pub struct DiskCache {
    max_age: Duration,
    entries: Mutex<HashMap<PathBuf, Entry>>,
}

impl DiskCache {
    pub fn new(max_age: Duration) -> DiskCache {
        DiskCache {
            max_age,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lookup(&self, dir: &Path, now: Instant) -> Lookup {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(dir) else {
            return Lookup::Miss;
        };
        e.used = now;
        let Some(value) = e.value else {
            return Lookup::Pending;
        };
        let schedule = now.saturating_duration_since(e.at) >= self.max_age && !e.refreshing;
        if schedule {
            e.refreshing = true;
        }
        Lookup::Hit(value, schedule)
    }

    /// Walks `dir` until `deadline` and keeps the result. `Ok(None)`: out of time; the dir is then marked
    /// pending and the caller must schedule a [`refresh`](Self::refresh). A dir that is gone is forgotten.
    pub fn measure(
        &self,
        fs: &dyn StatsFs,
        dir: &Path,
        deadline: Option<Instant>,
    ) -> io::Result<Option<Measured>> {
        let result = fs.disk_usage(dir, deadline);
        let now = Instant::now();
        let mut entries = self.lock();
        match result {
            Ok(Some((bytes, inodes))) => {
                let value = Measured {
                    bytes,
                    inodes,
                    timestamp: crate::pod::now_nanos(),
                };
                let entry = Entry {
                    value: Some(value),
                    at: now,
                    refreshing: false,
                    used: now,
                };
                entries.insert(dir.to_path_buf(), entry);
                Ok(Some(value))
            }
            Ok(None) => {
                let e = entries.entry(dir.to_path_buf()).or_insert(Entry {
                    value: None,
                    at: now,
                    refreshing: true,
                    used: now,
                });
                e.refreshing = true;
                Ok(None)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    entries.remove(dir);
                } else if let Some(entry) = entries.get_mut(dir) {
                    if entry.value.is_none() {
                        entries.remove(dir);
                    } else {
                        // Keep the last value; the next stale read schedules another try.
                        entry.refreshing = false;
                    }
                }
                Err(e)
            }
        }
    }

    /// The background walks (no deadline) of dirs [`lookup`](Self::lookup) or [`measure`](Self::measure) asked
    /// for.
    pub fn refresh(&self, fs: &dyn StatsFs, dirs: &[PathBuf]) {
        for dir in dirs {
            if let Err(e) = self.measure(fs, dir, None)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot measure a writable layer");
            }
        }
    }

    /// Drops entries unused since `now - idle` (their containers are gone).
    pub fn forget_idle(&self, now: Instant, idle: Duration) {
        self.lock()
            .retain(|_, e| now.saturating_duration_since(e.used) < idle);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::source::RealFs;
    use super::*;

    fn hit(l: Lookup) -> (Measured, bool) {
        match l {
            Lookup::Hit(m, s) => (m, s),
            other => panic!("not a hit: {other:?}"),
        }
    }

    #[test]
    fn fresh_values_are_served_stale_ones_refreshed_once() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        let cache = DiskCache::new(Duration::from_secs(5));
        assert_eq!(cache.lookup(&upper, Instant::now()), Lookup::Miss);
        let first = cache.measure(&RealFs, &upper, None).unwrap().unwrap();
        assert_eq!(first.inodes, 1);
        assert!(first.timestamp > 0);
        std::fs::write(upper.join("data"), vec![7u8; 64 * 1024]).unwrap();
        // Fresh: the cached value, no walk.
        assert_eq!(hit(cache.lookup(&upper, Instant::now())), (first, false));
        // Stale: still the cached value, and exactly one caller is told to refresh.
        let later = Instant::now() + Duration::from_secs(6);
        assert_eq!(hit(cache.lookup(&upper, later)), (first, true));
        assert_eq!(hit(cache.lookup(&upper, later)), (first, false));
        cache.refresh(&RealFs, std::slice::from_ref(&upper));
        let (v, schedule) = hit(cache.lookup(&upper, Instant::now()));
        assert!(!schedule);
        assert_eq!(v.inodes, 2);
        assert!(v.bytes >= first.bytes + 64 * 1024, "{v:?} vs {first:?}");
    }

    #[test]
    fn a_walk_out_of_time_is_pending_until_the_background_walk() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        for i in 0..600 {
            std::fs::create_dir_all(upper.join(format!("d{i}"))).unwrap();
        }
        assert_eq!(walk(&upper, Some(Instant::now())).unwrap(), None);
        let cache = DiskCache::new(Duration::from_secs(5));
        assert_eq!(
            cache
                .measure(&RealFs, &upper, Some(Instant::now()))
                .unwrap(),
            None
        );
        assert_eq!(cache.lookup(&upper, Instant::now()), Lookup::Pending);
        cache.refresh(&RealFs, std::slice::from_ref(&upper));
        assert_eq!(hit(cache.lookup(&upper, Instant::now())).0.inodes, 601);
    }

    #[test]
    fn symlinks_are_not_followed_hard_links_count_once_and_a_gone_dir_is_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(upper.join("sub")).unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 256 * 1024]).unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("link")).unwrap();
        std::fs::write(upper.join("sub/f"), vec![1u8; 8192]).unwrap();
        std::fs::hard_link(upper.join("sub/f"), upper.join("g")).unwrap();
        let (bytes, inodes) = walk(&upper, None).unwrap().unwrap();
        // upper, sub, link, one of f/g.
        assert_eq!(inodes, 4);
        assert!(bytes < 256 * 1024, "{bytes}");
        let cache = DiskCache::new(Duration::from_secs(5));
        cache.measure(&RealFs, &upper, None).unwrap();
        std::fs::remove_dir_all(&upper).unwrap();
        let e = cache.measure(&RealFs, &upper, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(cache.lookup(&upper, Instant::now()), Lookup::Miss);
    }

    #[test]
    fn idle_entries_are_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(Duration::from_secs(5));
        cache.measure(&RealFs, t.path(), None).unwrap();
        cache.forget_idle(
            Instant::now() + Duration::from_secs(100),
            Duration::from_secs(50),
        );
        assert_eq!(cache.lookup(t.path(), Instant::now()), Lookup::Miss);
    }
}
