// Rounds activations to the levels the CPU backend (and llama.cpp's) quantizes them to before a
// quantized matrix multiply, and stores them dequantized: out = d * round(x / d) per block. The
// matrix kernels then see the values the CPU's integer dot products see. One thread per block.
//
// - Q8_0 (32 values; Q4_0, Q5_0, Q8_0 and Q4_1, Q5_1 weights): d = max|x| / 127 rounded to f16,
//   levels round(x * 127 / max|x|), half to even.
// - Q8_K (256 values; the K-quants): d = 1 / (-127 / m), m the value of largest magnitude, levels
//   min(round(x * -127 / m), 127).

struct Params {
    blocks: u32,
}

// Q8_K blocks (else Q8_0).
override Q8_K: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
// [blocks, 32 or 256]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// [blocks, 32 or 256]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let b = gid.x + gid.y * groups.x * 64u;
    if b >= p.blocks {
        return;
    }
    let n = select(32u, 256u, Q8_K);
    let base = b * n;
    var amax = 0.0;
    var m = 0.0;
    for (var i = 0u; i < n; i++) {
        let v = x[base + i];
        if abs(v) > amax {
            amax = abs(v);
            m = v;
        }
    }
    if amax == 0.0 {
        for (var i = 0u; i < n; i++) {
            out[base + i] = 0.0;
        }
        return;
    }
    if Q8_K {
        let iscale = -127.0 / m;
        let d = 1.0 / iscale;
        for (var i = 0u; i < n; i++) {
            out[base + i] = d * min(round(iscale * x[base + i]), 127.0);
        }
    } else {
        let d = unpack2x16float(pack2x16float(vec2<f32>(amax / 127.0, 0.0))).x;
        let id = 127.0 / amax;
        for (var i = 0u; i < n; i++) {
            out[base + i] = d * round(x[base + i] * id);
        }
    }
}
