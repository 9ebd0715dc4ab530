// Causal grouped-query attention over the KV cache: one workgroup per (head, query row), with
// the arithmetic of the CPU backend's `vec::attend` (llama.cpp's f16 flash attention): with an
// f16 cache the query is rounded to f16 and the value sum is held in f16. The positions are
// taken WG at a time: the threads score one each, then each thread walks the tile in order for
// its own dimensions with the online softmax, so no score buffer is needed at any length.

struct Params {
    pos0: u32,     // position of query row 0
    heads: u32,
    group: u32,    // query heads per KV head
    head_dim: u32, // at most 4 * WG
    kv_width: u32, // kv_heads * head_dim
    scale: f32,    // 1 / sqrt(head_dim)
}

override F16: bool = true;
const WG: u32 = 64u;
// Below every score; exp of it minus any score is 0.
const LOW: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
// [rows, heads * head_dim]
@group(0) @binding(1) var<storage, read> q: array<f32>;
// [ctx, kv_width] values, two to a word for f16
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
// [rows, heads * head_dim]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> q_head: array<f32, 256>;
var<workgroup> scores: array<f32, WG>;

fn round_f16(x: f32) -> f32 {
    if F16 {
        return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
    }
    return x;
}

fn k_at(i: u32) -> f32 {
    if F16 {
        let pair = unpack2x16float(k_cache[i / 2u]);
        return select(pair.x, pair.y, i % 2u == 1u);
    }
    return bitcast<f32>(k_cache[i]);
}

fn v_at(i: u32) -> f32 {
    if F16 {
        let pair = unpack2x16float(v_cache[i / 2u]);
        return select(pair.x, pair.y, i % 2u == 1u);
    }
    return bitcast<f32>(v_cache[i]);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let row = wid.y;
    let last = p.pos0 + row;
    let width = p.heads * p.head_dim;
    let q_at = row * width + head * p.head_dim;
    let kv_at = (head / p.group) * p.head_dim;
    for (var d = lid; d < p.head_dim; d += WG) {
        q_head[d] = round_f16(q[q_at + d]);
    }
    workgroupBarrier();

    // Every thread keeps the same running maximum and sum; each its own dimensions' values.
    var max_score = LOW;
    var sum = 0.0;
    var acc = vec4<f32>(0.0);
    for (var p0 = 0u; p0 <= last; p0 += WG) {
        let pos = p0 + lid;
        if pos <= last {
            var s = 0.0;
            for (var d = 0u; d < p.head_dim; d++) {
                s = fma(q_head[d], k_at(pos * p.kv_width + kv_at + d), s);
            }
            scores[lid] = s * p.scale;
        }
        workgroupBarrier();
        let n = min(WG, last + 1u - p0);
        for (var j = 0u; j < n; j++) {
            let s = scores[j];
            var ms = 1.0;
            var vs = 1.0;
            if s > max_score {
                ms = exp(max_score - s);
                max_score = s;
                for (var i = 0u; i < 4u; i++) {
                    acc[i] = round_f16(acc[i] * ms);
                }
            } else {
                vs = exp(s - max_score);
            }
            for (var i = 0u; i < 4u; i++) {
                let d = lid + i * WG;
                if d < p.head_dim {
                    acc[i] = round_f16(fma(v_at((p0 + j) * p.kv_width + kv_at + d), vs, acc[i]));
                }
            }
            sum = fma(sum, ms, vs);
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sum;
    for (var i = 0u; i < 4u; i++) {
        let d = lid + i * WG;
        if d < p.head_dim {
            out[q_at + d] = acc[i] * inv;
        }
    }
}
