//! Owned, typed model metadata keyed as GGUF keys them (`general.architecture`,
//! `qwen2.block_count`, `tokenizer.ggml.tokens`, ...), whatever file it came from.
//!
//! GGUF stores it natively. SafeTensors and APR carry the same entries as typed JSON
//! ([`Metadata::to_json`]), so a conversion through any chain of formats keeps every key and its
//! exact type.

use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value as Json, json};

use crate::format::gguf::{Gguf, Value, ValueType};

/// An f32 as the f64 with the same shortest decimal form (1e-6, not 9.99999997e-7), for JSON
/// read by tools that parse f64.
pub fn f32_json(v: f32) -> f64 {
    alloc::format!("{v}").parse().unwrap_or(f64::from(v))
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Elements all of type `item`.
    Array(ValueType, Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
            Self::Array(..) => ValueType::Array,
        }
    }

    /// Copies a value out of a GGUF file.
    pub fn from_gguf(value: &Value<'_>) -> Self {
        match *value {
            Value::U8(v) => Self::U8(v),
            Value::I8(v) => Self::I8(v),
            Value::U16(v) => Self::U16(v),
            Value::I16(v) => Self::I16(v),
            Value::U32(v) => Self::U32(v),
            Value::I32(v) => Self::I32(v),
            Value::F32(v) => Self::F32(v),
            Value::Bool(v) => Self::Bool(v),
            Value::String(v) => Self::String(v.to_owned()),
            Value::U64(v) => Self::U64(v),
            Value::I64(v) => Self::I64(v),
            Value::F64(v) => Self::F64(v),
            Value::Array(a) => Self::Array(
                a.element_type(),
                a.iter().map(|v| Self::from_gguf(&v)).collect(),
            ),
        }
    }

    /// Any non-negative integer, widened.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(_, v) => Some(v),
            _ => None,
        }
    }

    fn to_plain_json(&self) -> Json {
        fn float(v: f64) -> Json {
            if v.is_finite() {
                json!(v)
            } else if v.is_nan() {
                json!("nan")
            } else if v > 0.0 {
                json!("inf")
            } else {
                json!("-inf")
            }
        }
        match self {
            Self::U8(v) => json!(v),
            Self::I8(v) => json!(v),
            Self::U16(v) => json!(v),
            Self::I16(v) => json!(v),
            Self::U32(v) => json!(v),
            Self::I32(v) => json!(v),
            Self::F32(v) => float(f64::from(*v)),
            Self::Bool(v) => json!(v),
            Self::String(v) => json!(v),
            Self::U64(v) => json!(v),
            Self::I64(v) => json!(v),
            Self::F64(v) => float(*v),
            Self::Array(..) => self.to_json(),
        }
    }

    /// `{"type": "u32", "value": 24}`; arrays are `{"type": "array", "items": "string",
    /// "value": [...]}` with plain elements (nested arrays typed again).
    pub fn to_json(&self) -> Json {
        match self {
            Self::Array(item, values) => json!({
                "type": "array",
                "items": item.json_name(),
                "value": values.iter().map(Self::to_plain_json).collect::<Vec<_>>(),
            }),
            other => {
                json!({ "type": other.value_type().json_name(), "value": other.to_plain_json() })
            }
        }
    }

    /// The inverse of [`MetaValue::to_json`].
    pub fn from_json(json: &Json) -> Result<Self, String> {
        let obj = json.as_object().ok_or("a typed value must be an object")?;
        let ty = obj
            .get("type")
            .and_then(Json::as_str)
            .ok_or("a typed value needs a \"type\" string")?;
        let ty =
            ValueType::from_json_name(ty).ok_or_else(|| alloc::format!("unknown type {ty:?}"))?;
        let value = obj.get("value").ok_or("a typed value needs a \"value\"")?;
        if ty == ValueType::Array {
            let items = obj
                .get("items")
                .and_then(Json::as_str)
                .and_then(ValueType::from_json_name)
                .ok_or("an array needs a known \"items\" type")?;
            let values = value
                .as_array()
                .ok_or("an array's value must be a JSON array")?;
            let values = values
                .iter()
                .map(|v| {
                    if items == ValueType::Array {
                        Self::from_json(v)
                    } else {
                        Self::from_plain_json(items, v)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Self::Array(items, values));
        }
        Self::from_plain_json(ty, value)
    }

    fn from_plain_json(ty: ValueType, v: &Json) -> Result<Self, String> {
        let bad = || alloc::format!("{v} is not a valid {}", ty.json_name());
        let int = |v: &Json| v.as_i64().ok_or_else(bad);
        let float = |v: &Json| -> Result<f64, String> {
            match v {
                Json::String(s) if s == "nan" => Ok(f64::NAN),
                Json::String(s) if s == "inf" => Ok(f64::INFINITY),
                Json::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
                _ => v.as_f64().ok_or_else(bad),
            }
        };
        Ok(match ty {
            ValueType::U8 => Self::U8(int(v)?.try_into().map_err(|_| bad())?),
            ValueType::I8 => Self::I8(int(v)?.try_into().map_err(|_| bad())?),
            ValueType::U16 => Self::U16(int(v)?.try_into().map_err(|_| bad())?),
            ValueType::I16 => Self::I16(int(v)?.try_into().map_err(|_| bad())?),
            ValueType::U32 => Self::U32(int(v)?.try_into().map_err(|_| bad())?),
            ValueType::I32 => Self::I32(int(v)?.try_into().map_err(|_| bad())?),
            ValueType::U64 => Self::U64(v.as_u64().ok_or_else(bad)?),
            ValueType::I64 => Self::I64(int(v)?),
            #[allow(clippy::cast_possible_truncation)]
            ValueType::F32 => Self::F32(float(v)? as f32),
            ValueType::F64 => Self::F64(float(v)?),
            ValueType::Bool => Self::Bool(v.as_bool().ok_or_else(bad)?),
            ValueType::String => Self::String(v.as_str().ok_or_else(bad)?.to_string()),
            ValueType::Array => Self::from_json(v)?,
        })
    }
}

impl ValueType {
    /// The lower-case name used in typed JSON.
    pub const fn json_name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }

    /// The inverse of [`ValueType::json_name`].
    pub fn from_json_name(name: &str) -> Option<Self> {
        Some(match name {
            "u8" => Self::U8,
            "i8" => Self::I8,
            "u16" => Self::U16,
            "i16" => Self::I16,
            "u32" => Self::U32,
            "i32" => Self::I32,
            "f32" => Self::F32,
            "bool" => Self::Bool,
            "string" => Self::String,
            "array" => Self::Array,
            "u64" => Self::U64,
            "i64" => Self::I64,
            "f64" => Self::F64,
            _ => return None,
        })
    }
}

/// The architecture-scoped keys (`{arch}.KEY`) a runnable model needs, and that a conversion must
/// carry over unchanged.
pub const HYPERPARAMETERS: [&str; 8] = [
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "rope.freq_base",
    "attention.layer_norm_rms_epsilon",
];

/// Ordered key/value metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
}

impl Metadata {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies every entry of a GGUF file.
    pub fn from_gguf(gguf: &Gguf<'_>) -> Self {
        Self {
            entries: gguf
                .metadata()
                .iter()
                .map(|(k, v)| ((*k).to_string(), MetaValue::from_gguf(v)))
                .collect(),
        }
    }

    /// The entries in order.
    pub fn entries(&self) -> &[(String, MetaValue)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing its value in place or appending it.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// An integer value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    /// A float value.
    #[allow(clippy::cast_possible_truncation)]
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(MetaValue::as_f64).map(|v| v as f32)
    }

    /// The text of the token whose id `key` holds (`tokenizer.ggml.eos_token_id` -> `<|im_end|>`).
    pub fn token_text(&self, key: &str) -> Option<&str> {
        let id = usize::try_from(self.get_u64(key)?).ok()?;
        self.get("tokenizer.ggml.tokens")?
            .as_array()?
            .get(id)?
            .as_str()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// An architecture-scoped key: `arch_key("block_count")` reads `qwen2.block_count`.
    pub fn arch(&self, key: &str) -> Option<&MetaValue> {
        let arch = self.architecture()?;
        self.get(&[arch, ".", key].concat())
    }

    /// An architecture-scoped integer.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        self.arch(key).and_then(MetaValue::as_u64)
    }

    /// An architecture-scoped float.
    #[allow(clippy::cast_possible_truncation)]
    pub fn arch_f32(&self, key: &str) -> Option<f32> {
        self.arch(key).and_then(MetaValue::as_f64).map(|v| v as f32)
    }

    /// The vocabulary size: `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub fn vocab_size(&self) -> Option<u64> {
        self.arch_u64("vocab_size").or_else(|| {
            self.get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(|a| a.len() as u64)
        })
    }

    /// The typed JSON object `{key: typed value}` in entry order.
    pub fn to_json(&self) -> Json {
        let mut map = Map::new();
        for (k, v) in &self.entries {
            map.insert(k.clone(), v.to_json());
        }
        Json::Object(map)
    }

    /// The inverse of [`Metadata::to_json`].
    pub fn from_json(json: &Json) -> Result<Self, String> {
        let map = json.as_object().ok_or("metadata must be a JSON object")?;
        let entries = map
            .iter()
            .map(|(k, v)| {
                MetaValue::from_json(v)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| alloc::format!("metadata key {k:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { entries })
    }
}
