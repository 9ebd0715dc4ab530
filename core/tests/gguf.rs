//! The GGUF reader on valid files of every metadata type, and on hostile files: each is rejected
//! with an error that names the byte offset or the tensor, without a panic and without an
//! allocation larger than the file.

#[path = "common/alloc_track.rs"]
mod alloc_track;
#[path = "common/gguf_bytes.rs"]
mod gguf_bytes;

use apr_core::dtype::GgmlType;
use apr_core::format::gguf::{Gguf, GgufError, Limits, Value, ValueType};
use apr_core::info::ModelInfo;
use gguf_bytes::{Bytes, tiny, vt};
use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: alloc_track::Tracking = alloc_track::Tracking;

/// Parses `bytes` and returns the error, checking that no single allocation exceeded the file
/// (or 1 KiB for tiny files: a handful of parsed entries costs a few hundred bytes of bookkeeping).
fn reject(bytes: &[u8]) -> GgufError {
    let (result, largest) = alloc_track::largest_allocation(|| Gguf::parse(bytes));
    let err = result.expect_err("a hostile file must be rejected");
    assert!(
        largest <= bytes.len().max(1024),
        "parsing a {}-byte file allocated {largest} bytes at once ({err})",
        bytes.len()
    );
    let message = err.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(
        message.contains("byte") || message.contains("tensor '") || message.contains("alignment"),
        "{message}"
    );
    err
}

#[test]
fn a_valid_file_parses_with_shapes_in_row_major_order() {
    let bytes = tiny();
    let gguf = Gguf::parse(&bytes).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.get_str("general.architecture").unwrap(), Some("qwen2"));
    assert_eq!(gguf.get_u64("qwen2.block_count").unwrap(), Some(1));
    assert_eq!(gguf.get_f32("qwen2.rope.freq_base").unwrap(), Some(1e6));
    assert_eq!(gguf.alignment(), 32);
    assert_eq!(gguf.data_offset() % 32, 0);
    let embd = gguf.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.gguf_dims(), &[4, 8]);
    assert_eq!(embd.shape(), vec![8, 4]);
    assert_eq!(embd.ty, GgmlType::F32);
    let data = gguf.tensor_data(embd);
    assert_eq!(data.len(), 128);
    assert_eq!(&data[4..8], &1.0f32.to_le_bytes());
    let out = gguf.tensor_data(gguf.tensor("output.weight").unwrap());
    assert_eq!(&out[4..8], &(-1.0f32).to_le_bytes());
    let tokens: Vec<&str> = gguf
        .get_array("tokenizer.ggml.tokens")
        .unwrap()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        tokens,
        ["a", "b", "c", "d", "ab", "cd", "<|im_start|>", "<|im_end|>"]
    );
    assert!(matches!(
        gguf.get_str("qwen2.block_count"),
        Err(GgufError::WrongValueType { .. })
    ));
}

#[test]
fn model_info_summarises_the_file() {
    let bytes = tiny();
    let info = ModelInfo::from_bytes(&bytes, true).unwrap();
    assert_eq!(info.architecture.as_deref(), Some("qwen2"));
    assert_eq!(info.quantization.as_deref(), Some("F32"));
    assert_eq!(info.parameters, 32 + 4 + 32);
    assert!(!info.lm_head.tied);
    assert_eq!(info.lm_head.parameters, 32);
    assert_eq!(info.vocab_size, Some(8), "from the token list");
    assert_eq!(
        (
            info.layers,
            info.hidden_size,
            info.attention_heads,
            info.kv_heads
        ),
        (Some(1), Some(4), Some(2), Some(1))
    );
    assert_eq!(info.rms_norm_eps, Some(1e-6));
    assert_eq!(info.tensor_count, 3);
    assert_eq!(info.dtypes.len(), 1);
    assert_eq!(info.tensors.as_ref().unwrap()[0].shape, vec![8, 4]);
    // The JSON form round-trips through the same types.
    let json = serde_json::to_string(&info).unwrap();
    assert_eq!(serde_json::from_str::<ModelInfo>(&json).unwrap(), info);
}

#[test]
fn every_metadata_type_and_nested_arrays_are_read_in_v2_and_v3() {
    for version in [2, 3] {
        let mut b = Bytes::header(version, 0, 14);
        b.string("u8").u32(vt::U8).u8(200);
        b.string("i8").u32(vt::I8).u8(0xff);
        b.string("u16").u32(vt::U16).raw(&65_000u16.to_le_bytes());
        b.string("i16").u32(vt::I16).raw(&(-2i16).to_le_bytes());
        b.string("u32").u32(vt::U32).u32(4_000_000_000);
        b.string("i32").u32(vt::I32).raw(&(-3i32).to_le_bytes());
        b.string("f32").u32(vt::F32).f32(0.5);
        b.string("bool").u32(vt::BOOL).u8(1);
        b.string("string").u32(vt::STRING).string("héllo");
        b.string("u64").u32(vt::U64).u64(1 << 40);
        b.string("i64").u32(vt::I64).raw(&(-5i64).to_le_bytes());
        b.string("f64").u32(vt::F64).raw(&0.25f64.to_le_bytes());
        b.string("ints").u32(vt::ARRAY).u32(vt::I32).u64(3);
        for v in [1i32, -2, 3] {
            b.raw(&v.to_le_bytes());
        }
        // [[\"a\", \"bc\"], []]: an array of string arrays.
        b.string("nested").u32(vt::ARRAY).u32(vt::ARRAY).u64(2);
        b.u32(vt::STRING).u64(2).string("a").string("bc");
        b.u32(vt::STRING).u64(0);
        let bytes = b.0;
        let gguf = Gguf::parse(&bytes).unwrap();
        assert_eq!(gguf.version(), version);
        assert_eq!(gguf.get("u8"), Some(&Value::U8(200)));
        assert_eq!(gguf.get("i8"), Some(&Value::I8(-1)));
        assert_eq!(gguf.get("u16"), Some(&Value::U16(65_000)));
        assert_eq!(gguf.get("i16"), Some(&Value::I16(-2)));
        assert_eq!(gguf.get_u64("u32").unwrap(), Some(4_000_000_000));
        assert_eq!(gguf.get("i32"), Some(&Value::I32(-3)));
        assert_eq!(gguf.get("f32"), Some(&Value::F32(0.5)));
        assert_eq!(gguf.get("bool").and_then(Value::as_bool), Some(true));
        assert_eq!(gguf.get_str("string").unwrap(), Some("héllo"));
        assert_eq!(gguf.get("u64"), Some(&Value::U64(1 << 40)));
        assert_eq!(gguf.get("i64"), Some(&Value::I64(-5)));
        assert_eq!(gguf.get_f64("f64").unwrap(), Some(0.25));
        let ints: Vec<Value<'_>> = gguf.get_array("ints").unwrap().unwrap().iter().collect();
        assert_eq!(ints, [Value::I32(1), Value::I32(-2), Value::I32(3)]);
        let nested = gguf.get_array("nested").unwrap().unwrap();
        assert_eq!(nested.element_type(), ValueType::Array);
        let inner: Vec<Vec<&str>> = nested
            .iter()
            .map(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(inner, vec![vec!["a", "bc"], vec![]]);
    }
}

#[test]
fn general_alignment_moves_the_data_section() {
    let mut b = Bytes::header(3, 1, 1);
    b.string("general.alignment").u32(vt::U32).u32(256);
    b.tensor("t", &[32], 8, 0); // Q8_0: one 34-byte block
    b.pad(256).raw(&[7; 34]);
    let gguf = Gguf::parse(&b.0).unwrap();
    assert_eq!(gguf.alignment(), 256);
    assert_eq!(gguf.data_offset(), 256);
    assert_eq!(gguf.tensor_data(&gguf.tensors()[0]), &[7; 34]);
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = tiny();
    for len in 0..bytes.len() {
        let err = reject(&bytes[..len]);
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. }
                    | GgufError::TensorOutOfBounds { .. }
                    | GgufError::CountExceedsFile { .. }
                    | GgufError::LengthTooLarge { .. }
                    | GgufError::BadMagic { .. }
            ),
            "cut at {len}: {err}"
        );
    }
}

#[test]
fn wrong_magic_and_versions() {
    let mut bytes = tiny();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(reject(&bytes), GgufError::BadMagic { .. }));
    for (version, expected) in [(1u32, "version 1"), (4, "version 4")] {
        let mut bytes = tiny();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let err = reject(&bytes);
        assert!(err.to_string().contains(expected), "{err}");
    }
    let mut bytes = tiny();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(reject(&bytes), GgufError::BigEndian);
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let huge = 1u64 << 60;
    // Metadata count.
    let mut b = Bytes::header(3, 0, huge);
    b.kv_u32("a", 1);
    let err = reject(&b.0);
    assert!(
        matches!(
            err,
            GgufError::TooMany {
                what: "metadata count",
                offset: 16,
                ..
            }
        ),
        "{err}"
    );
    let mut b = Bytes::header(3, 0, 1000);
    b.kv_u32("a", 1);
    let err = reject(&b.0);
    assert!(
        matches!(
            err,
            GgufError::CountExceedsFile {
                what: "metadata count",
                offset: 16,
                remaining: 17,
                ..
            }
        ),
        "{err}"
    );
    // Tensor count.
    let mut b = Bytes::header(3, huge, 0);
    b.tensor("t", &[1], 0, 0);
    assert!(matches!(
        reject(&b.0),
        GgufError::TooMany {
            what: "tensor count",
            offset: 8,
            ..
        }
    ));
    let mut b = Bytes::header(3, 1000, 0);
    b.tensor("t", &[1], 0, 0);
    assert!(matches!(
        reject(&b.0),
        GgufError::CountExceedsFile {
            what: "tensor count",
            offset: 8,
            ..
        }
    ));
    // Array length.
    let mut b = Bytes::header(3, 0, 1);
    b.string("tokens").u32(vt::ARRAY).u32(vt::STRING).u64(huge);
    let err = reject(&b.0);
    assert!(
        matches!(
            err,
            GgufError::CountExceedsFile {
                what: "array length",
                offset: 46,
                remaining: 0,
                ..
            }
        ),
        "{err}"
    );
    // Array of u64 whose byte size would overflow.
    let mut b = Bytes::header(3, 0, 1);
    b.string("x").u32(vt::ARRAY).u32(vt::U64).u64(u64::MAX / 4);
    assert!(matches!(reject(&b.0), GgufError::CountExceedsFile { .. }));
    // A tighter configured limit is honoured too.
    let bytes = tiny();
    let limits = Limits {
        max_kv: 2,
        ..Limits::default()
    };
    assert!(matches!(
        Gguf::parse_with_limits(&bytes, &limits),
        Err(GgufError::TooMany { limit: 2, .. })
    ));
}

#[test]
fn absurd_string_lengths_are_refused() {
    let huge = 1u64 << 60;
    let mut b = Bytes::header(3, 0, 1);
    b.u64(huge).raw(b"key").raw(&[0; 32]);
    let err = reject(&b.0);
    assert!(
        matches!(
            err,
            GgufError::LengthTooLarge {
                what: "metadata key",
                offset: 24,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1152921504606846976"), "{err}");

    let mut b = Bytes::header(3, 0, 1);
    b.string("k").u32(vt::STRING).u64(huge);
    assert!(matches!(
        reject(&b.0),
        GgufError::LengthTooLarge {
            what: "string value",
            offset: 37,
            ..
        }
    ));

    let mut b = Bytes::header(3, 1, 0);
    b.u64(huge).raw(b"name").raw(&[0; 32]);
    assert!(matches!(
        reject(&b.0),
        GgufError::LengthTooLarge {
            what: "tensor name",
            ..
        }
    ));
}

#[test]
fn malformed_metadata_is_refused() {
    // Unknown value type.
    let mut b = Bytes::header(3, 0, 1);
    b.string("k").u32(13).u32(0);
    assert!(matches!(
        reject(&b.0),
        GgufError::UnknownValueType { id: 13, offset: 33 }
    ));
    // A bool that is neither 0 nor 1.
    let mut b = Bytes::header(3, 0, 1);
    b.string("k").u32(vt::BOOL).u8(2);
    assert!(matches!(
        reject(&b.0),
        GgufError::BadBool {
            value: 2,
            offset: 37
        }
    ));
    // Invalid UTF-8.
    let mut b = Bytes::header(3, 0, 1);
    b.u64(2).raw(&[0xff, 0xfe]).u32(vt::U8).u8(0);
    assert!(matches!(
        reject(&b.0),
        GgufError::InvalidUtf8 { offset: 32, .. }
    ));
    // Arrays nested 100 deep.
    let mut b = Bytes::header(3, 0, 1);
    b.string("deep").u32(vt::ARRAY);
    for _ in 0..100 {
        b.u32(vt::ARRAY).u64(1);
    }
    b.u32(vt::U8).u64(0);
    assert!(matches!(reject(&b.0), GgufError::ArrayTooDeep { .. }));
    // The same key twice.
    let mut b = Bytes::header(3, 0, 2);
    b.kv_u32("k", 1).kv_u32("k", 2);
    assert!(matches!(reject(&b.0), GgufError::DuplicateKey { .. }));
    // An alignment that is not a power of two, or not a u32.
    let mut b = Bytes::header(3, 0, 1);
    b.kv_u32("general.alignment", 24);
    assert!(matches!(
        reject(&b.0),
        GgufError::BadAlignment { alignment: 24 }
    ));
    let mut b = Bytes::header(3, 0, 1);
    b.kv_str("general.alignment", "32");
    assert!(matches!(reject(&b.0), GgufError::WrongValueType { .. }));
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("blk.0.attn_q.weight", dims, ty, offset);
    b.pad(32).raw(&vec![0; data]);
    b.0
}

#[test]
fn malformed_tensors_are_refused_by_name() {
    let named = |err: GgufError| {
        assert!(
            err.to_string().contains("tensor 'blk.0.attn_q.weight'"),
            "{err}"
        );
        err
    };
    assert!(matches!(
        named(reject(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4))),
        GgufError::TooManyDims { n_dims: 5, .. }
    ));
    assert!(matches!(
        named(reject(&one_tensor(&[4], 200, 0, 16))),
        GgufError::UnknownTensorType { id: 200, .. }
    ));
    let removed = named(reject(&one_tensor(&[32], 4, 0, 32)));
    assert!(removed.to_string().contains("Q4_2"), "{removed}");
    assert!(matches!(
        named(reject(&one_tensor(&[1 << 32, 1 << 32], 0, 0, 4))),
        GgufError::BadShape { .. }
    ));
    assert!(
        matches!(
            named(reject(&one_tensor(&[30], 8, 0, 34))),
            GgufError::BadShape { .. }
        ),
        "30 is not a whole Q8_0 block"
    );
    assert!(matches!(
        named(reject(&one_tensor(&[4], 0, 1 << 40, 16))),
        GgufError::TensorOutOfBounds { .. }
    ));
    assert!(matches!(
        named(reject(&one_tensor(&[4], 0, u64::MAX - 31, 16))),
        GgufError::TensorOutOfBounds { .. }
    ));
    assert!(matches!(
        named(reject(&one_tensor(&[4], 0, 0, 15))),
        GgufError::TensorOutOfBounds { .. }
    ));
    assert!(matches!(
        named(reject(&one_tensor(&[4], 0, 16, 64))),
        GgufError::Misaligned { .. }
    ));

    let mut b = Bytes::header(3, 2, 0);
    b.tensor("blk.0.attn_q.weight", &[4], 0, 0)
        .tensor("blk.0.attn_q.weight", &[4], 0, 32);
    b.pad(32).raw(&[0; 64]);
    assert!(matches!(
        named(reject(&b.0)),
        GgufError::DuplicateTensor { .. }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any corruption of a valid file parses or is rejected; it never panics, and a file that
    /// still parses only ever yields tensor slices inside the buffer.
    #[test]
    fn corrupted_files_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = tiny();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let len = cut.index(bytes.len() + 1);
        if let Ok(gguf) = Gguf::parse(&bytes[..len]) {
            for t in gguf.tensors() {
                prop_assert_eq!(gguf.tensor_data(t).len() as u64, t.size);
            }
        }
    }
}
