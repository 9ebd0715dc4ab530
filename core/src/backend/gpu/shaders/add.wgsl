// x[i] += y[i % y_len]: the residual add (y as long as x) and the bias add (y one row).

struct Params {
    len: u32,
    y_len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [len]
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
// [y_len]
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i < p.len {
        x[i] += y[i % p.y_len];
    }
}
