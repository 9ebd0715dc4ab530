//! Round trips between GGUF, SafeTensors and APR on tiny synthetic qwen2 models of every tensor
//! type: quant blocks survive byte for byte, dequantization is exact, metadata survives, and
//! `verify` agrees.

use apr_core::convert::{self, Options, Quantize};
use apr_core::dtype::GgmlType;
use apr_core::format::Format;
use apr_core::format::apr::Compression;
use apr_core::format::model::ModelFile;
use apr_core::quant::dequantize;
use apr_core::synth::{self, Config};
use apr_core::write::gguf::GgufWriter;
use apr_core::write::{OutTensor, TensorSink};
use proptest::prelude::*;

#[path = "common/convert.rs"]
mod convert_helper;
use convert_helper::{MATRIX_TYPES, convert};

fn decoded(t: &apr_core::format::model::Tensor<'_>) -> Vec<f32> {
    let raw = t.decode().unwrap();
    let mut v = vec![0f32; t.elements() as usize];
    dequantize(t.dtype, &raw, &mut v).unwrap();
    v
}

fn assert_same_tensors(a: &ModelFile<'_>, b: &ModelFile<'_>) {
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.dtype, y.dtype, "{}", x.name);
        assert_eq!(x.shape, y.shape, "{}", x.name);
        assert_eq!(x.decode().unwrap(), y.decode().unwrap(), "{} bytes", x.name);
    }
}

#[test]
fn issue_3_gguf_apr_gguf_is_bit_exact_for_every_type_and_compression() {
    for ty in MATRIX_TYPES {
        let src = synth::gguf(&Config::default(), ty).unwrap();
        let original = ModelFile::parse(&src).unwrap();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let apr = convert(&src, Format::Apr, None, None, c);
            let back = convert(&apr, Format::Gguf, None, None, Compression::None);
            let back = ModelFile::parse(&back).unwrap();
            assert_same_tensors(&original, &back);
            assert_eq!(original.metadata, back.metadata, "{ty} {c:?}");
        }
    }
}

#[test]
fn issue_3_gguf_safetensors_apr_gguf_keeps_metadata_and_values() {
    for ty in MATRIX_TYPES {
        let src = synth::gguf(&Config::default(), ty).unwrap();
        let original = ModelFile::parse(&src).unwrap();
        let st = convert(&src, Format::Safetensors, None, None, Compression::None);
        let st_model = ModelFile::parse(&st).unwrap();
        // Float types stay as they are; quant blocks become F32.
        let want = if matches!(ty, GgmlType::F16 | GgmlType::BF16) {
            ty
        } else {
            GgmlType::F32
        };
        assert!(
            st_model
                .tensors
                .iter()
                .filter(|t| t.shape.len() == 2)
                .all(|t| t.dtype == want)
        );
        // Names are Hugging Face names in the file, GGUF names in the view.
        assert!(
            st_model
                .tensors
                .iter()
                .any(|t| t.stored_name == "model.layers.0.self_attn.q_proj.weight")
        );
        let apr = convert(&st, Format::Apr, None, None, Compression::Lz4);
        let gguf = convert(&apr, Format::Gguf, None, None, Compression::None);
        let back = ModelFile::parse(&gguf).unwrap();
        for (a, b) in original.tensors.iter().zip(&back.tensors) {
            assert_eq!(a.name, b.name);
            assert_eq!(decoded(a), decoded(b), "{} ({ty})", a.name);
        }
        // Every key survives; only general.file_type may change, and only truthfully.
        for (k, v) in original.metadata.entries() {
            if k != "general.file_type" {
                assert_eq!(back.metadata.get(k), Some(v), "{k} after {ty}");
            }
        }
    }
}

#[test]
fn issue_3_all_six_directions_verify() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
    let st = convert(
        &gguf,
        Format::Safetensors,
        None,
        Some(GgmlType::F16),
        Compression::None,
    );
    let apr = convert(&gguf, Format::Apr, None, None, Compression::Zstd);
    convert(&st, Format::Gguf, None, None, Compression::None);
    convert(&st, Format::Apr, None, None, Compression::None);
    convert(&apr, Format::Safetensors, None, None, Compression::None);
    convert(&apr, Format::Gguf, None, None, Compression::None);
}

#[test]
fn issue_3_quantize_schemes_pick_llama_cpp_types() {
    let cfg = Config {
        layers: 8,
        ..Config::default()
    };
    let src = synth::gguf(&cfg, GgmlType::F32).unwrap();
    let out = convert(
        &src,
        Format::Gguf,
        Some(Quantize::Q4KM),
        None,
        Compression::None,
    );
    let m = ModelFile::parse(&out).unwrap();
    let ty = |n: &str| m.tensor(n).unwrap().dtype;
    assert_eq!(ty("output.weight"), GgmlType::Q6_K);
    assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_K);
    // use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2.
    for i in 0..8 {
        let more = !(1..7).contains(&i) || (i as i64 - 1) % 3 == 2;
        let want = if more { GgmlType::Q6_K } else { GgmlType::Q4_K };
        assert_eq!(ty(&format!("blk.{i}.attn_v.weight")), want, "layer {i}");
        assert_eq!(ty(&format!("blk.{i}.ffn_down.weight")), want, "layer {i}");
    }
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    assert_eq!(m.metadata.get_u64("general.file_type"), Some(15));

    // Rows that are not whole 256-blocks fall back as llama.cpp does.
    let narrow = Config {
        hidden: 96,
        heads: 3,
        kv_heads: 1,
        ffn: 256,
        ..Config::default()
    };
    let src = synth::gguf(&narrow, GgmlType::F32).unwrap();
    let out = convert(
        &src,
        Format::Gguf,
        Some(Quantize::Q4KM),
        None,
        Compression::None,
    );
    let m = ModelFile::parse(&out).unwrap();
    assert_eq!(
        m.tensor("blk.0.attn_q.weight").unwrap().dtype,
        GgmlType::Q5_0
    );
    assert_eq!(m.tensor("output.weight").unwrap().dtype, GgmlType::Q8_0);
    assert_eq!(
        m.tensor("blk.0.ffn_down.weight").unwrap().dtype,
        GgmlType::Q4_K
    );
}

#[test]
fn issue_3_safetensors_cannot_hold_quant_blocks() {
    let src = synth::gguf(&Config::default(), GgmlType::F32).unwrap();
    let model = ModelFile::parse(&src).unwrap();
    let opts = Options {
        target: Format::Safetensors,
        quantize: Some(Quantize::Type(GgmlType::Q4_K)),
        dtype: None,
    };
    let err = convert::plan(&model, &opts).unwrap_err().to_string();
    assert!(err.contains("SafeTensors cannot hold"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn issue_3_random_models_round_trip(
        ty in proptest::sample::select(MATRIX_TYPES.to_vec()),
        layers in 1u64..3,
        kv_heads in proptest::sample::select(vec![1u64, 2, 4]),
        tied in any::<bool>(),
        seed in any::<u64>(),
        c in proptest::sample::select(vec![Compression::None, Compression::Lz4, Compression::Zstd]),
    ) {
        let cfg = Config { layers, kv_heads, seed, separate_lm_head: !tied, merges: 10, ..Config::default() };
        let src = synth::gguf(&cfg, ty).unwrap();
        let original = ModelFile::parse(&src).unwrap();
        let apr = convert(&src, Format::Apr, None, None, c);
        let back = convert(&apr, Format::Gguf, None, None, Compression::None);
        assert_same_tensors(&original, &ModelFile::parse(&back).unwrap());
        let st = convert(&apr, Format::Safetensors, None, None, Compression::None);
        let st = ModelFile::parse(&st).unwrap();
        for (a, b) in original.tensors.iter().zip(&st.tensors) {
            prop_assert_eq!(decoded(a), decoded(b));
        }
    }
}

/// A file as the original `apr` tool writes it: the same header, its flat metadata keys, HF
/// tensor names, F32/F16/BF16/Q4_K/Q6_K data, and no footer CRC.
#[test]
fn issue_3_reads_apr_files_from_the_original_tool() {
    use apr_core::format::apr::{FLAG_QUANTIZED, FLAG_ROW_MAJOR, HEADER_LEN, Header, IndexEntry};
    let meta = serde_json::json!({
        "model_type": "qwen2",
        "architecture": "qwen2",
        "name": "legacy",
        "hidden_size": 256,
        "num_layers": 1,
        "num_heads": 4,
        "num_kv_heads": 2,
        "vocab_size": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 128,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "chat_template": "{{ messages }}",
        "vocab": ["a", "b", "c", "ab"],
        "merges": ["a b"],
    });
    let mut rng = synth::Rng::new(5);
    let tensors: Vec<(&str, GgmlType, Vec<u64>)> = vec![
        ("model.embed_tokens.weight", GgmlType::F16, vec![4, 256]),
        ("model.norm.weight", GgmlType::F32, vec![256]),
        (
            "model.layers.0.mlp.up_proj.weight",
            GgmlType::Q4_K,
            vec![2, 256],
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            GgmlType::Q6_K,
            vec![2, 256],
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            GgmlType::BF16,
            vec![2, 256],
        ),
    ];
    let mut meta_bytes = serde_json::to_vec(&meta).unwrap();
    meta_bytes.resize(meta_bytes.len().div_ceil(64) * 64, 0);
    let mut data = Vec::new();
    let mut entries = Vec::new();
    let mut values_of = Vec::new();
    for (name, ty, shape) in &tensors {
        let n: u64 = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let mut bytes = vec![0u8; ty.bytes_for(n).unwrap() as usize];
        apr_core::quant::quantize(*ty, &values, &mut bytes).unwrap();
        data.resize(data.len().div_ceil(64) * 64, 0);
        entries.push(IndexEntry {
            name: name.to_string(),
            dtype: *ty,
            shape: shape.clone(),
            offset: data.len() as u64,
            size: bytes.len() as u64,
        });
        data.extend_from_slice(&bytes);
        values_of.push(bytes);
    }
    let mut index = Vec::new();
    for e in &entries {
        e.encode(&mut index);
    }
    index.resize(index.len().div_ceil(64) * 64, 0);
    let header = Header {
        version: (2, 0),
        flags: FLAG_ROW_MAJOR | FLAG_QUANTIZED,
        tensor_count: entries.len() as u32,
        metadata_offset: HEADER_LEN as u64,
        metadata_size: meta_bytes.len() as u32,
        index_offset: (HEADER_LEN + meta_bytes.len()) as u64,
        data_offset: (HEADER_LEN + meta_bytes.len() + index.len()) as u64,
    };
    let mut file = header.to_bytes().to_vec();
    file.extend_from_slice(&meta_bytes);
    file.extend_from_slice(&index);
    file.extend_from_slice(&data);

    let model = ModelFile::parse(&file).unwrap();
    let apr = model.apr.as_ref().unwrap();
    assert!(apr.legacy && !apr.footer_verified);
    assert_eq!(model.metadata.architecture(), Some("qwen2"));
    assert_eq!(model.metadata.arch_u64("embedding_length"), Some(256));
    assert_eq!(model.metadata.arch_f32("rope.freq_base"), Some(1e6));
    assert_eq!(model.metadata.vocab_size(), Some(4));
    assert_eq!(
        model.metadata.get_str("tokenizer.chat_template"),
        Some("{{ messages }}")
    );
    for ((name, ty, shape), bytes) in tensors.iter().zip(&values_of) {
        let t = model
            .tensors
            .iter()
            .find(|t| t.stored_name == *name)
            .unwrap();
        assert_eq!((t.dtype, &t.shape), (*ty, shape));
        assert_eq!(&*t.decode().unwrap(), bytes.as_slice());
    }
    assert!(
        model.tensor("blk.0.ffn_up.weight").is_some(),
        "HF names map to GGUF names"
    );
    // And it converts, quant blocks intact.
    let gguf = convert(&file, Format::Gguf, None, None, Compression::None);
    let back = ModelFile::parse(&gguf).unwrap();
    assert_eq!(
        back.tensor("blk.0.ffn_down.weight").unwrap().dtype,
        GgmlType::Q6_K
    );
}

/// The types apr decodes but does not encode (Q2_K, Q3_K, Q5_K) round-trip too, from random
/// blocks with finite scales.
#[test]
fn issue_3_decode_only_types_round_trip() {
    let mut rng = synth::Rng::new(11);
    let types = [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q5_K];
    let outs: Vec<OutTensor> = types
        .iter()
        .map(|&ty| OutTensor {
            name: format!("t.{ty}"),
            dtype: ty,
            shape: vec![3, 512],
        })
        .collect();
    let mut bytes = Vec::new();
    let mut w =
        GgufWriter::new(&mut bytes, &synth::metadata(&Config::default()), &outs, 32).unwrap();
    for out in &outs {
        let size = out.size().unwrap() as usize;
        let block = out.dtype.block_bytes() as usize;
        let mut raw: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
        // Finite f16 scales: d (and dmin) sit at the end of Q2_K/Q3_K blocks, the start of Q5_K's.
        let at: &[usize] = match out.dtype {
            GgmlType::Q2_K => &[block - 4, block - 2],
            GgmlType::Q3_K => &[block - 2],
            _ => &[0, 2],
        };
        for b in raw.chunks_mut(block) {
            for &o in at {
                b[o..o + 2].copy_from_slice(&half_bits(0.01 * rng.unit()));
            }
        }
        w.write_tensor(&mut |s| Ok(s.write_all(&raw)?)).unwrap();
    }
    Box::new(w).finish().unwrap();
    let original = ModelFile::parse(&bytes).unwrap();
    for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let apr = convert(&bytes, Format::Apr, None, None, c);
        let back = convert(&apr, Format::Gguf, None, None, Compression::None);
        assert_same_tensors(&original, &ModelFile::parse(&back).unwrap());
    }
    let st = convert(&bytes, Format::Safetensors, None, None, Compression::None);
    let st = ModelFile::parse(&st).unwrap();
    for (a, b) in original.tensors.iter().zip(&st.tensors) {
        let (x, y) = (decoded(a), decoded(b));
        assert!(x.iter().all(|v| v.is_finite()));
        assert_eq!(x, y, "{}", a.name);
    }
}

fn half_bits(v: f32) -> [u8; 2] {
    apr_core::quant::f32_to_f16(v)
}

/// A file read the way the browser's converter reads one: its head first (grown by doubling
/// from 64 bytes), the APR footer CRC in slices, and each tensor's bytes only while in use.
struct Pieces<'f> {
    file: &'f [u8],
    /// The most bytes held at once by the tensor reads.
    largest: usize,
}

impl<'f> Pieces<'f> {
    fn footer(&self) -> apr_core::format::apr::Footer {
        let mut crc = apr_core::format::apr::FooterCrc::new();
        let body = self.file.len().saturating_sub(4);
        for slice in self.file[..body].chunks(1000) {
            crc.update(slice);
        }
        let mut last = [0u8; 4];
        if self.file.len() >= 4 {
            last.copy_from_slice(&self.file[body..]);
        }
        crc.finish(last)
    }

    fn head(&self) -> apr_core::Result<Vec<u8>> {
        ModelFile::read_head(self.file.len() as u64, self.footer(), 64, &mut |n| {
            Ok(self.file[..n as usize].to_vec())
        })
    }

    fn tensor(&mut self, t: &apr_core::format::model::Tensor<'_>) -> Vec<u8> {
        assert!(
            !t.is_loaded() || t.stored_size == 0,
            "{} came with the head",
            t.name
        );
        let at = t.offset as usize;
        let bytes = self.file[at..at + t.stored_size as usize].to_vec();
        self.largest = self.largest.max(bytes.len());
        bytes
    }
}

/// Converts `src` through `write_file` and `--verify`'s comparison, from the whole file or from
/// its head and tensor reads.
fn convert_file(src: &[u8], target: Format, compression: Compression, streamed: bool) -> Vec<u8> {
    let mut pieces = Pieces {
        file: src,
        largest: 0,
    };
    let head = pieces.head().unwrap();
    let model = if streamed {
        ModelFile::parse_head(&head, src.len() as u64, pieces.footer()).unwrap()
    } else {
        ModelFile::parse(src).unwrap()
    };
    let opts = Options {
        target,
        quantize: None,
        dtype: None,
    };
    let plan = convert::plan(&model, &opts).unwrap();
    let file = convert::FileOutput {
        compression,
        zstd_level: 3,
        source_name: "test",
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut load = |t: &apr_core::format::model::Tensor<'_>,
                    work: &mut dyn FnMut(
        &apr_core::format::model::Tensor<'_>,
    ) -> apr_core::Result<()>| {
        if streamed {
            let bytes = pieces.tensor(t);
            work(&t.with_data(&bytes)?)
        } else {
            work(t)
        }
    };
    convert::write_file(
        &mut out,
        &model,
        &plan,
        &opts,
        &file,
        &mut |_| {},
        &|| false,
        &mut load,
    )
    .unwrap();
    let out = out.into_inner();
    let back = ModelFile::parse(&out).unwrap();
    let report = apr_core::verify::verify(&model, &back, &mut |_| {}, &mut |s, o, work| {
        if streamed {
            let bytes = pieces.tensor(s);
            work(&s.with_data(&bytes)?, o)
        } else {
            work(s, o)
        }
    })
    .unwrap();
    assert!(
        report.pass,
        "{target:?} {compression:?}: {:?}",
        report.problems
    );
    if streamed {
        let largest = model.tensors.iter().map(|t| t.stored_size).max().unwrap();
        assert_eq!(pieces.largest as u64, largest);
        assert!(head.len() < src.len() / 2, "a head of {} bytes", head.len());
    }
    out
}

#[test]
fn issue_7_a_file_read_tensor_by_tensor_converts_to_the_same_bytes() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q5_0).unwrap();
    let st = convert(&gguf, Format::Safetensors, None, None, Compression::None);
    let mut sources = vec![("gguf", gguf.clone()), ("safetensors", st)];
    for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
        sources.push(("apr", convert(&gguf, Format::Apr, None, None, c)));
    }
    for (what, src) in &sources {
        for target in [Format::Gguf, Format::Safetensors, Format::Apr] {
            for c in [Compression::None, Compression::Zstd] {
                if target != Format::Apr && c != Compression::None {
                    continue;
                }
                let whole = convert_file(src, target, c, false);
                let streamed = convert_file(src, target, c, true);
                if whole != streamed {
                    let at = whole.iter().zip(&streamed).position(|(a, b)| a != b);
                    panic!(
                        "{what} to {target:?} {c:?}: {} vs {} bytes, first difference at {at:?}: {:?}",
                        whole.len(),
                        streamed.len(),
                        at.map(
                            |i| String::from_utf8_lossy(&whole[i.saturating_sub(40)..i + 40])
                                .to_string()
                        )
                    );
                }
            }
        }
    }
}

#[test]
fn issue_7_a_head_gets_the_whole_files_errors() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
    let st = convert(&gguf, Format::Safetensors, None, None, Compression::None);
    let apr = convert(&gguf, Format::Apr, None, None, Compression::Lz4);
    let mut bad_crc = apr.clone();
    let n = bad_crc.len();
    bad_crc[n / 2] ^= 1;
    let mut cases: Vec<Vec<u8>> = vec![bad_crc, Vec::new(), b"not a model".to_vec()];
    for file in [&gguf, &st, &apr] {
        for cut in [7, 100, file.len() / 3, file.len() * 9 / 10] {
            cases.push(file[..cut].to_vec());
        }
    }
    for file in &cases {
        let pieces = Pieces { file, largest: 0 };
        let whole = ModelFile::parse(file).unwrap_err().to_string();
        let head = pieces.head().unwrap_err().to_string();
        assert_eq!(head, whole);
    }
}
