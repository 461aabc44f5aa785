//! Loading and validating a store file (SPEC §3). The container checks live in
//! [`crate::safetensors_file`]; here: `vectors` `[N, D]` (F32/F16/BF16, `D ≥ 1`, every value finite,
//! scanned once in place; or I8 with no value −128), `scales` `[N]` F32 (finite, ≥ 0) required
//! with I8 and forbidden otherwise, optional `ids` `[N]` (U64, or I64 read as the same 64 bits,
//! unique), and nothing else. `__metadata__` is ignored. The vectors and scales stay in the
//! mapping; only the id index is built in memory.
//!
//! I64 ids: a PyTorch exporter has no unsigned 64-bit tensor, so it writes ids as I64. We take the
//! stored 64 bits as the u64 id (two's complement), so an I64 `-1` is id `2^64 - 1`, exactly the id
//! a U64 file would store for the same bits, and the same one a request writes as
//! `18446744073709551615`.

use std::path::Path;

use super::{BuildIdHasher, IdIndex, ItemStore};
use crate::error::{Error, Result};
use crate::safetensors_file::{fmt_shape, SafetensorsFile};
use crate::tensor::{first_non_finite, widen, DType, MappedMatrix};

const VECTORS: &str = "vectors";
const SCALES: &str = "scales";
const IDS: &str = "ids";

pub(super) fn load(path: &Path) -> Result<ItemStore> {
    let file = SafetensorsFile::open(path)?;
    let err = |tensor: &str, reason: String| Error::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        reason,
    };

    // SPEC §3 lets the token and candidate stores be one file, which is still just these two
    // tensors; anything else means the wrong file was passed (e.g. the model).
    if let Some(t) = file
        .tensors()
        .iter()
        .find(|t| t.name != VECTORS && t.name != IDS && t.name != SCALES)
    {
        return Err(err(
            &t.name,
            "not a store tensor (a store holds only `vectors`, `scales` with I8 vectors, and \
             optionally `ids`)"
                .into(),
        ));
    }

    let v = file
        .get(VECTORS)
        .ok_or_else(|| err(VECTORS, "missing (required, shape [N, D])".into()))?;
    let dtype = DType::from_safetensors_store(v.dtype).ok_or_else(|| {
        err(
            VECTORS,
            format!("dtype {}, expected F32, F16, BF16 or I8", v.dtype),
        )
    })?;
    let (rows, cols) = match v.shape.as_slice() {
        [n, d] if *d >= 1 => (*n, *d),
        _ => {
            return Err(err(
                VECTORS,
                format!("shape {}, expected [N, D] with D >= 1", fmt_shape(&v.shape)),
            ))
        }
    };
    if u32::try_from(rows).is_err() {
        return Err(err(
            VECTORS,
            format!("{rows} rows; a store holds at most {} items", u32::MAX),
        ));
    }
    let bytes = file.bytes(v);
    if dtype == DType::I8 {
        // SPEC §3: q ∈ [-127, 127], so that -q is always stored too.
        if let Some(i) = bytes.iter().position(|&b| b == 0x80) {
            return Err(err(
                VECTORS,
                format!(
                    "row {}, column {} is -128; I8 values must lie in [-127, 127]",
                    i / cols,
                    i % cols
                ),
            ));
        }
    } else if let Some(i) = first_non_finite(dtype, bytes) {
        let size = dtype.size();
        let value = widen(dtype, &bytes[i * size..(i + 1) * size])[0];
        return Err(err(
            VECTORS,
            format!(
                "row {}, column {} is {value}; every value must be finite",
                i / cols,
                i % cols
            ),
        ));
    }

    let index = match file.get(IDS) {
        None => IdIndex::RowNumber,
        Some(t) => {
            match t.dtype {
                safetensors::Dtype::U64 | safetensors::Dtype::I64 => {}
                other => return Err(err(IDS, format!("dtype {other}, expected U64 or I64"))),
            }
            if t.shape != [rows] {
                return Err(err(
                    IDS,
                    format!(
                        "shape {}, expected [{rows}] (one id per row of `vectors`)",
                        fmt_shape(&t.shape)
                    ),
                ));
            }
            let mut map =
                std::collections::HashMap::with_capacity_and_hasher(rows, BuildIdHasher::default());
            // safetensors data is not aligned, so read each id from its bytes.
            for (row, c) in file.bytes(t).chunks_exact(8).enumerate() {
                let id = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                // row < rows <= u32::MAX (checked above).
                if let Some(first) = map.insert(id, row as u32) {
                    return Err(err(
                        IDS,
                        format!("id {id} appears twice, at rows {first} and {row}"),
                    ));
                }
            }
            IdIndex::Map(map)
        }
    };

    let scales =
        check_scales(&file, dtype, rows, bytes, cols).map_err(|reason| err(SCALES, reason))?;
    let vectors = match scales {
        Some(s) => MappedMatrix::new_i8(file.map.clone(), v.start, rows, cols, s),
        None => MappedMatrix::new(file.map.clone(), v.start, rows, cols, dtype),
    }
    // The container check proved the tensors lie inside the mapping.
    .ok_or_else(|| err(VECTORS, "data does not lie inside the file".into()))?;
    Ok(ItemStore {
        vectors,
        index,
        path: path.to_path_buf(),
    })
}

/// SPEC §3's `scales`: required with I8 `vectors` (`[N]` F32, every value finite and ≥ 0) and
/// forbidden otherwise. Returns the byte offset of `scales[0]` for I8; the reason otherwise.
/// Like a float store's values, every row value `scale · q` must be a finite F32 (compute is
/// F32): a scale above `f32::MAX / 127` is refused when the row's largest `|q|` makes it
/// overflow (`hcn quantize` never writes one: its scales are at most `f32::MAX / 127`).
fn check_scales(
    file: &SafetensorsFile,
    dtype: DType,
    rows: usize,
    vectors: &[u8],
    cols: usize,
) -> std::result::Result<Option<usize>, String> {
    let t = match (file.get(SCALES), dtype) {
        (None, DType::I8) => {
            return Err(format!(
                "missing (required with I8 `vectors`: shape [{rows}] F32, row i is scales[i] · vectors[i])"
            ))
        }
        (None, _) => return Ok(None),
        (Some(_), DType::F32 | DType::F16 | DType::BF16) => {
            return Err(format!(
                "present with {} `vectors`; only I8 vectors have scales",
                dtype.name()
            ))
        }
        (Some(t), DType::I8) => t,
    };
    if t.dtype != safetensors::Dtype::F32 {
        return Err(format!("dtype {}, expected F32", t.dtype));
    }
    if t.shape != [rows] {
        return Err(format!(
            "shape {}, expected [{rows}] (one scale per row of `vectors`)",
            fmt_shape(&t.shape)
        ));
    }
    for (row, c) in file.bytes(t).chunks_exact(4).enumerate() {
        let s = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        check_row_scale(row, s, &vectors[row * cols..(row + 1) * cols])?;
    }
    Ok(Some(t.start))
}

/// SPEC §3's rule for one I8 row's scale `s` (row `row`, values `q`): finite and ≥ 0, and
/// `s · q` a finite F32 for the row's largest `|q|`. The reason when not. Shared by the loader
/// and the CUDA backends' upload check.
pub(crate) fn check_row_scale(row: usize, s: f32, q: &[u8]) -> std::result::Result<(), String> {
    // `-0.0 >= 0.0`: a negative zero is a zero scale, not a negative one.
    if !(s.is_finite() && s >= 0.0) {
        return Err(format!(
            "row {row} is {s}; every scale must be finite and >= 0"
        ));
    }
    if s > f32::MAX / 127.0 {
        let max = q
            .iter()
            .map(|&b| (b as i8).unsigned_abs())
            .max()
            .unwrap_or(0);
        if !(s * f32::from(max)).is_finite() {
            return Err(format!(
                "row {row} is {s}; times the row's largest |q| ({max}) it overflows F32 \
                 (every row value scale · q must be a finite F32)"
            ));
        }
    }
    Ok(())
}
