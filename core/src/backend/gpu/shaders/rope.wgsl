// NeoX rotary embedding in place: each head's halves are rotated by the row's angles. The host
// computes cos and sin as the CPU backend does, so positions far out lose nothing to the GPU's
// sin and cos.

struct Params {
    rows: u32,
    heads: u32,
    head_dim: u32,
    first: u32, // the row of x that angle row 0 belongs to
}

@group(0) @binding(0) var<uniform> p: Params;
// [rows, head_dim / 2] (cos, sin), for rows first to first + rows of x
@group(0) @binding(1) var<storage, read> angles: array<vec2<f32>>;
// [rows, heads * head_dim]
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half = p.head_dim / 2u;
    let i = gid.x + gid.y * groups.x * 64u;
    if i >= p.rows * p.heads * half {
        return;
    }
    let j = i % half;
    let head = (i / half) % p.heads;
    let row = i / (half * p.heads);
    let cs = angles[row * half + j];
    let at = (p.first + row) * p.heads * p.head_dim + head * p.head_dim + j;
    let v0 = x[at];
    let v1 = x[at + half];
    x[at] = fma(v0, cs.x, -(v1 * cs.y));
    x[at + half] = fma(v0, cs.y, v1 * cs.x);
}
