//! `hcn quantize` (SPEC §3): an I8 store from any store. Per row `scale = max|x| / 127` (0 for an
//! all-zero row) and `q = round-half-to-even(x / scale)`, in F32 arithmetic
//! ([`crate::tensor::quantize_row`]); `ids` copied byte for byte (same dtype).
//!
//! Streaming: the input is validated and memory-mapped ([`ItemStore::load`]); the output's header
//! is written first (every size is known), then its tensors, the quantized rows in chunks of
//! [`CHUNK_ROWS`]. Memory: one chunk of rows and the `N` scales (4 bytes a row), never the
//! store. The file is written next to `output` under a temporary name and renamed over it at the
//! end, so `output` may be the input itself, and a failed run leaves no partial store behind.
//!
//! Layout: `ids` (8 bytes an element), then `scales` (4), then `vectors` (1), each naturally
//! aligned, the header padded so that `vectors` starts on a 4 KiB page (as `reference/export.py`
//! writes; `safetensors_file::padded_header`).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ItemStore;
use crate::error::{Error, Result};
use crate::safetensors_file::{padded_header, SafetensorsFile};
use crate::tensor::quantize_row;

/// Rows quantized and written per write call.
pub const CHUNK_ROWS: usize = 4096;

/// What [`quantize_store`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// `N`.
    pub rows: usize,
    /// `D`.
    pub dim: usize,
    /// The input's `vectors` dtype name (`F32`, `F16`, `BF16` or `I8`).
    pub from: &'static str,
    /// Bytes of the input's and the output's `vectors` tensors (the output's plus its `scales`).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Rows whose scale is 0 (all-zero rows, or rows too small for an F32 scale).
    pub zero_rows: usize,
    /// Largest `|x − scale · q|` over the store, in the input's units (at most `scale / 2` per
    /// row, with `scale = max|x| / 127`).
    pub max_abs_error: f64,
}

/// Writes `input` (any SPEC §3 store) quantized to I8 at `output` (replaced atomically).
pub fn quantize_store(input: &Path, output: &Path) -> Result<QuantizeReport> {
    let store = ItemStore::load(input)?;
    // The raw `ids` tensor, to copy as stored (the loader has checked it: [N], U64 or I64, unique).
    let file = SafetensorsFile::open(input)?;
    let ids = file
        .get("ids")
        .map(|t| (t.dtype.to_string(), file.bytes(t)));
    let (rows, dim) = (store.len(), store.dim());

    let tmp = temp_path(output);
    let result = write(&store, ids.as_ref().map(|(d, b)| (d.as_str(), *b)), &tmp);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, output).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io {
            path: output.to_path_buf(),
            source,
        }
    })?;
    debug_assert_eq!((report.rows, report.dim), (rows, dim));
    Ok(report)
}

/// `output` + `.tmp-<pid>`, in the same directory (so the rename stays on one file system).
fn temp_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    output.with_file_name(name)
}

fn write(store: &ItemStore, ids: Option<(&str, &[u8])>, path: &Path) -> Result<QuantizeReport> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let (rows, dim) = (store.len(), store.dim());
    let too_big = || Error::Incompatible(format!("{rows} × {dim} does not fit in memory sizes"));
    let vectors_len = rows.checked_mul(dim).ok_or_else(too_big)?;
    let scales_len = rows.checked_mul(4).ok_or_else(too_big)?;
    let ids_len = ids.map_or(0, |(_, b)| b.len());

    // Header: ids, scales, vectors, contiguous from offset 0 (safetensors' rule), padded with
    // spaces so that the vectors start page-aligned (`padded_header`).
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut entry = |name: &str, dtype: &str, shape: Vec<usize>, len: usize| {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    };
    if let Some((dtype, _)) = ids {
        entry("ids", dtype, vec![rows], ids_len);
    }
    entry("scales", "F32", vec![rows], scales_len);
    entry("vectors", "I8", vec![rows, dim], vectors_len);
    let head = padded_header(&serde_json::Value::Object(header), ids_len + scales_len);

    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&head).map_err(io)?;
    if let Some((_, bytes)) = ids {
        w.write_all(bytes).map_err(io)?;
    }
    // The scales are known only once every row is quantized: leave their place, write the rows,
    // then come back.
    let scales_at = w.stream_position().map_err(io)?;
    w.seek(SeekFrom::Current(scales_len as i64)).map_err(io)?;

    let mut scales = Vec::with_capacity(scales_len);
    let mut x = vec![0.0f32; dim];
    let mut q = vec![0i8; dim];
    let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_ROWS.min(rows.max(1)) * dim);
    let (mut zero_rows, mut max_abs_error) = (0usize, 0.0f64);
    for start in (0..rows).step_by(CHUNK_ROWS) {
        chunk.clear();
        for r in start..(start + CHUNK_ROWS).min(rows) {
            store.vectors.row_into(r, &mut x);
            let scale = quantize_row(&x, &mut q);
            zero_rows += usize::from(scale == 0.0);
            for (&v, &qi) in x.iter().zip(&q) {
                let e = (f64::from(v) - f64::from(scale) * f64::from(qi)).abs();
                max_abs_error = max_abs_error.max(e);
            }
            scales.extend_from_slice(&scale.to_le_bytes());
            chunk.extend(q.iter().map(|&v| v as u8));
        }
        w.write_all(&chunk).map_err(io)?;
    }
    w.seek(SeekFrom::Start(scales_at)).map_err(io)?;
    w.write_all(&scales).map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(QuantizeReport {
        rows,
        dim,
        from: store.vectors.dtype().name(),
        bytes_in: store.vectors.bytes().len() as u64,
        bytes_out: (vectors_len + scales_len) as u64,
        zero_rows,
        max_abs_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hcn-quantize-{}-{name}", std::process::id()))
    }

    #[test]
    fn quantizes_a_store_and_keeps_ids() {
        let input = temp("in.safetensors");
        let output = temp("out.safetensors");
        crate::synth::write_store(&input, 37, 9, DType::F16, 5).unwrap();
        let report = quantize_store(&input, &output).unwrap();
        assert_eq!((report.rows, report.dim, report.from), (37, 9, "F16"));
        let a = ItemStore::load(&input).unwrap();
        let b = ItemStore::load(&output).unwrap();
        assert_eq!(b.vectors.dtype(), DType::I8);
        assert_eq!(a.row_ids(), b.row_ids());
        assert_eq!(a.has_ids(), b.has_ids());
        let (mut x, mut y, mut q) = (vec![0.0; 9], vec![0.0; 9], vec![0i8; 9]);
        for r in 0..37 {
            a.vectors.row_into(r, &mut x);
            let scale = quantize_row(&x, &mut q);
            assert_eq!(b.vectors.row_scale(r), Some(scale));
            let stored: Vec<i8> = b.vectors.row_bytes(r).iter().map(|&v| v as i8).collect();
            assert_eq!(stored, q);
            b.vectors.row_into(r, &mut y);
            for (u, v) in x.iter().zip(&y) {
                assert!((u - v).abs() <= scale * 0.5 * 1.0001, "row {r}: {u} vs {v}");
            }
        }
        // Quantizing in place (output = input) works: the rename leaves the mapping alone.
        quantize_store(&output, &output).unwrap();
        let c = ItemStore::load(&output).unwrap();
        assert_eq!(c.len(), 37);
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&output);
    }
}
