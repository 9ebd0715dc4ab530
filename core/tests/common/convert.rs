//! Converting in memory through the core's writers, verified as `apr convert --verify` does.
#![allow(dead_code)]

use std::io::Cursor;

use apr_core::convert::{self, Options, Quantize};
use apr_core::dtype::GgmlType;
use apr_core::format::Format;
use apr_core::format::apr::Compression;
use apr_core::format::model::ModelFile;
use apr_core::verify::verify;
use apr_core::write::apr::AprWriter;
use apr_core::write::gguf::GgufWriter;
use apr_core::write::safetensors::SafetensorsWriter;
use apr_core::write::{OutTensor, TensorSink};

/// Every type the converter writes for 2-D weights.
pub const MATRIX_TYPES: [GgmlType; 10] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Converts `src` in memory the way `apr rosetta convert` does on disk.
pub fn convert(
    src: &[u8],
    target: Format,
    quantize: Option<Quantize>,
    dtype: Option<GgmlType>,
    compression: Compression,
) -> Vec<u8> {
    let model = ModelFile::parse(src).unwrap();
    let opts = Options {
        target,
        quantize,
        dtype,
    };
    let plan = convert::plan(&model, &opts).unwrap();
    let meta = convert::output_metadata(&model, &plan, &opts);
    let outs: Vec<OutTensor> = plan.iter().map(|p| p.out.clone()).collect();
    let mut buf = Cursor::new(Vec::new());
    {
        let mut sink: Box<dyn TensorSink + '_> = match target {
            Format::Gguf => Box::new(GgufWriter::new(&mut buf, &meta, &outs, 32).unwrap()),
            Format::Safetensors => Box::new(
                SafetensorsWriter::new(&mut buf, convert::safetensors_metadata(&meta), &outs)
                    .unwrap(),
            ),
            Format::Apr => {
                let json = convert::apr_metadata_json(&meta, "test", model.format);
                Box::new(AprWriter::new(&mut buf, &json, &outs, compression, 3, true).unwrap())
            }
        };
        convert::write_all(
            &model,
            &plan,
            &mut *sink,
            &mut |_| {},
            &|| false,
            &mut convert::in_place,
        )
        .unwrap();
        sink.finish().unwrap();
    }
    let out = buf.into_inner();
    let back = ModelFile::parse(&out).unwrap();
    let report = verify(&model, &back, &mut |_| {}, &mut apr_core::verify::in_place).unwrap();
    let failed: Vec<_> = report.tensors.iter().filter(|t| !t.pass).collect();
    assert!(
        report.pass,
        "{target:?} {quantize:?} {dtype:?}: {:?} {failed:?}",
        report.problems
    );
    out
}
