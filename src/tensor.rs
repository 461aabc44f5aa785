//! Stored tensors: the three storage dtypes SPEC allows and a row-major matrix that lives inside a
//! memory-mapped file. Compute is always F32; F16/BF16 values are widened exactly when read.
//! Rows are read with unaligned loads: safetensors does not promise any alignment of tensor data.

use std::sync::Arc;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use memmap2::Mmap;

/// Storage dtype of a tensor (SPEC §2, §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    /// Maps a safetensors dtype to ours; `None` for dtypes SPEC does not allow for float tensors.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
}

/// Widens `bytes` (little-endian elements of `dtype`) into `out`. `bytes.len()` must be
/// `out.len() * dtype.size()`; this is the one place stored values become F32.
#[inline]
pub fn widen_into(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            // Aligned (the usual case): half's slice conversion uses F16C/NEON where present,
            // eight or more values per instruction; per-value calls re-check the CPU each time.
            Ok(halves) if cfg!(target_endian = "little") => halves.convert_to_f32_slice(out),
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        },
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
    }
}

/// Asks the CPU to start loading the cache lines of `bytes` (a hint: no effect on results).
/// Random rows of a large mapping each cost a DRAM round trip; issuing all of a gather's loads
/// first overlaps them. x86-64: `prefetcht0`; aarch64: `prfm pldl1keep` (inline assembly: the
/// intrinsic is not stable); nothing elsewhere.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[inline(always)]
    fn line(p: *const u8) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `prfm` is a hint: it never faults and changes nothing observable.
        unsafe {
            std::arch::asm!(
                "prfm pldl1keep, [{p}]",
                p = in(reg) p,
                options(readonly, nostack, preserves_flags)
            );
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = p;
    }
    let mut off = 0;
    while off < bytes.len() {
        line(bytes.as_ptr().wrapping_add(off));
        off += 64;
    }
    if let Some(last) = bytes.last() {
        // An unaligned slice can straddle one more line than its length suggests.
        line(std::ptr::from_ref(last));
    }
}

/// The stored little-endian bytes of `values` in `dtype` (round to nearest even for F16/BF16):
/// the inverse of [`widen`] on values the dtype can hold. For writing files and test stores.
pub fn narrow(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// Widens a whole tensor into a new vector (used for the small weight matrices only).
pub fn widen(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0f32; bytes.len() / dtype.size()];
    widen_into(dtype, bytes, &mut out);
    out
}

/// Index of the first non-finite element, if any.
pub fn first_non_finite(dtype: DType, bytes: &[u8]) -> Option<usize> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        // For both half formats a value is non-finite exactly when all exponent bits are set.
        DType::F16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
        DType::BF16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
    }
}

/// A `rows × cols` row-major matrix stored inside a memory-mapped file. Cloning is cheap (an
/// `Arc` of the mapping); the data is never copied whole.
#[derive(Clone)]
pub struct MappedMatrix {
    map: Arc<Mmap>,
    /// Byte offset of element (0, 0) in the mapping.
    start: usize,
    rows: usize,
    cols: usize,
    dtype: DType,
}

impl std::fmt::Debug for MappedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl MappedMatrix {
    /// Wraps `rows × cols` elements of `dtype` starting at byte `start` of `map`. Returns `None`
    /// when that range does not lie inside the mapping (the caller turns this into an error naming
    /// the tensor).
    pub fn new(
        map: Arc<Mmap>,
        start: usize,
        rows: usize,
        cols: usize,
        dtype: DType,
    ) -> Option<Self> {
        let len = rows.checked_mul(cols)?.checked_mul(dtype.size())?;
        let end = start.checked_add(len)?;
        if end > map.len() {
            return None;
        }
        Some(MappedMatrix {
            map,
            start,
            rows,
            cols,
            dtype,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of one row.
    pub fn row_stride(&self) -> usize {
        self.cols * self.dtype.size()
    }

    /// All the matrix's bytes (rows × cols × size), e.g. to upload to a GPU.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.rows * self.row_stride()]
    }

    /// The stored bytes of row `r`. Panics if `r >= rows` (callers index with validated rows).
    #[inline]
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        assert!(r < self.rows, "row {r} out of {} rows", self.rows);
        let s = self.start + r * self.row_stride();
        &self.map[s..s + self.row_stride()]
    }

    /// Row `r` widened to F32 into `out` (`out.len() == cols`).
    #[inline]
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        widen_into(self.dtype, self.row_bytes(r), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact() {
        let vals = [0.0f32, -1.5, 65504.0, 1.0e-7, 3.140625];
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let f32b: Vec<u8> = vals.iter().flat_map(|&v| v.to_le_bytes()).collect();
        assert_eq!(widen(DType::F32, &f32b), vals);
        for (i, &v) in vals.iter().enumerate() {
            assert_eq!(widen(DType::F16, &f16b)[i], f16::from_f32(v).to_f32());
            assert_eq!(widen(DType::BF16, &bf16b)[i], bf16::from_f32(v).to_f32());
        }
    }

    #[test]
    fn finds_non_finite_values_in_every_dtype() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let v = [1.0f32, 2.0, bad, 4.0];
            let f32b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let f16b: Vec<u8> = v
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect();
            let bf16b: Vec<u8> = v
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect();
            assert_eq!(first_non_finite(DType::F32, &f32b), Some(2));
            assert_eq!(first_non_finite(DType::F16, &f16b), Some(2));
            assert_eq!(first_non_finite(DType::BF16, &bf16b), Some(2));
        }
        let ok: Vec<u8> = [65504.0f32]
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(DType::F16, &ok), None);
    }
}
