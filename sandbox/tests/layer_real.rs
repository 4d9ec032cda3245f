//! Privileged tests of the layer unpacker (run as root: mknod, chown and trusted.* xattrs need it).
//!
//! Valid layers check every entry type and its metadata, whiteouts and opaque dirs (also through a real overlayfs
//! mount in a private mount namespace), replacements and compression. Hostile layers each run in their own scratch
//! tree and assert that nothing outside the layer directory changed, and that the entry was rejected with an error
//! naming it or neutralised inside the layer.
#![allow(clippy::unwrap_used)]

mod layer_fixtures;

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use crius_sandbox::layer::{
    Compression, LayerError, UnpackOptions, UnpackStats, sync_tree, unpack, unpack_detect,
};
use layer_fixtures::{E, Scratch, assert_untouched, gzip, layer, zstd};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "layer_real tests need root (mknod, chown, trusted.* xattrs)"
    );
}

fn opts() -> UnpackOptions {
    UnpackOptions {
        same_owner: true,
        xattrs: true,
    }
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(p, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("lgetxattr {} {name}: {e}", p.display()),
    }
}

fn unpack_into(s: &Scratch, entries: &[E]) -> Result<UnpackStats, LayerError> {
    unpack(&layer(entries)[..], Compression::None, &s.layer(), &opts())
}

// A valid vfs_cap_data (revision 2): effective, permitted = CAP_NET_BIND_SERVICE.
const CAP_NET_BIND: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn every_entry_type_with_its_metadata() {
    require_root();
    let s = Scratch::new("types");
    let entries = [
        E::dir("./").mode(0o755).mtime(1_400_000_000),
        E::dir("etc/")
            .mode(0o750)
            .owner(1234, 5678)
            .mtime(1_500_000_000)
            .xattr("trusted.crius", b"t1"),
        E::file("etc/hello", b"hello\n")
            .mode(0o640)
            .owner(1234, 5678)
            .xattr("user.crius", b"u1"),
        E::file("etc/frac", b"x").pax("mtime", b"1500000002.5"),
        E::symlink("etc/passwd-link", "/etc/passwd")
            .owner(1234, 5678)
            .mtime(1_500_000_003),
        E::hardlink("etc/hello-again", "etc/hello"),
        E::hardlink("etc/hello-abs", "/etc/hello"),
        E::file("bin/su", b"su").mode(0o4755),
        E::file("bin/wall", b"wall").mode(0o2755).owner(0, 5),
        E::file("bin/ping", b"ping")
            .owner(1000, 1000)
            .xattr("security.capability", &CAP_NET_BIND),
        E::file("bin/forged", b"f")
            .xattr("trusted.overlay.opaque", b"y")
            .xattr("user.overlay.redirect", b"/x"),
        E::dir("tmp/").mode(0o1777),
        E::char_dev("dev/null", 1, 3).mode(0o666),
        E::block_dev("dev/loop9", 7, 9).mode(0o660).owner(0, 6),
        E::fifo("run/fifo")
            .mode(0o600)
            .xattr("trusted.fifo", b"f")
            .xattr("user.fifo", b"skipped"),
        E::symlink("run/link", "fifo").xattr("trusted.link", b"l"),
        E::file("a/b/c/deep", b"deep"),
    ];
    let stats = unpack_into(&s, &entries).unwrap();
    assert_eq!(
        stats,
        UnpackStats {
            bytes: 6 + 1 + 2 + 4 + 4 + 1 + 4,
            entries: entries.len() as u64,
            whiteouts: 0
        }
    );

    let l = s.layer();
    let meta = |p: &str| fs::symlink_metadata(l.join(p)).unwrap();
    let root = meta("");
    assert_eq!((root.mode() & 0o7777, root.mtime()), (0o755, 1_400_000_000));
    let etc = meta("etc");
    assert!(etc.is_dir());
    // The directory's mtime is the layer's, although entries were created in it afterwards.
    assert_eq!(
        (etc.mode() & 0o7777, etc.uid(), etc.gid(), etc.mtime()),
        (0o750, 1234, 5678, 1_500_000_000)
    );
    assert_eq!(
        xattr(&l.join("etc"), "trusted.crius").as_deref(),
        Some(&b"t1"[..])
    );

    let hello = meta("etc/hello");
    assert_eq!(fs::read(l.join("etc/hello")).unwrap(), b"hello\n");
    assert_eq!(
        (hello.mode() & 0o7777, hello.uid(), hello.gid()),
        (0o640, 1234, 5678)
    );
    assert_eq!((hello.mtime(), hello.nlink()), (1_600_000_000, 3));
    assert_eq!(
        xattr(&l.join("etc/hello"), "user.crius").as_deref(),
        Some(&b"u1"[..])
    );
    assert_eq!(meta("etc/hello-again").ino(), hello.ino());
    assert_eq!(meta("etc/hello-abs").ino(), hello.ino());
    let frac = meta("etc/frac");
    assert_eq!(
        (frac.mtime(), frac.mtime_nsec()),
        (1_500_000_002, 500_000_000)
    );

    let link = meta("etc/passwd-link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(l.join("etc/passwd-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        (link.uid(), link.gid(), link.mtime()),
        (1234, 5678, 1_500_000_003)
    );

    assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755);
    let wall = meta("bin/wall");
    assert_eq!((wall.mode() & 0o7777, wall.gid()), (0o2755, 5));
    assert_eq!(meta("bin/ping").uid(), 1000);
    // Set after the chown, which would have cleared it.
    assert_eq!(
        xattr(&l.join("bin/ping"), "security.capability").as_deref(),
        Some(&CAP_NET_BIND[..])
    );
    assert_eq!(xattr(&l.join("bin/forged"), "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&l.join("bin/forged"), "user.overlay.redirect"), None);
    assert_eq!(meta("bin").mode() & 0o7777, 0o755, "implicit parent");
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);

    let null = meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let loop9 = meta("dev/loop9");
    assert!(loop9.file_type().is_block_device());
    assert_eq!(
        (loop9.rdev(), loop9.mode() & 0o7777, loop9.gid()),
        (rustix::fs::makedev(7, 9), 0o660, 6)
    );
    let fifo = meta("run/fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o600);
    assert_eq!(
        xattr(&l.join("run/fifo"), "trusted.fifo").as_deref(),
        Some(&b"f"[..])
    );
    // The kernel allows user.* only on files and directories: skipped elsewhere rather than failing the layer.
    assert_eq!(xattr(&l.join("run/fifo"), "user.fifo"), None);
    assert_eq!(
        xattr(&l.join("run/link"), "trusted.link").as_deref(),
        Some(&b"l"[..])
    );
    assert_eq!(fs::read(l.join("a/b/c/deep")).unwrap(), b"deep");

    sync_tree(&l).unwrap();
}

#[test]
fn whiteouts_and_opaque_directories() {
    require_root();
    let s = Scratch::new("whiteouts");
    let entries = [
        E::file(".wh.gone", b""),
        E::file("d/x", b"replaced by a whiteout"),
        E::file("d/.wh.x", b""),
        E::dir("o/"),
        E::file("o/.wh..wh..opq", b""),
        E::file("o/new", b"new"),
        E::dir(".wh..wh.plnk/"),
        E::file(".wh..wh.plnk/123.456", b"aufs"),
    ];
    let stats = unpack_into(&s, &entries).unwrap();
    assert_eq!((stats.whiteouts, stats.entries), (3, 8));
    let l = s.layer();
    for wh in ["gone", "d/x"] {
        let m = fs::symlink_metadata(l.join(wh)).unwrap();
        assert!(
            m.file_type().is_char_device() && m.rdev() == 0,
            "{wh} is a whiteout"
        );
    }
    assert_eq!(
        xattr(&l.join("o"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(l.join("o/new")).unwrap(), b"new");
    assert!(!l.join(".wh..wh.plnk").exists(), "aufs metadata is skipped");
    let names: Vec<_> = fs::read_dir(&l)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.to_string_lossy().starts_with(".wh.")),
        "{names:?}"
    );
}

#[test]
fn overlayfs_honours_the_unpacked_whiteouts() {
    require_root();
    let s = Scratch::new("overlay");
    let base = s.tmp.path();
    let (lower, upper, merged) = (base.join("l1"), base.join("l2"), base.join("merged"));
    for d in [&lower, &upper, &merged] {
        fs::create_dir(d).unwrap();
    }
    let l1 = [
        E::file("keep", b"keep"),
        E::file("gone", b"gone"),
        E::file("o/old", b"old"),
        E::file("d/old", b"old"),
        E::file("d/stays", b"stays"),
    ];
    let l2 = [
        E::file(".wh.gone", b""),
        E::dir("o/"),
        E::file("o/.wh..wh..opq", b""),
        E::file("o/new", b"new"),
        E::file("d/.wh.old", b""),
        E::file("d/added", b"added"),
    ];
    unpack(&layer(&l1)[..], Compression::None, &lower, &opts()).unwrap();
    unpack(&layer(&l2)[..], Compression::None, &upper, &opts()).unwrap();
    // A private mount namespace: the mount goes away with the command, whatever happens.
    let script = format!(
        "mount -t overlay overlay -o lowerdir={}:{} {m} && cd {m} && find . -mindepth 1 | sort",
        upper.display(),
        lower.display(),
        m = merged.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "overlay mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = listing.lines().collect();
    assert_eq!(
        got,
        ["./d", "./d/added", "./d/stays", "./keep", "./o", "./o/new"]
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    require_root();
    let s = Scratch::new("replace");
    let entries = [
        E::file("d/f", b"in d"),
        E::file("d", b"d is a file now"),
        E::file("f", b"f"),
        E::dir("f/"),
        E::file("k/f", b"kept"),
        E::dir("k/").mode(0o700),
        E::file("a", b"one"),
        E::hardlink("b", "a"),
        E::file("b", b"two"),
        E::symlink("s", "/etc"),
        E::dir("s/"),
    ];
    unpack_into(&s, &entries).unwrap();
    let l = s.layer();
    assert_eq!(fs::read(l.join("d")).unwrap(), b"d is a file now");
    assert!(fs::symlink_metadata(l.join("f")).unwrap().is_dir());
    assert_eq!(fs::read(l.join("k/f")).unwrap(), b"kept");
    assert_eq!(
        fs::symlink_metadata(l.join("k")).unwrap().mode() & 0o7777,
        0o700
    );
    // Replacing one name of a hardlinked pair leaves the other's content alone.
    assert_eq!(fs::read(l.join("a")).unwrap(), b"one");
    assert_eq!(fs::read(l.join("b")).unwrap(), b"two");
    assert_eq!(fs::metadata(l.join("a")).unwrap().nlink(), 1);
    assert!(fs::symlink_metadata(l.join("s")).unwrap().is_dir());
}

#[test]
fn gzip_and_zstd_layers_are_detected_and_unpacked() {
    require_root();
    let tar = layer(&[
        E::file("etc/os-release", b"ID=crius\n"),
        E::file(".wh.old", b""),
    ]);
    for (name, data, want) in [
        ("plain", tar.clone(), Compression::None),
        ("gzip", gzip(&tar), Compression::Gzip),
        ("zstd", zstd(&tar), Compression::Zstd),
    ] {
        assert_eq!(Compression::detect(&data), want, "{name}");
        let s = Scratch::new(name);
        let mut cursor = Cursor::new(&data);
        let stats = unpack(&mut cursor, want, &s.layer(), &opts()).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                bytes: 9,
                entries: 2,
                whiteouts: 1
            },
            "{name}"
        );
        assert_eq!(
            fs::read(s.layer().join("etc/os-release")).unwrap(),
            b"ID=crius\n",
            "{name}"
        );
        // The whole stream is consumed, so a caller hashing it sees every byte.
        assert_eq!(cursor.position(), data.len() as u64, "{name}");

        let s = Scratch::new(name);
        unpack_detect(&data[..], &s.layer(), &opts()).unwrap();
        assert_eq!(
            fs::read(s.layer().join("etc/os-release")).unwrap(),
            b"ID=crius\n",
            "{name} detected"
        );
    }
}

#[test]
fn corrupt_streams_are_read_errors() {
    require_root();
    let tar = layer(&[E::file("f", &[7u8; 4096])]);
    let mut gz = gzip(&tar);
    let n = gz.len();
    gz[n - 6] ^= 0xff; // the CRC trailer
    let s = Scratch::new("corrupt");
    let err = unpack(&gz[..], Compression::Gzip, &s.layer(), &opts()).unwrap_err();
    assert!(matches!(err, LayerError::Read(_)), "{err:?}");
    let s = Scratch::new("truncated");
    let err = unpack(&tar[..700], Compression::None, &s.layer(), &opts()).unwrap_err();
    assert!(
        matches!(err, LayerError::Read(_) | LayerError::Io { .. }),
        "{err:?}"
    );
}

#[test]
fn without_same_owner_or_xattrs_they_are_not_applied() {
    require_root();
    let s = Scratch::new("noowner");
    let tar = layer(&[E::file("f", b"x")
        .owner(1234, 5678)
        .mode(0o4755)
        .xattr("user.k", b"v")]);
    unpack(
        &tar[..],
        Compression::None,
        &s.layer(),
        &UnpackOptions {
            same_owner: false,
            xattrs: false,
        },
    )
    .unwrap();
    let m = fs::metadata(s.layer().join("f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o4755));
    assert_eq!(xattr(&s.layer().join("f"), "user.k"), None);
}

#[test]
fn destination_must_be_an_empty_directory() {
    require_root();
    let s = Scratch::new("notempty");
    fs::write(s.layer().join("already"), "x").unwrap();
    let err = unpack_into(&s, &[E::file("f", b"x")]).unwrap_err();
    assert!(matches!(err, LayerError::DestNotEmpty(_)), "{err:?}");
    assert!(!s.layer().join("f").exists());
    let missing = s.tmp.path().join("missing");
    assert!(matches!(
        unpack_into_path(&missing),
        Err(LayerError::Dest { .. })
    ));
    assert!(matches!(sync_tree(&missing), Err(LayerError::Sync { .. })));
}

fn unpack_into_path(p: &Path) -> Result<UnpackStats, LayerError> {
    unpack(
        &layer(&[E::file("f", b"x")])[..],
        Compression::None,
        p,
        &opts(),
    )
}

// ---- hostile layers: each in its own scratch tree; nothing outside the layer may change ----

/// Unpacks the layer the closure builds (it may name scratch paths) and checks the world outside afterwards.
fn hostile(
    test: &str,
    entries: impl FnOnce(&Scratch) -> Vec<E>,
) -> (Scratch, Result<UnpackStats, LayerError>) {
    require_root();
    let s = Scratch::new(test);
    let entries = entries(&s);
    let before = s.snapshot();
    let res = unpack(&layer(&entries)[..], Compression::None, &s.layer(), &opts());
    assert_untouched(&before, &s.snapshot());
    (s, res)
}

/// The error names the offending entry.
fn assert_rejected(res: Result<UnpackStats, LayerError>, entry: &str) -> LayerError {
    let err = res.expect_err("the hostile layer must be rejected");
    assert!(
        err.to_string().contains(&format!("{entry:?}")),
        "error {err} does not name {entry:?}"
    );
    err
}

#[test]
fn hostile_absolute_path_is_kept_inside() {
    let (s, res) = hostile("abs", |_| vec![E::file("/etc/evil", b"pwned")]);
    res.unwrap();
    assert_eq!(fs::read(s.layer().join("etc/evil")).unwrap(), b"pwned");
}

#[test]
fn hostile_dotdot_is_rejected() {
    let (_s, res) = hostile("dotdot", |_| vec![E::file("../../evil", b"pwned")]);
    assert!(matches!(
        assert_rejected(res, "../../evil"),
        LayerError::Escape { .. }
    ));
}

#[test]
fn hostile_dotdot_after_a_directory_is_rejected() {
    let (_s, res) = hostile("adotdot", |_| {
        vec![E::dir("a/"), E::file("a/../../evil", b"pwned")]
    });
    assert!(matches!(
        assert_rejected(res, "a/../../evil"),
        LayerError::Escape { .. }
    ));
}

#[test]
fn hostile_symlink_to_root_then_write_through_it_stays_inside() {
    let (s, res) = hostile("linkroot", |_| {
        vec![E::symlink("link", "/"), E::file("link/etc/evil", b"pwned")]
    });
    res.unwrap();
    assert_eq!(fs::read(s.layer().join("etc/evil")).unwrap(), b"pwned");
    assert_eq!(
        fs::read_link(s.layer().join("link")).unwrap(),
        Path::new("/")
    );
}

#[test]
fn hostile_symlink_to_dotdot_then_write_through_it_stays_inside() {
    let (s, res) = hostile("linkup", |_| {
        vec![E::symlink("link", "../.."), E::file("link/evil", b"pwned")]
    });
    res.unwrap();
    assert_eq!(fs::read(s.layer().join("evil")).unwrap(), b"pwned");
}

#[test]
fn hostile_symlink_to_an_outside_dir_then_write_through_it_is_rejected() {
    let (_s, res) = hostile("linkout", |s| {
        vec![
            E::symlink("link", &s.outside().display().to_string()),
            E::file("link/secret", b"pwned"),
        ]
    });
    assert!(matches!(
        assert_rejected(res, "link/secret"),
        LayerError::Io { .. }
    ));
}

#[test]
fn hostile_file_over_a_symlink_to_an_outside_file_replaces_the_symlink() {
    let (s, res) = hostile("fileoverlink", |s| {
        let secret = s.outside().join("secret");
        vec![
            E::symlink("secret", &secret.display().to_string()),
            E::file("secret", b"pwned"),
        ]
    });
    res.unwrap();
    let m = fs::symlink_metadata(s.layer().join("secret")).unwrap();
    assert!(m.is_file());
    assert_eq!(fs::read(s.layer().join("secret")).unwrap(), b"pwned");
}

#[test]
fn hostile_hardlink_to_etc_passwd_is_rejected() {
    let (_s, res) = hostile("hlpasswd", |_| vec![E::hardlink("passwd", "/etc/passwd")]);
    assert!(matches!(
        assert_rejected(res, "passwd"),
        LayerError::Io { .. }
    ));
}

#[test]
fn hostile_hardlink_to_dotdot_outside_is_rejected() {
    let (_s, res) = hostile("hldotdot", |_| {
        vec![E::hardlink("h", "../../outside/secret")]
    });
    assert!(matches!(
        assert_rejected(res, "h"),
        LayerError::Escape { .. }
    ));
}

#[test]
fn hostile_hardlink_to_an_absolute_outside_path_is_rejected() {
    let (_s, res) = hostile("hlabs", |s| {
        vec![E::hardlink(
            "h",
            &s.outside().join("secret").display().to_string(),
        )]
    });
    assert!(matches!(assert_rejected(res, "h"), LayerError::Io { .. }));
}

#[test]
fn hostile_hardlink_through_a_symlink_to_outside_is_rejected() {
    let (_s, res) = hostile("hllink", |s| {
        vec![
            E::symlink("link", &s.outside().display().to_string()),
            E::hardlink("h", "link/secret"),
        ]
    });
    assert!(matches!(assert_rejected(res, "h"), LayerError::Io { .. }));
}

#[test]
fn hostile_whiteout_of_dotdot_is_rejected() {
    let (_s, res) = hostile("whdotdot", |_| vec![E::file(".wh...", b"")]);
    assert!(matches!(
        assert_rejected(res, ".wh..."),
        LayerError::Escape { .. }
    ));
}

#[test]
fn hostile_whiteout_in_the_parent_is_rejected() {
    let (_s, res) = hostile("whparent", |_| vec![E::file("../.wh.sentinel", b"")]);
    assert!(matches!(
        assert_rejected(res, "../.wh.sentinel"),
        LayerError::Escape { .. }
    ));
}

#[test]
fn hostile_whiteout_used_as_a_directory_is_rejected() {
    let (_s, res) = hostile("whdir", |_| vec![E::file("a/.wh.../x", b"pwned")]);
    assert!(matches!(
        assert_rejected(res, "a/.wh.../x"),
        LayerError::BadEntry { .. }
    ));
}

#[test]
fn hostile_whiteout_through_a_symlink_stays_inside() {
    let (s, res) = hostile("whlink", |s| {
        vec![
            E::symlink("link", &s.outside().display().to_string()),
            E::file("link/.wh.secret", b""),
        ]
    });
    // The symlink resolves inside the layer to a missing directory that cannot be created over the symlink.
    assert!(matches!(
        assert_rejected(res, "link/.wh.secret"),
        LayerError::Io { .. }
    ));
    assert!(
        fs::symlink_metadata(s.layer().join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn hostile_symlink_replaced_by_a_dir_then_written_through_stays_inside() {
    let (s, res) = hostile("linkdir", |s| {
        vec![
            E::symlink("link", &s.outside().display().to_string()),
            E::dir("link/"),
            E::file("link/secret", b"pwned"),
        ]
    });
    res.unwrap();
    assert!(
        fs::symlink_metadata(s.layer().join("link"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(fs::read(s.layer().join("link/secret")).unwrap(), b"pwned");
}

#[test]
fn hostile_device_node_outside_is_rejected() {
    let (_s, res) = hostile("devdotdot", |_| vec![E::block_dev("../../evil", 8, 0)]);
    assert!(matches!(
        assert_rejected(res, "../../evil"),
        LayerError::Escape { .. }
    ));
}

#[test]
fn hostile_device_node_through_a_symlink_to_dev_is_rejected() {
    // `dev -> /dev` resolves inside the layer to itself: a loop, not the host's /dev.
    let (_s, res) = hostile("devlink", |_| {
        vec![E::symlink("dev", "/dev"), E::char_dev("dev/evil", 1, 1)]
    });
    assert!(matches!(
        assert_rejected(res, "dev/evil"),
        LayerError::Io { .. }
    ));
}

#[test]
fn hostile_device_node_over_a_symlink_replaces_the_symlink() {
    let (s, res) = hostile("devoverlink", |s| {
        let secret = s.outside().join("secret");
        vec![
            E::symlink("disk", &secret.display().to_string()),
            E::block_dev("disk", 8, 0),
        ]
    });
    res.unwrap();
    let m = fs::symlink_metadata(s.layer().join("disk")).unwrap();
    assert!(m.file_type().is_block_device());
    assert_eq!(m.rdev(), rustix::fs::makedev(8, 0));
}
