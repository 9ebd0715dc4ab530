// dst[dst_at + i] = src[src_at + i] for i < len: rows moved between scratch buffers.

struct Params {
    len: u32,
    src_at: u32,
    dst_at: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i < p.len {
        dst[p.dst_at + i] = src[p.src_at + i];
    }
}
