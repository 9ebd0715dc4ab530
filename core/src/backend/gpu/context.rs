//! Finding an adapter and opening a device on it.
//!
//! Nothing here falls back: when no adapter answers, or none matches the name asked for, the
//! error says what was tried and what exists, and the caller decides (the CLI exits 1).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::GpuError;

/// The backends this build asks wgpu for.
pub(crate) fn backends() -> wgpu::Backends {
    if cfg!(target_arch = "wasm32") {
        wgpu::Backends::BROWSER_WEBGPU
    } else {
        wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
    }
}

/// What [`backends`] is, for errors.
fn tried() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        "the browser's WebGPU"
    } else {
        "wgpu's Vulkan, Metal and DX12 backends"
    }
}

/// What `apr gpu list` shows of an adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// The adapter's name (`llvmpipe (LLVM 15.0.6, 256 bits)`, `NVIDIA GeForce RTX 4090`).
    pub name: String,
    /// Vulkan, Metal or DX12.
    pub backend: String,
    /// Integrated, discrete, virtual or CPU.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest storage buffer binding, in bytes.
    pub max_storage_binding: u64,
    /// Largest buffer, in bytes.
    pub max_buffer: u64,
    /// Largest workgroup, in invocations.
    pub max_workgroup_invocations: u32,
    /// Whether shaders can use f16.
    pub shader_f16: bool,
    /// Whether shaders can use subgroup operations.
    pub subgroups: bool,
    /// Whether compute passes can write timestamps.
    pub timestamps: bool,
}

impl AdapterSummary {
    pub(crate) fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        Self {
            name: info.name,
            backend: info.backend.to_string(),
            device_type: alloc::format!("{:?}", info.device_type),
            driver: [info.driver, info.driver_info]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        }
    }

    /// One line: name, backend, type.
    pub fn describe(&self) -> String {
        alloc::format!("{} ({}, {})", self.name, self.backend, self.device_type)
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends &= backends();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu finds on this machine's Vulkan, Metal and DX12.
#[cfg(not(target_arch = "wasm32"))]
pub fn adapters() -> Vec<AdapterSummary> {
    pollster::block_on(instance().enumerate_adapters(backends()))
        .iter()
        .map(AdapterSummary::of)
        .collect()
}

/// The adapter whose name contains `name` (any case), or with no name wgpu's default choice
/// (high performance, real hardware before software renderers).
pub(crate) async fn adapter(name: Option<&str>) -> Result<wgpu::Adapter, GpuError> {
    let instance = instance();
    let all = instance.enumerate_adapters(backends()).await;
    let tried = tried();
    if all.is_empty() {
        return Err(GpuError::NoAdapter {
            tried: tried.into(),
        });
    }
    match name {
        Some(want) => {
            let want_lower = want.to_lowercase();
            let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
            all.into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&want_lower))
                .ok_or_else(|| GpuError::NoSuchAdapter {
                    name: want.into(),
                    found: names.join(", "),
                })
        }
        None => instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::NoAdapter {
                tried: alloc::format!("{tried}: {e}"),
            }),
    }
}
