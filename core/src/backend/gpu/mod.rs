//! The wgpu backend: the forward pass in WGSL compute shaders on Vulkan, Metal or DX12, and on
//! the browser's WebGPU when built for wasm32.
//!
//! - **Weights** are repacked once at load into u32 planes (`repack.rs` documents the layouts:
//!   GGUF blocks are not 4-byte aligned, and their scales would be decoded again by every
//!   invocation) and uploaded. A matrix whose planes exceed the device's storage-binding or
//!   buffer limit is split by rows into parts, each with its own buffers and dispatch.
//! - **Activations** are rounded to the levels the CPU backend quantizes them to (Q8_0 or Q8_K)
//!   before a quantized matrix product, and attention keeps the CPU's f16 arithmetic, so the two
//!   backends differ only by summation order.
//! - **Recording.** Each op appends dispatches to a list; nothing reaches the GPU until a value
//!   is read back ([`Backend::read`]). Then the whole list is replayed into one command encoder
//!   and one compute pass, so a forward pass is one submission. Every dispatch's parameters (and
//!   small per-call data: token ids, rotation angles) go into one arena buffer written just
//!   before that submission and bound at dynamic offsets, so bind groups can be cached by the
//!   buffers they bind.
//! - **Errors.** wgpu reports validation and out-of-memory errors asynchronously; they are
//!   captured and returned from the next call that submits, never printed and ignored.
//! - **Reading back** waits for a buffer mapping. Natively [`Backend::read`] blocks on it; in
//!   the browser the mapping completes only once the event loop runs, so callers there await
//!   [`Backend::read_async`] and [`Backend::argmax_async`] (the same code: the blocking forms
//!   resolve the awaitable ones at once, which only native devices can).

mod context;
mod pipelines;
mod repack;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use wgpu::util::DeviceExt;

pub use context::AdapterSummary;
#[cfg(not(target_arch = "wasm32"))]
pub use context::adapters;
use pipelines::{Kernel, RowSplit, Slot};
use repack::{CHUNK, Layout};

use super::{AttnShape, Backend, KvType, MatrixData, Pending, resolve_now};
use crate::{Error, Result};

/// Why the GPU backend cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// wgpu found no adapter at all.
    #[error("no GPU adapter found (tried {tried})")]
    NoAdapter {
        /// What was asked.
        tried: String,
    },
    /// No adapter's name contains the name asked for.
    #[error("no GPU adapter named {name:?} (found: {found})")]
    NoSuchAdapter {
        /// The name asked for.
        name: String,
        /// The adapters there are.
        found: String,
    },
    /// The adapter would not open a device.
    #[error("the GPU adapter {adapter} would not open a device: {why}")]
    Device {
        /// The adapter.
        adapter: String,
        /// wgpu's reason.
        why: String,
    },
    /// A tensor or buffer beyond what the device allows.
    #[error("{what} needs {need} bytes, more than the GPU allows ({limit} bytes per {kind})")]
    TooLarge {
        /// What was being made.
        what: String,
        /// Bytes needed.
        need: u64,
        /// The device's limit.
        limit: u64,
        /// Which limit.
        kind: &'static str,
    },
    /// wgpu reported an error (validation, out of memory, a lost device).
    #[error("GPU error: {0}")]
    Wgpu(String),
}

impl From<GpuError> for Error {
    fn from(e: GpuError) -> Self {
        Error::Gpu(e)
    }
}

/// Options for [`Gpu::open`].
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Use the adapter whose name contains this (any case); none takes wgpu's preference.
    pub adapter: Option<String>,
    /// Split weights into parts of at most this many bytes per plane, below the device's own
    /// limit (for tests of the splitting on devices whose limits are large).
    pub max_binding: Option<u64>,
    /// Multiply each weight row in one invocation (true) or by a workgroup (false); none picks
    /// by adapter: one invocation on adapters that emulate a GPU on the CPU, where barriers are
    /// slow, and a workgroup elsewhere.
    pub row_per_invocation: Option<bool>,
}

/// What the GPU did since the last [`Gpu::take_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GpuStats {
    /// Compute dispatches.
    pub dispatches: u64,
    /// Submissions (one per forward pass that is read back).
    pub submits: u64,
    /// Bytes of weight planes bound by matrix and embedding dispatches.
    pub weight_bytes: u64,
    /// Bytes read back to the host.
    pub read_bytes: u64,
}

/// One kernel's share of the GPU's time, from timestamp queries ([`Gpu::time_kernels`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KernelTime {
    /// The kernel (its WGSL file's name).
    pub kernel: &'static str,
    /// Dispatches timed.
    pub dispatches: u64,
    /// Their GPU time, in milliseconds.
    pub ms: f64,
}

/// Timestamp queries per query set: two per dispatch, within wgpu's limit of 4096.
const TIMED_PER_SET: usize = 2048;

/// A buffer the backend made, with the id that keys cached bind groups.
#[derive(Debug, Clone)]
struct Bound {
    buffer: wgpu::Buffer,
    id: u64,
}

/// An f32 activation buffer on the GPU.
#[derive(Debug)]
pub struct GpuBuf {
    bound: Bound,
    len: usize,
}

/// One layer's keys or values on the GPU.
#[derive(Debug)]
pub struct GpuCache {
    bound: Bound,
    len: usize,
    ty: KvType,
}

/// A weight matrix on the GPU, repacked and split by rows into parts that fit the device.
#[derive(Debug)]
pub struct GpuMatrix {
    name: String,
    layout: Layout,
    /// How the CPU quantizes activations for this type, matched here: Q8_0 or Q8_K levels.
    act: Option<ActLevels>,
    rows: usize,
    cols: usize,
    parts: Vec<Part>,
}

/// The activation quantization of a weight type (`quant::dot::ActKind`), emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActLevels {
    /// Blocks of 32 (Q8_0 and Q8_1).
    Q8_0,
    /// Blocks of 256.
    Q8K,
}

impl ActLevels {
    fn of(dtype: crate::dtype::GgmlType) -> Option<Self> {
        use crate::quant::dot::ActKind;
        match ActKind::for_weight(dtype) {
            ActKind::Q8_0 | ActKind::Q8_1 => Some(Self::Q8_0),
            ActKind::Q8K => Some(Self::Q8K),
            ActKind::F32 => None,
        }
    }

    fn block(self) -> usize {
        match self {
            Self::Q8_0 => 32,
            Self::Q8K => 256,
        }
    }
}

#[derive(Debug)]
struct Part {
    row0: usize,
    rows: usize,
    planes: [Bound; 3],
    bytes: u64,
}

/// One recorded dispatch.
#[derive(Debug)]
struct Dispatch {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    offsets: [u32; 2],
    dynamic: usize,
    groups: [u32; 3],
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Bytes of the uniform window each dispatch's parameters get.
const PARAMS_WINDOW: u64 = 256;
/// Bytes of the data window (token ids, rotation angles) a dispatch can bind.
const DATA_WINDOW: u64 = 256 << 10;
/// Bytes of arena for one submission; a longer list of dispatches submits early.
const ARENA: u64 = 4 << 20;
/// The most workgroups along one dispatch dimension (WebGPU's default limit).
const MAX_GROUPS: u32 = 65535;

/// The wgpu backend.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    max_binding: u64,
    error: Arc<Mutex<Option<String>>>,
    pipelines: HashMap<Kernel, Pipeline>,
    bind_groups: HashMap<(Kernel, [u64; 6]), wgpu::BindGroup>,
    commands: Vec<Dispatch>,
    arena: wgpu::Buffer,
    arena_host: Vec<u8>,
    align: u64,
    empty: Bound,
    staging: Option<wgpu::Buffer>,
    /// Matrix products take a weight row per invocation ([`GpuOptions::row_per_invocation`]).
    row_per_invocation: bool,
    /// Quantized activations for the matrix kernels, grown as needed.
    act: Option<GpuBuf>,
    /// The indices [`Backend::argmax_async`] computes, grown as needed.
    argmax_out: Option<GpuBuf>,
    next_id: u64,
    stats: GpuStats,
    /// With [`Gpu::time_kernels`]: each kernel's dispatches and nanoseconds so far.
    timings: Option<BTreeMap<&'static str, (u64, f64)>>,
}

impl core::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.adapter.name)
            .field("pipelines", &self.pipelines.len())
            .field("bind_groups", &self.bind_groups.len())
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens a device on the adapter `options` names (or the preferred one), with the adapter's
    /// own limits rather than WebGPU's defaults.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(options: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::open_async(options))
    }

    /// [`Gpu::open`], awaited: the only way in the browser, where adapters and devices come
    /// from promises.
    pub async fn open_async(options: &GpuOptions) -> Result<Self> {
        let adapter = context::adapter(options.adapter.as_deref()).await?;
        let summary = AdapterSummary::of(&adapter);
        let limits = adapter.limits();
        let device = adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("apr"),
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        });
        let (device, queue) = device.await.map_err(|e| GpuError::Device {
            adapter: summary.describe(),
            why: alloc::format!("{e}"),
        })?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = Arc::clone(&error);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| alloc::format!("{e}"));
            }
        }));
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(options.max_binding.unwrap_or(u64::MAX));
        let align = u64::from(
            limits
                .min_uniform_buffer_offset_alignment
                .max(limits.min_storage_buffer_offset_alignment),
        );
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("apr arena: dispatch parameters and data"),
            size: ARENA + DATA_WINDOW,
            usage: wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let empty = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("apr empty plane"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let gpu = Self {
            device,
            queue,
            adapter: summary,
            limits,
            max_binding,
            error,
            pipelines: HashMap::new(),
            bind_groups: HashMap::new(),
            commands: Vec::new(),
            arena,
            arena_host: Vec::new(),
            align,
            empty: Bound {
                buffer: empty,
                id: 1,
            },
            staging: None,
            row_per_invocation: options
                .row_per_invocation
                .unwrap_or(adapter.get_info().device_type == wgpu::DeviceType::Cpu),
            act: None,
            argmax_out: None,
            next_id: 2,
            stats: GpuStats::default(),
            timings: None,
        };
        gpu.check()?;
        Ok(gpu)
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The counts since the last call, and starts new ones.
    pub fn take_stats(&mut self) -> GpuStats {
        core::mem::take(&mut self.stats)
    }

    /// Times every dispatch from now on with timestamp queries (each then gets its own compute
    /// pass, so this costs some speed). Returns false, changing nothing, where the device has
    /// no timestamp queries, and in the browser (the times are read back inside a submission,
    /// which cannot wait there).
    pub fn time_kernels(&mut self) -> bool {
        if cfg!(target_arch = "wasm32")
            || !self
                .device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return false;
        }
        self.timings.get_or_insert_with(BTreeMap::new);
        true
    }

    /// Each kernel's dispatches and GPU time since the last call, slowest first; empty unless
    /// [`Gpu::time_kernels`] is on.
    pub fn take_kernel_times(&mut self) -> Vec<KernelTime> {
        let Some(timings) = self.timings.as_mut() else {
            return Vec::new();
        };
        let mut out: Vec<KernelTime> = core::mem::take(timings)
            .into_iter()
            .map(|(kernel, (dispatches, ns))| KernelTime {
                kernel,
                dispatches,
                ms: ns / 1e6,
            })
            .collect();
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        out
    }

    /// The first error wgpu reported since the last check.
    fn check(&self) -> Result<()> {
        match self.error.lock().ok().and_then(|mut e| e.take()) {
            Some(e) => Err(GpuError::Wgpu(e).into()),
            None => Ok(()),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A storage buffer of `bytes` (at least 4), zeroed, or filled with `contents`.
    fn buffer(&mut self, label: &str, bytes: u64, contents: Option<&[u8]>) -> Result<Bound> {
        let limit = self.limits.max_buffer_size;
        if bytes > limit {
            return Err(GpuError::TooLarge {
                what: label.into(),
                need: bytes,
                limit,
                kind: "buffer",
            }
            .into());
        }
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = match contents {
            Some(contents) if !contents.is_empty() => {
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(label),
                        contents,
                        usage,
                    })
            }
            _ => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4).next_multiple_of(4),
                usage,
                mapped_at_creation: false,
            }),
        };
        self.check()?;
        Ok(Bound {
            buffer,
            id: self.id(),
        })
    }

    fn pipeline(&mut self, kernel: Kernel) -> Result<&Pipeline> {
        if !self.pipelines.contains_key(&kernel) {
            let label = kernel.label();
            // In the browser a scope's answer would come only from the event loop: there
            // compilation errors reach the uncaptured-error handler and the next check.
            #[cfg(not(target_arch = "wasm32"))]
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(label),
                    source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
                .slots()
                .iter()
                .enumerate()
                .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: match slot {
                        Slot::Params => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: true,
                            min_binding_size: None,
                        },
                        Slot::Data | Slot::Read | Slot::Write => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: *slot != Slot::Write,
                            },
                            has_dynamic_offset: *slot == Slot::Data,
                            min_binding_size: None,
                        },
                    },
                    count: None,
                })
                .collect();
            let layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(label),
                    entries: &entries,
                });
            let pipeline_layout =
                self.device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(label),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
            let constants = kernel.constants();
            let pipeline = self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(label),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(GpuError::Wgpu(alloc::format!("the {label} kernel: {e}")).into());
            }
            self.pipelines.insert(kernel, Pipeline { pipeline, layout });
        }
        self.pipelines
            .get(&kernel)
            .ok_or_else(|| GpuError::Wgpu("internal: pipeline cache".into()).into())
    }

    /// Appends `bytes` to the arena at the next aligned offset. [`Gpu::dispatch`] makes room
    /// for a dispatch's windows first: submitting here would drop what it pushed before.
    fn push_arena(&mut self, bytes: &[u8]) -> Result<u32> {
        let at = (self.arena_host.len() as u64).next_multiple_of(self.align);
        if at + bytes.len() as u64 > ARENA {
            return Err(GpuError::Wgpu("internal: the parameter arena overflowed".into()).into());
        }
        self.arena_host.resize(at as usize, 0);
        self.arena_host.extend_from_slice(bytes);
        Ok(at as u32)
    }

    /// Records one dispatch of `kernel` over `buffers` (its Read and Write slots, in order).
    fn dispatch(
        &mut self,
        kernel: Kernel,
        params: &[u32],
        data: Option<&[u8]>,
        buffers: &[&Bound],
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        if let Some(d) = data
            && d.len() as u64 > DATA_WINDOW
        {
            return Err(GpuError::Wgpu(alloc::format!(
                "internal: {} bytes of {} data exceed the window",
                d.len(),
                kernel.label()
            ))
            .into());
        }
        // Both windows of the arena are reserved before anything is recorded, so a submission
        // forced by a full arena cannot split them.
        if (self.arena_host.len() as u64).next_multiple_of(self.align)
            + 2 * self.align
            + DATA_WINDOW
            > ARENA
        {
            self.submit(None)?;
        }
        let params_at = self.push_arena(bytemuck::cast_slice(params))?;
        let data_at = match data {
            Some(d) => Some(self.push_arena(d)?),
            None => None,
        };
        let mut key = [0u64; 6];
        for (k, b) in key.iter_mut().zip(buffers) {
            *k = b.id;
        }
        let pipeline = self.pipeline(kernel)?.pipeline.clone();
        let bind_group = match self.bind_groups.get(&(kernel, key)) {
            Some(g) => g.clone(),
            None => {
                let layout = &self.pipelines[&kernel].layout;
                let mut next = buffers.iter();
                let mut entries = Vec::new();
                for (i, slot) in kernel.slots().iter().enumerate() {
                    let resource = match slot {
                        Slot::Params | Slot::Data => {
                            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &self.arena,
                                offset: 0,
                                size: core::num::NonZeroU64::new(if *slot == Slot::Params {
                                    PARAMS_WINDOW
                                } else {
                                    DATA_WINDOW
                                }),
                            })
                        }
                        Slot::Read | Slot::Write => match next.next() {
                            Some(b) => b.buffer.as_entire_binding(),
                            None => {
                                return Err(GpuError::Wgpu(alloc::format!(
                                    "internal: too few buffers for {}",
                                    kernel.label()
                                ))
                                .into());
                            }
                        },
                    };
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource,
                    });
                }
                let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(kernel.label()),
                    layout,
                    entries: &entries,
                });
                // Buffers come and go with models and tests; the cache starts over rather than
                // growing without bound.
                if self.bind_groups.len() >= 4096 {
                    self.bind_groups.clear();
                }
                self.bind_groups.insert((kernel, key), group.clone());
                group
            }
        };
        let mut offsets = [params_at, 0];
        let dynamic = match data_at {
            Some(at) => {
                offsets[1] = at;
                2
            }
            None => 1,
        };
        self.commands.push(Dispatch {
            label: kernel.label(),
            pipeline,
            bind_group,
            offsets,
            dynamic,
            groups,
        });
        self.stats.dispatches += 1;
        Ok(())
    }

    /// Replays the recorded dispatches into one encoder and submits it, followed by `copy`
    /// (source, offset, bytes) into the staging buffer.
    fn submit(&mut self, copy: Option<(&wgpu::Buffer, u64, u64)>) -> Result<()> {
        if self.commands.is_empty() && copy.is_none() {
            return Ok(());
        }
        self.queue.write_buffer(&self.arena, 0, &self.arena_host);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("apr forward"),
            });
        let mut timed = Vec::new();
        if self.timings.is_some() {
            for chunk in self.commands.chunks(TIMED_PER_SET) {
                let n = chunk.len() as u32;
                let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("apr kernel timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * n,
                });
                for (i, d) in (0u32..).zip(chunk) {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(d.label),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &queries,
                            beginning_of_pass_write_index: Some(2 * i),
                            end_of_pass_write_index: Some(2 * i + 1),
                        }),
                    });
                    record(&mut pass, d);
                }
                let bytes = 16 * u64::from(n);
                let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("apr kernel timestamps"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("apr kernel timestamps read-back"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.resolve_query_set(&queries, 0..2 * n, &resolved, 0);
                encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
                timed.push((readback, chunk.iter().map(|d| d.label).collect::<Vec<_>>()));
            }
        } else if !self.commands.is_empty() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("apr forward"),
                timestamp_writes: None,
            });
            for d in &self.commands {
                record(&mut pass, d);
            }
        }
        if let Some((src, offset, bytes)) = copy {
            let staging = match &self.staging {
                Some(s) if s.size() >= bytes => s.clone(),
                _ => {
                    let s = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("apr read-back"),
                        size: bytes.next_power_of_two().max(256),
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    self.staging = Some(s.clone());
                    s
                }
            };
            encoder.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
        }
        self.queue.submit([encoder.finish()]);
        self.commands.clear();
        self.arena_host.clear();
        self.stats.submits += 1;
        self.check()?;
        let period = f64::from(self.queue.get_timestamp_period());
        for (readback, labels) in timed {
            let ticks = resolve_now(self.map_read(&readback, readback.size()))?;
            let totals = self.timings.get_or_insert_with(BTreeMap::new);
            for (pair, label) in ticks.chunks_exact(16).zip(labels) {
                let at = |i: usize| u64::from_le_bytes(core::array::from_fn(|b| pair[8 * i + b]));
                let entry = totals.entry(label).or_insert((0, 0.0));
                entry.0 += 1;
                entry.1 += at(1).saturating_sub(at(0)) as f64 * period;
            }
        }
        Ok(())
    }

    /// Maps `bytes` of a read-back buffer once the GPU is done with it, and copies them out.
    async fn map_read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let slice = buffer.slice(..bytes);
        let mapping = Mapping::default();
        let callback = mapping.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| callback.finish(r));
        // Natively this waits for the GPU and runs the callback; in the browser it returns at
        // once, and the callback comes from the event loop while `mapping` is awaited.
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Wgpu(alloc::format!("{e}")))?;
        mapping.await?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Wgpu(alloc::format!("{e}")))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }

    /// Submits everything recorded and reads `bytes` from `src` at `offset` back.
    async fn read_back(&mut self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        if bytes == 0 {
            self.submit(None)?;
            return Ok(Vec::new());
        }
        self.submit(Some((src, offset, bytes)))?;
        let staging = self
            .staging
            .clone()
            .ok_or_else(|| GpuError::Wgpu("internal: no staging buffer".into()))?;
        let out = self.map_read(&staging, bytes).await?;
        self.stats.read_bytes += bytes;
        self.check()?;
        Ok(out)
    }

    /// `len` values of `x` rounded to the levels the CPU backend quantizes them to for a
    /// weight type, in a scratch buffer of this backend's.
    fn quantize_act(&mut self, x: &GpuBuf, len: usize, levels: ActLevels) -> Result<GpuBuf> {
        let scratch = match self.act.take() {
            Some(b) if b.len >= len => b,
            _ => self.zeros(len)?,
        };
        let blocks = len / levels.block();
        self.dispatch(
            Kernel::QuantizeAct(levels == ActLevels::Q8K),
            &[u32_of(blocks)?],
            None,
            &[&x.bound, &scratch.bound],
            grid(blocks, 64)?,
        )?;
        let out = GpuBuf {
            bound: scratch.bound.clone(),
            len: scratch.len,
        };
        self.act = Some(scratch);
        Ok(out)
    }
}

/// Sets a dispatch's pipeline and bindings and dispatches it.
fn record(pass: &mut wgpu::ComputePass<'_>, d: &Dispatch) {
    pass.set_pipeline(&d.pipeline);
    pass.set_bind_group(0, &d.bind_group, &d.offsets[..d.dynamic]);
    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
}

/// A length as a shader's u32, or an error.
fn u32_of(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        GpuError::TooLarge {
            what: "an index".into(),
            need: n as u64,
            limit: u64::from(u32::MAX),
            kind: "u32 index",
        }
        .into()
    })
}

fn need(have: usize, need: usize, op: &str) -> Result<()> {
    if need > have {
        return Err(Error::Invalid(alloc::format!(
            "{op}: a buffer of {have} values, {need} needed"
        )));
    }
    Ok(())
}

/// Workgroups for `items` items of `per_group`, folded into a second dimension past the
/// per-dimension limit (the shaders rebuild the index from `num_workgroups`).
fn grid(items: usize, per_group: usize) -> Result<[u32; 3]> {
    let groups = items.div_ceil(per_group);
    let x = groups.min(MAX_GROUPS as usize);
    let y = groups.div_ceil(x.max(1));
    Ok([u32_of(x)?, u32_of(y)?, 1])
}

fn f32_bytes(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

impl Backend for Gpu {
    type Buf = GpuBuf;
    type Matrix<'w> = GpuMatrix;
    type Cache = GpuCache;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn max_buffer_len(&self) -> usize {
        usize::try_from(self.limits.max_storage_buffer_binding_size / 4).unwrap_or(usize::MAX)
    }

    fn matrix<'w>(&mut self, data: MatrixData<'w>) -> Result<GpuMatrix> {
        let layout = Layout::of(data.dtype).ok_or_else(|| {
            data.error(alloc::format!(
                "{} weights cannot be computed with on the GPU",
                data.dtype
            ))
        })?;
        let row_bytes = data.row_bytes()?;
        if !data.cols.is_multiple_of(CHUNK) {
            return Err(data.error(alloc::format!(
                "rows of {} values are not whole chunks of {CHUNK} on the GPU",
                data.cols
            )));
        }
        let words = layout.words_per_chunk();
        let chunks = data.cols / CHUNK;
        let plane_row_bytes = words.map(|w| (w * chunks * 4) as u64);
        let widest = plane_row_bytes.iter().copied().max().unwrap_or(1).max(1);
        let rows_per_part = (self.max_binding / widest) as usize;
        if rows_per_part == 0 {
            return Err(GpuError::TooLarge {
                what: alloc::format!("a row of {}", data.name),
                need: widest,
                limit: self.max_binding,
                kind: "storage binding",
            }
            .into());
        }
        let mut parts = Vec::new();
        let mut row0 = 0;
        while row0 < data.rows {
            let rows = rows_per_part.min(data.rows - row0);
            let bytes = &data.bytes[row0 * row_bytes..(row0 + rows) * row_bytes];
            let packed = repack::repack(data.dtype, bytes, rows, data.cols)
                .ok_or_else(|| data.error(alloc::format!("{} cannot be repacked", data.dtype)))?;
            let mut planes = [self.empty.clone(), self.empty.clone(), self.empty.clone()];
            let mut total = 0;
            for (i, plane) in packed.planes.iter().enumerate() {
                if !plane.is_empty() {
                    let label = alloc::format!("{} rows {row0}.. plane {i}", data.name);
                    let words: &[u8] = bytemuck::cast_slice(plane);
                    planes[i] = self.buffer(&label, words.len() as u64, Some(words))?;
                    total += words.len() as u64;
                }
            }
            parts.push(Part {
                row0,
                rows,
                planes,
                bytes: total,
            });
            row0 += rows;
        }
        Ok(GpuMatrix {
            act: ActLevels::of(data.dtype),
            name: data.name,
            layout,
            rows: data.rows,
            cols: data.cols,
            parts,
        })
    }

    fn upload(&mut self, values: &[f32]) -> Result<GpuBuf> {
        let bound = self.buffer(
            "apr activations",
            4 * values.len() as u64,
            Some(f32_bytes(values)),
        )?;
        Ok(GpuBuf {
            bound,
            len: values.len(),
        })
    }

    fn zeros(&mut self, len: usize) -> Result<GpuBuf> {
        let limit = self.limits.max_storage_buffer_binding_size;
        if 4 * len as u64 > limit {
            return Err(GpuError::TooLarge {
                what: alloc::format!("an activation buffer of {len} values"),
                need: 4 * len as u64,
                limit,
                kind: "storage binding",
            }
            .into());
        }
        let bound = self.buffer("apr activations", 4 * len as u64, None)?;
        Ok(GpuBuf { bound, len })
    }

    fn read(&mut self, buf: &GpuBuf, offset: usize, out: &mut [f32]) -> Result<()> {
        let values = resolve_now(self.read_async(buf, offset, out.len()))?;
        out.copy_from_slice(&values);
        Ok(())
    }

    fn read_async<'a>(
        &'a mut self,
        buf: &'a GpuBuf,
        offset: usize,
        len: usize,
    ) -> Pending<'a, Vec<f32>> {
        Box::pin(async move {
            need(buf.len, offset + len, "read")?;
            let (at, bytes) = (4 * offset as u64, 4 * len as u64);
            let back = self.read_back(&buf.bound.buffer, at, bytes).await?;
            Ok(bytemuck::pod_collect_to_vec(&back))
        })
    }

    fn embed(&mut self, table: &GpuMatrix, tokens: &[u32], out: &mut GpuBuf) -> Result<()> {
        need(out.len, tokens.len() * table.cols, "embed")?;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= table.rows) {
            return Err(Error::Invalid(alloc::format!(
                "token id {t} is outside the vocabulary of {}",
                table.rows
            )));
        }
        let ids: &[u8] = bytemuck::cast_slice(tokens);
        let chunk_groups = u32_of((table.cols / CHUNK).div_ceil(64))?;
        for part in &table.parts {
            let params = [
                u32_of(tokens.len())?,
                u32_of(part.row0)?,
                u32_of(part.rows)?,
                u32_of(table.cols)?,
            ];
            let [l, s, h] = &part.planes;
            self.dispatch(
                Kernel::Embed(table.layout),
                &params,
                Some(ids),
                &[&out.bound, l, s, h],
                [chunk_groups, u32_of(tokens.len())?, 1],
            )?;
            self.stats.weight_bytes += part.bytes;
        }
        Ok(())
    }

    fn rms_norm(
        &mut self,
        x: &GpuBuf,
        weight: &GpuBuf,
        eps: f32,
        rows: usize,
        out: &mut GpuBuf,
    ) -> Result<()> {
        let n = weight.len;
        need(x.len, rows * n, "rms_norm")?;
        need(out.len, rows * n, "rms_norm")?;
        self.dispatch(
            Kernel::RmsNorm,
            &[u32_of(n)?, eps.to_bits()],
            None,
            &[&x.bound, &weight.bound, &out.bound],
            [u32_of(rows)?, 1, 1],
        )
    }

    fn matmul(&mut self, w: &GpuMatrix, x: &GpuBuf, rows: usize, out: &mut GpuBuf) -> Result<()> {
        self.matmuls(&[w], x, rows, &mut [out])
    }

    /// The input is quantized once for every matrix that wants the same levels (query, key
    /// and value; gate and up).
    fn matmuls(
        &mut self,
        ws: &[&GpuMatrix],
        x: &GpuBuf,
        rows: usize,
        outs: &mut [&mut GpuBuf],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(Error::Invalid(alloc::format!(
                "internal: {} matrices but {} outputs",
                ws.len(),
                outs.len()
            )));
        }
        let mut quantized: Option<(ActLevels, GpuBuf)> = None;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            need(x.len, rows * w.cols, &w.name)?;
            need(out.len, rows * w.rows, &w.name)?;
            let input = match w.act {
                None => x.bound.clone(),
                Some(levels) => match &quantized {
                    Some((done, q)) if *done == levels => q.bound.clone(),
                    _ => {
                        let q = self.quantize_act(x, rows * w.cols, levels)?;
                        let bound = q.bound.clone();
                        quantized = Some((levels, q));
                        bound
                    }
                },
            };
            let (split, per_group) = if self.row_per_invocation {
                (RowSplit::Thread, pipelines::ROWS_PER_GROUP)
            } else {
                let threads = pipelines::matmul_threads(w.cols / CHUNK);
                (RowSplit::Workgroup(threads), 1)
            };
            for part in &w.parts {
                let params = [
                    u32_of(rows)?,
                    u32_of(part.rows)?,
                    u32_of(w.cols)?,
                    u32_of(part.row0)?,
                    u32_of(w.rows)?,
                ];
                let [l, s, h] = &part.planes;
                self.dispatch(
                    Kernel::Matmul(w.layout, split),
                    &params,
                    None,
                    &[&input, &out.bound, l, s, h],
                    grid(part.rows, per_group)?,
                )?;
                self.stats.weight_bytes += part.bytes;
            }
        }
        Ok(())
    }

    fn add_bias(&mut self, x: &mut GpuBuf, bias: &GpuBuf, rows: usize) -> Result<()> {
        let len = rows * bias.len;
        need(x.len, len, "add_bias")?;
        self.dispatch(
            Kernel::Add,
            &[u32_of(len)?, u32_of(bias.len.max(1))?],
            None,
            &[&x.bound, &bias.bound],
            grid(len, 256)?,
        )
    }

    fn rope(
        &mut self,
        x: &mut GpuBuf,
        rows: usize,
        heads: usize,
        head_dim: usize,
        pos0: usize,
        theta: f32,
    ) -> Result<()> {
        let half = head_dim / 2;
        need(x.len, rows * heads * head_dim, "rope")?;
        // The angles as the CPU backend computes them, a window's worth of rows at a time.
        let theta_scale = libm::powf(theta, -2.0 / head_dim as f32);
        let per_window = (DATA_WINDOW as usize / (8 * half.max(1))).max(1);
        let mut first = 0;
        while first < rows {
            let n = per_window.min(rows - first);
            let mut angles = Vec::with_capacity(2 * n * half);
            for i in 0..n {
                let mut angle = (pos0 + first + i) as f32;
                for _ in 0..half {
                    angles.extend([libm::cosf(angle), libm::sinf(angle)]);
                    angle *= theta_scale;
                }
            }
            let params = [
                u32_of(n)?,
                u32_of(heads)?,
                u32_of(head_dim)?,
                u32_of(first)?,
            ];
            self.dispatch(
                Kernel::Rope,
                &params,
                Some(f32_bytes(&angles)),
                &[&x.bound],
                grid(n * heads * half, 64)?,
            )?;
            first += n;
        }
        Ok(())
    }

    fn cache(&mut self, len: usize, ty: KvType) -> Result<GpuCache> {
        let words = match ty {
            KvType::F16 => len.div_ceil(2),
            KvType::F32 => len,
        };
        let bound = self.buffer("apr kv cache", 4 * words as u64, None)?;
        Ok(GpuCache { bound, len, ty })
    }

    fn store(
        &mut self,
        src: &GpuBuf,
        cache: &mut GpuCache,
        row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let len = rows * width;
        need(src.len, len, "store")?;
        need(cache.len, (row + rows) * width, "store")?;
        let f16 = cache.ty == KvType::F16;
        if f16 && !width.is_multiple_of(2) {
            return Err(Error::Invalid(alloc::format!(
                "an f16 cache on the GPU needs rows of an even width, not {width}"
            )));
        }
        self.dispatch(
            Kernel::Store(f16),
            &[u32_of(len)?, u32_of(row * width)?],
            None,
            &[&src.bound, &cache.bound],
            grid(len, 256)?,
        )
    }

    fn copy_rows(
        &mut self,
        src: &GpuBuf,
        src_row: usize,
        dst: &mut GpuBuf,
        dst_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        need(src.len, (src_row + rows) * width, "copy_rows")?;
        need(dst.len, (dst_row + rows) * width, "copy_rows")?;
        let len = rows * width;
        self.dispatch(
            Kernel::CopyRows,
            &[
                u32_of(len)?,
                u32_of(src_row * width)?,
                u32_of(dst_row * width)?,
            ],
            None,
            &[&src.bound, &dst.bound],
            grid(len, 256)?,
        )
    }

    fn attention(
        &mut self,
        q: &GpuBuf,
        k_cache: &GpuCache,
        v_cache: &GpuCache,
        shape: AttnShape,
        out: &mut GpuBuf,
    ) -> Result<()> {
        let AttnShape {
            rows,
            pos0,
            heads,
            kv_heads,
            head_dim,
        } = shape;
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || head_dim > 256 {
            return Err(Error::Invalid(alloc::format!(
                "attention on the GPU needs query heads in whole groups per KV head and at most 256 values per head, not {heads} heads, {kv_heads} KV heads of {head_dim}"
            )));
        }
        let width = heads * head_dim;
        let kv_width = kv_heads * head_dim;
        need(q.len, rows * width, "attention")?;
        need(out.len, rows * width, "attention")?;
        need(k_cache.len, (pos0 + rows) * kv_width, "attention")?;
        need(v_cache.len, (pos0 + rows) * kv_width, "attention")?;
        let f16 = k_cache.ty == KvType::F16;
        if v_cache.ty != k_cache.ty {
            return Err(Error::Invalid(
                "keys and values cached in different types".into(),
            ));
        }
        let scale = 1.0 / libm::sqrtf(head_dim as f32);
        let params = [
            u32_of(pos0)?,
            u32_of(heads)?,
            u32_of(heads / kv_heads)?,
            u32_of(head_dim)?,
            u32_of(kv_width)?,
            scale.to_bits(),
        ];
        self.dispatch(
            Kernel::Attention(f16),
            &params,
            None,
            &[&q.bound, &k_cache.bound, &v_cache.bound, &out.bound],
            [u32_of(heads)?, u32_of(rows)?, 1],
        )
    }

    fn silu_mul(&mut self, gate: &mut GpuBuf, up: &GpuBuf, len: usize) -> Result<()> {
        need(gate.len, len, "silu_mul")?;
        need(up.len, len, "silu_mul")?;
        self.dispatch(
            Kernel::SiluMul,
            &[u32_of(len)?],
            None,
            &[&gate.bound, &up.bound],
            grid(len, 256)?,
        )
    }

    fn add(&mut self, x: &mut GpuBuf, y: &GpuBuf, len: usize) -> Result<()> {
        need(x.len, len, "add")?;
        need(y.len, len, "add")?;
        self.dispatch(
            Kernel::Add,
            &[u32_of(len)?, u32_of(len.max(1))?],
            None,
            &[&x.bound, &y.bound],
            grid(len, 256)?,
        )
    }

    /// Computed on the GPU, so that only 4 bytes a row come back.
    fn argmax_async<'a>(
        &'a mut self,
        x: &'a GpuBuf,
        rows: usize,
        width: usize,
    ) -> Pending<'a, Vec<u32>> {
        Box::pin(async move {
            need(x.len, rows * width, "argmax")?;
            let out = match self.argmax_out.take() {
                Some(b) if b.len >= rows => b,
                _ => self.zeros(rows)?,
            };
            self.dispatch(
                Kernel::Argmax,
                &[u32_of(width)?],
                None,
                &[&x.bound, &out.bound],
                [u32_of(rows)?, 1, 1],
            )?;
            let back = self.read_back(&out.bound.buffer, 0, 4 * rows as u64).await;
            self.argmax_out = Some(out);
            Ok(bytemuck::pod_collect_to_vec(&back?))
        })
    }
}

/// A `map_async` callback's answer as a future. Natively the callback runs inside
/// `device.poll`, so the first poll finds it; in the browser it runs from the event loop and
/// wakes the task awaiting it.
#[derive(Clone, Default)]
struct Mapping(Arc<Mutex<MappingState>>);

#[derive(Default)]
struct MappingState {
    done: Option<core::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

impl Mapping {
    fn finish(&self, result: core::result::Result<(), wgpu::BufferAsyncError>) {
        if let Ok(mut state) = self.0.lock() {
            state.done = Some(result);
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

impl Future for Mapping {
    type Output = core::result::Result<(), GpuError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut state) = self.0.lock() else {
            return Poll::Ready(Err(GpuError::Wgpu("internal: a mapping's lock".into())));
        };
        match state.done.take() {
            Some(result) => {
                Poll::Ready(result.map_err(|e| GpuError::Wgpu(alloc::format!("read-back: {e}"))))
            }
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
