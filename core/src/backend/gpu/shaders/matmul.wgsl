// y[t, row0 + r] = w[r, :] · x[t, :] for the rows r of one part of a weight matrix and every
// input row t, TILE input rows at a time. Either one workgroup per weight row, its threads
// splitting the row's chunks and reducing in workgroup memory, or (SOLO) one invocation per
// weight row with no barriers, for adapters that emulate a GPU on the CPU. Each chunk's levels
// are read straight from their words into vec4 dot products (no per-thread arrays, which
// software Vulkan and some drivers keep in memory).

struct Params {
    rows: u32,      // input rows t
    n: u32,         // weight rows in this part
    k: u32,         // values per row (a multiple of 32)
    row0: u32,      // this part's first row in the whole matrix
    out_width: u32, // values per output row (the whole matrix's rows)
}

@group(0) @binding(0) var<uniform> p: Params;
// [rows, k / 4]
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// [rows, out_width]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// Threads per workgroup: a power of two from 32 to 256 (`pipelines::matmul_threads`), or
// with SOLO the weight rows per workgroup.
override WG: u32 = 64u;
// One invocation per weight row (`pipelines::RowSplit::Thread`).
override SOLO: bool = false;
const TILE: u32 = 8u;
// [TILE, WG] partial sums.
var<workgroup> partial: array<f32, 2048>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + wid.y * groups.x;
    if SOLO {
        solo(group * WG + lid);
    } else {
        together(group, lid);
    }
}

// Weight row `row` alone, its chunks in order.
fn solo(row: u32) {
    if row >= p.n {
        return;
    }
    for (var t0 = 0u; t0 < p.rows; t0 += TILE) {
        let nt = min(TILE, p.rows - t0);
        let acc = tile_sums(row, t0, nt, 0u, 1u);
        for (var t = 0u; t < nt; t++) {
            y[(t0 + t) * p.out_width + p.row0 + row] = acc[t];
        }
    }
}

// Weight row `row` by the workgroup's WG threads.
fn together(row: u32, lid: u32) {
    if row >= p.n {
        return;
    }
    for (var t0 = 0u; t0 < p.rows; t0 += TILE) {
        let nt = min(TILE, p.rows - t0);
        let acc = tile_sums(row, t0, nt, lid, WG);
        for (var t = 0u; t < nt; t++) {
            partial[t * WG + lid] = acc[t];
        }
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if lid < s {
                for (var t = 0u; t < nt; t++) {
                    partial[t * WG + lid] += partial[t * WG + lid + s];
                }
            }
            workgroupBarrier();
        }
        if lid < nt {
            y[(t0 + lid) * p.out_width + p.row0 + row] = partial[lid * WG];
        }
        workgroupBarrier();
    }
}

// Weight row `row` times input rows t0..t0 + nt over its chunks first, first + step, ...
fn tile_sums(row: u32, t0: u32, nt: u32, first: u32, step: u32) -> array<f32, TILE> {
    let chunks = p.k / 32u;
    var acc: array<f32, TILE>;
    for (var ci = first; ci < chunks; ci += step) {
        for (var t = 0u; t < nt; t++) {
            acc[t] += chunk_dot(row * chunks + ci, ((t0 + t) * p.k + ci * 32u) / 4u);
        }
    }
    return acc;
}

// Chunk `c` of the weights (counted over the whole plane) times the 32 values of x from vec4
// `xv` on: a * (levels · x) + b * sum(x), for each half of the chunk.
fn chunk_dot(c: u32, xv: u32) -> f32 {
    switch FORMAT {
        case 0u: {
            var s = 0.0;
            for (var j = 0u; j < 8u; j++) {
                let w = vec4<f32>(
                    bitcast<f32>(w_levels[c * 32u + 4u * j]),
                    bitcast<f32>(w_levels[c * 32u + 4u * j + 1u]),
                    bitcast<f32>(w_levels[c * 32u + 4u * j + 2u]),
                    bitcast<f32>(w_levels[c * 32u + 4u * j + 3u]),
                );
                s += dot(w, x[xv + j]);
            }
            return s;
        }
        case 1u: {
            var s = 0.0;
            for (var j = 0u; j < 8u; j++) {
                let w = vec4<f32>(
                    unpack2x16float(w_levels[c * 16u + 2u * j]),
                    unpack2x16float(w_levels[c * 16u + 2u * j + 1u]),
                );
                s += dot(w, x[xv + j]);
            }
            return s;
        }
        case 2u, 3u: {
            var halves = vec2<f32>(0.0);
            for (var j = 0u; j < 8u; j++) {
                let word = bitcast<i32>(w_levels[c * 8u + j]);
                let q = vec4<f32>(
                    f32(extractBits(word, 0u, 8u)),
                    f32(extractBits(word, 8u, 8u)),
                    f32(extractBits(word, 16u, 8u)),
                    f32(extractBits(word, 24u, 8u)),
                );
                halves[j / 4u] += dot(q, x[xv + j]);
            }
            if FORMAT == 2u {
                return w_scales[c] * (halves.x + halves.y);
            }
            return w_scales[2u * c] * halves.x + w_scales[2u * c + 1u] * halves.y;
        }
        default: {
            var high = 0u;
            if FORMAT == 5u {
                high = w_high[c];
            }
            var qx = 0.0;
            var sum = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                let word = w_levels[c * 4u + j];
                let bits = high >> (8u * j);
                let lo = vec4<f32>(
                    f32(extractBits(word, 0u, 4u) | (extractBits(bits, 0u, 1u) << 4u)),
                    f32(extractBits(word, 4u, 4u) | (extractBits(bits, 1u, 1u) << 4u)),
                    f32(extractBits(word, 8u, 4u) | (extractBits(bits, 2u, 1u) << 4u)),
                    f32(extractBits(word, 12u, 4u) | (extractBits(bits, 3u, 1u) << 4u)),
                );
                let hi = vec4<f32>(
                    f32(extractBits(word, 16u, 4u) | (extractBits(bits, 4u, 1u) << 4u)),
                    f32(extractBits(word, 20u, 4u) | (extractBits(bits, 5u, 1u) << 4u)),
                    f32(extractBits(word, 24u, 4u) | (extractBits(bits, 6u, 1u) << 4u)),
                    f32(extractBits(word, 28u, 4u) | (extractBits(bits, 7u, 1u) << 4u)),
                );
                let x0 = x[xv + 2u * j];
                let x1 = x[xv + 2u * j + 1u];
                qx += dot(lo, x0) + dot(hi, x1);
                sum += x0 + x1;
            }
            return w_scales[2u * c] * qx + w_scales[2u * c + 1u] * dot(sum, vec4<f32>(1.0));
        }
    }
}
