//! The Hugging Face cache, laid out exactly as Python's `huggingface_hub` lays it out, so that
//! files fetched by either tool are found by the other:
//!
//! ```text
//! <cache>/models--ORG--NAME/
//!   blobs/<etag>                  file contents, named by sha256 for LFS files
//!   blobs/<etag>.incomplete       a download in progress (resumed from its length)
//!   refs/main                     the commit `main` pointed at when last resolved
//!   snapshots/<commit>/<file>     relative symlink to ../../blobs/<etag>
//! <cache>/.locks/models--ORG--NAME/<etag>.lock
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The cache root: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
/// else `~/.cache/huggingface/hub`.
pub(crate) fn cache_root() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// One model repo's folder in the cache.
#[derive(Debug, Clone)]
pub(crate) struct RepoCache {
    root: PathBuf,
    dir: PathBuf,
    folder: String,
}

impl RepoCache {
    pub(crate) fn new(root: &Path, repo: &str) -> Self {
        let folder = format!("models--{}", repo.replace('/', "--"));
        Self {
            root: root.to_path_buf(),
            dir: root.join(&folder),
            folder,
        }
    }

    /// The repo's folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub(crate) fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub(crate) fn lock_file(&self, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"))
    }

    pub(crate) fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// The commit a ref (`main`) points at, if recorded.
    pub(crate) fn read_ref(&self, name: &str) -> Option<String> {
        let text = fs::read_to_string(self.dir.join("refs").join(name)).ok()?;
        let commit = text.trim();
        (!commit.is_empty()).then(|| commit.to_string())
    }

    pub(crate) fn write_ref(&self, name: &str, commit: &str) -> Result<()> {
        if self.read_ref(name).as_deref() == Some(commit) {
            return Ok(());
        }
        let refs = self.dir.join("refs");
        fs::create_dir_all(&refs).with_context(|| format!("cannot create {}", refs.display()))?;
        write_atomic(&refs.join(name), commit.as_bytes())
    }

    /// Points `snapshots/<commit>/<file>` at `blobs/<etag>` with a relative symlink.
    pub(crate) fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let link = self.snapshot(commit).join(file);
        let parent = link.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        // `file` may contain folders: climb out of them, the commit and `snapshots`.
        let depth = file.split('/').count() + 1;
        let target: PathBuf = std::iter::repeat_n("..", depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(etag);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            return Ok(link);
        }
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
        }
        symlink(&target, &link).with_context(|| format!("cannot link {}", link.display()))?;
        Ok(link)
    }

    /// The files of a cached snapshot, relative to it, sorted.
    pub(crate) fn snapshot_files(&self, commit: &str) -> Vec<String> {
        let root = self.snapshot(commit);
        let mut files = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.is_file() {
                    // `is_file` follows the link: a dangling link is not a cached file.
                    if let Ok(rel) = path.strip_prefix(&root) {
                        files.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
        }
        files.sort();
        files
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

/// Writes a small file through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    io::Write::write_all(&mut tmp, contents)?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
