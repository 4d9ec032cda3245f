//! Reading one file of an image as its overlayfs rootfs would show it, straight from the unpacked layer
//! directories and before any mount exists.
//!
//! The path is resolved component by component over the union of the layers, topmost first, the way overlayfs
//! looks names up: the topmost layer that has an entry decides; a whiteout (a character device 0:0) hides the name
//! in every lower layer; a directory merges with the directories of the same name below it; anything else below a
//! directory is hidden. A symlink is never followed by the kernel: its target is spliced into the remaining path
//! and resolved again from the union's root (absolute) or its parent (relative), with `..` stopping at the root,
//! so a link can never lead outside the image (the RESOLVE_IN_ROOT rule). Each layer is only consulted below
//! directories that were checked, component by component, to be real directories of that layer, and the file
//! itself is opened with O_NOFOLLOW.
//!
//! Known gap: opaque directories (`trusted.overlay.opaque=y`) cannot be seen without reading xattrs, which the
//! agent does not do (std has no xattr call and the agent allows no `unsafe`); a lower layer's file under a
//! directory that an upper layer made opaque would wrongly show through. Image layers rarely replace /etc
//! wholesale.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one lookup before giving up (the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// What one layer holds at a path, not following its last component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    Whiteout,
    Dir,
    File,
    Symlink(PathBuf),
    /// A device, fifo or socket.
    Other,
}

/// A stack of layers that can say what each holds at a path.
pub trait LayerStack {
    fn len(&self) -> usize;
    /// The entry at `comps` in layer `layer` (0 is the topmost). Only called when every parent of `comps` is a
    /// directory (not a symlink) in that layer.
    fn entry(&self, layer: usize, comps: &[OsString]) -> io::Result<Entry>;
}

/// Layer directories on disk, topmost first.
pub struct DirLayers<'a>(pub &'a [PathBuf]);

impl DirLayers<'_> {
    fn path(&self, layer: usize, comps: &[OsString]) -> PathBuf {
        let mut p = self.0[layer].clone();
        p.extend(comps);
        p
    }
}

impl LayerStack for DirLayers<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn entry(&self, layer: usize, comps: &[OsString]) -> io::Result<Entry> {
        let path = self.path(layer, comps);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Entry::Missing);
            }
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        Ok(if ft.is_char_device() && meta.rdev() == 0 {
            Entry::Whiteout
        } else if ft.is_dir() {
            Entry::Dir
        } else if ft.is_file() {
            Entry::File
        } else if ft.is_symlink() {
            Entry::Symlink(std::fs::read_link(&path)?)
        } else {
            Entry::Other
        })
    }
}

/// Where the union shows a regular file at `path` (relative to the image root): the layer and the path in it, all
/// symlinks resolved. `None` when there is no such file (missing, whited out, a directory, too many links).
pub fn locate(stack: &dyn LayerStack, path: &str) -> io::Result<Option<(usize, Vec<OsString>)>> {
    let all: Vec<usize> = (0..stack.len()).collect();
    let mut queue: VecDeque<OsString> = components(Path::new(path)).collect();
    // The directories resolved so far, each with the layers that contribute to it.
    let mut stack_dirs: Vec<(OsString, Vec<usize>)> = Vec::new();
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            stack_dirs.pop();
            continue;
        }
        let layers = stack_dirs.last().map_or(&all, |(_, l)| l);
        let mut comps: Vec<OsString> = stack_dirs.iter().map(|(n, _)| n.clone()).collect();
        comps.push(name.clone());
        let mut dirs = Vec::new();
        let mut top = None;
        for &layer in layers {
            match stack.entry(layer, &comps)? {
                Entry::Missing => continue,
                Entry::Whiteout => break,
                Entry::Dir => dirs.push(layer),
                other => {
                    if dirs.is_empty() {
                        top = Some((layer, other));
                    }
                    break;
                }
            }
        }
        if !dirs.is_empty() {
            stack_dirs.push((name, dirs));
            continue;
        }
        match top {
            Some((_, Entry::Symlink(target))) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Ok(None);
                }
                if target.is_absolute() {
                    stack_dirs.clear();
                }
                let rest: Vec<OsString> = components(&target).collect();
                for c in rest.into_iter().rev() {
                    queue.push_front(c);
                }
            }
            Some((layer, Entry::File)) if queue.is_empty() => return Ok(Some((layer, comps))),
            // Missing, a file with more path after it, a device.
            _ => return Ok(None),
        }
    }
    // The path names a directory.
    Ok(None)
}

/// The plain names and `..` of a path; `/`, `.` and empty components dropped.
fn components(p: &Path) -> impl Iterator<Item = OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some(OsStr::new("..").to_owned()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// The contents of the regular file the layers (topmost first) show at `path`, at most `limit` bytes (more is an
/// error: these are small config files). `Ok(None)` when there is no such file.
pub fn read_file(layers: &[PathBuf], path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let stack = DirLayers(layers);
    let Some((layer, comps)) = locate(&stack, path)? else {
        return Ok(None);
    };
    let full = stack.path(layer, &comps);
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&full)?;
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut out = Vec::new();
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "{} is larger than {limit} bytes",
            full.display()
        )));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    use super::*;

    /// Layers in memory: path ("etc/passwd") -> entry, per layer.
    struct Fake(Vec<BTreeMap<&'static str, Entry>>);

    impl LayerStack for Fake {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn entry(&self, layer: usize, comps: &[OsString]) -> io::Result<Entry> {
            let key: Vec<&str> = comps.iter().map(|c| c.to_str().unwrap()).collect();
            Ok(self.0[layer]
                .get(key.join("/").as_str())
                .cloned()
                .unwrap_or(Entry::Missing))
        }
    }

    fn layer(entries: &[(&'static str, Entry)]) -> BTreeMap<&'static str, Entry> {
        entries.iter().cloned().collect()
    }

    fn link(t: &str) -> Entry {
        Entry::Symlink(PathBuf::from(t))
    }

    fn found(stack: &Fake, path: &str) -> Option<(usize, String)> {
        locate(stack, path).unwrap().map(|(l, c)| {
            let parts: Vec<&str> = c.iter().map(|p| p.to_str().unwrap()).collect();
            (l, parts.join("/"))
        })
    }

    #[test]
    fn topmost_layer_wins_and_directories_merge() {
        let stack = Fake(vec![
            layer(&[("etc", Entry::Dir), ("etc/group", Entry::File)]),
            layer(&[
                ("etc", Entry::Dir),
                ("etc/passwd", Entry::File),
                ("etc/group", Entry::File),
            ]),
        ]);
        assert_eq!(found(&stack, "etc/passwd"), Some((1, "etc/passwd".into())));
        assert_eq!(found(&stack, "etc/group"), Some((0, "etc/group".into())));
        assert_eq!(
            found(&stack, "/etc/./passwd"),
            Some((1, "etc/passwd".into()))
        );
        assert_eq!(found(&stack, "etc"), None);
        assert_eq!(found(&stack, "etc/shadow"), None);
    }

    #[test]
    fn whiteouts_hide_lower_layers() {
        let stack = Fake(vec![
            layer(&[("etc", Entry::Dir), ("etc/passwd", Entry::Whiteout)]),
            layer(&[("etc", Entry::Dir), ("etc/passwd", Entry::File)]),
        ]);
        assert_eq!(found(&stack, "etc/passwd"), None);
        // A whiteout of the directory hides everything below it.
        let stack = Fake(vec![
            layer(&[("etc", Entry::Whiteout)]),
            layer(&[("etc", Entry::Dir), ("etc/passwd", Entry::File)]),
        ]);
        assert_eq!(found(&stack, "etc/passwd"), None);
        // A directory recreated above a whiteout only has what the upper layer put in it.
        let stack = Fake(vec![
            layer(&[("etc", Entry::Dir), ("etc/group", Entry::File)]),
            layer(&[("etc", Entry::Whiteout)]),
            layer(&[("etc", Entry::Dir), ("etc/passwd", Entry::File)]),
        ]);
        assert_eq!(found(&stack, "etc/passwd"), None);
        assert_eq!(found(&stack, "etc/group"), Some((0, "etc/group".into())));
        // A file replaced by a directory: the lower file is gone.
        let stack = Fake(vec![
            layer(&[("etc", Entry::Dir), ("etc/passwd", Entry::Dir)]),
            layer(&[("etc", Entry::Dir), ("etc/passwd", Entry::File)]),
        ]);
        assert_eq!(found(&stack, "etc/passwd"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_union() {
        // /etc -> /private/etc (absolute), passwd -> ../../../data/passwd (climbs above the root).
        let stack = Fake(vec![
            layer(&[
                ("etc", link("/private/etc")),
                ("data", Entry::Dir),
                ("data/passwd", Entry::File),
            ]),
            layer(&[
                ("private", Entry::Dir),
                ("private/etc", Entry::Dir),
                ("private/etc/passwd", link("../../../data/passwd")),
                ("private/etc/group", link("group.real")),
                ("private/etc/group.real", Entry::File),
            ]),
        ]);
        assert_eq!(found(&stack, "etc/passwd"), Some((0, "data/passwd".into())));
        assert_eq!(
            found(&stack, "etc/group"),
            Some((1, "private/etc/group.real".into()))
        );
        // A loop ends.
        let stack = Fake(vec![layer(&[("a", link("b")), ("b", link("a"))])]);
        assert_eq!(found(&stack, "a"), None);
        // A symlink in a lower layer under an upper directory is hidden by the directory.
        let stack = Fake(vec![
            layer(&[("etc", Entry::Dir)]),
            layer(&[
                ("etc", link("/x")),
                ("x", Entry::Dir),
                ("x/passwd", Entry::File),
            ]),
        ]);
        assert_eq!(found(&stack, "etc/passwd"), None);
    }

    #[test]
    fn reads_real_layers_without_leaving_them() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let top = tmp.path().join("top");
        let bottom = tmp.path().join("bottom");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(bottom.join("etc/group"), "root:x:0:\n").unwrap();
        // The top layer points group at a host path: resolved inside the union, where it does not exist.
        symlink(outside.join("passwd"), top.join("etc/group")).unwrap();
        let layers = vec![top.clone(), bottom.clone()];
        let passwd = read_file(&layers, "etc/passwd", 1 << 20).unwrap().unwrap();
        assert_eq!(passwd, b"root:x:0:0::/root:/bin/sh\n");
        assert_eq!(read_file(&layers, "etc/group", 1 << 20).unwrap(), None);
        // A relative link climbing out lands on the union's root, not on the host.
        std::fs::remove_file(top.join("etc/group")).unwrap();
        symlink("../../../../outside/passwd", top.join("etc/group")).unwrap();
        assert_eq!(read_file(&layers, "etc/group", 1 << 20).unwrap(), None);
        // A directory symlink out of the layer is not followed either.
        let evil = tmp.path().join("evil");
        std::fs::create_dir_all(&evil).unwrap();
        symlink(&outside, evil.join("etc")).unwrap();
        assert_eq!(read_file(&[evil], "etc/passwd", 1 << 20).unwrap(), None);
        // Too large is an error.
        assert!(read_file(&layers, "etc/passwd", 4).is_err());
    }

    /// Needs CAP_MKNOD (the test runners here are root): a whiteout is a character device 0:0.
    #[test]
    fn real_whiteouts_hide_files() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        let bottom = tmp.path().join("bottom");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        nix::sys::stat::mknod(
            &top.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("creating a whiteout (char device 0:0) needs CAP_MKNOD");
        assert_eq!(
            read_file(&[top, bottom], "etc/passwd", 1 << 20).unwrap(),
            None
        );
    }
}
