//! Memory-mapped model files (native only).

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::Result;
use crate::format::{Format, gguf::Gguf};

/// A model file mapped read-only into memory. Parsers borrow from [`MappedFile::bytes`], so the
/// OS pages tensor data in only when it is touched.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory").into(),
            );
        }
        // SAFETY: the map is read-only and private to this process. If another process truncates
        // the file while it is mapped, reads of the lost pages fault; that is the accepted cost of
        // mmap, the same trade llama.cpp and safetensors make.
        let map = unsafe { Mmap::map(&file)? };
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Tells the OS that `part` (a slice of [`MappedFile::bytes`]) will not be read again soon, so
    /// its pages leave this process's resident set. Streaming a file much larger than memory
    /// through the map then costs no more RSS than one tensor. Reading `part` again still works.
    pub fn release(&self, part: &[u8]) {
        #[cfg(unix)]
        {
            let base = self.map.as_ptr() as usize;
            let start = part.as_ptr() as usize;
            if start < base || start + part.len() > base + self.map.len() || part.is_empty() {
                return;
            }
            // SAFETY: the map is private and read-only, so MADV_DONTNEED only drops clean
            // file-backed pages; a later read faults them back in from the file unchanged. No
            // reference sees different bytes.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start - base,
                    part.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = part;
    }

    /// The file's format, from its first bytes.
    pub fn format(&self) -> Result<Format> {
        Format::detect(self.bytes())
    }

    /// Parses the file as any model format, releasing pages a whole-file checksum reads.
    pub fn model(&self) -> Result<crate::format::model::ModelFile<'_>> {
        crate::format::model::ModelFile::parse_with_release(self.bytes(), &|p| self.release(p))
    }

    /// Parses the file as GGUF.
    pub fn gguf(&self) -> Result<Gguf<'_>> {
        Ok(Gguf::parse(self.bytes())?)
    }
}
