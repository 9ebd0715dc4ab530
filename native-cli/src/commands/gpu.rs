//! `apr gpu list`: the adapters `--gpu` can use, with the limits and features that decide how a
//! model runs on them.

use anyhow::{Result, bail};
use apr_core::backend::gpu;

use crate::args::GpuListArgs;

pub(crate) fn list(args: GpuListArgs) -> Result<()> {
    let adapters = gpu::adapters();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&adapters)?);
    } else {
        for a in &adapters {
            println!("{}", a.describe());
            println!("  driver                 {}", a.driver);
            println!(
                "  max storage binding    {} MiB",
                a.max_storage_binding >> 20
            );
            println!("  max buffer             {} MiB", a.max_buffer >> 20);
            println!("  max workgroup threads  {}", a.max_workgroup_invocations);
            println!(
                "  features               shader-f16 {}, subgroups {}, timestamps {}",
                yes(a.shader_f16),
                yes(a.subgroups),
                yes(a.timestamps)
            );
        }
    }
    if adapters.is_empty() {
        bail!(
            "no GPU adapter found (tried wgpu's Vulkan, Metal and DX12 backends); on Linux without a GPU, Mesa's lavapipe (mesa-vulkan-drivers) provides one"
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
