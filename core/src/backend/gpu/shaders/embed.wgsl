// out[i, :] = table[ids[i], :] for the ids that fall in this part of the table (rows row0 to
// row0 + n); the other ids are left to the other parts' dispatches.

struct Params {
    tokens: u32, // ids
    row0: u32,   // this part's first row in the whole table
    n: u32,      // rows in this part
    k: u32,      // values per row (a multiple of 32)
}

@group(0) @binding(0) var<uniform> p: Params;
// [tokens]
@group(0) @binding(1) var<storage, read> ids: array<u32>;
// [tokens, k]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wid.y;
    let chunks = p.k / 32u;
    let ci = wid.x * 64u + lid;
    if i >= p.tokens || ci >= chunks {
        return;
    }
    let id = ids[i];
    if id < p.row0 || id - p.row0 >= p.n {
        return;
    }
    let ch = load_chunk((id - p.row0) * chunks + ci);
    let base = i * p.k + ci * 32u;
    for (var e = 0u; e < 32u; e++) {
        let h = e / 16u;
        out[base + e] = ch.a[h] * ch.q[e] + ch.b[h];
    }
}
