//! The instruction-set abstraction the kernels are written against, and the kernels themselves,
//! written once and generic over it (pulp style).
//!
//! A level (`scalar`, `avx2`, `avx512`, `neon`) implements [`Simd`] for one vector width; each
//! level's file has thin `#[target_feature]` entry points that call the generic kernels here. All
//! trait methods are `#[inline(always)]`, so the whole kernel is inlined into the entry point and
//! compiled with its features: the generic code becomes straight vector code, with no calls.
//!
//! Everything here works on raw pointers; the safe wrappers in `cpu/mod.rs` check every length
//! and row index before calling in.

use half::{bf16, f16};

use crate::config::ScoreMode;
use crate::tensor::DType;

/// One vector width of one instruction set. Every method is `unsafe` because it may only run on
/// a CPU that has the level's instructions (checked by `Kernels::new`), and pointer methods read
/// or write `W` (or `len`) elements that the caller guarantees are in bounds. Loads and stores
/// are unaligned: safetensors tensor data has no alignment promise.
pub(crate) trait Simd: Copy {
    /// Lanes per vector.
    const W: usize;
    type V: Copy;

    unsafe fn zero(self) -> Self::V;
    unsafe fn splat(self, x: f32) -> Self::V;
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Loads `len < W` lanes, the rest are zero.
    unsafe fn load_partial(self, p: *const f32, len: usize) -> Self::V;
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Stores the first `len < W` lanes.
    unsafe fn store_partial(self, p: *mut f32, v: Self::V, len: usize);
    /// Widens `W` little-endian F16 values at `p` (exact).
    unsafe fn load_f16(self, p: *const u8) -> Self::V;
    /// Widens `W` little-endian BF16 values at `p` (exact: a shift into the high half).
    unsafe fn load_bf16(self, p: *const u8) -> Self::V;
    /// Widens `W` signed 8-bit integers at `p` (exact: sign-extend, convert).
    unsafe fn load_i8(self, p: *const u8) -> Self::V;
    /// Widens 16 signed 8-bit integers at `p` into `dst[..16]`: one 128-bit load where the level
    /// has it, widened in registers (the default goes `W` at a time).
    #[inline(always)]
    unsafe fn widen_i8x16(self, p: *const u8, dst: *mut f32) {
        let mut i = 0;
        while i < 16 {
            self.store(dst.add(i), self.load_i8(p.add(i)));
            i += Self::W;
        }
    }
    /// `a * b + c`, fused.
    unsafe fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn reduce_add(self, v: Self::V) -> f32;
    unsafe fn reduce_max(self, v: Self::V) -> f32;
    /// Round to nearest integer (ties to even).
    unsafe fn round(self, v: Self::V) -> Self::V;
    /// `2^v` for integral `v` in `[-126, 127]`, built directly in the exponent bits.
    unsafe fn pow2i(self, v: Self::V) -> Self::V;
    /// Hint that the cache line holding `p` is needed soon. `p` may point anywhere (it is never
    /// dereferenced), so callers compute it with wrapping arithmetic.
    #[inline(always)]
    unsafe fn prefetch(self, _p: *const u8) {}
    /// [`Simd::prefetch`] into the second-level cache only (`cpu::Prefetch::L2`).
    #[inline(always)]
    unsafe fn prefetch_l2(self, _p: *const u8) {}

    /// Transposes each `W × W` matrix formed by `W` consecutive vectors of `v` (`N` a multiple
    /// of `W`). By value, not through `&mut`: an accumulator array whose address is taken stops
    /// living in registers, and the compiler then stores every accumulator on every FMA step.
    #[inline(always)]
    unsafe fn transpose<const N: usize>(self, v: [Self::V; N]) -> [Self::V; N] {
        transpose_via_memory(self, v)
    }

    /// `e^x`, Cephes `expf` scheme: `x = k ln2 + r` with `|r| ≤ ln2/2`, a degree-6 polynomial for
    /// `e^r`, `2^k` put into the exponent. Relative error ≈ 2 ulp, far inside SPEC §5's 1e-4.
    /// Inputs are clamped to `[-87.3, 88]`, so `-inf` gives ~1e-38 (not 0) and nothing overflows;
    /// the softmax callers only pass `x ≤ 0`.
    #[inline(always)]
    unsafe fn exp(self, x: Self::V) -> Self::V {
        let x = self.min(self.max(x, self.splat(-87.3)), self.splat(88.0));
        let k = self.round(self.mul(x, self.splat(std::f32::consts::LOG2_E)));
        // ln2 split in two so that `k * C1` is exact (Cody–Waite).
        let r = self.fma(k, self.splat(-0.693_359_4), x);
        let r = self.fma(k, self.splat(2.121_944_4e-4), r);
        let mut p = self.splat(1.987_569_1e-4);
        p = self.fma(p, r, self.splat(1.398_199_9e-3));
        p = self.fma(p, r, self.splat(8.333_452e-3));
        p = self.fma(p, r, self.splat(4.166_579_6e-2));
        p = self.fma(p, r, self.splat(1.666_666_5e-1));
        p = self.fma(p, r, self.splat(0.5));
        let r2 = self.mul(r, r);
        let e = self.add(self.fma(p, r2, r), self.splat(1.0));
        self.mul(e, self.pow2i(k))
    }
}

/// The portable grouped transpose (see [`Simd::transpose`]): through a stack buffer.
#[inline(always)]
pub(crate) unsafe fn transpose_via_memory<S: Simd, const N: usize>(
    s: S,
    v: [S::V; N],
) -> [S::V; N] {
    let w = S::W;
    debug_assert!(N.is_multiple_of(w) && w <= 16);
    let mut out = v;
    let mut a = [0.0f32; 256];
    let mut t = [0.0f32; 256];
    for g in 0..N / w {
        for i in 0..w {
            s.store(a.as_mut_ptr().add(i * w), v[g * w + i]);
        }
        for i in 0..w {
            for j in 0..w {
                t[j * w + i] = a[i * w + j];
            }
        }
        for j in 0..w {
            out[g * w + j] = s.load(t.as_ptr().add(j * w));
        }
    }
    out
}

/// Widens one stored row of `d` elements at `src` into `dst` (exact; I8 gives the integers, the
/// row's scale is applied by the caller; F32 rows are copied).
#[inline(always)]
unsafe fn widen_row<S: Simd>(s: S, dtype: DType, src: *const u8, dst: *mut f32, d: usize) {
    let full = d / S::W * S::W;
    let mut i = 0;
    match dtype {
        DType::I8 => {
            // 16 integers per 128-bit load, widened in registers; then `W` (AVX2: 8), then one.
            while i + 16 <= d {
                s.widen_i8x16(src.add(i), dst.add(i));
                i += 16;
            }
            while i + S::W <= d {
                s.store(dst.add(i), s.load_i8(src.add(i)));
                i += S::W;
            }
            while i < d {
                *dst.add(i) = f32::from(src.add(i).cast::<i8>().read());
                i += 1;
            }
        }
        DType::F16 => {
            while i < full {
                s.store(dst.add(i), s.load_f16(src.add(2 * i)));
                i += S::W;
            }
            while i < d {
                let b = src.add(2 * i).cast::<u16>().read_unaligned();
                *dst.add(i) = f16::from_bits(u16::from_le(b)).to_f32();
                i += 1;
            }
        }
        DType::BF16 => {
            while i < full {
                s.store(dst.add(i), s.load_bf16(src.add(2 * i)));
                i += S::W;
            }
            while i < d {
                let b = src.add(2 * i).cast::<u16>().read_unaligned();
                *dst.add(i) = bf16::from_bits(u16::from_le(b)).to_f32();
                i += 1;
            }
        }
        DType::F32 => {
            // As bytes: `src` need not be 4-byte aligned.
            std::ptr::copy_nonoverlapping(src, dst.cast::<u8>(), 4 * d);
        }
    }
}

/// The user's interests laid out for the scoring loop: `nv = ceil(n / W)` column groups, each a
/// `d × W` block whose row `k` holds `X^U[j][k]` for the `W` interests `j` of the group (zero in
/// the padding lanes past `n`). Scoring one item is then `d` broadcast-FMAs per group into one
/// vector of `W` scores (lane = interest) — no horizontal sums. A block of `W` items gives `W`
/// such vectors; transposed (lane = item), the softmax/max/mean is plain lane-wise arithmetic
/// that finishes `W` items at once.
pub(crate) struct ScoreLayout<'a> {
    pub ut: &'a [f32],
    /// `0` on the lanes of real interests, `-inf` on padding lanes (added before max/softmax).
    pub pad: &'a [f32],
    pub n: usize,
    pub d: usize,
    pub nv: usize,
    pub mode: ScoreMode,
    /// Prefetch the next block's rows into L2 only (`cpu::Prefetch::L2`), not into L1.
    pub prefetch_l2: bool,
}

/// Builds the interleaved layout of [`ScoreLayout`] for width `w`.
pub(crate) fn layout_interests(xu: &[f32], n: usize, d: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let nv = n.div_ceil(w);
    let mut ut = vec![0.0f32; nv * d * w];
    for j in 0..n {
        let (v, lane) = (j / w, j % w);
        for k in 0..d {
            ut[(v * d + k) * w + lane] = xu[j * d + k];
        }
    }
    let pad = (0..nv * w)
        .map(|j| if j < n { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    (ut, pad)
}

/// Where the candidate rows live: `bytes` holds `rows` rows of `row_stride` bytes, each starting
/// with `d` elements of `dtype`. I8 rows also have `scales`: `rows` little-endian F32 values
/// (any alignment), row `r` being `scales[r] · q_r`; null for the float dtypes.
#[derive(Clone, Copy)]
pub(crate) struct RawRows {
    pub base: *const u8,
    pub rows: usize,
    pub row_stride: usize,
    pub dtype: DType,
    pub scales: *const u8,
}

impl RawRows {
    /// Row `r`'s scale (`r < rows`, and `scales` non-null).
    #[inline(always)]
    unsafe fn scale(&self, r: usize) -> f32 {
        f32::from_le_bytes(self.scales.add(4 * r).cast::<[u8; 4]>().read_unaligned())
    }
}

/// `acc[r] · scales[r]` for each of the `R` row accumulators (I8 rows: the row's scale applied
/// once, to its `W` partial scores, instead of to its `D` values). By value and a plain loop,
/// as [`Simd::transpose`], so the accumulators stay in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn scale_rows<S: Simd, const R: usize>(
    s: S,
    mut acc: [S::V; R],
    sc: &[f32; R],
) -> [S::V; R] {
    for r in 0..R {
        acc[r] = s.mul(acc[r], s.splat(sc[r]));
    }
    acc
}

/// Most rows scored together (sizes the caller's scratch buffers); see [`score_rows`] and
/// [`score_rows_by_lanes`].
pub(crate) const BLOCK: usize = 32;
/// Elements per chunk of a widened row in [`score_rows`]' scratch (see [`accumulate`]).
pub(crate) const KC: usize = 64;
/// Floats of scratch [`score_rows`] and [`score_rows_by_lanes`] need for rows of `d` elements.
pub(crate) fn scratch_len(d: usize) -> usize {
    BLOCK * d.next_multiple_of(KC)
}

/// Scores `rows` into `out` (same length). `scratch` holds [`scratch_len`] floats (widened rows) and
/// `sbuf` `BLOCK * nv * W` floats (the raw scores). Returns the position of the first row index
/// that is out of range, leaving later outputs unwritten.
///
/// Rows go in blocks: each X^U vector load then feeds one FMA per row of the block, and the
/// block's rows are independent FMA chains that hide the FMA latency (≥ 8 must be in flight).
/// With 32 vector registers (AVX-512) a block of 16 fits; with 16 (AVX2, NEON) 8 rows + the
/// X^U vector + a broadcast fill the register file (16 spill: measured 30% slower).
/// (AVX-512 with `n ≤ LANES_MAX_N` does not come here: see [`score_rows_by_lanes`].)
/// Where the block is a multiple of the lane count (NEON, AVX2, AVX-512) the block's scores are
/// finished transposed ([`finish_columns`]); otherwise row by row ([`finish`]).
#[inline(always)]
pub(crate) unsafe fn score_rows<S: Simd>(
    s: S,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
    sbuf: &mut [f32],
) -> Result<(), usize> {
    if S::W >= 16 {
        score_rows_by::<S, 16>(s, q, src, rows, out, scratch, sbuf)
    } else {
        score_rows_by::<S, 8>(s, q, src, rows, out, scratch, sbuf)
    }
}

#[inline(always)]
unsafe fn score_rows_by<S: Simd, const B: usize>(
    s: S,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
    sbuf: &mut [f32],
) -> Result<(), usize> {
    debug_assert_eq!(rows.len(), out.len());
    debug_assert!(B <= BLOCK && scratch.len() >= scratch_len(q.d) && sbuf.len() >= B * q.nv * S::W);
    // Every index is checked before any row is read: the pipeline below reads the next block's
    // rows while scoring this one. The rows before a bad one are scored, as documented.
    let (m, res) = in_range_prefix(rows, src.rows);
    if m > 0 {
        let (rows, out) = (&rows[..m], &mut out[..m]);
        // The dtype as a constant, so the widening inside the FMA loop is one load + convert.
        match src.dtype {
            DType::F32 => pipeline::<S, B, DT_F32>(s, q, src, rows, out, scratch, sbuf),
            DType::F16 => pipeline::<S, B, DT_F16>(s, q, src, rows, out, scratch, sbuf),
            DType::BF16 => pipeline::<S, B, DT_BF16>(s, q, src, rows, out, scratch, sbuf),
            DType::I8 => pipeline::<S, B, DT_I8>(s, q, src, rows, out, scratch, sbuf),
        }
    }
    res
}

/// What the scoring kernels do with a bad row index: score the rows before it and report its
/// position. Returns how many leading `rows` are below `n` and the kernel's result once those
/// are scored (`Err` with the first bad position, if any).
pub(crate) fn in_range_prefix(rows: &[u32], n: usize) -> (usize, Result<(), usize>) {
    match first_out_of_range(rows, n) {
        Some(p) => (p, Err(p)),
        None => (rows.len(), Ok(())),
    }
}

/// The position of the first of `rows` that is not below `n` (a pass finding the largest first:
/// the common case, every index in range, is then one vectorised scan).
pub(crate) fn first_out_of_range(rows: &[u32], n: usize) -> Option<usize> {
    let max = rows.iter().fold(0u32, |a, &r| a.max(r));
    if (max as usize) < n {
        None
    } else {
        rows.iter().position(|&r| r as usize >= n)
    }
}

/// A store dtype as a const generic parameter of [`pipeline`] and `tiles::blocks` (`DType` itself
/// cannot be one).
pub(crate) const DT_F32: u8 = 0;
pub(crate) const DT_F16: u8 = 1;
pub(crate) const DT_BF16: u8 = 2;
pub(crate) const DT_I8: u8 = 3;

/// The dtype a `DT_*` number stands for.
#[inline(always)]
pub(crate) const fn dtype_of(dt: u8) -> DType {
    match dt {
        DT_F32 => DType::F32,
        DT_F16 => DType::F16,
        DT_BF16 => DType::BF16,
        _ => DType::I8,
    }
}

/// One block's rows, resolved: where each starts and (I8) its scale. Padding rows (past
/// `valid`, results dropped) point at the store's row 0 and take the first row's scale, so a
/// kernel may read and score them like the others.
pub(crate) struct Staged<const R: usize> {
    pub ptrs: [*const u8; R],
    pub sc: [f32; R],
    pub valid: usize,
}

impl<const R: usize> Staged<R> {
    /// `rows` (`1 ..= R` indices, all in range).
    #[inline(always)]
    pub(crate) unsafe fn new(src: RawRows, rows: &[u32]) -> Self {
        let mut st = Staged {
            ptrs: [src.base; R],
            sc: [1.0; R],
            valid: rows.len(),
        };
        for (r, &row) in rows.iter().enumerate() {
            let row = row as usize;
            st.ptrs[r] = src.base.add(row * src.row_stride);
            if !src.scales.is_null() {
                st.sc[r] = src.scale(row);
            }
        }
        // Padding rows take the first row's scale. (`pipeline` does not widen them: their
        // values are whatever the buffer holds, finite: zeros or earlier rows.)
        for r in st.valid..R {
            st.sc[r] = st.sc[0];
        }
        st
    }
}

/// Widening a staged block into its buffer one `W`-vector at a time ([`Widen::step`]), so that
/// the work (and the wait for the rows' cache lines) runs inside the previous block's FMA loop
/// instead of in a phase of its own. Vectors go row by row; `d % W` tail elements are widened
/// when the job is made.
struct Widen<const R: usize, const DT: u8> {
    ptrs: [*const u8; R],
    dst: *mut f32,
    valid: usize,
    nvec: usize,
    r: usize,
    c: usize,
}

impl<const R: usize, const DT: u8> Widen<R, DT> {
    #[inline(always)]
    unsafe fn new<S: Simd>(s: S, st: &Staged<R>, dst: *mut f32, d: usize) -> Self {
        let dtype = dtype_of(DT);
        let nvec = d / S::W;
        let tail = nvec * S::W;
        if tail < d {
            let mut tmp = [0.0f32; 64];
            for r in 0..st.valid {
                widen_row(
                    s,
                    dtype,
                    st.ptrs[r].add(tail * dtype.size()),
                    tmp.as_mut_ptr(),
                    d - tail,
                );
                for (e, &v) in (tail..d).zip(&tmp) {
                    *dst.add(chunked(e, r, R)) = v;
                }
            }
        }
        Widen {
            ptrs: st.ptrs,
            dst,
            valid: if nvec == 0 { 0 } else { st.valid },
            nvec,
            r: 0,
            c: 0,
        }
    }

    /// A job with nothing to widen (after the last block).
    #[inline(always)]
    fn idle(dst: *mut f32) -> Self {
        Widen {
            ptrs: [std::ptr::null(); R],
            dst,
            valid: 0,
            nvec: 0,
            r: 0,
            c: 0,
        }
    }

    /// Widens the next vector, if any is left.
    #[inline(always)]
    unsafe fn step<S: Simd>(&mut self, s: S) {
        if self.r < self.valid {
            let e = self.c * S::W;
            let v = load_elems(s, dtype_of(DT), self.ptrs[self.r], e);
            s.store(self.dst.add(chunked(e, self.r, R)), v);
            self.c += 1;
            if self.c == self.nvec {
                self.c = 0;
                self.r += 1;
            }
        }
    }

    #[inline(always)]
    unsafe fn finish<S: Simd>(&mut self, s: S) {
        while self.r < self.valid {
            self.step(s);
        }
    }
}

/// Where element `e` of row `r` of an `R`-row block lives in its widened buffer: chunk
/// `e / KC` of the row at `((e / KC)·R + r)·KC` (see [`accumulate`]).
#[inline(always)]
fn chunked(e: usize, r: usize, rows: usize) -> usize {
    (e / KC * rows + r) * KC + e % KC
}

/// The scoring loop of [`score_rows`] over in-range `rows`: two widened-row buffers, block
/// `b + 1` widened during block `b`'s FMA loop ([`Widen`]) and its rows prefetched during
/// block `b − 1`.
#[inline(always)]
unsafe fn pipeline<S: Simd, const B: usize, const DT: u8>(
    s: S,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
    sbuf: &mut [f32],
) {
    let d = q.d;
    let half = B * d.next_multiple_of(KC);
    let bufs = [scratch.as_mut_ptr(), scratch.as_mut_ptr().add(half)];
    let m = rows.len();
    let nblocks = m.div_ceil(B);
    prefetch_rows(s, src, rows, B, B, q.prefetch_l2);
    let mut cur = Staged::<B>::new(src, &rows[..B.min(m)]);
    Widen::<B, DT>::new(s, &cur, bufs[0], d).finish(s);
    for b in 0..nblocks {
        let (i, end) = (b * B, (b * B + B).min(m));
        prefetch_rows(s, src, rows, i + 2 * B, B, q.prefetch_l2);
        let next = (end < m).then(|| Staged::<B>::new(src, &rows[end..(end + B).min(m)]));
        let mut widen = match &next {
            Some(n) => Widen::<B, DT>::new(s, n, bufs[(b + 1) % 2], d),
            None => Widen::<B, DT>::idle(bufs[(b + 1) % 2]),
        };
        // The tail runs as a padded block, so a row's score never depends on where chunk
        // boundaries fall (same operations in the same order for every row).
        block::<S, B, DT>(s, q, &cur, bufs[b % 2], &mut widen, &mut out[i..end], sbuf);
        widen.finish(s);
        if let Some(n) = next {
            cur = n;
        }
    }
}

#[inline(always)]
pub(crate) unsafe fn prefetch_rows<S: Simd>(
    s: S,
    src: RawRows,
    rows: &[u32],
    from: usize,
    count: usize,
    l2: bool,
) {
    let line = |p: *const u8| {
        if l2 {
            s.prefetch_l2(p)
        } else {
            s.prefetch(p)
        }
    };
    let row_bytes = src.row_stride;
    let end = rows.len().min(from.saturating_add(count));
    for &r in &rows[from.min(end)..end] {
        let r = r as usize;
        if r >= src.rows {
            continue;
        }
        // Each cache line the row touches, once: 4 for a 256-byte row on a line boundary, 5 for
        // one that is not (stores whose data is not 64-byte aligned in the file).
        let start = src.base.wrapping_add(r * row_bytes);
        let first = start.wrapping_sub(start as usize % 64);
        let lines = (start as usize % 64 + row_bytes).div_ceil(64);
        for l in 0..lines {
            line(first.wrapping_add(64 * l));
        }
        if !src.scales.is_null() {
            // An I8 row's scale lives in another tensor: one more random line.
            line(src.scales.wrapping_add(4 * r));
        }
    }
}

/// Scores the `out.len() ≤ R` rows of `st`, widened in `xs`, as one block of `R` (padding rows'
/// results are dropped), widening the next block (`widen`) along the way.
// Indexing keeps the R parallel arrays (scales, accumulators, outputs) in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn block<S: Simd, const R: usize, const DT: u8>(
    s: S,
    q: &ScoreLayout<'_>,
    st: &Staged<R>,
    xs: *const f32,
    widen: &mut Widen<R, DT>,
    out: &mut [f32],
    sbuf: &mut [f32],
) {
    let d = q.d;
    let valid = out.len();
    debug_assert!(valid >= 1 && valid <= R && st.valid == valid);
    // I8: each row's scale, applied to its scores after the dot products.
    let quantized = DT == DT_I8;
    let sc = &st.sc;
    let sb = sbuf.as_mut_ptr();
    let ut = q.ut.as_ptr();
    if R.is_multiple_of(S::W) {
        // Transposed finish, `W` rows (one group) at a time: see `finish_columns`.
        let groups = R / S::W;
        let mut y = [0.0f32; BLOCK];
        let yp = if valid == R {
            out.as_mut_ptr()
        } else {
            y.as_mut_ptr()
        };
        if q.nv == 1 {
            let mut acc = accumulate::<S, R, DT>(s, ut, xs, d, widen);
            if quantized {
                acc = scale_rows(s, acc, sc);
            }
            let t = s.transpose(acc);
            for g in 0..groups {
                finish_columns(s, q, |j| t[g * S::W + j], yp.add(g * S::W));
            }
        } else {
            // More than W interests: park the transposed groups in `sbuf`; group g's column j
            // (interest j, lanes = the group's rows) at (g·nv·W + j)·W.
            let gstride = q.nv * S::W * S::W;
            for v in 0..q.nv {
                let u = ut.add(v * d * S::W);
                let mut acc = accumulate::<S, R, DT>(s, u, xs, d, widen);
                if quantized {
                    acc = scale_rows(s, acc, sc);
                }
                let t = s.transpose(acc);
                for g in 0..groups {
                    for i in 0..S::W {
                        let j = v * S::W + i;
                        s.store(sb.add(g * gstride + j * S::W), t[g * S::W + i]);
                    }
                }
            }
            for g in 0..groups {
                let col = |j: usize| s.load(sb.add(g * gstride + j * S::W));
                finish_columns(s, q, col, yp.add(g * S::W));
            }
        }
        if valid < R {
            out.copy_from_slice(&y[..valid]);
        }
        return;
    }
    for v in 0..q.nv {
        let u = ut.add(v * d * S::W);
        let mut acc = accumulate::<S, R, DT>(s, u, xs, d, widen);
        if quantized {
            acc = scale_rows(s, acc, sc);
        }
        for r in 0..R {
            s.store(sb.add((r * q.nv + v) * S::W), acc[r]);
        }
    }
    for r in 0..valid {
        out[r] = finish(s, q, sb.add(r * q.nv * S::W));
    }
}

/// Gathers the stored rows `rows` of `src` into `out` (`rows.len() × d` F32, row-major): float
/// dtypes widened exactly, I8 rows as `scale · q` (the F32 product: bit-identical at every
/// level). Every row's loads are issued first (the rows are random in a large mapping), then the
/// rows are widened. Returns the position of the first row index that is out of range, writing
/// nothing.
#[inline(always)]
pub(crate) unsafe fn gather_rows<S: Simd>(
    s: S,
    src: RawRows,
    d: usize,
    rows: &[u32],
    out: *mut f32,
) -> Result<(), usize> {
    if let Some(p) = first_out_of_range(rows, src.rows) {
        return Err(p);
    }
    prefetch_rows(s, src, rows, 0, rows.len(), false);
    for (i, &r) in rows.iter().enumerate() {
        let r = r as usize;
        let p = src.base.add(r * src.row_stride);
        let dst = out.add(i * d);
        match src.dtype {
            DType::F32 => std::ptr::copy_nonoverlapping(p, dst.cast::<u8>(), 4 * d),
            dt => widen_row(s, dt, p, dst, d),
        }
        if !src.scales.is_null() {
            let c = src.scale(r);
            let sv = s.splat(c);
            let mut k = 0;
            while k + S::W <= d {
                s.store(dst.add(k), s.mul(s.load(dst.add(k)), sv));
                k += S::W;
            }
            while k < d {
                *dst.add(k) *= c;
                k += 1;
            }
        }
    }
    Ok(())
}

/// Most rows per vector in [`score_rows_by_lanes`] (the widest level's `W`; arrays are sized
/// by it, a level uses its own `W`).
const LANE_ROWS: usize = 16;
/// Vectors of rows per block in [`score_rows_by_lanes`]: each broadcast interest value then
/// feeds `LANE_VECS` FMAs (one load per two FMAs instead of one per FMA), and `LANE_VECS · n`
/// accumulators are independent FMA chains. Blocks are `LANE_VECS · W` rows.
const LANE_VECS: usize = 2;
/// Most interests [`score_rows_by_lanes`] takes with `LANE_VECS` row vectors per block:
/// `LANE_VECS · n` accumulators + the row vectors + a broadcast must fit the registers (32 on
/// AVX-512: n ≤ 12; 16 on AVX2: n ≤ 6); past it, one row vector per block.
const fn lane_vecs_max_n(w: usize) -> usize {
    if w >= 16 {
        12
    } else {
        6
    }
}
/// AVX-512 (the rule's case). Measured on Zen 5 (F16, 10,000 rows
/// from a 2,048-row store): n = 8, D = 48: 128 → 80 µs; n = 12, D = 48: 120 → 100 µs;
/// n = 10, D = 64: 146 → 115 µs. At n = 16 the interest lanes have no padding left to save,
/// and transposing the rows costs more than transposing the scores: the rule
/// ([`ScoreKernel::by_rule`](super::ScoreKernel::by_rule)) stops at `LANES_RULE_MAX_N`; up to
/// `LANES_MAX_N` the kernel runs with one row vector per block (`16 + 2` registers) and is a
/// candidate for tuning at load (`ScoreKernel`).
pub(crate) const LANES_RULE_MAX_N: usize = 12;
/// Whether [`score_rows_by_lanes`] runs on a level of `w` lanes (8 or 16: its transposes take
/// 16 columns of `w` rows at a time).
pub(crate) const fn lanes_width(w: usize) -> bool {
    w == 8 || w == 16
}
/// Most interests [`score_rows_by_lanes`] can take at all (blocks of one row vector past
/// [`LANES_RULE_MAX_N`]).
pub(crate) const LANES_MAX_N: usize = 16;

/// Scores `rows` like [`score_rows`], transposed: for few interests (`n ≤ LANES_MAX_N`) on a
/// level of `W` = 8 or 16 lanes, where interests-in-lanes vectors would be (partly) padding. A
/// block of `W` rows is widened into `scratch` k-major (`x^T[k]` = element `k` of the `W` rows,
/// one vector), and per `k` that one vector feeds `n` FMAs against broadcast `u_j[k]`: `n`
/// accumulators whose lanes are the block's rows, i.e. already the columns [`finish_columns`]
/// wants. That is `n·D` full FMAs per `W` rows (vs `⌈n/W⌉·W·D` with interests in lanes), no
/// padding lanes, and no transpose of the scores; the rows are transposed instead (`W × W` in
/// registers, `D/W` times). Blocks hold `LANE_VECS` such vectors of rows (one past
/// [`lane_vecs_max_n`]). `q.ut` must be [`layout_interests`] with `w = n` (`u[k·n + j]`);
/// `scratch` holds `BLOCK · D` floats.
#[inline(always)]
pub(crate) unsafe fn score_rows_by_lanes<S: Simd>(
    s: S,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), usize> {
    // `n` becomes a constant, so the accumulators are a fixed set of registers; past
    // `lane_vecs_max_n`, `LANE_VECS · n` accumulators would not fit the registers: one row
    // vector per block.
    macro_rules! by_n {
        ($($n:literal)*) => {
            match q.n {
                $($n => if $n <= lane_vecs_max_n(S::W) {
                    rows_by_lanes::<S, $n, LANE_VECS>(s, q, src, rows, out, scratch)
                } else {
                    rows_by_lanes::<S, $n, 1>(s, q, src, rows, out, scratch)
                },)*
                _ => rows_by_lanes::<S, 16, 1>(s, q, src, rows, out, scratch),
            }
        };
    }
    by_n!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
}

#[inline(always)]
unsafe fn rows_by_lanes<S: Simd, const N: usize, const V: usize>(
    s: S,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), usize> {
    let b = V * S::W;
    debug_assert!(lanes_width(S::W) && b <= BLOCK && q.n == N);
    debug_assert!(rows.len() == out.len() && scratch.len() >= b * q.d);
    // The same layout with `n` a constant (loops over interests unroll).
    let q = ScoreLayout {
        ut: q.ut,
        pad: q.pad,
        n: N,
        d: q.d,
        nv: 1,
        mode: q.mode,
        prefetch_l2: q.prefetch_l2,
    };
    let m = rows.len();
    let mut i = 0;
    while i < m {
        // The next block's rows.
        prefetch_rows(s, src, rows, i + b, b, q.prefetch_l2);
        // The tail runs as a padded block too: same operations for every row.
        let end = (i + b).min(m);
        block_by_lanes::<S, N, V>(s, &q, src, &rows[i..end], &mut out[i..end], scratch)
            .map_err(|p| i + p)?;
        i = end;
    }
    Ok(())
}

/// One block of `rows.len() ≤ V·W` rows for [`score_rows_by_lanes`] (missing rows repeat the
/// first; their lanes are dropped). Returns the position of a bad row index.
// Indexing keeps the parallel per-row and per-interest arrays in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn block_by_lanes<S: Simd, const N: usize, const V: usize>(
    s: S,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), usize> {
    let l = S::W;
    let d = q.d;
    let valid = rows.len();
    let mut xp = [[std::ptr::null::<u8>(); LANE_ROWS]; V];
    // I8: the rows' scales, lanes = rows like the sums they multiply (padding rows: the first's).
    let quantized = !src.scales.is_null();
    let mut sc = [1.0f32; BLOCK];
    for r in 0..valid {
        let row = rows[r] as usize;
        if row >= src.rows {
            return Err(r);
        }
        if quantized {
            sc[r] = src.scale(row);
        }
        xp[r / l][r % l] = src.base.add(row * src.row_stride);
    }
    let first = xp[0][0];
    for r in valid..V * l {
        xp[r / l][r % l] = first;
        sc[r] = sc[0];
    }
    // x^T: vector `v` of element `k` at `xt[(k·V + v)·W ..]`.
    let xt = scratch.as_mut_ptr();
    for v in 0..V {
        transpose_rows(s, src.dtype, &xp[v], d, xt.add(v * l), V * l);
    }

    // With few chains (V·N < 8) two accumulator sets (even and odd k) cover the FMA latency;
    // either way every row gets the same sum order. Separate functions, so that the unused
    // second set is not an array in memory zeroed every block.
    let mut sums = if V * N < 8 {
        dot_columns::<S, N, V, 2>(s, q.ut.as_ptr(), xt, d)
    } else {
        dot_columns::<S, N, V, 1>(s, q.ut.as_ptr(), xt, d)
    };
    if quantized {
        for v in 0..V {
            let scv = s.load(sc.as_ptr().add(v * l));
            for j in 0..N {
                sums[v][j] = s.mul(sums[v][j], scv);
            }
        }
    }
    let mut y = [0.0f32; BLOCK];
    for v in 0..V {
        finish_columns(s, q, |j| sums[v][j], y.as_mut_ptr().add(v * l));
    }
    out.copy_from_slice(&y[..valid]);
    Ok(())
}

/// `Σ_k x^T[k] · u_j[k]` for the `N` interests and `V` row vectors of a block (lanes = rows), as
/// `P` accumulator sets over `k ≡ p (mod P)`, added at the end.
// Indexing keeps the accumulators, row vectors and interests in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn dot_columns<S: Simd, const N: usize, const V: usize, const P: usize>(
    s: S,
    u: *const f32,
    xt: *const f32,
    d: usize,
) -> [[S::V; N]; V] {
    let l = S::W;
    // Plain loops, no closure: a closure is compiled without the level's features (see
    // `finish_columns`).
    let mut acc = [[[s.zero(); N]; V]; P];
    let mut k = 0;
    while k < d {
        // The last `d % P` steps go to the first sets.
        for p in 0..P.min(d - k) {
            let uk = u.add((k + p) * N);
            let mut x = [s.zero(); V];
            for v in 0..V {
                x[v] = s.load(xt.add(((k + p) * V + v) * l));
            }
            for j in 0..N {
                let b = s.splat(uk.add(j).read());
                for v in 0..V {
                    acc[p][v][j] = s.fma(x[v], b, acc[p][v][j]);
                }
            }
        }
        k += P;
    }
    for p in 1..P {
        for v in 0..V {
            for j in 0..N {
                acc[0][v][j] = s.add(acc[0][v][j], acc[p][v][j]);
            }
        }
    }
    acc[0]
}

/// Widens element `k` of the `W` rows at `xp[..W]` into `xt[k·stride ..][..W]` for `k < d`: 16
/// columns at a time, loaded (and widened) per row — `16 / W` vectors per row — and transposed
/// in registers (`W × W` blocks: vector `i` holds row `i % W` from column `(i / W)·W`, so the
/// transposed vector `c` is column `c` of every row). A ragged end (`d % 16`) reloads the row's
/// last 16 elements (overlapping, in bounds) and keeps the new columns; rows shorter than 16 go
/// through a zero-padded copy.
// Indexing keeps the row pointers and vectors in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn transpose_rows<S: Simd>(
    s: S,
    dtype: DType,
    xp: &[*const u8; LANE_ROWS],
    d: usize,
    xt: *mut f32,
    stride: usize,
) {
    const C: usize = 16; // columns per step
    let w = S::W;
    debug_assert!(C.is_multiple_of(w));
    if d < C {
        let mut tmp = [0.0f32; LANE_ROWS * C];
        for r in 0..w {
            widen_row(s, dtype, xp[r], tmp.as_mut_ptr().add(r * C), d);
        }
        let mut v = [s.zero(); C];
        for i in 0..C {
            v[i] = s.load(tmp.as_ptr().add((i % w) * C + (i / w) * w));
        }
        let t = s.transpose(v);
        for k in 0..d {
            s.store(xt.add(k * stride), t[k]);
        }
        return;
    }
    let mut k0 = 0;
    while k0 < d {
        // The last chunk starts at `d - 16` (overlapping the previous one when `d % 16 ≠ 0`).
        let start = k0.min(d - C);
        let mut v = [s.zero(); C];
        for i in 0..C {
            v[i] = load_elems(s, dtype, xp[i % w], start + (i / w) * w);
        }
        let t = s.transpose(v);
        if start == k0 {
            // Constant indices: `t` stays in registers.
            for c in 0..C {
                s.store(xt.add((start + c) * stride), t[c]);
            }
        } else {
            for c in k0 - start..C {
                s.store(xt.add((start + c) * stride), t[c]);
            }
        }
        k0 = start + C;
    }
}

/// `W` elements of a stored row from element `k`, widened. A function, not a closure: a closure
/// is compiled without the level's features (see `finish_columns`).
#[inline(always)]
pub(crate) unsafe fn load_elems<S: Simd>(s: S, dtype: DType, row: *const u8, k: usize) -> S::V {
    match dtype {
        DType::F16 => s.load_f16(row.add(2 * k)),
        DType::BF16 => s.load_bf16(row.add(2 * k)),
        DType::F32 => s.load(row.cast::<f32>().add(k)),
        DType::I8 => s.load_i8(row.add(k)),
    }
}

/// The hot loop: `acc[r] = Σ_k x_r[k] · u[k]` for one `d × W` interest group `u` and the `R`
/// rows widened into `xs`: per `k`, one `u` load feeds `R` broadcast-FMAs (independent chains;
/// on AVX-512 the broadcast folds into the FMA's memory operand), and one vector of the next
/// block is widened ([`Widen::step`]).
/// The rows are laid out in chunks of [`KC`] elements, chunk `c` of row `r` at
/// `xs[(c·R + r)·KC ..]`, so that within a chunk the `R` operands of step `k` sit at constant
/// offsets `r·KC` from one pointer: with one pointer per row (16 rows) the registers ran out and
/// the loop reloaded row pointers from the stack on every step.
// Indexing keeps the R accumulators in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn accumulate<S: Simd, const R: usize, const DT: u8>(
    s: S,
    u: *const f32,
    xs: *const f32,
    d: usize,
    widen: &mut Widen<R, DT>,
) -> [S::V; R] {
    let mut acc = [s.zero(); R];
    let mut k0 = 0;
    while k0 < d {
        let kc = KC.min(d - k0);
        let chunk = xs.add(k0 * R);
        for kk in 0..kc {
            let uv = s.load(u.add((k0 + kk) * S::W));
            let x = chunk.add(kk);
            for r in 0..R {
                acc[r] = s.fma(s.splat(x.add(r * KC).read()), uv, acc[r]);
            }
            widen.step(s);
        }
        k0 += KC;
    }
    acc
}

/// `y` for a block of `W` rows, given `col(j)`: interest `j`'s score for each of the rows (the
/// block's score vectors transposed). The mode is then plain lane-wise arithmetic over `n`
/// vectors — no horizontal reductions, no padding lanes — and the `W` outputs store at once.
#[inline(always)]
pub(crate) unsafe fn finish_columns<S: Simd>(
    s: S,
    q: &ScoreLayout<'_>,
    col: impl Fn(usize) -> S::V,
    out: *mut f32,
) {
    // Plain loops, no iterator adaptors: a closure handed to a std function (e.g. `fold`) that
    // is not inlined is compiled without the level's features, and every intrinsic inside it
    // becomes a call (measured: a third of the AVX-512 scoring time).
    let n = q.n;
    let y = match q.mode {
        ScoreMode::Mean => {
            let mut sum = col(0);
            for j in 1..n {
                sum = s.add(sum, col(j));
            }
            s.div(sum, s.splat(n as f32))
        }
        ScoreMode::Max => {
            let mut m = col(0);
            for j in 1..n {
                m = s.max(m, col(j));
            }
            m
        }
        ScoreMode::Softmax => {
            let mut m = col(0);
            for j in 1..n {
                m = s.max(m, col(j));
            }
            let (mut num, mut den) = (s.zero(), s.zero());
            for j in 0..n {
                let x = col(j);
                let e = s.exp(s.sub(x, m));
                num = s.fma(e, x, num);
                den = s.add(den, e);
            }
            s.div(num, den)
        }
    };
    s.store(out, y);
}

/// `y` from one row's `nv` score vectors, by mode (SPEC §1.5). Softmax subtracts the max first,
/// so no `exp` overflows and the largest weight is exactly 1.
#[inline(always)]
unsafe fn finish<S: Simd>(s: S, q: &ScoreLayout<'_>, sv: *const f32) -> f32 {
    let pad = q.pad.as_ptr();
    match q.mode {
        ScoreMode::Mean => {
            // Padding lanes hold exactly 0 (their X^U column is 0).
            let mut acc = s.zero();
            for v in 0..q.nv {
                acc = s.add(acc, s.load(sv.add(v * S::W)));
            }
            s.reduce_add(acc) / q.n as f32
        }
        ScoreMode::Max => {
            let mut mx = s.splat(f32::NEG_INFINITY);
            for v in 0..q.nv {
                let x = s.add(s.load(sv.add(v * S::W)), s.load(pad.add(v * S::W)));
                mx = s.max(mx, x);
            }
            s.reduce_max(mx)
        }
        ScoreMode::Softmax => {
            let mut mx = s.splat(f32::NEG_INFINITY);
            for v in 0..q.nv {
                let x = s.add(s.load(sv.add(v * S::W)), s.load(pad.add(v * S::W)));
                mx = s.max(mx, x);
            }
            let m = s.splat(s.reduce_max(mx));
            let (mut num, mut den) = (s.zero(), s.zero());
            for v in 0..q.nv {
                let x = s.load(sv.add(v * S::W));
                // Padding lanes: exp(-inf) ≈ 1e-38 against a denominator ≥ 1, times s = 0.
                let e = s.exp(s.sub(s.add(x, s.load(pad.add(v * S::W))), m));
                num = s.fma(e, x, num);
                den = s.add(den, e);
            }
            s.reduce_add(num) / s.reduce_add(den)
        }
    }
}

/// `Σ a_i b_i` over `len` elements, four independent accumulators.
#[inline(always)]
pub(crate) unsafe fn dot<S: Simd>(s: S, a: *const f32, b: *const f32, len: usize) -> f32 {
    let w = S::W;
    let mut acc = [s.zero(); 4];
    let mut i = 0;
    while i + 4 * w <= len {
        for (u, a_u) in acc.iter_mut().enumerate() {
            let o = i + u * w;
            *a_u = s.fma(s.load(a.add(o)), s.load(b.add(o)), *a_u);
        }
        i += 4 * w;
    }
    while i + w <= len {
        acc[0] = s.fma(s.load(a.add(i)), s.load(b.add(i)), acc[0]);
        i += w;
    }
    if i < len {
        let r = len - i;
        acc[1] = s.fma(
            s.load_partial(a.add(i), r),
            s.load_partial(b.add(i), r),
            acc[1],
        );
    }
    s.reduce_add(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])))
}

/// In-place `x ← softmax(x)` with max subtraction.
#[inline(always)]
pub(crate) unsafe fn softmax_inplace<S: Simd>(s: S, x: *mut f32, len: usize) {
    if len == 0 {
        return;
    }
    let w = S::W;
    let full = len / w * w;
    let mut mx = s.splat(f32::NEG_INFINITY);
    let mut i = 0;
    while i < full {
        mx = s.max(mx, s.load(x.add(i)));
        i += w;
    }
    let mut m = s.reduce_max(mx);
    for t in full..len {
        m = m.max(*x.add(t));
    }
    let mv = s.splat(m);
    let mut sum = s.zero();
    i = 0;
    while i < full {
        let e = s.exp(s.sub(s.load(x.add(i)), mv));
        s.store(x.add(i), e);
        sum = s.add(sum, e);
        i += w;
    }
    let mut total = s.reduce_add(sum);
    if full < len {
        let r = len - full;
        let e = s.exp(s.sub(s.load_partial(x.add(full), r), mv));
        s.store_partial(x.add(full), e, r);
        for t in full..len {
            total += *x.add(t);
        }
    }
    let inv = s.splat(1.0 / total);
    i = 0;
    while i < full {
        s.store(x.add(i), s.mul(s.load(x.add(i)), inv));
        i += w;
    }
    for t in full..len {
        *x.add(t) *= 1.0 / total;
    }
}
