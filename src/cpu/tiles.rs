//! Candidate rows scored in tiles of 2 rows × 8 interests (AVX-512, `n ≤ 16`): each FMA
//! multiplies two rows' element `k` (one 8-byte broadcast, lane `2l + b` = row `b`) by eight
//! interests' element `k` (lane `2l + b` = interest `l`), so a step over `k` of 16 rows × 16
//! interests is 16 FMAs fed by 8 + 2 vector loads — against 16 broadcast loads + 1 in the
//! interleaved kernel (`simd::score_rows`), whose loop runs at ~85% of the FMA peak where this
//! one runs at it. The next block's rows are widened inside the loop, two rows × 16 elements
//! every two steps, into the layout the broadcasts read (2 unpacks per 16 elements); the scores
//! come out as pairs of rows, one 8 × 8 transpose of 64-bit pairs (24 shuffles) per group of 8
//! interests from the columns `finish_columns` takes. Per request the interests take `2 · G ·
//! 16 · D` floats (16 KiB at n = 16, D = 128) and a block of widened rows `16 · D` (8 KiB, two
//! of them): the loop's data stays inside a 48 KiB L1.
//!
//! `D` is padded to a multiple of 16 with zeros (masked loads: nothing past a row is read).
//! Every score is the same FMA chain over `k` as the interleaved kernel's (and, for I8 rows,
//! the same product by the row's scale; the padding adds exact zeros), so the two give the
//! same values.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx512::Avx512;
use super::simd::{
    dtype_of, finish_columns, in_range_prefix, load_elems, prefetch_rows, RawRows, ScoreLayout,
    Staged, DT_BF16, DT_F16, DT_F32, DT_I8,
};
use crate::tensor::DType;

/// Rows per block (eight pairs).
const ROWS: usize = 16;
/// Elements per chunk: one pair's widening.
const KC: usize = 16;

/// The interests laid out for [`score_tiles`] (`lanes` = 16) and `tiles_avx2::score_tiles`
/// (`lanes` = 8): for each element `k` (`D` padded to a multiple of `lanes`) and group `g` of
/// `lanes / 2` interests, `lanes` floats at `(k·G + g)·lanes`, lane `2l + b` holding
/// `u_{g·lanes/2 + l}[k]` (zero past `n` and past `D`).
#[derive(Debug, Clone)]
pub(crate) struct TileLayout {
    pub(crate) groups: usize,
    pub(crate) u: Vec<f32>,
}

impl TileLayout {
    /// `xu` is `n × d` row-major; `None` where the kernels do not run (`n` not in `1..=16`,
    /// `d = 0`, `lanes` not 8 or 16).
    pub(crate) fn new(xu: &[f32], n: usize, d: usize, lanes: usize) -> Option<TileLayout> {
        if !(1..=16).contains(&n) || d == 0 || xu.len() != n * d || !matches!(lanes, 8 | 16) {
            return None;
        }
        let per = lanes / 2;
        let groups = n.div_ceil(per);
        let mut u = vec![0.0f32; d.next_multiple_of(lanes) * groups * lanes];
        for j in 0..n {
            let (g, l) = (j / per, j % per);
            for k in 0..d {
                let at = (k * groups + g) * lanes + 2 * l;
                u[at..at + 2].fill(xu[j * d + k]);
            }
        }
        Some(TileLayout { groups, u })
    }
}

/// Whether this CPU runs [`score_tiles`]: the AVX-512 level and AVX-512 BW (masked 8- and
/// 16-bit loads of a row's last chunk).
pub(crate) fn supported() -> bool {
    super::Level::Avx512.is_supported() && is_x86_feature_detected!("avx512bw")
}

/// `blocks::<G, DT>(args)` with the store's dtype (`src.dtype` among the arguments' names) as
/// the constant `DT`: the tile kernels' dispatch, shared with `tiles_avx2`.
macro_rules! by_dtype {
    ($f:ident::<$g:literal>($l:expr, $q:expr, $src:expr, $($a:expr),*)) => {
        match $src.dtype {
            DType::F16 => $f::<$g, DT_F16>($l, $q, $src, $($a),*),
            DType::BF16 => $f::<$g, DT_BF16>($l, $q, $src, $($a),*),
            DType::F32 => $f::<$g, DT_F32>($l, $q, $src, $($a),*),
            DType::I8 => $f::<$g, DT_I8>($l, $q, $src, $($a),*),
        }
    };
}
pub(crate) use by_dtype;

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
/// built for `q.n` interests of `q.d` elements.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,f16c")]
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
        "score_tiles: scratch too small"
    );
    let (m, res) = in_range_prefix(rows, src.rows);
    if m > 0 {
        let (rows, out) = (&rows[..m], &mut out[..m]);
        // SAFETY: as the caller promises; every index below `m` is in range. The group count
        // and the dtype become constants, so the accumulators and the widening are fixed code.
        unsafe {
            match l.groups {
                1 => by_dtype!(blocks::<1>(l, q, src, rows, out, scratch)),
                _ => by_dtype!(blocks::<2>(l, q, src, rows, out, scratch)),
            }
        }
    }
    res
}

/// One block's rows (a short block padded, results dropped: `Staged`).
type Block = Staged<ROWS>;

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

/// Widens elements `16c .. 16c + len` of the block's rows `2p, 2p + 1` into `dst` (32 floats):
/// element `16c + e` of row `b` at [`pair_at`]`(e) + b`, zero past `len`.
#[inline(always)]
unsafe fn widen_pair<const DT: u8>(b: &Block, p: usize, c: usize, len: usize, dst: *mut f32) {
    let k = c * KC;
    let r0 = load_part::<DT>(b.ptrs[2 * p], k, len);
    let r1 = load_part::<DT>(b.ptrs[2 * p + 1], k, len);
    // 128-bit lane `q`: elements `4q, 4q + 1` (low) and `4q + 2, 4q + 3` (high), rows interleaved.
    _mm512_storeu_ps(dst, _mm512_unpacklo_ps(r0, r1));
    _mm512_storeu_ps(dst.add(16), _mm512_unpackhi_ps(r0, r1));
}

/// Where [`widen_pair`] puts element `e` (of 16) of a pair's two rows: the low or high unpack,
/// its 128-bit lane `e / 4`, first or second pair in it.
#[inline(always)]
const fn pair_at(e: usize) -> usize {
    (e % 4 / 2) * 16 + (e / 4) * 4 + (e % 2) * 2
}

/// Widens a whole block (the first one, before the loop).
#[inline(always)]
unsafe fn widen_block<const DT: u8>(b: &Block, d: usize, dst: *mut f32) {
    for c in 0..d.div_ceil(KC) {
        for p in 0..ROWS / 2 {
            widen_pair::<DT>(b, p, c, KC.min(d - c * KC), dst.add((c * 8 + p) * 32));
        }
    }
}

/// An 8 × 8 transpose of 64-bit elements: `out[l]` lane `p` is `a[p]` lane `l`.
#[inline(always)]
unsafe fn transpose_pairs(a: [__m512; 8]) -> [__m512; 8] {
    let a: [__m512d; 8] = std::array::from_fn(|i| _mm512_castps_pd(a[i]));
    let t: [__m512d; 8] = std::array::from_fn(|i| {
        let (x, y) = (a[i & !1], a[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_pd(x, y)
        } else {
            _mm512_unpackhi_pd(x, y)
        }
    });
    // u[0..4] from t[0..4]: lanes {0, 4}, {2, 6}, {1, 5}, {3, 7} of rows 0–3; u[4..8] rows 4–7.
    let u = [
        _mm512_shuffle_f64x2::<0x88>(t[0], t[2]),
        _mm512_shuffle_f64x2::<0xdd>(t[0], t[2]),
        _mm512_shuffle_f64x2::<0x88>(t[1], t[3]),
        _mm512_shuffle_f64x2::<0xdd>(t[1], t[3]),
        _mm512_shuffle_f64x2::<0x88>(t[4], t[6]),
        _mm512_shuffle_f64x2::<0xdd>(t[4], t[6]),
        _mm512_shuffle_f64x2::<0x88>(t[5], t[7]),
        _mm512_shuffle_f64x2::<0xdd>(t[5], t[7]),
    ];
    let c = [
        _mm512_shuffle_f64x2::<0x88>(u[0], u[4]),
        _mm512_shuffle_f64x2::<0x88>(u[2], u[6]),
        _mm512_shuffle_f64x2::<0x88>(u[1], u[5]),
        _mm512_shuffle_f64x2::<0x88>(u[3], u[7]),
        _mm512_shuffle_f64x2::<0xdd>(u[0], u[4]),
        _mm512_shuffle_f64x2::<0xdd>(u[2], u[6]),
        _mm512_shuffle_f64x2::<0xdd>(u[1], u[5]),
        _mm512_shuffle_f64x2::<0xdd>(u[3], u[7]),
    ];
    std::array::from_fn(|i| _mm512_castpd_ps(c[i]))
}

/// The rows in blocks of [`ROWS`]: block `i + 1` widened during block `i`'s FMA loop, rows
/// prefetched two blocks ahead (as `simd::score_rows`).
// Indexing keeps the accumulators, pairs and groups in step.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,f16c")]
unsafe fn blocks<const G: usize, const DT: u8>(
    l: &TileLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let s = Avx512;
    let (m, d) = (rows.len(), q.d);
    let chunks = d.div_ceil(KC);
    // Two widened blocks in `scratch`, `16 · D` floats each (`D` padded).
    let half = scratch_len(d) / 2;
    let bufs = [scratch.as_mut_ptr(), scratch.as_mut_ptr().add(half)];
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
        let mut acc = [[_mm512_setzero_ps(); 8]; G];
        for c in 0..chunks {
            let xc = xs.add(c * 8 * 32);
            let len = KC.min(d - c * KC);
            for p2 in 0..8 {
                if let Some(n) = &next {
                    widen_pair::<DT>(n, p2, c, len, nx.add((c * 8 + p2) * 32));
                }
                for e1 in 0..2 {
                    let e = 2 * p2 + e1;
                    let k = c * KC + e;
                    let x: [__m512; 8] = std::array::from_fn(|p| {
                        let at = xc.add(p * 32 + pair_at(e)).cast::<f64>();
                        _mm512_castpd_ps(_mm512_set1_pd(at.read_unaligned()))
                    });
                    let uk = u.add(k * G * 16);
                    for g in 0..G {
                        let uv = _mm512_loadu_ps(uk.add(g * 16));
                        for p in 0..8 {
                            acc[g][p] = _mm512_fmadd_ps(x[p], uv, acc[g][p]);
                        }
                    }
                }
            }
        }
        if DT == DT_I8 {
            // I8: each row's scale, once, on its scores (lane `2l + b` is row `2p + b`).
            for p in 0..8 {
                let pair = cur.sc.as_ptr().add(2 * p).cast::<f64>().read_unaligned();
                let sv = _mm512_castpd_ps(_mm512_set1_pd(pair));
                for g in 0..G {
                    acc[g][p] = _mm512_mul_ps(acc[g][p], sv);
                }
            }
        }
        // Columns: interest `8g + l` over the block's 16 rows = pair `l` of each of
        // `acc[g][0..8]` (an 8 × 8 transpose of 64-bit pairs).
        let mut cols = [_mm512_setzero_ps(); 16];
        for g in 0..G {
            let t = transpose_pairs(acc[g]);
            cols[8 * g..8 * g + 8].copy_from_slice(&t);
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
