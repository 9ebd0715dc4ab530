//! The compute kernels: which WGSL file each one runs, its bindings and its override constants.
//! Pipelines are made on first use and cached by [`Kernel`].

use alloc::vec::Vec;

use super::repack::Layout;

/// One compute pipeline: an op, and the override constants that specialise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// `matmul.wgsl` over weights in a layout, its rows shared out as [`RowSplit`] says.
    Matmul(Layout, RowSplit),
    /// `embed.wgsl` over a table in a layout.
    Embed(Layout),
    RmsNorm,
    Rope,
    Add,
    SiluMul,
    CopyRows,
    /// `store.wgsl` into an f16 (true) or f32 cache.
    Store(bool),
    /// `attention.wgsl` over an f16 (true) or f32 cache.
    Attention(bool),
    Argmax,
    /// `quantize_act.wgsl` to Q8_K (true) or Q8_0 levels.
    QuantizeAct(bool),
}

/// How the matrix kernel shares out the work of one weight row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RowSplit {
    /// A workgroup of this many threads per weight row, its partial sums reduced in workgroup
    /// memory: for GPUs, whose threads then read a row's consecutive words together.
    Workgroup(u32),
    /// One invocation per weight row, summing it alone, with no workgroup memory or barriers:
    /// for adapters that emulate a GPU on the CPU (lavapipe, SwiftShader), where a barrier
    /// switches between every invocation of the workgroup and dominated the time.
    Thread,
}

/// Invocations per workgroup of the matrix kernel with [`RowSplit::Thread`].
pub(crate) const ROWS_PER_GROUP: usize = 64;

/// What a binding holds, in binding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The dispatch's parameters: a uniform window of the arena, at a dynamic offset.
    Params,
    /// Per-dispatch data (token ids, rotation angles): a read-only window of the arena.
    Data,
    /// A buffer the kernel reads.
    Read,
    /// A buffer the kernel writes.
    Write,
}

/// The weight shaders' shared bindings and chunk decoding go ahead of their own code.
const WEIGHTS: &str = include_str!("shaders/weights.wgsl");

/// Threads per workgroup of the matrix kernel for rows of `chunks` chunks: a thread a chunk
/// up to the largest power of two that leaves none idle, from 32 to 256.
pub(crate) fn matmul_threads(chunks: usize) -> u32 {
    let below = chunks.max(1).ilog2();
    1 << below.clamp(5, 8)
}

impl Kernel {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Matmul(..) => "matmul",
            Self::Embed(_) => "embed",
            Self::RmsNorm => "rms_norm",
            Self::Rope => "rope",
            Self::Add => "add",
            Self::SiluMul => "silu_mul",
            Self::CopyRows => "copy_rows",
            Self::Store(_) => "store",
            Self::Attention(_) => "attention",
            Self::Argmax => "argmax",
            Self::QuantizeAct(_) => "quantize_act",
        }
    }

    /// The WGSL source: the op's file, after the weight bindings for the weight kernels.
    pub(crate) fn source(self) -> alloc::string::String {
        let own = match self {
            Self::Matmul(..) => include_str!("shaders/matmul.wgsl"),
            Self::Embed(_) => include_str!("shaders/embed.wgsl"),
            Self::RmsNorm => include_str!("shaders/rms_norm.wgsl"),
            Self::Rope => include_str!("shaders/rope.wgsl"),
            Self::Add => include_str!("shaders/add.wgsl"),
            Self::SiluMul => include_str!("shaders/silu_mul.wgsl"),
            Self::CopyRows => include_str!("shaders/copy_rows.wgsl"),
            Self::Store(_) => include_str!("shaders/store.wgsl"),
            Self::Attention(_) => include_str!("shaders/attention.wgsl"),
            Self::Argmax => include_str!("shaders/argmax.wgsl"),
            Self::QuantizeAct(_) => include_str!("shaders/quantize_act.wgsl"),
        };
        match self {
            Self::Matmul(..) | Self::Embed(_) => [WEIGHTS, own].concat(),
            _ => own.into(),
        }
    }

    pub(crate) fn slots(self) -> &'static [Slot] {
        use Slot::*;
        match self {
            Self::Matmul(..) => &[Params, Read, Write, Read, Read, Read],
            Self::Embed(_) => &[Params, Data, Write, Read, Read, Read],
            Self::RmsNorm => &[Params, Read, Read, Write],
            Self::Rope => &[Params, Data, Write],
            Self::Add | Self::SiluMul => &[Params, Write, Read],
            Self::CopyRows | Self::Store(_) | Self::Argmax | Self::QuantizeAct(_) => {
                &[Params, Read, Write]
            }
            Self::Attention(_) => &[Params, Read, Read, Read, Write],
        }
    }

    /// The override constants.
    pub(crate) fn constants(self) -> Vec<(&'static str, f64)> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        match self {
            Self::Matmul(layout, RowSplit::Workgroup(wg)) => alloc::vec![
                ("FORMAT", f64::from(layout as u32)),
                ("WG", f64::from(wg)),
                ("SOLO", 0.0),
            ],
            Self::Matmul(layout, RowSplit::Thread) => alloc::vec![
                ("FORMAT", f64::from(layout as u32)),
                ("WG", ROWS_PER_GROUP as f64),
                ("SOLO", 1.0),
            ],
            Self::Embed(layout) => alloc::vec![("FORMAT", f64::from(layout as u32))],
            Self::Store(f16) | Self::Attention(f16) => alloc::vec![("F16", flag(f16))],
            Self::QuantizeAct(k) => alloc::vec![("Q8_K", flag(k))],
            _ => Vec::new(),
        }
    }
}
