//! The tile kernel of [`super::tiles`] on AVX2 (8 lanes, 16 vector registers): each FMA
//! multiplies two rows' element `k` (one 8-byte broadcast, lane `2l + b` = row `b`) by four
//! interests' element `k` (lane `2l + b` = interest `l`). A block of 8 rows (four pairs) is
//! scored two pairs at a time over all `k`: `2 · G` accumulators (`G = ⌈n/4⌉ ≤ 4`), two
//! broadcasts and `G` interest loads per step, 11 live vectors at n = 16 — where rows in lanes
//! (`avx2/lanes`) keeps `n` accumulators of 8 rows and runs out of the 16 registers. The next
//! block's rows are widened inside the loop (two pairs × 8 elements per chunk and half), the
//! scores come out as pairs of rows, one 4 × 4 transpose of 64-bit pairs (8 shuffles) per group
//! of four interests gives the columns `finish_columns` takes.
//!
//! `D` is padded to a multiple of 8 with zeros (a row's last partial chunk is copied out first:
//! nothing past a row is read). Every score is the same FMA chain over `k` as the other AVX2
//! kernels' (and, for I8 rows, the same product by the row's scale), so they agree exactly.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx2::Avx2;
use super::simd::{
    dtype_of, finish_columns, in_range_prefix, load_elems, prefetch_rows, RawRows, ScoreLayout,
    Staged, DT_BF16, DT_F16, DT_F32, DT_I8,
};
use super::tiles::{by_dtype, TileLayout};
use crate::tensor::DType;

/// Vector lanes: the [`TileLayout`] this kernel reads is built with `lanes` = 8.
pub(crate) const LANES: usize = 8;
/// Rows per block (four pairs): one column vector of `finish_columns`.
const ROWS: usize = 8;
/// Elements per chunk: one pair's widening.
const KC: usize = 8;
/// Blocks between a row's prefetch and its scoring: 32 rows ahead, as the AVX-512 kernel's
/// two blocks of 16.
const AHEAD: usize = 4;

/// Whether this CPU runs [`score_tiles`]: the AVX2 level (AVX2, FMA, F16C).
pub(crate) fn supported() -> bool {
    super::Level::Avx2.is_supported()
}

/// Floats of scratch [`score_tiles`] needs for rows of `d` elements: two widened blocks.
pub(crate) fn scratch_len(d: usize) -> usize {
    2 * ROWS * d.next_multiple_of(KC)
}

/// Scores `rows` of `src` into `out` (same length) as [`super::simd::score_rows`] does, with
/// `q`'s mode and `n`; `scratch` holds [`scratch_len`]`(q.d)` floats. Returns the position of the
/// first row index out of range, leaving that output and later ones unwritten.
///
/// # Safety
/// [`supported`] is true; `src` holds whole rows of `q.d` elements (I8 rows with scales); `l` was
/// built for `q.n` interests of `q.d` elements with [`LANES`] lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn score_tiles(
    l: &TileLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), usize> {
    debug_assert_eq!(rows.len(), out.len());
    assert!(
        scratch.len() >= scratch_len(q.d),
        "score_tiles (avx2): scratch too small"
    );
    let (m, res) = in_range_prefix(rows, src.rows);
    if m > 0 {
        let (rows, out) = (&rows[..m], &mut out[..m]);
        // SAFETY: as the caller promises; every index below `m` is in range. The group count
        // and the dtype become constants, so the accumulators and the widening are fixed code.
        unsafe {
            match l.groups {
                1 => by_dtype!(blocks::<1>(l, q, src, rows, out, scratch)),
                2 => by_dtype!(blocks::<2>(l, q, src, rows, out, scratch)),
                3 => by_dtype!(blocks::<3>(l, q, src, rows, out, scratch)),
                _ => by_dtype!(blocks::<4>(l, q, src, rows, out, scratch)),
            }
        }
    }
    res
}

/// One block's rows (a short block padded, results dropped: `Staged`).
type Block = Staged<ROWS>;

/// Elements `k .. k + len` (`len ≤ 8`) of a row, widened; zeros past `len`, nothing read there.
#[inline(always)]
unsafe fn load_part<const DT: u8>(row: *const u8, k: usize, len: usize) -> __m256 {
    let dtype = dtype_of(DT);
    if len == KC {
        return load_elems(Avx2, dtype, row, k);
    }
    // A row's last, partial chunk (D % 8 ≠ 0): AVX2 has no masked 8- or 16-bit loads.
    let size = dtype.size();
    let mut part = [0u8; 4 * KC];
    std::ptr::copy_nonoverlapping(row.add(k * size), part.as_mut_ptr(), len * size);
    load_elems(Avx2, dtype, part.as_ptr(), 0)
}

/// Widens elements `8c .. 8c + len` of the block's rows `2p, 2p + 1` into `dst` (16 floats):
/// element `8c + e` of row `b` at [`pair_at`]`(e) + b`, zero past `len`.
#[inline(always)]
unsafe fn widen_pair<const DT: u8>(b: &Block, p: usize, c: usize, len: usize, dst: *mut f32) {
    let k = c * KC;
    let r0 = load_part::<DT>(b.ptrs[2 * p], k, len);
    let r1 = load_part::<DT>(b.ptrs[2 * p + 1], k, len);
    // 128-bit lane `q`: elements `4q, 4q + 1` (low) and `4q + 2, 4q + 3` (high), rows interleaved.
    _mm256_storeu_ps(dst, _mm256_unpacklo_ps(r0, r1));
    _mm256_storeu_ps(dst.add(8), _mm256_unpackhi_ps(r0, r1));
}

/// Where [`widen_pair`] puts element `e` (of 8) of a pair's two rows: the low or high unpack,
/// its 128-bit lane `e / 4`, first or second pair in it.
#[inline(always)]
const fn pair_at(e: usize) -> usize {
    (e % 4 / 2) * 8 + (e / 4) * 4 + (e % 2) * 2
}

/// Widens a whole block (the first one, before the loop).
#[inline(always)]
unsafe fn widen_block<const DT: u8>(b: &Block, d: usize, dst: *mut f32) {
    for c in 0..d.div_ceil(KC) {
        for p in 0..ROWS / 2 {
            widen_pair::<DT>(b, p, c, KC.min(d - c * KC), dst.add((c * 4 + p) * 16));
        }
    }
}

/// A 4 × 4 transpose of 64-bit elements: `out[l]` lane `p` is `a[p]` lane `l`.
#[inline(always)]
unsafe fn transpose_pairs(a: [__m256; 4]) -> [__m256; 4] {
    let a: [__m256d; 4] = std::array::from_fn(|i| _mm256_castps_pd(a[i]));
    let t0 = _mm256_unpacklo_pd(a[0], a[1]);
    let t1 = _mm256_unpackhi_pd(a[0], a[1]);
    let t2 = _mm256_unpacklo_pd(a[2], a[3]);
    let t3 = _mm256_unpackhi_pd(a[2], a[3]);
    [
        _mm256_permute2f128_pd::<0x20>(t0, t2),
        _mm256_permute2f128_pd::<0x20>(t1, t3),
        _mm256_permute2f128_pd::<0x31>(t0, t2),
        _mm256_permute2f128_pd::<0x31>(t1, t3),
    ]
    .map(|v| _mm256_castpd_ps(v))
}

/// The rows in blocks of [`ROWS`]: block `i + 1` widened during block `i`'s FMA loops, rows
/// prefetched [`AHEAD`] blocks ahead.
// Indexing keeps the accumulators, pairs and groups in step.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks<const G: usize, const DT: u8>(
    l: &TileLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let s = Avx2;
    let (m, d) = (rows.len(), q.d);
    let chunks = d.div_ceil(KC);
    // Two widened blocks in `scratch`, `8 · D` floats each (`D` padded).
    let half = scratch_len(d) / 2;
    let bufs = [scratch.as_mut_ptr(), scratch.as_mut_ptr().add(half)];
    let u = l.u.as_ptr();
    let mut y = [0.0f32; ROWS];
    prefetch_rows(s, src, rows, 0, AHEAD * ROWS, q.prefetch_l2);
    let mut cur = Block::new(src, &rows[..ROWS.min(m)]);
    widen_block::<DT>(&cur, d, bufs[0]);
    for (b, i) in (0..m).step_by(ROWS).enumerate() {
        let end = (i + ROWS).min(m);
        prefetch_rows(s, src, rows, i + AHEAD * ROWS, ROWS, q.prefetch_l2);
        let next = (end < m).then(|| Block::new(src, &rows[end..(end + ROWS).min(m)]));
        let xs = bufs[b % 2];
        let nx = bufs[(b + 1) % 2];
        // Pair `p`'s scores of group `g` (lane `2l + b`: row `2p + b`, interest `4g + l`).
        let mut pairs = [[_mm256_setzero_ps(); 4]; G];
        for h in 0..2 {
            let mut acc = [[_mm256_setzero_ps(); 2]; G];
            for c in 0..chunks {
                let xc = xs.add(c * 4 * 16 + 2 * h * 16);
                let len = KC.min(d - c * KC);
                if let Some(n) = &next {
                    for p in 2 * h..2 * h + 2 {
                        widen_pair::<DT>(n, p, c, len, nx.add((c * 4 + p) * 16));
                    }
                }
                for e in 0..KC {
                    let k = c * KC + e;
                    let x: [__m256; 2] = std::array::from_fn(|t| {
                        let at = xc.add(t * 16 + pair_at(e)).cast::<f64>();
                        _mm256_castpd_ps(_mm256_set1_pd(at.read_unaligned()))
                    });
                    let uk = u.add(k * G * LANES);
                    for g in 0..G {
                        let uv = _mm256_loadu_ps(uk.add(g * LANES));
                        for t in 0..2 {
                            acc[g][t] = _mm256_fmadd_ps(x[t], uv, acc[g][t]);
                        }
                    }
                }
            }
            for g in 0..G {
                pairs[g][2 * h] = acc[g][0];
                pairs[g][2 * h + 1] = acc[g][1];
            }
        }
        if DT == DT_I8 {
            // I8: each row's scale, once, on its scores (lane `2l + b` is row `2p + b`).
            for p in 0..4 {
                let pair = cur.sc.as_ptr().add(2 * p).cast::<f64>().read_unaligned();
                let sv = _mm256_castpd_ps(_mm256_set1_pd(pair));
                for g in 0..G {
                    pairs[g][p] = _mm256_mul_ps(pairs[g][p], sv);
                }
            }
        }
        // Columns: interest `4g + l` over the block's 8 rows = pair `l` of each of
        // `pairs[g][0..4]` (a 4 × 4 transpose of 64-bit pairs).
        let mut cols = [_mm256_setzero_ps(); 16];
        for g in 0..G {
            let t = transpose_pairs(pairs[g]);
            cols[4 * g..4 * g + 4].copy_from_slice(&t);
        }
        if end - i == ROWS {
            finish_columns(s, q, |j| cols[j], out.as_mut_ptr().add(i));
        } else {
            finish_columns(s, q, |j| cols[j], y.as_mut_ptr());
            out[i..end].copy_from_slice(&y[..end - i]);
        }
        if let Some(n) = next {
            cur = n;
        }
    }
}
