// out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight: one workgroup per row.

struct Params {
    n: u32,   // values per row
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [rows, n]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// [n]
@group(0) @binding(2) var<storage, read> weight: array<f32>;
// [rows, n]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.n;
    var sum = 0.0;
    for (var j = lid; j < p.n; j += WG) {
        let v = x[base + j];
        sum += v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(p.n) + p.eps);
    for (var j = lid; j < p.n; j += WG) {
        out[base + j] = x[base + j] * scale * weight[j];
    }
}
