//! Hand-built GGUF bytes for tests, valid or deliberately broken. Shared by the core's reader
//! tests and the CLI's hostile-file tests (`#[path]`-included there), so both attack the same
//! files.
#![allow(dead_code)]

/// GGUF metadata value type ids.
pub mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A little-endian byte writer.
#[derive(Default, Clone, Debug)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn header(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut b = Self::default();
        b.raw(b"GGUF").u32(version).u64(tensors).u64(kvs);
        b
    }
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.raw(&[v])
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A key with a u32 value.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.string(key).u32(vt::U32).u32(v)
    }
    pub fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.string(key).u32(vt::F32).f32(v)
    }
    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.string(key).u32(vt::STRING).string(v)
    }
    /// A tensor-table entry; `dims` innermost first.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.string(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`.
    pub fn pad(&mut self, align: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// A valid tiny qwen2-like GGUF v3: metadata of several types, a vocabulary array, and three F32
/// tensors (`token_embd.weight` [8 × 4], `output_norm.weight` [4], `output.weight` [8 × 4]).
pub fn tiny() -> Vec<u8> {
    let mut b = Bytes::header(3, 3, 10);
    b.kv_str("general.architecture", "qwen2")
        .kv_str("general.name", "Tiny Qwen")
        .kv_u32("general.file_type", 0)
        .kv_u32("qwen2.block_count", 1)
        .kv_u32("qwen2.embedding_length", 4)
        .kv_u32("qwen2.attention.head_count", 2)
        .kv_u32("qwen2.attention.head_count_kv", 1)
        .kv_f32("qwen2.rope.freq_base", 1_000_000.0)
        .kv_f32("qwen2.attention.layer_norm_rms_epsilon", 1e-6);
    b.string("tokenizer.ggml.tokens")
        .u32(vt::ARRAY)
        .u32(vt::STRING)
        .u64(8);
    for t in ["a", "b", "c", "d", "ab", "cd", "<|im_start|>", "<|im_end|>"] {
        b.string(t);
    }
    b.tensor("token_embd.weight", &[4, 8], 0, 0)
        .tensor("output_norm.weight", &[4], 0, 128)
        .tensor("output.weight", &[4, 8], 0, 160);
    b.pad(32);
    for i in 0..32 {
        b.f32(i as f32);
    }
    for _ in 0..4 {
        b.f32(1.0);
    }
    b.pad(32);
    for i in 0..32 {
        b.f32(-(i as f32));
    }
    b.0
}
