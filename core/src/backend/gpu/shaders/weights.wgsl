// A weight matrix in one of the repacked layouts of `repack.rs`, and the decoding of one
// 32-value chunk of it. Included ahead of the shaders that read weights (matmul, embed).

// The layout: 0 F32, 1 F16, 2 Q8, 3 Q8Half, 4 Q4, 5 Q5 (`repack::Layout`).
override FORMAT: u32 = 0u;

// Plane 0, levels or values: [rows, chunks per row, words per chunk of FORMAT].
@group(0) @binding(3) var<storage, read> w_levels: array<u32>;
// Plane 1, f32 scales: [rows, chunks per row, 0 to 2].
@group(0) @binding(4) var<storage, read> w_scales: array<f32>;
// Plane 2, fifth bits (Q5 only): [rows, chunks per row].
@group(0) @binding(5) var<storage, read> w_high: array<u32>;

// Value e of a chunk is a[e / 16] * q[e] + b[e / 16].
struct Chunk {
    q: array<f32, 32>,
    a: vec2<f32>,
    b: vec2<f32>,
}

// Chunk `c`, counted over the whole plane (row * chunks per row + chunk in the row).
fn load_chunk(c: u32) -> Chunk {
    var k: Chunk;
    k.a = vec2<f32>(1.0);
    k.b = vec2<f32>(0.0);
    switch FORMAT {
        case 0u: {
            for (var e = 0u; e < 32u; e++) {
                k.q[e] = bitcast<f32>(w_levels[c * 32u + e]);
            }
        }
        case 1u: {
            for (var j = 0u; j < 16u; j++) {
                let v = unpack2x16float(w_levels[c * 16u + j]);
                k.q[2u * j] = v.x;
                k.q[2u * j + 1u] = v.y;
            }
        }
        case 2u, 3u: {
            for (var j = 0u; j < 8u; j++) {
                let word = bitcast<i32>(w_levels[c * 8u + j]);
                for (var i = 0u; i < 4u; i++) {
                    k.q[4u * j + i] = f32(extractBits(word, 8u * i, 8u));
                }
            }
            if FORMAT == 2u {
                k.a = vec2<f32>(w_scales[c]);
            } else {
                k.a = vec2<f32>(w_scales[2u * c], w_scales[2u * c + 1u]);
            }
        }
        default: {
            for (var j = 0u; j < 4u; j++) {
                let word = w_levels[c * 4u + j];
                for (var i = 0u; i < 8u; i++) {
                    k.q[8u * j + i] = f32(extractBits(word, 4u * i, 4u));
                }
            }
            k.a = vec2<f32>(w_scales[2u * c]);
            k.b = vec2<f32>(w_scales[2u * c + 1u]);
            if FORMAT == 5u {
                let high = w_high[c];
                for (var e = 0u; e < 32u; e++) {
                    k.q[e] += 16.0 * f32(extractBits(high, e, 1u));
                }
            }
        }
    }
    return k;
}
