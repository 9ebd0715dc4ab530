//! Getting a model's bytes into the worker's memory: a `File`/`Blob` read in slices, or a URL
//! read as a stream. Either way the bytes land once, in one buffer sized up front; each slice
//! can also go to the cache as it passes.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, FileReaderSync, ReadableStreamDefaultReader, Response};

use std::cell::RefCell;

use apr_core::format::Format;
use apr_core::format::apr::{Footer, FooterCrc};
use apr_core::format::model::{ModelFile, Tensor};

use super::cache::CacheWriter;
use super::{post, scope};
use crate::envelope::describe;
use crate::protocol::{Event, Task};
use crate::state::{human_bytes, url_file_name};

/// Bytes per slice read from a `Blob`.
const SLICE: u64 = 8 << 20;

/// A buffer of `size` bytes, or a message saying it cannot be had. wasm32 gives one page at most
/// 4 GiB of memory and one buffer at most 2 GiB.
pub(crate) fn buffer(size: u64, name: &str) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let fits = usize::try_from(size)
        .ok()
        .filter(|&n| n <= isize::MAX as usize)
        .is_some_and(|n| buf.try_reserve_exact(n).is_ok());
    if fits {
        Ok(buf)
    } else {
        Err(too_large(name, &human_bytes(size)))
    }
}

/// Why a model cannot be held in this tab's memory.
fn too_large(name: &str, size: &str) -> String {
    format!(
        "{name} is {size}: too large for this browser tab's memory (WebAssembly gives a page at most \
         2 GB for one file). Use a quantized GGUF or APR (the 0.5B model at Q4_K_M is 491 MB), or \
         the `apr` command line."
    )
}

/// Reads all of `blob` into memory in slices, reporting progress under `task` and handing each
/// slice to `cache`.
pub(crate) fn read_blob(
    blob: &Blob,
    name: &str,
    task: Task,
    mut cache: Option<&mut CacheWriter>,
) -> Result<Vec<u8>, String> {
    let size = blob.size() as u64;
    let mut buf = buffer(size, name)?;
    let reader = FileReaderSync::new().map_err(|e| describe(&e))?;
    let mut done = 0u64;
    while done < size {
        let end = (done + SLICE).min(size);
        let part = blob
            .slice_with_f64_and_f64(done as f64, end as f64)
            .map_err(|e| describe(&e))?;
        let bytes = reader
            .read_as_array_buffer(&part)
            .map_err(|e| format!("cannot read {name}: {}", describe(&e)))?;
        let array = Uint8Array::new(&bytes);
        let start = buf.len();
        buf.resize(start + array.length() as usize, 0);
        array.copy_to(&mut buf[start..]);
        if let Some(c) = cache.as_deref_mut() {
            c.write(&buf[start..]);
        }
        done = buf.len() as u64;
        if array.length() == 0 {
            return Err(format!("{name} ended early, at {done} of {size} bytes"));
        }
        post(
            &Event::Progress {
                task,
                done,
                total: size,
            },
            None,
        );
    }
    Ok(buf)
}

/// A `File`/`Blob` read piece by piece, for work that needs one tensor at a time (conversion,
/// verification): its head is parsed, then each tensor's bytes are read while in use.
pub(crate) struct BlobFile<'b> {
    blob: &'b Blob,
    name: &'b str,
    size: u64,
    reader: FileReaderSync,
    /// The one buffer tensors are read into, sized once for the largest ([`BlobFile::parse`]):
    /// buffers of each tensor's size would leave holes that the next, larger one cannot use.
    scratch: RefCell<Vec<u8>>,
    /// An APR file's footer CRC (computed over the whole file when opened; ignored otherwise).
    pub(crate) footer: Footer,
}

/// Where a head's parse starts: room for the real model's metadata and tensor table (about
/// 6 MB); a larger head is read by doubling.
const FIRST_HEAD: u64 = 8 << 20;

impl<'b> BlobFile<'b> {
    pub(crate) fn open(blob: &'b Blob, name: &'b str) -> Result<Self, String> {
        let mut file = Self {
            blob,
            name,
            size: blob.size() as u64,
            reader: FileReaderSync::new().map_err(|e| describe(&e))?,
            scratch: RefCell::new(Vec::new()),
            footer: Footer {
                stored: 0,
                computed: 0,
            },
        };
        let magic = file.read(0, file.size.min(8))?;
        if matches!(Format::detect(&magic), Ok(Format::Apr)) && file.size >= 4 {
            let body = file.size - 4;
            let mut crc = FooterCrc::new();
            let mut at = 0;
            while at < body {
                let end = (at + SLICE).min(body);
                crc.update(&file.read(at, end)?);
                at = end;
            }
            let last = file.read(body, file.size)?;
            file.footer = crc.finish([last[0], last[1], last[2], last[3]]);
        }
        Ok(file)
    }

    /// Bytes `start..end` of the file.
    pub(crate) fn read(&self, start: u64, end: u64) -> Result<Vec<u8>, String> {
        let mut buf = buffer(end.saturating_sub(start), self.name)?;
        self.read_into(start, end, &mut buf)?;
        Ok(buf)
    }

    /// Bytes `start..end` of the file into `buf`, which is cleared first.
    fn read_into(&self, start: u64, end: u64, buf: &mut Vec<u8>) -> Result<(), String> {
        buf.clear();
        let len = end.saturating_sub(start);
        if usize::try_from(len).map_or(true, |n| buf.try_reserve_exact(n).is_err()) {
            return Err(too_large(self.name, &human_bytes(len)));
        }
        let mut at = start;
        while at < end {
            let stop = (at + SLICE).min(end);
            let part = self
                .blob
                .slice_with_f64_and_f64(at as f64, stop as f64)
                .map_err(|e| describe(&e))?;
            let bytes = self
                .reader
                .read_as_array_buffer(&part)
                .map_err(|e| format!("cannot read {}: {}", self.name, describe(&e)))?;
            let array = Uint8Array::new(&bytes);
            if array.length() == 0 {
                return Err(format!("{} ended early, at byte {at}", self.name));
            }
            let from = buf.len();
            buf.resize(from + array.length() as usize, 0);
            array.copy_to(&mut buf[from..]);
            at += u64::from(array.length());
        }
        Ok(())
    }

    /// The head [`ModelFile::parse_head`] needs (errors are the whole file's, with its name).
    pub(crate) fn head(&self) -> Result<Vec<u8>, String> {
        ModelFile::read_head(self.size, self.footer, FIRST_HEAD, &mut |n| {
            self.read(0, n).map_err(apr_core::Error::Invalid)
        })
        .map_err(|e| format!("{}: {e}", self.name))
    }

    /// Parses `head` (from [`BlobFile::head`]), and sizes the buffer for its largest tensor.
    pub(crate) fn parse<'h>(&self, head: &'h [u8]) -> Result<ModelFile<'h>, String> {
        let model = ModelFile::parse_head(head, self.size, self.footer)
            .map_err(|e| format!("{}: {e}", self.name))?;
        let largest = model
            .tensors
            .iter()
            .map(|t| t.stored_size)
            .max()
            .unwrap_or(0);
        let mut scratch = self.scratch.borrow_mut();
        *scratch = buffer(largest, self.name)?;
        Ok(model)
    }

    /// Runs `work` on `t` with its bytes read into the buffer.
    pub(crate) fn around(
        &self,
        t: &Tensor<'_>,
        work: &mut dyn FnMut(&Tensor<'_>) -> apr_core::Result<()>,
    ) -> apr_core::Result<()> {
        if t.is_loaded() {
            return work(t);
        }
        let mut bytes = self.scratch.take();
        let end = t.offset.saturating_add(t.stored_size);
        let done = self
            .read_into(t.offset, end, &mut bytes)
            .map_err(apr_core::Error::Invalid)
            .and_then(|()| work(&t.with_data(&bytes)?));
        self.scratch.replace(bytes);
        done
    }
}

/// Downloads `url` into memory as a stream, reporting progress and handing each chunk to
/// `cache`. Returns the bytes.
pub(crate) async fn fetch(
    url: &str,
    mut cache: Option<&mut CacheWriter>,
) -> Result<Vec<u8>, String> {
    let response: Response = JsFuture::from(scope().fetch_with_str(url))
        .await
        .map_err(|e| format!("cannot download {url}: {}", describe(&e)))?
        .dyn_into()
        .map_err(|_| format!("cannot download {url}: not an HTTP response"))?;
    if !response.ok() {
        return Err(format!(
            "cannot download {url}: HTTP {} {}",
            response.status(),
            response.status_text()
        ));
    }
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let name = url_file_name(url);
    let mut buf = buffer(total, name)?;
    let body = response
        .body()
        .ok_or_else(|| format!("{url} answered without a body"))?;
    let reader: ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|_| "the browser gave no stream reader".to_string())?;
    let mut last_report = 0u64;
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| format!("the download of {url} broke off: {}", describe(&e)))?;
        let done = Reflect::get(&chunk, &JsValue::from_str("done"))
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if done {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &JsValue::from_str("value"))
            .map_err(|e| describe(&e))?
            .dyn_into()
            .map_err(|_| "the download gave something other than bytes".to_string())?;
        let n = value.length() as usize;
        let start = buf.len();
        if buf.try_reserve(n).is_err() {
            return Err(too_large(
                name,
                &format!("over {}", human_bytes(start as u64)),
            ));
        }
        buf.resize(start + n, 0);
        value.copy_to(&mut buf[start..]);
        if let Some(c) = cache.as_deref_mut() {
            c.write(&buf[start..]);
        }
        let got = buf.len() as u64;
        if got - last_report >= SLICE || got == total {
            last_report = got;
            post(
                &Event::Progress {
                    task: Task::Load,
                    done: got,
                    total,
                },
                None,
            );
        }
    }
    if total > 0 && buf.len() as u64 != total {
        return Err(format!(
            "the download of {url} ended at {} of {total} bytes",
            buf.len()
        ));
    }
    Ok(buf)
}
