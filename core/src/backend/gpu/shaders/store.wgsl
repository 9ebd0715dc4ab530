// Stores f32 rows into a KV cache from value `at` on: as f16 pairs packed in u32 words, or as
// f32 bit patterns.

struct Params {
    len: u32, // values; even for an f16 cache
    at: u32,  // first value; even for an f16 cache
}

// Whether the cache holds f16 (else f32).
override F16: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
// [len]
@group(0) @binding(1) var<storage, read> src: array<f32>;
// [ctx, kv_width] values, two to a word for f16
@group(0) @binding(2) var<storage, read_write> cache: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if F16 {
        if 2u * i < p.len {
            cache[p.at / 2u + i] = pack2x16float(vec2<f32>(src[2u * i], src[2u * i + 1u]));
        }
    } else if i < p.len {
        cache[p.at + i] = bitcast<u32>(src[i]);
    }
}
