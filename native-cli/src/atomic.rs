//! Outputs appear whole or not at all: written to a temporary file beside the target, synced,
//! then renamed over it. A failure or Ctrl-C drops the temporary file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tempfile::NamedTempFile;

/// The folder `out` lives in (created if needed).
pub(crate) fn parent_dir(out: &Path) -> Result<PathBuf> {
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A temporary file in the folder of `out`, with the permissions of an ordinary file.
pub(crate) fn temp_beside(out: &Path) -> Result<NamedTempFile> {
    let dir = parent_dir(out)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".apr-tmp-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

/// Syncs `tmp` and renames it to `out`; with `overwrite` false an existing `out` is an error.
pub(crate) fn commit(tmp: NamedTempFile, out: &Path, overwrite: bool) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", out.display()))?;
    if overwrite {
        tmp.persist(out)
            .with_context(|| format!("cannot write {}", out.display()))?;
    } else if let Err(e) = tmp.persist_noclobber(out) {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            bail!(
                "{} appeared while converting; not overwriting it",
                out.display()
            );
        }
        return Err(e.error).with_context(|| format!("cannot write {}", out.display()));
    }
    Ok(())
}

/// Writes `contents` to `path` atomically, replacing any file there.
pub(crate) fn write(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = temp_beside(path)?;
    tmp.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    commit(tmp, path, true)
}
