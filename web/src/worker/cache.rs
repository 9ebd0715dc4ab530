//! The model cache in the origin private file system (OPFS): one file per model in the
//! `apr-models` folder, and `index.json` listing the complete ones. A model is written while it
//! loads and enters the index only once every byte is on disk, so an interrupted download never
//! passes for a cached model.

use js_sys::{Function, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    File, FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetFileOptions,
    FileSystemReadWriteOptions, FileSystemSyncAccessHandle,
};

use super::{post, scope};
use crate::envelope::describe;
use crate::protocol::{CacheEntry, Event};

const DIR: &str = "apr-models";
const INDEX: &str = "index.json";

/// Whether this browser gives workers the OPFS with synchronous access handles.
pub(crate) fn available() -> bool {
    let global: JsValue = scope().into();
    let has = |object: &JsValue, key: &str| {
        Reflect::get(object, &JsValue::from_str(key)).is_ok_and(|v| !v.is_undefined())
    };
    let storage = Reflect::get(&scope().navigator(), &JsValue::from_str("storage"))
        .unwrap_or(JsValue::UNDEFINED);
    has(&global, "FileSystemSyncAccessHandle")
        && !storage.is_undefined()
        && Reflect::get(&storage, &JsValue::from_str("getDirectory"))
            .is_ok_and(|f| f.is_instance_of::<Function>())
}

async fn await_js(promise: js_sys::Promise) -> Result<JsValue, String> {
    JsFuture::from(promise).await.map_err(|e| describe(&e))
}

async fn dir() -> Result<FileSystemDirectoryHandle, String> {
    folder(DIR).await
}

/// A folder of the origin private file system, made when missing.
pub(crate) async fn folder(name: &str) -> Result<FileSystemDirectoryHandle, String> {
    if !available() {
        return Err("this browser has no origin private file system".into());
    }
    let root: FileSystemDirectoryHandle = await_js(scope().navigator().storage().get_directory())
        .await?
        .unchecked_into();
    let options = web_sys::FileSystemGetDirectoryOptions::new();
    options.set_create(true);
    Ok(
        await_js(root.get_directory_handle_with_options(name, &options))
            .await?
            .unchecked_into(),
    )
}

pub(crate) async fn file_handle(
    dir: &FileSystemDirectoryHandle,
    name: &str,
    create: bool,
) -> Result<FileSystemFileHandle, String> {
    let options = FileSystemGetFileOptions::new();
    options.set_create(create);
    Ok(await_js(dir.get_file_handle_with_options(name, &options))
        .await?
        .unchecked_into())
}

/// The complete entries. A missing or unreadable index is an empty cache.
async fn entries(dir: &FileSystemDirectoryHandle) -> Vec<CacheEntry> {
    let Ok(handle) = file_handle(dir, INDEX, false).await else {
        return Vec::new();
    };
    let Ok(file) = await_js(handle.get_file()).await else {
        return Vec::new();
    };
    let file: File = file.unchecked_into();
    let text = await_js(file.text())
        .await
        .ok()
        .and_then(|t| t.as_string())
        .unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

async fn write_entries(dir: &FileSystemDirectoryHandle, list: &[CacheEntry]) -> Result<(), String> {
    let json = serde_json::to_vec(list).map_err(|e| e.to_string())?;
    let handle = file_handle(dir, INDEX, true).await?;
    let access: FileSystemSyncAccessHandle = await_js(handle.create_sync_access_handle())
        .await?
        .unchecked_into();
    let result = (|| {
        access.truncate_with_f64(0.0)?;
        let options = FileSystemReadWriteOptions::new();
        options.set_at(0.0);
        access.write_with_u8_array_and_options(&json, &options)?;
        access.flush()
    })()
    .map_err(|e| describe(&e));
    access.close();
    result
}

/// Sends the page the cache's entries.
pub(crate) async fn report() {
    let list = match dir().await {
        Ok(d) => entries(&d).await,
        Err(_) => Vec::new(),
    };
    post(&Event::Cache { entries: list }, None);
}

/// A cached model's entry and file, when it is complete in the cache.
pub(crate) async fn open(key: &str) -> Option<(CacheEntry, File)> {
    let dir = dir().await.ok()?;
    let entry = entries(&dir).await.into_iter().find(|e| e.key == key)?;
    let handle = file_handle(&dir, key, false).await.ok()?;
    let file: File = await_js(handle.get_file()).await.ok()?.unchecked_into();
    (file.size() as u64 == entry.bytes).then_some((entry, file))
}

/// Deletes one entry, or all of them.
pub(crate) async fn remove(key: Option<&str>) -> Result<(), String> {
    let dir = dir().await?;
    let mut list = entries(&dir).await;
    let doomed: Vec<String> = list
        .iter()
        .filter(|e| key.is_none_or(|k| e.key == k))
        .map(|e| e.key.clone())
        .collect();
    list.retain(|e| !doomed.contains(&e.key));
    write_entries(&dir, &list).await?;
    for k in doomed {
        // Already gone is fine.
        let _ = await_js(dir.remove_entry(&k)).await;
    }
    Ok(())
}

/// Writes a model into the cache as it loads.
pub(crate) struct CacheWriter {
    dir: FileSystemDirectoryHandle,
    access: FileSystemSyncAccessHandle,
    at: f64,
    entry: CacheEntry,
    failed: Option<String>,
}

impl CacheWriter {
    /// Starts the file for `entry` (its `bytes` are filled in on commit).
    pub(crate) async fn create(entry: CacheEntry) -> Result<Self, String> {
        let dir = dir().await?;
        // Out of the index first: until committed, this key is not a cached model.
        let mut list = entries(&dir).await;
        if list.iter().any(|e| e.key == entry.key) {
            list.retain(|e| e.key != entry.key);
            write_entries(&dir, &list).await?;
        }
        let handle = file_handle(&dir, &entry.key, true).await?;
        let access: FileSystemSyncAccessHandle = await_js(handle.create_sync_access_handle())
            .await?
            .unchecked_into();
        access.truncate_with_f64(0.0).map_err(|e| describe(&e))?;
        Ok(Self {
            dir,
            access,
            at: 0.0,
            entry,
            failed: None,
        })
    }

    /// Appends `bytes`. A failure (a full disk, say) is kept and reported at [`Self::commit`];
    /// the load itself goes on.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let options = FileSystemReadWriteOptions::new();
        options.set_at(self.at);
        match self.access.write_with_u8_array_and_options(bytes, &options) {
            Ok(n) if n as usize == bytes.len() => self.at += n,
            Ok(n) => {
                self.failed = Some(format!(
                    "the disk took {n} of {} bytes (is it full?)",
                    bytes.len()
                ));
            }
            Err(e) => self.failed = Some(describe(&e)),
        }
    }

    /// Finishes the file and lists it.
    pub(crate) async fn commit(mut self) -> Result<CacheEntry, String> {
        let flushed = self.access.flush().map_err(|e| describe(&e));
        self.access.close();
        if let Some(why) = self.failed.take().or(flushed.err()) {
            let _ = await_js(self.dir.remove_entry(&self.entry.key)).await;
            return Err(format!("the model could not be cached: {why}"));
        }
        self.entry.bytes = self.at as u64;
        let mut list = entries(&self.dir).await;
        list.retain(|e| e.key != self.entry.key);
        list.push(self.entry.clone());
        write_entries(&self.dir, &list).await?;
        Ok(self.entry)
    }

    /// Drops the partial file.
    pub(crate) async fn abandon(self) {
        self.access.close();
        let _ = await_js(self.dir.remove_entry(&self.entry.key)).await;
    }
}
