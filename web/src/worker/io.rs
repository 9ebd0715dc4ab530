//! Getting a model's bytes into the worker's memory: a `File`/`Blob` read in slices, or a URL
//! read as a stream. Either way the bytes land once, in one buffer sized up front; each slice
//! can also go to the cache as it passes.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, FileReaderSync, ReadableStreamDefaultReader, Response};

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
