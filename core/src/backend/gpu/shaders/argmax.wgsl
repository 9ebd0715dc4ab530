// The index of each row's largest value (the first of equals; NaN never wins; 0 when nothing
// does), as `sample::argmax`, so a greedy step reads back 4 bytes a row instead of the
// vocabulary's logits: one workgroup per row.

struct Params {
    n: u32, // values per row
}

@group(0) @binding(0) var<uniform> p: Params;
// [rows, n]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// [rows]
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
var<workgroup> best: array<f32, WG>;
var<workgroup> at: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.n;
    var b = -3.4e38;
    var a = 0xffffffffu;
    for (var j = lid; j < p.n; j += WG) {
        let v = x[base + j];
        if (v > b || a == 0xffffffffu) && v == v {
            b = v;
            a = j;
        }
    }
    best[lid] = b;
    at[lid] = a;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ob = best[lid + s];
            let oa = at[lid + s];
            if oa != 0xffffffffu && (ob > best[lid] || (ob == best[lid] && oa < at[lid]) || at[lid] == 0xffffffffu) {
                best[lid] = ob;
                at[lid] = oa;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[wid.x] = select(at[0], 0u, at[0] == 0xffffffffu);
    }
}
