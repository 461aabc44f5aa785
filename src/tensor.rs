//! Stored tensors: the storage dtypes SPEC allows and a row-major matrix that lives inside a
//! memory-mapped file. Compute is always F32; F16/BF16 values are widened exactly when read.
//! Item stores may also be I8 (SPEC §3): row `i` is `scales[i] · q_i`, the integers widened
//! exactly and the row's F32 scale applied once ([`MappedMatrix::row_into`]).
//! Rows are read with unaligned loads: safetensors does not promise any alignment of tensor data.

use std::sync::Arc;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use memmap2::Mmap;

/// Storage dtype of a tensor (SPEC §2, §3). `I8` is for item stores only (with their `scales`);
/// model tensors are F32, F16 or BF16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Quantized store rows: signed 8-bit integers in `[-127, 127]`, one F32 scale per row.
    I8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I8 => "I8",
        }
    }

    /// Maps a safetensors dtype to ours; `None` for dtypes SPEC does not allow for float tensors
    /// (model tensors: F32, F16, BF16).
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// Maps a safetensors dtype to a store's `vectors` dtype (SPEC §3): the float ones and I8.
    pub fn from_safetensors_store(d: safetensors::Dtype) -> Option<Self> {
        match d {
            safetensors::Dtype::I8 => Some(DType::I8),
            d => DType::from_safetensors(d),
        }
    }
}

/// Widens `bytes` (little-endian elements of `dtype`) into `out`. `bytes.len()` must be
/// `out.len() * dtype.size()`; this is the one place stored values become F32. I8 gives the
/// stored integers themselves (exact); the row's scale is [`MappedMatrix::row_into`]'s business.
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
        DType::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f32::from(b as i8);
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
    let mut off = 0;
    while off < bytes.len() {
        prefetch_line(bytes.as_ptr().wrapping_add(off));
        off += 64;
    }
    if let Some(last) = bytes.last() {
        // An unaligned slice can straddle one more line than its length suggests.
        prefetch_line(std::ptr::from_ref(last));
    }
}

/// Asks the CPU to load the cache line holding `p` ([`prefetch`]'s one line; the SIMD levels'
/// `prefetch` too). Safe: a prefetch never faults, whatever the address.
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` is a hint: it never faults and changes nothing observable. (`readonly`, not
    // `nomem`: rustc warns on a pointer passed to `nomem`.)
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

/// The stored little-endian bytes of `values` in `dtype` (round to nearest even for F16/BF16;
/// for I8 the values are taken as the integers themselves, rounded half to even and clamped to
/// `[-127, 127]`: quantize rows with [`quantize_row`]): the inverse of [`widen`] on values the
/// dtype can hold. For writing files and test stores.
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
        DType::I8 => values.iter().map(|&v| i8_of(v) as u8).collect(),
    }
}

/// `v` rounded half to even and clamped to `[-127, 127]` (NaN gives 0).
fn i8_of(v: f32) -> i8 {
    // `as` saturates and maps NaN to 0; the clamp keeps -128 out (SPEC §3).
    v.round_ties_even().clamp(-127.0, 127.0) as i8
}

/// SPEC §3's quantization of one row `x` (finite values): `scale = max|x| / 127` and
/// `q = round-half-to-even(x / scale)`, both in F32 arithmetic (IEEE division, so any correct
/// implementation gives the same bits: `reference/export.py` does it in numpy `float32`). An
/// all-zero row, or one so small that its scale underflows F32 to 0, gets scale 0 and q = 0.
/// Returns the scale; `q.len()` must be `x.len()`.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    if scale == 0.0 {
        q.fill(0);
        return 0.0;
    }
    for (o, &v) in q.iter_mut().zip(x) {
        *o = i8_of(v / scale);
    }
    scale
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
        // Integers are always finite (the -128 rule is the store loader's).
        DType::I8 => None,
    }
}

/// A `rows × cols` row-major matrix stored inside a memory-mapped file. Cloning is cheap (an
/// `Arc` of the mapping); the data is never copied whole. An I8 matrix (an SPEC §3 quantized
/// store) also has its `scales`: `rows` little-endian F32 values in the same mapping.
#[derive(Clone)]
pub struct MappedMatrix {
    map: Arc<Mmap>,
    /// Byte offset of element (0, 0) in the mapping.
    start: usize,
    rows: usize,
    cols: usize,
    dtype: DType,
    /// I8 only: byte offset of `scales[0]` in the mapping.
    scales: Option<usize>,
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
    /// Wraps `rows × cols` elements of a float `dtype` starting at byte `start` of `map`. Returns
    /// `None` when that range does not lie inside the mapping (the caller turns this into an
    /// error naming the tensor), and for I8, which needs its scales ([`MappedMatrix::new_i8`]).
    pub fn new(
        map: Arc<Mmap>,
        start: usize,
        rows: usize,
        cols: usize,
        dtype: DType,
    ) -> Option<Self> {
        if dtype == DType::I8 {
            return None;
        }
        Self::checked(map, start, rows, cols, dtype, None)
    }

    /// An I8 matrix: `rows × cols` bytes at `start`, and its `rows` F32 scales at byte
    /// `scales_start` of the same mapping (row `r` is `scales[r] · q_r`). `None` when either range
    /// does not lie inside the mapping.
    pub fn new_i8(
        map: Arc<Mmap>,
        start: usize,
        rows: usize,
        cols: usize,
        scales_start: usize,
    ) -> Option<Self> {
        let end = scales_start.checked_add(rows.checked_mul(4)?)?;
        if end > map.len() {
            return None;
        }
        Self::checked(map, start, rows, cols, DType::I8, Some(scales_start))
    }

    fn checked(
        map: Arc<Mmap>,
        start: usize,
        rows: usize,
        cols: usize,
        dtype: DType,
        scales: Option<usize>,
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
            scales,
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

    /// The same matrix read from a private anonymous copy of its whole mapping (I8 scales
    /// included), advised `MADV_HUGEPAGE` when `huge_pages` (Linux; 2 MiB pages where the kernel
    /// grants them): random rows then cost fewer page walks than in the file's 4 KiB pages
    /// (`hcn bench --floors` measures both). The copy is shifted so that row 0 starts on a page
    /// (as the files this crate writes have it; other writers' stores need not: a 256-byte row
    /// 8 bytes off a line boundary is 5 cache lines to read, not 4). Costs the copy's memory and
    /// time at load.
    pub fn to_anonymous(&self, huge_pages: bool) -> std::io::Result<MappedMatrix> {
        const PAGE: usize = crate::safetensors_file::DATA_ALIGN;
        let shift = (PAGE - self.start % PAGE) % PAGE;
        let mut anon = memmap2::MmapMut::map_anon((shift + self.map.len()).max(1))?;
        #[cfg(target_os = "linux")]
        if huge_pages {
            anon.advise(memmap2::Advice::HugePage)?;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = huge_pages;
        anon[shift..shift + self.map.len()].copy_from_slice(&self.map);
        Ok(MappedMatrix {
            map: Arc::new(anon.make_read_only()?),
            start: self.start + shift,
            scales: self.scales.map(|s| s + shift),
            ..self.clone()
        })
    }

    /// Bytes of one row.
    pub fn row_stride(&self) -> usize {
        self.cols * self.dtype.size()
    }

    /// All the matrix's bytes (rows × cols × size), e.g. to upload to a GPU.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.rows * self.row_stride()]
    }

    /// An I8 matrix's scales: `rows` little-endian F32 values (any alignment); `None` for the
    /// float dtypes.
    pub fn scales_bytes(&self) -> Option<&[u8]> {
        self.scales.map(|s| &self.map[s..s + 4 * self.rows])
    }

    /// Row `r`'s scale (I8), `None` for the float dtypes. Panics if `r >= rows`.
    #[inline]
    pub fn row_scale(&self, r: usize) -> Option<f32> {
        assert!(r < self.rows, "row {r} out of {} rows", self.rows);
        self.scales.map(|s| {
            let b = &self.map[s + 4 * r..s + 4 * r + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    /// The stored bytes of row `r` (I8: the integers, without the scale). Panics if
    /// `r >= rows` (callers index with validated rows).
    #[inline]
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        assert!(r < self.rows, "row {r} out of {} rows", self.rows);
        let s = self.start + r * self.row_stride();
        &self.map[s..s + self.row_stride()]
    }

    /// Row `r` as F32 into `out` (`out.len() == cols`): float dtypes widened exactly; I8 as
    /// `scale · q`, the F32 product (one rounding). The f64 oracle uses
    /// [`MappedMatrix::row_into_f64`], which is exact.
    #[inline]
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        widen_into(self.dtype, self.row_bytes(r), out);
        if let Some(scale) = self.row_scale(r) {
            out.iter_mut().for_each(|v| *v *= scale);
        }
    }

    /// Row `r` exactly, in f64 (`out.len() == cols`): I8 as `f64(scale) · q` (SPEC §3: the
    /// reference evaluates the product in float64; it is exact there).
    pub fn row_into_f64(&self, r: usize, out: &mut [f64]) {
        let mut x = vec![0.0f32; out.len()];
        widen_into(self.dtype, self.row_bytes(r), &mut x);
        let scale = self.row_scale(r).map_or(1.0, f64::from);
        for (o, v) in out.iter_mut().zip(x) {
            *o = scale * f64::from(v);
        }
    }

    /// Asks the CPU to start loading row `r` (and its scale): a cache hint ([`prefetch`]).
    #[inline]
    pub fn prefetch_row(&self, r: usize) {
        if r < self.rows {
            prefetch(self.row_bytes(r));
            if let Some(s) = self.scales {
                prefetch(&self.map[s + 4 * r..s + 4 * r + 4]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The anonymous copy holds the same rows and scales, row 0 on a page, whatever the offset
    /// of the matrix in its mapping.
    #[test]
    fn anonymous_copies_start_row_zero_on_a_page() {
        for start in [0usize, 8, 88, 4095, 4096, 5000] {
            let (rows, cols) = (5, 3);
            let mut m = memmap2::MmapMut::map_anon(start + rows * cols + 4 * rows + 7).unwrap();
            for (i, b) in m.iter_mut().enumerate() {
                *b = (i * 7 % 251) as u8;
            }
            let map = Arc::new(m.make_read_only().unwrap());
            let x = MappedMatrix::new_i8(map, start, rows, cols, start + rows * cols + 3).unwrap();
            for huge in [false, true] {
                let c = x.to_anonymous(huge).unwrap();
                assert_eq!(c.bytes(), x.bytes(), "start {start}");
                assert_eq!(c.scales_bytes(), x.scales_bytes(), "start {start}");
                assert_eq!(c.bytes().as_ptr() as usize % 4096, 0, "start {start}");
            }
        }
    }

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
    fn i8_widens_to_the_integers_and_narrows_back() {
        let bytes = [0u8, 1, 127, 0x81, 0xff];
        assert_eq!(widen(DType::I8, &bytes), [0.0, 1.0, 127.0, -127.0, -1.0]);
        assert_eq!(narrow(DType::I8, &[0.0, 1.0, 127.0, -127.0, -1.0]), bytes);
        // Half to even, clamped to ±127 (never -128), NaN to 0.
        assert_eq!(
            narrow(DType::I8, &[0.5, 1.5, -2.5, 300.0, -300.0, f32::NAN]),
            [0, 2, (-2i8) as u8, 127, (-127i8) as u8, 0]
        );
        assert_eq!(first_non_finite(DType::I8, &[0x80, 0x7f]), None);
    }

    #[test]
    fn quantize_row_follows_spec() {
        let mut q = [0i8; 4];
        // max|x| = 127 · 0.5: scale 0.5; x / scale = 127, -127, 1, 0.5 → 127, -127, 1, 0 (half to
        // even).
        let scale = quantize_row(&[63.5, -63.5, 0.5, 0.25], &mut q);
        assert_eq!(scale, 0.5);
        assert_eq!(q, [127, -127, 1, 0]);
        let scale = quantize_row(&[0.0, -0.0, 0.0, 0.0], &mut q);
        assert_eq!((scale, q), (0.0, [0; 4]));
        // A row whose scale underflows F32 is all zero too.
        let tiny = f32::from_bits(1);
        assert_eq!(quantize_row(&[tiny, 0.0, 0.0, 0.0], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        // Ties: 2.5 and 3.5 steps of the scale go to the even integer.
        let scale = quantize_row(&[127.0, 2.5, 3.5, -0.5], &mut q);
        assert_eq!(scale, 1.0);
        assert_eq!(q, [127, 2, 4, 0]);
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
