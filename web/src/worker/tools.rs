//! Converting and inspecting a dropped file with the same core code as `apr rosetta convert`,
//! `apr inspect` and `apr check`. A conversion streams its output into a file in the origin
//! private file system, which the page then downloads; without that file system it collects the
//! output in memory.

use std::io::{self, BufWriter, Cursor, Seek, SeekFrom, Write};

use apr_core::check::{Status, check};
use apr_core::convert::{self, FileOutput, Options, Quantize};
use apr_core::dtype::GgmlType;
use apr_core::format::Format;
use apr_core::format::apr::Compression;
use apr_core::info::ModelInfo;
use apr_core::verify::verify;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Blob, BlobPropertyBag, File, FileSystemFileHandle, FileSystemReadWriteOptions,
    FileSystemSyncAccessHandle,
};

use super::{cache, fail, io as wio, now_ms, post};
use crate::envelope::describe;
use crate::protocol::{
    CompressionChoice, ConvertOptions, Event, StageRow, TargetFormat, Task, VerifySummary,
    output_name,
};

/// What the CLI buffers its output with; the bytes do not depend on it.
const WRITE_BUFFER: usize = 256 << 10;
/// Where conversions are written before download.
const OUT_DIR: &str = "apr-converted";

/// The core's options for the page's choices, or what is wrong with them (the CLI's messages).
pub(crate) fn options(choice: &ConvertOptions) -> Result<(Options, Compression, i32), String> {
    let target = match choice.target {
        TargetFormat::Gguf => Format::Gguf,
        TargetFormat::Safetensors => Format::Safetensors,
        TargetFormat::Apr => Format::Apr,
    };
    let compression = match choice.compression {
        CompressionChoice::None => Compression::None,
        CompressionChoice::Lz4 => Compression::Lz4,
        CompressionChoice::Zstd => Compression::Zstd,
    };
    if compression != Compression::None && target != Format::Apr {
        return Err("compression applies to APR output only".into());
    }
    let quantize = match choice.quantize.as_deref().filter(|q| !q.is_empty()) {
        Some(q) => Some(Quantize::parse(q).ok_or_else(|| format!("unknown quantization {q}"))?),
        None => None,
    };
    let dtype = match choice.dtype.as_deref().filter(|d| !d.is_empty()) {
        None => None,
        Some("f32") => Some(GgmlType::F32),
        Some("f16") => Some(GgmlType::F16),
        Some("bf16") => Some(GgmlType::BF16),
        Some(other) => return Err(format!("unknown dtype {other}: use f32, f16 or bf16")),
    };
    let level = if choice.optimize_size {
        convert::ZSTD_LEVEL_MAX
    } else {
        convert::ZSTD_LEVEL
    };
    Ok((
        Options {
            target,
            quantize,
            dtype,
        },
        compression,
        level,
    ))
}

/// Converts `file` and sends the result (or the reason it failed).
pub(crate) async fn convert(id: u32, name: &str, choice: &ConvertOptions, file: &Blob) {
    if let Err(why) = convert_inner(id, name, choice, file).await {
        fail(Task::Convert, why);
    }
}

async fn convert_inner(
    id: u32,
    name: &str,
    choice: &ConvertOptions,
    file: &Blob,
) -> Result<(), String> {
    let (opts, compression, zstd_level) = options(choice)?;
    // The input is read a tensor at a time: the head, then each tensor while it is converted.
    let input = wio::BlobFile::open(file, name)?;
    let head = input.head()?;
    let model = input.parse(&head)?;
    let plan = convert::plan(&model, &opts).map_err(|e| e.to_string())?;
    let out_name = output_name(name, choice.target);
    let total: u64 = model
        .tensors
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.raw_size()));
    let mut done = 0u64;
    let mut last = 0u64;
    let mut progress = |n: u64| {
        done += n;
        if done - last >= 4 << 20 || done == total {
            last = done;
            post(
                &Event::Progress {
                    task: Task::Convert,
                    done,
                    total,
                },
                None,
            );
        }
    };
    let output = FileOutput {
        compression,
        zstd_level,
        source_name: name,
    };
    let started = now_ms();
    let mut sink = Output::open(&out_name).await;
    convert::write_file(
        BufWriter::with_capacity(WRITE_BUFFER, &mut sink),
        &model,
        &plan,
        &opts,
        &output,
        &mut progress,
        &|| false,
        &mut |t, work| input.around(t, work),
    )
    .map_err(|e| format!("converting {name}: {e}"))?;
    let seconds = (now_ms() - started) / 1000.0;
    let result = sink.finish(&out_name).await?;
    let verify_summary = if choice.verify {
        let output = wio::BlobFile::open(&result, &out_name)?;
        let back = output.head()?;
        let written = output.parse(&back)?;
        let total: u64 = written
            .tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.raw_size()));
        let mut checked = 0u64;
        let report = verify(
            &model,
            &written,
            &mut |n| {
                checked += n;
                post(
                    &Event::Progress {
                        task: Task::Verify,
                        done: checked,
                        total,
                    },
                    None,
                );
            },
            &mut |s, o, work| input.around(s, &mut |s| output.around(o, &mut |o| work(s, o))),
        )
        .map_err(|e| e.to_string())?;
        Some(VerifySummary {
            pass: report.pass,
            tensors: report.tensors.len(),
            first_failure: (!report.pass).then(|| {
                report.problems.first().cloned().unwrap_or_else(|| {
                    report
                        .tensors
                        .iter()
                        .find(|t| !t.pass)
                        .map(|t| format!("{} differs beyond its tolerance", t.name))
                        .unwrap_or_default()
                })
            }),
        })
    } else {
        None
    };
    post(
        &Event::Converted {
            id,
            name: out_name,
            bytes: result.size() as u64,
            seconds,
            tensors: plan.len(),
            verify: verify_summary,
            memory: wasm_memory(),
        },
        Some(&result),
    );
    Ok(())
}

/// The size of this worker's WebAssembly memory.
fn wasm_memory() -> u64 {
    wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .ok()
        .and_then(|m| m.buffer().dyn_into::<js_sys::ArrayBuffer>().ok())
        .map_or(0, |b| u64::from(b.byte_length()))
}

/// Where a conversion goes: a file in the origin private file system, or memory.
enum Output {
    Disk {
        access: FileSystemSyncAccessHandle,
        handle: FileSystemFileHandle,
        at: u64,
        len: u64,
    },
    Memory(Cursor<Vec<u8>>),
}

impl Output {
    async fn open(name: &str) -> Self {
        match Self::open_disk(name).await {
            Ok(o) => o,
            Err(_) => Output::Memory(Cursor::new(Vec::new())),
        }
    }

    async fn open_disk(name: &str) -> Result<Self, String> {
        // Only the newest conversion is kept: the page has its download by then.
        let dir = cache::folder(OUT_DIR).await?;
        let handle = cache::file_handle(&dir, name, true).await?;
        let access: FileSystemSyncAccessHandle = JsFuture::from(handle.create_sync_access_handle())
            .await
            .map_err(|e| describe(&e))?
            .unchecked_into();
        access.truncate_with_f64(0.0).map_err(|e| describe(&e))?;
        Ok(Output::Disk {
            access,
            handle,
            at: 0,
            len: 0,
        })
    }

    /// The finished output as a `File`/`Blob` for the page.
    async fn finish(self, name: &str) -> Result<Blob, String> {
        match self {
            Output::Disk { access, handle, .. } => {
                let flushed = access.flush();
                access.close();
                flushed.map_err(|e| format!("cannot save {name}: {}", describe(&e)))?;
                let file: File = JsFuture::from(handle.get_file())
                    .await
                    .map_err(|e| describe(&e))?
                    .unchecked_into();
                Ok(file.into())
            }
            Output::Memory(cursor) => {
                let bytes = cursor.into_inner();
                let array = js_sys::Uint8Array::from(bytes.as_slice());
                let parts = js_sys::Array::of1(&array);
                let options = BlobPropertyBag::new();
                options.set_type("application/octet-stream");
                Blob::new_with_u8_array_sequence_and_options(&parts, &options)
                    .map_err(|e| describe(&e))
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Disk {
                access, at, len, ..
            } => {
                let options = FileSystemReadWriteOptions::new();
                options.set_at(*at as f64);
                let n = access
                    .write_with_u8_array_and_options(buf, &options)
                    .map_err(|e| io::Error::other(describe(&e)))? as u64;
                if n == 0 && !buf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the disk took nothing (is it full?)",
                    ));
                }
                *at += n;
                *len = (*len).max(*at);
                Ok(n as usize)
            }
            Output::Memory(c) => c.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Output {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Output::Disk { at, len, .. } => {
                let target = match pos {
                    SeekFrom::Start(p) => Some(p),
                    SeekFrom::End(d) => len.checked_add_signed(d),
                    SeekFrom::Current(d) => at.checked_add_signed(d),
                };
                *at = target.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
                })?;
                Ok(*at)
            }
            Output::Memory(c) => c.seek(pos),
        }
    }
}

/// `apr inspect` and `apr check` for a dropped file.
pub(crate) fn inspect(name: &str, file: &Blob) {
    let bytes = match wio::read_blob(file, name, Task::Inspect, None) {
        Ok(b) => b,
        Err(why) => return fail(Task::Inspect, why),
    };
    let info = ModelInfo::from_bytes(&bytes, false).ok().map(Box::new);
    let report = check(&bytes, &|_| {});
    let stages = report
        .stages
        .iter()
        .map(|s| StageRow {
            number: s.number,
            name: s.name.to_string(),
            status: match s.status {
                Status::Pass => "pass",
                Status::Fail => "fail",
                Status::Skip => "skip",
            }
            .to_string(),
            detail: s.detail.clone(),
        })
        .collect();
    post(
        &Event::Inspected {
            name: name.to_string(),
            info,
            stages,
            pass: report.pass,
        },
        None,
    );
}
