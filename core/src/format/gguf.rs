//! GGUF, llama.cpp's model format: a zero-copy, fully validating reader.
//!
//! # Byte layout (all little-endian)
//! ```text
//! magic        4 bytes  "GGUF"
//! version      u32      2 or 3 (1 used u32 lengths and is not read)
//! tensor_count u64
//! kv_count     u64
//! kv           kv_count × { key: string, type: u32, value }
//! tensor info  tensor_count × { name: string, n_dims: u32, dims: n_dims × u64 (innermost first),
//!                               type: u32 (ggml type id), offset: u64 (from the data section) }
//! padding      to `general.alignment` (32 when absent)
//! data         tensor bytes, each tensor at its offset, each offset a multiple of the alignment
//!
//! string = u64 length + UTF-8 bytes (no terminator)
//! value  = u8 | i8 | u16 | i16 | u32 | i32 | f32 | bool (one byte, 0 or 1) | string
//!        | array { element type: u32, count: u64, elements } | u64 | i64 | f64
//! ```
//!
//! # Safety against hostile files
//! [`Gguf::parse`] walks the whole header, metadata and tensor table before it touches a tensor
//! byte, and every length or count is checked against the bytes that remain (and against
//! [`Limits`]) before it is used. Nothing is allocated from a size read off the file: strings and
//! arrays borrow the input, and the only growing collections are the metadata and tensor lists,
//! whose entries each consume file bytes. Errors name the byte offset or the tensor.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::dtype::{GgmlType, TypeId};

/// `"GGUF"` as the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

/// Caps on what a header may declare, on top of "it must fit in the file".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most tensors a file may declare.
    pub max_tensors: u64,
    /// Most metadata entries a file may declare.
    pub max_kv: u64,
    /// Longest key, in bytes (the GGUF spec allows 65535).
    pub max_key_len: u64,
    /// Deepest nesting of arrays inside arrays.
    pub max_array_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tensors: 1 << 20,
            max_kv: 1 << 20,
            max_key_len: 65_535,
            max_array_depth: 8,
        }
    }
}

/// Why a GGUF file was rejected. Offsets are absolute byte offsets in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic {found:02x?} at byte 0, expected \"GGUF\"")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A version other than 2 or 3.
    #[error("GGUF version {version} at byte 4 is not supported (only 2 and 3 are)")]
    UnsupportedVersion {
        /// The version read.
        version: u32,
    },
    /// The version reads as a byte-swapped 2 or 3: a big-endian file.
    #[error("big-endian GGUF (version bytes at byte 4) is not supported")]
    BigEndian,
    /// The file ends inside a field.
    #[error("truncated file: {what} at byte {offset} needs {need} bytes, only {have} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        need: u64,
        /// Bytes left in the file.
        have: u64,
    },
    /// A count larger than [`Limits`] allow.
    #[error("{what} {count} at byte {offset} is more than the limit of {limit}")]
    TooMany {
        /// What is counted.
        what: &'static str,
        /// The count read.
        count: u64,
        /// Where it was read.
        offset: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A count of entries that could not fit in the rest of the file, even at their smallest.
    #[error("{what} {count} at byte {offset} cannot fit in the {remaining} bytes left in the file")]
    CountExceedsFile {
        /// What is counted.
        what: &'static str,
        /// The count read.
        count: u64,
        /// Where it was read.
        offset: u64,
        /// Bytes left after the count.
        remaining: u64,
    },
    /// A string length longer than the rest of the file (or than the key limit).
    #[error("{what} length {len} at byte {offset} is more than the {limit} bytes allowed there")]
    LengthTooLarge {
        /// What the string is.
        what: &'static str,
        /// The length read.
        len: u64,
        /// Where it was read.
        offset: u64,
        /// The most allowed.
        limit: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// What the string is.
        what: &'static str,
        /// Where its bytes start.
        offset: u64,
    },
    /// A metadata value type id outside 0..=12.
    #[error("unknown metadata value type {id} at byte {offset}")]
    UnknownValueType {
        /// The id read.
        id: u32,
        /// Where it was read.
        offset: u64,
    },
    /// A bool byte other than 0 or 1.
    #[error("bool value {value} at byte {offset} is neither 0 nor 1")]
    BadBool {
        /// The byte read.
        value: u8,
        /// Where it was read.
        offset: u64,
    },
    /// Arrays nested deeper than [`Limits::max_array_depth`].
    #[error("arrays nested more than {limit} deep at byte {offset}")]
    ArrayTooDeep {
        /// Where the too-deep array starts.
        offset: u64,
        /// The limit.
        limit: u32,
    },
    /// The same key twice.
    #[error("metadata key '{key}' appears twice (again at byte {offset})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where the second copy starts.
        offset: u64,
    },
    /// A metadata value of the wrong type for its key.
    #[error("metadata '{key}' is {found}, expected {expected}")]
    WrongValueType {
        /// The key.
        key: String,
        /// The type it should have.
        expected: &'static str,
        /// The type it has.
        found: &'static str,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment {alignment} is not a power of two")]
    BadAlignment {
        /// The value read.
        alignment: u64,
    },
    /// More than [`MAX_DIMS`] dimensions.
    #[error("tensor '{tensor}': {n_dims} dimensions at byte {offset}, at most {MAX_DIMS} allowed")]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// The count read.
        n_dims: u32,
        /// Where it was read.
        offset: u64,
    },
    /// A tensor type id ggml never assigned.
    #[error("tensor '{tensor}': unknown ggml type id {id} at byte {offset}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// The id read.
        id: u32,
        /// Where it was read.
        offset: u64,
    },
    /// A tensor type ggml has removed.
    #[error("tensor '{tensor}': type {name} (id {id}) was removed from ggml and cannot be read")]
    RemovedTensorType {
        /// The tensor.
        tensor: String,
        /// The retired type's name.
        name: &'static str,
        /// Its id.
        id: u32,
    },
    /// A shape whose element count overflows, is zero-sized in a way ggml rejects, or does not
    /// split into whole blocks of its type.
    #[error("tensor '{tensor}': shape {dims:?} is invalid for {ty}: {reason}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// Its GGUF dims (innermost first).
        dims: Vec<u64>,
        /// Its type.
        ty: GgmlType,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor '{tensor}': offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// The tensor.
        tensor: String,
        /// Its offset within the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// Tensor bytes that run past the end of the file.
    #[error(
        "tensor '{tensor}': data at bytes {start}..{end} runs past the end of the file ({file_len} bytes)"
    )]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Absolute start of its data (may itself be past the end).
        start: u64,
        /// Absolute end of its data.
        end: u64,
        /// The file length.
        file_len: u64,
    },
    /// The same tensor name twice.
    #[error("tensor '{tensor}' appears twice in the tensor table")]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
    },
}

/// The type of a metadata value, numbered as in the GGUF spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The GGUF id of this type.
    pub const fn id(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// The spec's name of the type (`uint32`, `string`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::U16 => "uint16",
            Self::I16 => "int16",
            Self::U32 => "uint32",
            Self::I32 => "int32",
            Self::F32 => "float32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "uint64",
            Self::I64 => "int64",
            Self::F64 => "float64",
        }
    }

    /// Encoded size of a fixed-size value; `None` for strings and arrays.
    const fn fixed_size(self) -> Option<u64> {
        match self {
            Self::U8 | Self::I8 | Self::Bool => Some(1),
            Self::U16 | Self::I16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::String | Self::Array => None,
        }
    }

    /// The fewest bytes one encoded value of this type takes, used to bound counts.
    const fn min_size(self) -> u64 {
        match self.fixed_size() {
            Some(n) => n,
            None if matches!(self, Self::String) => 8,
            None => 12,
        }
    }
}

/// A metadata value, borrowing strings and array bodies from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(Array<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value's type.
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
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// Any integer that is non-negative, widened to u64.
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

    /// Any number, as f64.
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&Array<'a>> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::U8(v) => write!(f, "{v}"),
            Self::I8(v) => write!(f, "{v}"),
            Self::U16(v) => write!(f, "{v}"),
            Self::I16(v) => write!(f, "{v}"),
            Self::U32(v) => write!(f, "{v}"),
            Self::I32(v) => write!(f, "{v}"),
            Self::F32(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
            Self::String(v) => write!(f, "{v:?}"),
            Self::Array(a) => write!(f, "[{}; {}]", a.element_type().name(), a.len()),
            Self::U64(v) => write!(f, "{v}"),
            Self::I64(v) => write!(f, "{v}"),
            Self::F64(v) => write!(f, "{v}"),
        }
    }
}

/// A validated metadata array whose elements are decoded lazily from the file's bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Array<'a> {
    element: ValueType,
    len: usize,
    /// The encoded elements, exactly `len` of them.
    body: &'a [u8],
    /// Absolute offset of `body`, for nested decoding.
    offset: u64,
}

impl<'a> Array<'a> {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        self.element
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, decoded one by one.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            element: self.element,
            remaining: self.len,
            cursor: Cursor {
                bytes: self.body,
                pos: 0,
                base: self.offset,
            },
        }
    }
}

/// Iterator over an [`Array`]'s elements.
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    element: ValueType,
    remaining: usize,
    cursor: Cursor<'a>,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The body was fully validated when the file was parsed, so decoding cannot fail; if it
        // somehow did, the iterator ends rather than panicking.
        self.cursor.value(self.element, &Limits::default(), 0).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Number of dimensions in use (1..=4).
    pub n_dims: u32,
    /// Dimensions innermost first, as GGUF stores them; unused ones are 1.
    pub dims: [u64; MAX_DIMS as usize],
    /// The element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo<'_> {
    /// Dimensions innermost first, as stored in the file.
    pub fn gguf_dims(&self) -> &[u64] {
        self.dims.get(..self.n_dims as usize).unwrap_or(&self.dims)
    }

    /// The row-major shape, outermost first (the HF / SafeTensors order): GGUF `[896, 151936]` is
    /// `[151936, 896]`. Only the order differs; the data is not transposed.
    pub fn shape(&self) -> Vec<u64> {
        self.gguf_dims().iter().rev().copied().collect()
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        // Validated not to overflow at parse time.
        self.gguf_dims().iter().product()
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Gguf<'a> {
    version: u32,
    metadata: Vec<(&'a str, Value<'a>)>,
    tensors: Vec<TensorInfo<'a>>,
    alignment: u64,
    data_offset: u64,
    bytes: &'a [u8],
}

impl<'a> Gguf<'a> {
    /// Parses and validates a whole file with the default [`Limits`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        Self::parse_with_limits(bytes, &Limits::default())
    }

    /// Parses and validates a whole file. Every tensor's bytes are known to lie inside `bytes` when
    /// this returns `Ok`.
    pub fn parse_with_limits(bytes: &'a [u8], limits: &Limits) -> Result<Self, GgufError> {
        Self::parse_head(bytes, bytes.len() as u64, limits)
    }

    /// Parses a file of `file_len` bytes from its first bytes, `head`, which must hold the header
    /// and the tensor table; the tensors' bytes are checked against `file_len`, and
    /// [`Gguf::tensor_data`] is empty for those that lie beyond `head`. When `head` is too short
    /// the error is the one a file cut there would get.
    pub fn parse_head(head: &'a [u8], file_len: u64, limits: &Limits) -> Result<Self, GgufError> {
        let bytes = head;
        let mut cur = Cursor {
            bytes,
            pos: 0,
            base: 0,
        };
        let magic = cur.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = cur.u32("version")?;
        match version {
            2 | 3 => {}
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => return Err(GgufError::BigEndian),
            v => return Err(GgufError::UnsupportedVersion { version: v }),
        }
        let count_at = cur.offset();
        let tensor_count = cur.u64("tensor count")?;
        let kv_count = cur.u64("metadata count")?;
        // A key takes at least 8 (length) + 4 (type) + 1 (smallest value) bytes.
        cur.check_count("metadata count", kv_count, count_at + 8, 13, limits.max_kv)?;

        let mut metadata: Vec<(&'a str, Value<'a>)> = Vec::new();
        for _ in 0..kv_count {
            let key_at = cur.offset();
            let key = cur.string("metadata key", limits.max_key_len)?;
            let type_at = cur.offset();
            let type_id = cur.u32("metadata value type")?;
            let ty = ValueType::from_id(type_id).ok_or(GgufError::UnknownValueType {
                id: type_id,
                offset: type_at,
            })?;
            let value = cur.value(ty, limits, 0)?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(GgufError::DuplicateKey {
                    key: key.to_string(),
                    offset: key_at,
                });
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| *k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, Value::U32(a))) => {
                return Err(GgufError::BadAlignment {
                    alignment: (*a).into(),
                });
            }
            Some((key, other)) => {
                return Err(GgufError::WrongValueType {
                    key: key.to_string(),
                    expected: "uint32",
                    found: other.value_type().name(),
                });
            }
        };

        // A tensor entry takes at least 8 (name length) + 4 + 8 (one dim) + 4 + 8 bytes.
        cur.check_count(
            "tensor count",
            tensor_count,
            count_at,
            32,
            limits.max_tensors,
        )?;
        let mut tensors: Vec<TensorInfo<'a>> = Vec::new();
        for _ in 0..tensor_count {
            tensors.push(cur.tensor_info()?);
        }

        let data_offset = cur.offset().next_multiple_of(alignment);
        let mut names: Vec<&str> = tensors.iter().map(|t| t.name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(GgufError::DuplicateTensor {
                tensor: w[0].to_string(),
            });
        }
        for t in &tensors {
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::Misaligned {
                    tensor: t.name.to_string(),
                    offset: t.offset,
                    alignment,
                });
            }
            let start = data_offset.saturating_add(t.offset);
            let end = start.saturating_add(t.size);
            if end > file_len {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.to_string(),
                    start,
                    end,
                    file_len,
                });
            }
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            bytes,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> &[(&'a str, Value<'a>)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.metadata
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A string-valued key; `Ok(None)` when absent, an error when present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&'a str>, GgufError> {
        self.typed(key, "string", Value::as_str)
    }

    /// A non-negative integer key of any width.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "unsigned integer", Value::as_u64)
    }

    /// A numeric key of any type, as f64.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "number", Value::as_f64)
    }

    /// A numeric key as f32: exact for the `float32` values GGUF normally stores.
    #[allow(clippy::cast_possible_truncation)]
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.typed(key, "number", |v| match *v {
            Value::F32(x) => Some(x),
            _ => v.as_f64().map(|x| x as f32),
        })
    }

    /// An array-valued key.
    pub fn get_array(&self, key: &str) -> Result<Option<Array<'a>>, GgufError> {
        self.typed(key, "array", |v| v.as_array().copied())
    }

    fn typed<T>(
        &self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&Value<'a>) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => convert(v)
                .map(Some)
                .ok_or_else(|| GgufError::WrongValueType {
                    key: key.to_string(),
                    expected,
                    found: v.value_type().name(),
                }),
        }
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor of this file (empty when parsed from a head that ends before them).
    pub fn tensor_data(&self, tensor: &TensorInfo<'_>) -> &'a [u8] {
        let start = self.data_offset.saturating_add(tensor.offset);
        let end = start.saturating_add(tensor.size);
        // Bounds were validated in `parse`; an info from another file yields an empty slice.
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.bytes.get(s..e))
            .unwrap_or(&[])
    }

    /// The data alignment in force.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}

/// A bounds-checked reader over the file bytes that knows its absolute position.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Absolute offset of `bytes[0]` in the file.
    base: u64,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let have = self.remaining();
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.bytes.get(self.pos..self.pos.checked_add(n)?))
            .ok_or(GgufError::Truncated {
                what,
                offset: self.offset(),
                need: n,
                have,
            })?;
        self.pos += slice.len();
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Rejects a count that exceeds `cap`, or whose entries, each at least `min_size` bytes,
    /// could not fit in the bytes left.
    fn check_count(
        &self,
        what: &'static str,
        count: u64,
        offset: u64,
        min_size: u64,
        cap: u64,
    ) -> Result<(), GgufError> {
        if count > cap {
            return Err(GgufError::TooMany {
                what,
                count,
                offset,
                limit: cap,
            });
        }
        let remaining = self.remaining();
        if count > remaining / min_size {
            return Err(GgufError::CountExceedsFile {
                what,
                count,
                offset,
                remaining,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &'static str, max_len: u64) -> Result<&'a str, GgufError> {
        let len_at = self.offset();
        let len = self.u64(what)?;
        let limit = max_len.min(self.remaining());
        if len > limit {
            return Err(GgufError::LengthTooLarge {
                what,
                len,
                offset: len_at,
                limit,
            });
        }
        let at = self.offset();
        let bytes = self.take(len, what)?;
        core::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what, offset: at })
    }

    fn value(
        &mut self,
        ty: ValueType,
        limits: &Limits,
        depth: u32,
    ) -> Result<Value<'a>, GgufError> {
        const WHAT: &str = "metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(WHAT)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(WHAT)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(WHAT)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(WHAT)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(WHAT)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(WHAT)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(WHAT)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(WHAT)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(WHAT)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(WHAT)?)),
            ValueType::Bool => {
                let at = self.offset();
                match self.array::<1>(WHAT)? {
                    [0] => Value::Bool(false),
                    [1] => Value::Bool(true),
                    [value] => return Err(GgufError::BadBool { value, offset: at }),
                }
            }
            ValueType::String => Value::String(self.string("string value", u64::MAX)?),
            ValueType::Array => Value::Array(self.array_value(limits, depth)?),
        })
    }

    fn array_value(&mut self, limits: &Limits, depth: u32) -> Result<Array<'a>, GgufError> {
        let start = self.offset();
        if depth >= limits.max_array_depth {
            return Err(GgufError::ArrayTooDeep {
                offset: start,
                limit: limits.max_array_depth,
            });
        }
        let type_id = self.u32("array element type")?;
        let element = ValueType::from_id(type_id).ok_or(GgufError::UnknownValueType {
            id: type_id,
            offset: start,
        })?;
        let count_at = self.offset();
        let count = self.u64("array length")?;
        self.check_count(
            "array length",
            count,
            count_at,
            element.min_size(),
            u64::MAX,
        )?;
        let body_at = self.pos;
        match element.fixed_size() {
            // Fixed-size elements: one bounds check covers the body (bools are checked one by one
            // so that a bad byte is reported where it is).
            Some(size) if element != ValueType::Bool => {
                self.take(count * size, "array body")?;
            }
            _ => {
                for _ in 0..count {
                    self.value(element, limits, depth + 1)?;
                }
            }
        }
        let body = self.bytes.get(body_at..self.pos).unwrap_or(&[]);
        Ok(Array {
            element,
            len: usize::try_from(count).unwrap_or(usize::MAX),
            body,
            offset: self.base + body_at as u64,
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo<'a>, GgufError> {
        let name = self.string("tensor name", u64::MAX)?;
        let dims_at = self.offset();
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name.to_string(),
                n_dims,
                offset: dims_at,
            });
        }
        let mut dims = [1u64; MAX_DIMS as usize];
        for d in dims.iter_mut().take(n_dims as usize) {
            *d = self.u64("tensor dimension")?;
        }
        let type_at = self.offset();
        let type_id = self.u32("tensor type")?;
        let ty = match GgmlType::from_id(type_id) {
            TypeId::Known(ty) => ty,
            TypeId::Removed(removed) => {
                return Err(GgufError::RemovedTensorType {
                    tensor: name.to_string(),
                    name: removed,
                    id: type_id,
                });
            }
            TypeId::Unknown(id) => {
                return Err(GgufError::UnknownTensorType {
                    tensor: name.to_string(),
                    id,
                    offset: type_at,
                });
            }
        };
        let offset = self.u64("tensor offset")?;
        let size = tensor_size(name, &dims[..n_dims as usize], ty)?;
        Ok(TensorInfo {
            name,
            n_dims,
            dims,
            ty,
            offset,
            size,
        })
    }
}

/// Byte size of a tensor, checking the shape the way ggml's loader does.
fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |reason| GgufError::BadShape {
        tensor: name.to_string(),
        dims: dims.to_vec(),
        ty,
        reason,
    };
    // ggml keeps element counts in int64_t.
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok())
        .ok_or_else(|| bad("the element count overflows"))?;
    let row = dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(ty.block_size()) {
        return Err(bad("the row length is not a multiple of the block size"));
    }
    ty.bytes_for(elements)
        .ok_or_else(|| bad("the byte size overflows"))
}
