//! Candidate rows scored in 4 × 4 tiles (AVX-512, `n ≤ 16`): each FMA multiplies
//! four rows' element `k` (one 16-byte broadcast, lane `4l + b` = row `b`) by four interests'
//! element `k` (lane `4l + b` = interest `l`), so a step over `k` of 16 rows × 16 interests is
//! 16 FMAs fed by 4 + 4 vector loads — against 16 broadcast loads + 1 in the interleaved kernel
//! (`simd::score_rows`), whose loop runs at ~85% of the FMA peak where this one runs at it.
//! The next block's rows are widened inside the loop, four rows × 16 elements every four steps,
//! into the layout the broadcasts read (a 4 × 4 transpose per 16 elements, 8 shuffles); the
//! scores come out as four 4 × 4 blocks of 128-bit lanes per interest group, one lane transpose
//! (8 shuffles) from the columns `finish_columns` takes.
//!
//! `D` is padded to a multiple of 16 with zeros (masked loads: nothing past a row is read).
//! Every score is the same FMA chain over `k` as the interleaved kernel's (and, for I8 rows,
//! the same product by the row's scale; the padding adds exact zeros), so the two give the
//! same values.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx512::Avx512;
use super::simd::{
    finish_columns, first_out_of_range, load_elems, prefetch_rows, RawRows, ScoreLayout,
};
use crate::tensor::DType;

/// Rows per block (four quads).
const ROWS: usize = 16;
/// Elements per chunk: one quad's 4 × 16 transpose.
const KC: usize = 16;

/// The interests laid out for [`score_tiles`]: for each element `k` (`D` padded to a multiple
/// of 16) and group `g` of four interests, 16 floats at `(k·G + g)·16`, lane `4l + b` holding
/// `u_{4g+l}[k]` (zero past `n` and past `D`).
#[derive(Debug, Clone)]
pub(crate) struct TileLayout {
    groups: usize,
    u: Vec<f32>,
}

impl TileLayout {
    /// `xu` is `n × d` row-major; `None` where the kernel does not run (`n` not in `1..=16`,
    /// `d = 0`).
    pub(crate) fn new(xu: &[f32], n: usize, d: usize) -> Option<TileLayout> {
        if !(1..=16).contains(&n) || d == 0 || xu.len() != n * d {
            return None;
        }
        let groups = n.div_ceil(4);
        let mut u = vec![0.0f32; d.next_multiple_of(KC) * groups * 16];
        for j in 0..n {
            let (g, l) = (j / 4, j % 4);
            for k in 0..d {
                let at = (k * groups + g) * 16 + 4 * l;
                u[at..at + 4].fill(xu[j * d + k]);
            }
        }
        Some(TileLayout { groups, u })
    }
}

/// Whether this CPU runs [`score_tiles`].
pub(crate) fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Scores `rows` of `src` into `out` (same length) as [`super::simd::score_rows`] does, with
/// `q`'s mode and `n`. Returns the position of the first row index out of range, leaving that
/// output and later ones unwritten.
///
/// # Safety
/// [`supported`] is true; `src` holds whole rows of `q.d` elements (I8 rows with scales); `l` was
/// built for `q.n` interests of `q.d` elements.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,f16c")]
pub(crate) unsafe fn score_tiles(
    l: &TileLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
) -> Result<(), usize> {
    debug_assert_eq!(rows.len(), out.len());
    let bad = first_out_of_range(rows, src.rows);
    let m = bad.unwrap_or(rows.len());
    if m > 0 {
        let (rows, out) = (&rows[..m], &mut out[..m]);
        // SAFETY: as the caller promises; every index below `m` is in range. The group count
        // and the dtype become constants, so the accumulators and the widening are fixed code.
        unsafe {
            macro_rules! by_dtype {
                ($g:literal) => {
                    match src.dtype {
                        DType::F16 => blocks::<$g, 1>(l, q, src, rows, out),
                        DType::BF16 => blocks::<$g, 2>(l, q, src, rows, out),
                        DType::F32 => blocks::<$g, 0>(l, q, src, rows, out),
                        DType::I8 => blocks::<$g, 3>(l, q, src, rows, out),
                    }
                };
            }
            match l.groups {
                1 => by_dtype!(1),
                2 => by_dtype!(2),
                3 => by_dtype!(3),
                _ => by_dtype!(4),
            }
        }
    }
    match bad {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// The dtype of a `DT` parameter (`DType` cannot be a const parameter).
#[inline(always)]
const fn dtype_of(dt: u8) -> DType {
    match dt {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::BF16,
        _ => DType::I8,
    }
}

/// One block's rows: where each starts and (I8) its scale; a short block repeats its first row.
struct Block {
    ptr: [*const u8; ROWS],
    sc: [f32; ROWS],
}

impl Block {
    #[inline(always)]
    unsafe fn new(src: RawRows, rows: &[u32]) -> Block {
        let mut b = Block {
            ptr: [src.base; ROWS],
            sc: [1.0; ROWS],
        };
        for r in 0..ROWS {
            let row = rows[if r < rows.len() { r } else { 0 }] as usize;
            b.ptr[r] = src.base.add(row * src.row_stride);
            if !src.scales.is_null() {
                b.sc[r] =
                    f32::from_le_bytes(src.scales.add(4 * row).cast::<[u8; 4]>().read_unaligned());
            }
        }
        b
    }
}

/// Elements `k .. k + len` (`len ≤ 16`) of a row, widened; zeros past `len`, nothing read there.
#[inline(always)]
unsafe fn load_part<const DT: u8>(row: *const u8, k: usize, len: usize) -> __m512 {
    if len == KC {
        return load_elems(Avx512, dtype_of(DT), row, k);
    }
    let m = ((1u32 << len) - 1) as __mmask16;
    match dtype_of(DT) {
        DType::F32 => _mm512_maskz_loadu_ps(m, row.cast::<f32>().add(k)),
        DType::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row.add(2 * k).cast())),
        DType::BF16 => {
            let w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row.add(2 * k).cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
        }
        DType::I8 => _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(
            m,
            row.add(k).cast(),
        ))),
    }
}

/// Widens elements `16c .. 16c + len` of the block's rows `4h .. 4h + 4` into `dst` (64
/// floats): vector `e % 4` lane `e / 4` holds element `16c + e` of the four rows (row `b` at
/// `b`), zero past `len`.
#[inline(always)]
unsafe fn widen_quad<const DT: u8>(b: &Block, h: usize, c: usize, len: usize, dst: *mut f32) {
    let k = c * KC;
    let r0 = load_part::<DT>(b.ptr[4 * h], k, len);
    let r1 = load_part::<DT>(b.ptr[4 * h + 1], k, len);
    let r2 = load_part::<DT>(b.ptr[4 * h + 2], k, len);
    let r3 = load_part::<DT>(b.ptr[4 * h + 3], k, len);
    let t0 = _mm512_castps_pd(_mm512_unpacklo_ps(r0, r1));
    let t1 = _mm512_castps_pd(_mm512_unpackhi_ps(r0, r1));
    let t2 = _mm512_castps_pd(_mm512_unpacklo_ps(r2, r3));
    let t3 = _mm512_castps_pd(_mm512_unpackhi_ps(r2, r3));
    _mm512_storeu_ps(dst, _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2)));
    _mm512_storeu_ps(dst.add(16), _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2)));
    _mm512_storeu_ps(dst.add(32), _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3)));
    _mm512_storeu_ps(dst.add(48), _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3)));
}

/// Widens a whole block (the first one, before the loop).
#[inline(always)]
unsafe fn widen_block<const DT: u8>(b: &Block, d: usize, dst: *mut f32) {
    for c in 0..d.div_ceil(KC) {
        for h in 0..4 {
            widen_quad::<DT>(b, h, c, KC.min(d - c * KC), dst.add((c * 4 + h) * 64));
        }
    }
}

/// The rows in blocks of [`ROWS`]: block `i + 1` widened during block `i`'s FMA loop, rows
/// prefetched two blocks ahead (as `simd::score_rows`).
// Indexing keeps the accumulators, quads and groups in step.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,f16c")]
unsafe fn blocks<const G: usize, const DT: u8>(
    l: &TileLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
) {
    let s = Avx512;
    let (m, d) = (rows.len(), q.d);
    let chunks = d.div_ceil(KC);
    // Two widened blocks, `16 · D` floats each (`D` padded).
    let half = chunks * KC * ROWS;
    let mut buf = vec![0.0f32; 2 * half];
    let bufs = [buf.as_mut_ptr(), buf.as_mut_ptr().add(half)];
    let u = l.u.as_ptr();
    let mut y = [0.0f32; ROWS];
    prefetch_rows(s, src, rows, 0, 2 * ROWS, q.prefetch_l2);
    let mut cur = Block::new(src, &rows[..ROWS.min(m)]);
    widen_block::<DT>(&cur, d, bufs[0]);
    for (b, i) in (0..m).step_by(ROWS).enumerate() {
        let end = (i + ROWS).min(m);
        prefetch_rows(s, src, rows, i + 2 * ROWS, ROWS, q.prefetch_l2);
        let next = (end < m).then(|| Block::new(src, &rows[end..(end + ROWS).min(m)]));
        let xs = bufs[b % 2];
        let nx = bufs[(b + 1) % 2];
        let mut acc = [[_mm512_setzero_ps(); 4]; G];
        for c in 0..chunks {
            let xc = xs.add(c * 4 * 64);
            let len = KC.min(d - c * KC);
            for e4 in 0..4 {
                if let Some(n) = &next {
                    widen_quad::<DT>(n, e4, c, len, nx.add((c * 4 + e4) * 64));
                }
                for e1 in 0..4 {
                    let e = 4 * e4 + e1;
                    let k = c * KC + e;
                    let x: [__m512; 4] = std::array::from_fn(|h| {
                        _mm512_broadcast_f32x4(_mm_loadu_ps(xc.add(h * 64 + e1 * 16 + e4 * 4)))
                    });
                    let uk = u.add(k * G * 16);
                    for g in 0..G {
                        let uv = _mm512_loadu_ps(uk.add(g * 16));
                        for h in 0..4 {
                            acc[g][h] = _mm512_fmadd_ps(x[h], uv, acc[g][h]);
                        }
                    }
                }
            }
        }
        if DT == 3 {
            // I8: each row's scale, once, on its scores (lane `4l + b` is row `4h + b`).
            for h in 0..4 {
                let sv = _mm512_broadcast_f32x4(_mm_loadu_ps(cur.sc.as_ptr().add(4 * h)));
                for g in 0..G {
                    acc[g][h] = _mm512_mul_ps(acc[g][h], sv);
                }
            }
        }
        // Columns: interest `4g + l` over the block's 16 rows = 128-bit lane `l` of each of
        // `acc[g][0..4]` (a 4 × 4 transpose of 128-bit lanes).
        let mut cols = [_mm512_setzero_ps(); 16];
        for g in 0..G {
            let [a, bb, c, dd] = acc[g];
            let t0 = _mm512_shuffle_f32x4::<0x44>(a, bb);
            let t1 = _mm512_shuffle_f32x4::<0xee>(a, bb);
            let t2 = _mm512_shuffle_f32x4::<0x44>(c, dd);
            let t3 = _mm512_shuffle_f32x4::<0xee>(c, dd);
            cols[4 * g] = _mm512_shuffle_f32x4::<0x88>(t0, t2);
            cols[4 * g + 1] = _mm512_shuffle_f32x4::<0xdd>(t0, t2);
            cols[4 * g + 2] = _mm512_shuffle_f32x4::<0x88>(t1, t3);
            cols[4 * g + 3] = _mm512_shuffle_f32x4::<0xdd>(t1, t3);
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
    drop(buf);
}
