//! The ggml block layouts, byte for byte.
//!
//! Every field is a byte array, so each block has alignment 1 and a slice of blocks can be viewed
//! straight out of a file at any offset. Half-precision scales are little-endian `f16` bits.

use bytemuck::{Pod, Zeroable};

/// Values per super-block in the K-quants (`QK_K` in ggml).
pub const QK_K: usize = 256;
/// Values per block in the legacy quants (`QK4_0`, `QK5_0`, `QK8_0`, ...).
pub const QK: usize = 32;

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
        const _: () = assert!(core::mem::align_of::<$t>() == 1);
    };
}

/// `block_q4_0`: 32 values as `d * (q - 8)`, low nibbles hold values 0..16, high nibbles 16..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Nibbles.
    pub qs: [u8; QK / 2],
}
assert_size!(BlockQ4_0, 18);

/// `block_q4_1`: 32 values as `d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Minimum, f16.
    pub m: [u8; 2],
    /// Nibbles.
    pub qs: [u8; QK / 2],
}
assert_size!(BlockQ4_1, 20);

/// `block_q5_0`: 32 values as `d * (q - 16)`; the fifth bits live in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Fifth bit of each value, u32 little-endian, bit i for value i.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK / 2],
}
assert_size!(BlockQ5_0, 22);

/// `block_q5_1`: 32 values as `d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Minimum, f16.
    pub m: [u8; 2],
    /// Fifth bits.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK / 2],
}
assert_size!(BlockQ5_1, 24);

/// `block_q8_0`: 32 values as `d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Signed values.
    pub qs: [i8; QK],
}
assert_size!(BlockQ8_0, 34);

/// `block_q2_K`: 256 values in 16 groups with 4-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Low nibble scale, high nibble min, per group of 16.
    pub scales: [u8; QK_K / 16],
    /// 2-bit values.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale, f16.
    pub d: [u8; 2],
    /// Super-block min scale, f16.
    pub dmin: [u8; 2],
}
assert_size!(BlockQ2K, 84);

/// `block_q3_K`: 256 values, 2 low bits in `qs`, the third in `hmask`, 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    /// High bits.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits.
    pub qs: [u8; QK_K / 4],
    /// 16 packed 6-bit scales.
    pub scales: [u8; 12],
    /// Super-block scale, f16.
    pub d: [u8; 2],
}
assert_size!(BlockQ3K, 110);

/// `block_q4_K`: 256 values in 8 groups of 32 with 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale, f16.
    pub d: [u8; 2],
    /// Super-block min scale, f16.
    pub dmin: [u8; 2],
    /// 8 scales and 8 mins, 6 bits each.
    pub scales: [u8; 12],
    /// Nibbles.
    pub qs: [u8; QK_K / 2],
}
assert_size!(BlockQ4K, 144);

/// `block_q5_K`: like Q4_K with a fifth bit per value in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale, f16.
    pub d: [u8; 2],
    /// Super-block min scale, f16.
    pub dmin: [u8; 2],
    /// 8 scales and 8 mins, 6 bits each.
    pub scales: [u8; 12],
    /// Fifth bits.
    pub qh: [u8; QK_K / 8],
    /// Low nibbles.
    pub qs: [u8; QK_K / 2],
}
assert_size!(BlockQ5K, 176);

/// `block_q6_K`: 256 values in 16 groups of 16 with signed 8-bit scales; `d` comes last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits.
    pub qh: [u8; QK_K / 4],
    /// Group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16.
    pub d: [u8; 2],
}
assert_size!(BlockQ6K, 210);
