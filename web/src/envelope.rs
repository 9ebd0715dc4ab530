//! How a protocol message travels through `postMessage`: `{ json: "<serde JSON>", file?: Blob }`.
//! The JSON is one of [`crate::protocol`]'s enums; a model file rides beside it as a `File` or
//! `Blob`, which the structured clone passes by reference, never by copying its bytes.

use js_sys::{Object, Reflect};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::Blob;

/// Packs `message` (and `file`) for `postMessage`.
pub fn pack<T: Serialize>(message: &T, file: Option<&Blob>) -> Result<JsValue, String> {
    let json = serde_json::to_string(message).map_err(|e| format!("cannot encode: {e}"))?;
    let object = Object::new();
    set(&object, "json", &JsValue::from_str(&json))?;
    if let Some(file) = file {
        set(&object, "file", file)?;
    }
    Ok(object.into())
}

/// Unpacks what `postMessage` delivered: the message and the attached file, if any.
pub fn unpack<T: DeserializeOwned>(data: &JsValue) -> Result<(T, Option<Blob>), String> {
    let json = Reflect::get(data, &JsValue::from_str("json"))
        .ok()
        .and_then(|v| v.as_string())
        .ok_or_else(|| "a message without its JSON".to_string())?;
    let message = serde_json::from_str(&json).map_err(|e| format!("a malformed message: {e}"))?;
    let file = Reflect::get(data, &JsValue::from_str("file"))
        .ok()
        .and_then(|v| v.dyn_into::<Blob>().ok());
    Ok((message, file))
}

fn set(object: &Object, key: &str, value: &JsValue) -> Result<(), String> {
    Reflect::set(object, &JsValue::from_str(key), value)
        .map(|_| ())
        .map_err(|e| format!("cannot build a message: {e:?}"))
}

/// A JavaScript exception as text for people.
pub fn describe(error: &JsValue) -> String {
    if let Some(e) = error.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    error.as_string().unwrap_or_else(|| format!("{error:?}"))
}
