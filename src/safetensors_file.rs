//! The safetensors container, shared by the model loader (SPEC §2) and the store loader (SPEC §3):
//! memory-maps a file and parses and validates its header, so that every tensor the callers see
//! lies inside the file, has a byte size that matches its dtype and shape, and does not overlap
//! another tensor.
//!
//! We parse the header ourselves rather than through `safetensors::SafeTensors::read_metadata`:
//! the checks are the same (8-byte little-endian header length, at most 100 MB of UTF-8 JSON,
//! tensors covering the data buffer contiguously from offset 0 with no overlap and no hole, byte
//! sizes equal to `product(shape) × dtype size` without overflow), but the crate's errors do not
//! always say which tensor is at fault, and it silently keeps the last of two entries with the same
//! name. Here every problem is an [`Error::Format`] whose reason names the tensor. Nothing in this
//! module panics on any input; a file of any bytes gives `Ok` or an error.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Bytes of the little-endian u64 that opens a safetensors file.
const LEN_BYTES: usize = 8;
/// Where the files this crate writes put their main tensor (a store's `vectors`): on a page
/// boundary, so that every row of a power-of-two size up to 4 KiB lies in whole cache lines of one
/// page (a 256-byte F16 row read at random is then 4 lines and one page walk, not 5 lines and
/// sometimes two). Readers do not rely on it: the format promises no alignment.
pub(crate) const DATA_ALIGN: usize = 4096;

/// A header to write: the length and the JSON of `header`, padded with spaces (which the format
/// allows) so that the tensor at data offset `at` starts [`DATA_ALIGN`]-aligned in the file — or,
/// where `at` is not a multiple of 8, `at % 8` bytes past that, so that the data itself always
/// starts 8-byte aligned (every tensor naturally aligned, as the Python writer keeps them).
pub(crate) fn padded_header(header: &Value, at: usize) -> Vec<u8> {
    let mut text = header.to_string().into_bytes();
    let at = at - at % 8;
    let pad = (DATA_ALIGN - (LEN_BYTES + text.len() + at) % DATA_ALIGN) % DATA_ALIGN;
    text.resize(text.len() + pad, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out
}
/// The safetensors crate refuses headers larger than this; so do we (a corrupt length must not make
/// us parse gigabytes as JSON).
const MAX_HEADER: u64 = 100_000_000;
/// The header key that holds string metadata rather than a tensor.
const METADATA_KEY: &str = "__metadata__";

/// One tensor as the header describes it, after validation.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the tensor's data in the mapping (header included).
    pub start: usize,
    /// Byte length (`product(shape) × dtype size`, checked).
    pub len: usize,
}

/// A mapped, validated safetensors file.
pub(crate) struct SafetensorsFile {
    pub path: PathBuf,
    pub map: Arc<Mmap>,
    metadata: HashMap<String, String>,
    /// In file order (increasing data offset; zero-sized tensors at one offset by name).
    tensors: Vec<RawTensor>,
}

impl SafetensorsFile {
    /// Maps `path` and validates its container.
    ///
    /// The file must not be modified or truncated while the returned value (or any `Arc` of its
    /// mapping, e.g. inside a `MappedMatrix`) is alive: the tensors are read straight from the
    /// mapping, and a truncated file makes those reads fault (SIGBUS).
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        // Reject files too short to hold the header length before mapping: mapping a zero-length
        // file is not portable, and the message is clearer.
        if file_len < LEN_BYTES as u64 {
            return Err(format_err(
                path,
                format!(
                    "file is {file_len} bytes, too short for the {LEN_BYTES}-byte header length"
                ),
            ));
        }
        // SAFETY: `Mmap::map` is unsafe because the mapping aliases a file that another process
        // could modify or truncate while we hold it, which would change or invalidate memory we
        // treat as immutable. The engine's contract (documented on `Model::load`,
        // `ItemStore::load` and `open` above) is that model and store files are not modified while
        // loaded: they are write-once artifacts of an export. We never write through the mapping.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Arc::new(map))
    }

    /// Validates the container held in `map`.
    fn parse(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        let (metadata, tensors) = parse_header(&map).map_err(|reason| format_err(path, reason))?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            metadata,
            tensors,
        })
    }

    /// A `__metadata__` value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[RawTensor] {
        &self.tensors
    }

    /// The tensor named `name`, if the file has it.
    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's data bytes (validated to lie inside the mapping at parse time).
    pub fn bytes(&self, t: &RawTensor) -> &[u8] {
        // `parse_header` proved start + len <= map.len() for every tensor it returned, and tensors
        // are only handed out by this file, so the range is in bounds.
        &self.map[t.start..t.start + t.len]
    }
}

fn format_err(path: &Path, reason: String) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason,
    }
}

/// The header's top-level entries in the order written, duplicates kept (so we can reject them;
/// deserializing into a map would silently keep the last).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The three fields of a tensor's header entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    dtype: safetensors::Dtype,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

type Parsed = (HashMap<String, String>, Vec<RawTensor>);

/// Parses and validates the header of `buf` (the whole file). The error is the reason string.
fn parse_header(buf: &[u8]) -> std::result::Result<Parsed, String> {
    let Some(len_bytes) = buf.first_chunk::<LEN_BYTES>() else {
        return Err(format!(
            "file is {} bytes, too short for the {LEN_BYTES}-byte header length",
            buf.len()
        ));
    };
    let n = u64::from_le_bytes(*len_bytes);
    let rest = (buf.len() - LEN_BYTES) as u64;
    if n > MAX_HEADER {
        return Err(format!(
            "header length {n} is larger than the {MAX_HEADER}-byte limit (file is {} bytes)",
            buf.len()
        ));
    }
    if n > rest {
        return Err(format!(
            "header length {n} runs past the end of the file ({rest} bytes follow the length; truncated?)"
        ));
    }
    // n <= rest < usize::MAX, so the conversion is exact.
    let data_start = LEN_BYTES + n as usize;
    let header = std::str::from_utf8(&buf[LEN_BYTES..data_start])
        .map_err(|e| format!("header is not UTF-8: {e}"))?;
    let entries: Entries =
        serde_json::from_str(header).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let data_len = buf.len() - data_start;

    let mut metadata = None;
    let mut tensors: Vec<RawTensor> = Vec::with_capacity(entries.0.len());
    let mut seen = std::collections::HashSet::new();
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(format!("header names `{name}` twice"));
        }
        if name == METADATA_KEY {
            metadata = Some(parse_metadata(value)?);
            continue;
        }
        tensors.push(parse_entry(&name, value, data_start, data_len)?);
    }

    // The data buffer must be covered exactly: in offset order, each tensor starts where the
    // previous one ended, and the last ends at the end of the file (safetensors' own rule).
    tensors.sort_by(|a, b| (a.start, a.len, &a.name).cmp(&(b.start, b.len, &b.name)));
    let mut end = data_start;
    let mut prev: Option<&str> = None;
    for t in &tensors {
        if t.start < end {
            return Err(format!(
                "tensor `{}`: data_offsets [{}, {}] overlap tensor `{}` (ends at {})",
                t.name,
                t.start - data_start,
                t.start - data_start + t.len,
                prev.unwrap_or("?"),
                end - data_start
            ));
        }
        if t.start > end {
            return Err(format!(
                "tensor `{}`: data_offsets start at {} but the previous tensor ends at {}; \
                 the data buffer must have no holes",
                t.name,
                t.start - data_start,
                end - data_start
            ));
        }
        end = t.start + t.len;
        prev = Some(&t.name);
    }
    if end != buf.len() {
        return Err(format!(
            "{} bytes after the last tensor's data are not claimed by any tensor",
            buf.len() - end
        ));
    }
    Ok((metadata.unwrap_or_default(), tensors))
}

fn parse_metadata(value: Value) -> std::result::Result<HashMap<String, String>, String> {
    let Value::Object(obj) = value else {
        return Err(format!(
            "`{METADATA_KEY}` must be an object of strings, found {}",
            kind(&value)
        ));
    };
    obj.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(format!(
                "`{METADATA_KEY}` key `{k}` must be a string, found {}",
                kind(&other)
            )),
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates one tensor's header entry on its own: sizes, overflow, bounds.
fn parse_entry(
    name: &str,
    value: Value,
    data_start: usize,
    data_len: usize,
) -> std::result::Result<RawTensor, String> {
    let e: Entry = serde_json::from_value(value).map_err(|err| {
        format!("tensor `{name}`: bad header entry (want dtype, shape, data_offsets): {err}")
    })?;
    let shape_text = fmt_shape_u64(&e.shape);
    let (s, t) = e.data_offsets;
    if t < s {
        return Err(format!(
            "tensor `{name}`: data_offsets [{s}, {t}] end before they start"
        ));
    }
    if t > data_len as u64 {
        return Err(format!(
            "tensor `{name}`: data_offsets [{s}, {t}] run past the end of the data ({data_len} bytes; truncated?)"
        ));
    }
    let overflow = || {
        format!(
            "tensor `{name}`: shape {shape_text} of {} has too many elements (size overflows)",
            e.dtype
        )
    };
    let shape = e
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| overflow()))
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    let elements = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    let bits = elements
        .checked_mul(e.dtype.bitsize())
        .ok_or_else(overflow)?;
    if bits % 8 != 0 {
        return Err(format!(
            "tensor `{name}`: shape {shape_text} of sub-byte dtype {} does not fill whole bytes",
            e.dtype
        ));
    }
    let need = bits / 8;
    // t <= data_len, so both offsets fit usize.
    let (s, t) = (s as usize, t as usize);
    if t - s != need {
        return Err(format!(
            "tensor `{name}`: shape {shape_text} of {} needs {need} bytes but data_offsets [{s}, {t}] span {}",
            e.dtype,
            t - s
        ));
    }
    Ok(RawTensor {
        name: name.to_string(),
        dtype: e.dtype,
        shape,
        start: data_start + s,
        len: need,
    })
}

/// `[a, b, c]`, the way error messages print shapes.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn fmt_shape_u64(shape: &[u64]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    /// The padded header parses, keeps the data 8-byte aligned, and puts the tensor at `at` on a
    /// page (or `at % 8` past one).
    #[test]
    fn padded_headers_align_the_main_tensor_and_still_parse() {
        for (len, at) in [
            (0usize, 0usize),
            (8, 8),
            (4, 12),
            (1000, 4096),
            (12, 0),
            (5000, 20),
        ] {
            let mut h = serde_json::Map::new();
            if at > 0 {
                h.insert(
                    "a".into(),
                    serde_json::json!({"dtype": "U8", "shape": [at], "data_offsets": [0, at]}),
                );
            }
            h.insert(
                "vectors".into(),
                serde_json::json!({"dtype": "U8", "shape": [len], "data_offsets": [at, at + len]}),
            );
            let head = padded_header(&Value::Object(h), at);
            let start = head.len();
            assert_eq!(start % 8, 0, "at {at}");
            assert_eq!((start + at) % DATA_ALIGN, at % 8, "at {at}");
            let mut bytes = head;
            bytes.resize(start + at + len, 7);
            let (_, tensors) = parse_header(&bytes).unwrap();
            let v = tensors.iter().find(|t| t.name == "vectors").unwrap();
            assert_eq!((v.start, v.len), (start + at, len));
        }
    }

    #[test]
    fn accepts_a_contiguous_file_and_orders_by_offset() {
        let h = r#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},
                    "a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},
                    "__metadata__":{"k":"v"}}"#;
        let (meta, ts) = parse_header(&file(h, &[0; 8])).unwrap();
        assert_eq!(meta.get("k").map(String::as_str), Some("v"));
        let names: Vec<_> = ts.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn rejects_duplicates_holes_and_trailing_bytes() {
        let dup = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                      "a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(parse_header(&file(dup, &[0; 8]))
            .unwrap_err()
            .contains("twice"));
        let hole = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(parse_header(&file(hole, &[0; 8]))
            .unwrap_err()
            .contains("holes"));
        let trail = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(parse_header(&file(trail, &[0; 8]))
            .unwrap_err()
            .contains("not claimed"));
        let sub = r#"{"a":{"dtype":"F4","shape":[1],"data_offsets":[0,0]}}"#;
        assert!(parse_header(&file(sub, &[]))
            .unwrap_err()
            .contains("whole bytes"));
    }
}
