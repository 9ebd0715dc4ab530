//! The hostile corpus: broken APR and SafeTensors files, each named for what is wrong with it,
//! built from valid tiny files. Shared by the reader tests and the CLI tests.

use apr_core::format::apr::{HEADER_LEN, Header, IndexEntry};
use apr_core::format::model::ModelFile;

/// A small valid APR file (uncompressed, or LZ4 with `lz4`).
pub fn valid_apr(lz4: bool) -> Vec<u8> {
    use apr_core::convert::{self, Options};
    use apr_core::format::Format;
    use apr_core::format::apr::Compression;
    use apr_core::write::apr::AprWriter;
    use apr_core::write::{OutTensor, TensorSink};
    let cfg = apr_core::synth::Config {
        layers: 1,
        merges: 4,
        ..Default::default()
    };
    let src = apr_core::synth::gguf(&cfg, apr_core::dtype::GgmlType::Q8_0).unwrap();
    let model = ModelFile::parse(&src).unwrap();
    let opts = Options {
        target: Format::Apr,
        quantize: None,
        dtype: None,
    };
    let plan = convert::plan(&model, &opts).unwrap();
    let json = convert::apr_metadata_json(&model.metadata, "synthetic.gguf", Format::Gguf);
    let outs: Vec<OutTensor> = plan.iter().map(|p| p.out.clone()).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    let c = if lz4 {
        Compression::Lz4
    } else {
        Compression::None
    };
    let mut w = AprWriter::new(&mut buf, &json, &outs, c, 3, true).unwrap();
    convert::write_all(
        &model,
        &plan,
        &mut w,
        &mut |_| {},
        &|| false,
        &mut convert::in_place,
    )
    .unwrap();
    Box::new(w).finish().unwrap();
    buf.into_inner()
}

/// A small valid SafeTensors file with apr metadata.
pub fn valid_safetensors() -> Vec<u8> {
    use apr_core::convert;
    use apr_core::write::safetensors::SafetensorsWriter;
    use apr_core::write::{OutTensor, TensorSink};
    let cfg = apr_core::synth::Config {
        layers: 1,
        merges: 4,
        ..Default::default()
    };
    let src = apr_core::synth::gguf(&cfg, apr_core::dtype::GgmlType::F32).unwrap();
    let model = ModelFile::parse(&src).unwrap();
    let outs: Vec<OutTensor> = model
        .tensors
        .iter()
        .map(|t| OutTensor {
            name: apr_core::names::gguf_to_hf(&t.name),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut buf = Vec::new();
    let mut w = SafetensorsWriter::new(
        &mut buf,
        convert::safetensors_metadata(&model.metadata),
        &outs,
    )
    .unwrap();
    for t in &model.tensors {
        w.write_tensor(&mut |s| Ok(s.write_all(t.data)?)).unwrap();
    }
    Box::new(w).finish().unwrap();
    buf
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recomputes the header and footer CRCs after an edit, so only the edit is wrong.
pub fn reseal(b: &mut [u8]) {
    let header = Header {
        version: (b[4], b[5]),
        flags: u16::from_le_bytes([b[6], b[7]]),
        tensor_count: u32::from_le_bytes(b[8..12].try_into().unwrap()),
        metadata_offset: u64_at(b, 12),
        metadata_size: u32::from_le_bytes(b[20..24].try_into().unwrap()),
        index_offset: u64_at(b, 24),
        data_offset: u64_at(b, 32),
    };
    b[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the tensor index with `edit` applied to the entries, then reseals.
pub fn edit_index(valid: &[u8], edit: impl Fn(&mut Vec<IndexEntry>)) -> Vec<u8> {
    let file = apr_core::format::apr::AprFile::parse(valid).unwrap();
    let mut entries = file.index.clone();
    edit(&mut entries);
    let mut index = Vec::new();
    for e in &entries {
        e.encode(&mut index);
    }
    let mut b = valid.to_vec();
    let start = file.header.index_offset as usize;
    let room = file.header.data_offset as usize - start;
    assert!(index.len() <= room, "edited index must fit");
    index.resize(room, 0);
    b[start..start + room].copy_from_slice(&index);
    b[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    reseal(&mut b);
    b
}

/// Broken APR files: (name, bytes).
pub fn apr_cases() -> Vec<(String, Vec<u8>)> {
    let valid = valid_apr(false);
    let h = Header::parse(&valid).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let meta_end = (h.metadata_offset + u64::from(h.metadata_size)) as usize;
    for (what, at) in [
        ("empty", 0),
        ("in-magic", 3),
        ("in-header", 40),
        ("after-header", HEADER_LEN),
        ("in-metadata", HEADER_LEN + 10),
        ("after-metadata", meta_end),
        ("in-index", h.index_offset as usize + 3),
        ("at-data", h.data_offset as usize),
        ("in-data", h.data_offset as usize + 100),
        ("before-footer", valid.len() - 4),
        ("in-footer", valid.len() - 1),
    ] {
        cases.push((format!("truncated-{what}"), valid[..at].to_vec()));
    }
    let mut b = valid.clone();
    b[..4].copy_from_slice(b"APR1");
    cases.push(("bad-magic".into(), b));
    let mut b = valid.clone();
    b[4] = 3;
    reseal(&mut b);
    cases.push(("version-3".into(), b));
    let mut b = valid.clone();
    b[50] ^= 1;
    cases.push(("header-crc-mismatch".into(), b));
    let mut b = valid.clone();
    let at = h.data_offset as usize + 10;
    b[at] ^= 0x55;
    cases.push(("footer-crc-mismatch".into(), b));
    let mut b = valid.clone();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    cases.push(("absurd-tensor-count".into(), b));
    let mut b = valid.clone();
    b[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    cases.push(("absurd-metadata-size".into(), b));
    let mut b = valid.clone();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    reseal(&mut b);
    cases.push(("index-offset-past-end".into(), b));
    let mut b = valid.clone();
    b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    cases.push(("data-offset-past-end".into(), b));
    let mut b = valid.clone();
    b[6..8].copy_from_slice(&0x0403u16.to_le_bytes());
    reseal(&mut b);
    cases.push(("lz4-and-zstd-flags".into(), b));
    let mut b = valid.clone();
    b[HEADER_LEN] = b'[';
    reseal(&mut b);
    cases.push(("metadata-not-json".into(), b));
    cases.push((
        "overlapping-offsets".into(),
        edit_index(&valid, |e| {
            let o = e[0].offset;
            e[1].offset = o;
        }),
    ));
    cases.push((
        "offset-out-of-range".into(),
        edit_index(&valid, |e| e[0].offset = 1 << 40),
    ));
    cases.push((
        "misaligned-offset".into(),
        edit_index(&valid, |e| {
            let last = e.iter().max_by_key(|x| x.offset).unwrap().clone();
            for x in e.iter_mut() {
                if x.name == last.name {
                    x.offset += 1;
                }
            }
        }),
    ));
    cases.push((
        "unknown-dtype".into(),
        edit_index(&valid, |e| e[0].dtype = apr_core::dtype::GgmlType::IQ2_XXS),
    ));
    cases.push((
        "size-lies-about-shape".into(),
        edit_index(&valid, |e| e[0].shape[0] += 1),
    ));
    cases.push((
        "shape-overflows".into(),
        edit_index(&valid, |e| e[0].shape = vec![u64::MAX, 3]),
    ));
    cases.push((
        "duplicate-names".into(),
        edit_index(&valid, |e| {
            let n = e[0].name.clone();
            e[1].name = n;
        }),
    ));
    // The first entry's ndim byte follows its u16 name length, name and dtype byte.
    let mut b = valid.clone();
    let at = h.index_offset as usize;
    let name_len = usize::from(u16::from_le_bytes([b[at], b[at + 1]]));
    b[at + 2 + name_len + 1] = 9;
    reseal(&mut b);
    cases.push(("nine-dimensions".into(), b));
    // LZ4 frames that do not decode to their size are caught when the tensor is read.
    let lz4 = valid_apr(true);
    cases.push((
        "lz4-frame-lies-about-size".into(),
        edit_index(&lz4, |e| {
            // Claim twice the rows: the frame decodes short.
            e[0].shape[0] *= 2;
        }),
    ));
    let lz = Header::parse(&lz4).unwrap();
    let mut b = lz4.clone();
    let at = lz.data_offset as usize + 8;
    b[at..at + 8].copy_from_slice(&[0xff; 8]);
    reseal(&mut b);
    cases.push(("lz4-frame-corrupt".into(), b));
    cases
}

/// Broken SafeTensors files: (name, bytes).
pub fn safetensors_cases() -> Vec<(String, Vec<u8>)> {
    let valid = valid_safetensors();
    let n = u64_at(&valid, 0) as usize;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, at) in [
        ("empty", 0),
        ("in-length", 5),
        ("after-length", 8),
        ("in-header", 8 + n / 2),
        ("after-header", 8 + n),
        ("in-data", 8 + n + 100),
        ("last-byte", valid.len() - 1),
    ] {
        cases.push((format!("truncated-{what}"), valid[..at].to_vec()));
    }
    let with_header = |json: &str, data: usize| {
        let mut j = json.as_bytes().to_vec();
        j.resize(j.len().div_ceil(8) * 8, b' ');
        let mut b = (j.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(&j);
        b.resize(b.len() + data, 0);
        b
    };
    let mut b = valid.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("absurd-header-length".into(), b));
    let mut b = valid.clone();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    cases.push(("header-length-past-end".into(), b));
    cases.push(("header-not-json".into(), with_header("{\"a\": [1, 2", 0)));
    cases.push((
        "offsets-past-end".into(),
        with_header(
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        ),
    ));
    cases.push((
        "offsets-overlap".into(),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        ),
    ));
    cases.push((
        "shape-lies-about-size".into(),
        with_header(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            16,
        ),
    ));
    cases.push((
        "shape-overflows".into(),
        with_header(
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
            16,
        ),
    ));
    cases.push((
        "unknown-dtype".into(),
        with_header(
            r#"{"w":{"dtype":"Q9","shape":[4],"data_offsets":[0,16]}}"#,
            16,
        ),
    ));
    cases.push((
        "unsupported-dtype".into(),
        with_header(
            r#"{"w":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}}"#,
            4,
        ),
    ));
    cases.push((
        "apr-metadata-not-json".into(),
        with_header(
            r#"{"__metadata__":{"apr.metadata":"{nope"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ),
    ));
    cases.push((
        "apr-metadata-bad-type".into(),
        with_header(
            r#"{"__metadata__":{"apr.metadata":"{\"k\":{\"type\":\"u8\",\"value\":300}}"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ),
    ));
    cases
}
