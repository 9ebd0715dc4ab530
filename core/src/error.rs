//! The crate's one error type, built from the per-format errors.

use alloc::string::String;

use crate::format::apr::AprError;
use crate::format::safetensors::StError;
use crate::format::{Format, gguf::GgufError};

/// Everything that can go wrong in `apr-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A GGUF file was rejected.
    #[error("GGUF: {0}")]
    Gguf(GgufError),
    /// An APR file was rejected.
    #[error("APR: {0}")]
    Apr(AprError),
    /// A SafeTensors file was rejected.
    #[error("SafeTensors: {0}")]
    Safetensors(StError),
    /// Metadata that does not decode.
    #[error("metadata: {0}")]
    Metadata(String),
    /// A request or a file that makes no sense (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// A sequence longer than the KV cache.
    #[error(
        "the context is full: {need} positions are needed but the context holds {ctx} (raise --ctx-size, or allow truncation)"
    )]
    ContextFull {
        /// Positions needed.
        need: usize,
        /// Positions the cache holds.
        ctx: usize,
    },
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
    /// The first bytes match no known format.
    #[error(
        "unrecognised file: the first bytes {head:02x?} match no GGUF, SafeTensors or APR header"
    )]
    UnknownFormat {
        /// Up to eight leading bytes.
        head: alloc::vec::Vec<u8>,
    },
    /// A file of zero bytes.
    #[error("the file is empty")]
    Empty,
    /// A known format this build cannot read yet.
    #[error("{0} files are recognised but cannot be read yet")]
    Unsupported(Format),
    /// The GPU backend cannot run, or failed.
    #[cfg(feature = "gpu")]
    #[error(transparent)]
    Gpu(crate::backend::gpu::GpuError),
    /// An I/O error opening or mapping a file.
    #[cfg(feature = "std")]
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

// Written out rather than `#[from]`, which would also make the inner error the `source()` and
// print its message twice in an error chain.
impl From<GgufError> for Error {
    fn from(err: GgufError) -> Self {
        Self::Gguf(err)
    }
}

impl From<AprError> for Error {
    fn from(err: AprError) -> Self {
        Self::Apr(err)
    }
}

impl From<StError> for Error {
    fn from(err: StError) -> Self {
        Self::Safetensors(err)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
