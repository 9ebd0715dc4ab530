// gate[i] = silu(gate[i]) * up[i]: SwiGLU.

struct Params {
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [len]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
// [len]
@group(0) @binding(2) var<storage, read> up: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i < p.len {
        let g = gate[i];
        gate[i] = g / (1.0 + exp(-g)) * up[i];
    }
}
