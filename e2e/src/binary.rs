//! Finding the `crius` and `crius-pause` binaries under test.

use std::path::PathBuf;

use anyhow::bail;

/// The `crius` binary: `$CRIUS_BIN`, else `<target dir>/debug/crius` where the target dir is `$CARGO_TARGET_DIR`
/// or the workspace's `target/`. Fails with what to do when it is missing.
pub fn crius() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CRIUS_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("CRIUS_BIN={} does not exist", path.display());
        }
        return canonical(path);
    }
    let path = target_dir().join("debug").join("crius");
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace` first (or set CRIUS_BIN)",
            path.display()
        );
    }
    canonical(path)
}

/// The resolved path, as `/proc/<pid>/exe` shows it (crius finds crius-pause next to its resolved self).
fn canonical(path: PathBuf) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(&path)
        .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", path.display()))
}

/// `crius-pause` next to `crius` (what crius itself uses when `pause_binary` is not configured).
pub fn pause_next_to(crius: &std::path::Path) -> PathBuf {
    crius.with_file_name("crius-pause")
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        None => workspace_dir().join("target"),
    }
}

fn workspace_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
