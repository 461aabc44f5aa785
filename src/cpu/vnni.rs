//! I8 rows scored in integers with AVX-512 VNNI (`vpdpbusd`: 64 byte products per instruction
//! against an F32 FMA's 16), for `n ≤ 16` interests and `D` a multiple of 4.
//!
//! Each interest `u_j` is quantized once per request to 24-bit integers `U_jd = round(u_jd / a_j)`
//! (`a_j = max_d |u_jd| / 8,355,711`), split into three signed bytes (`U = S0·2¹⁶ + S1·2⁸ + S2`,
//! digits in `[-128, 127]`). A row's `q` (its stored bytes) enters as the unsigned `q + 128` (a
//! sign-bit flip), so `Σ_d (q_d + 128)·S_k,jd` is one exact `i32` sum per plane `k`, from which
//! the per-request constant `128·Σ_d S_k,jd` is subtracted. The three sums give
//! `Σ_d q_d U_jd` (two exact integers combined in one F32 FMA), times `a_j` and the row's scale.
//! Error: `U`'s rounding is at most `a_j / 2 = max|u_j| · 6e-8` per element, so
//! `|s_j − s_j(f64)| ≤ 6e-8 · Σ_d |x_d| · max_d |u_jd|` plus three F32 roundings — the order of the
//! F32 kernel's own accumulation error, and inside SPEC §5 wherever that kernel is.
//! (Two planes, 16 bits, would be ~256× that: not within SPEC §5 in the worst case.)

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx512::Avx512;
use super::simd::{
    finish_columns, in_range_prefix, prefetch_rows, RawRows, ScoreLayout, Simd, Staged,
};

/// The largest `|U|`: three balanced base-256 digits reach `127·(2¹⁶ + 2⁸ + 1)`.
const UMAX: f64 = 127.0 * 65793.0;
/// Rows per block (one transposed finish).
const ROWS: usize = 16;
/// Vectors whose three accumulators live in registers at once (24 of the 32).
const SLOTS: usize = 8;

/// The interests as three byte planes, laid out for [`score_i8`]: for each group `g` of four
/// elements and plane `k`, 64 bytes at `(3g + k)·64`, lane `j`'s four bytes being
/// `S_k,j,4g .. 4g+4` (zero for `j ≥ n`). With `n ≤ 8` (`pairs`) lanes `8 + j` repeat lane `j`,
/// so that one vector scores two rows (half the `vpdpbusd`s of 16 lanes with 8 idle).
#[derive(Debug, Clone)]
pub(crate) struct VnniLayout {
    pairs: bool,
    planes: Vec<u8>,
    /// `a_j` per lane (0 past `n`).
    a: [f32; 16],
    /// `128 · Σ_d S_k,jd` per plane and lane.
    c: [[i32; 16]; 3],
}

impl VnniLayout {
    /// `xu` is `n × d` row-major; `None` when the shape does not fit (`n > 16`, `d % 4 != 0`)
    /// or a value is not finite.
    pub(crate) fn new(xu: &[f32], n: usize, d: usize) -> Option<VnniLayout> {
        if n == 0 || n > 16 || d == 0 || !d.is_multiple_of(4) || xu.len() != n * d {
            return None;
        }
        let mut l = VnniLayout {
            pairs: n <= 8,
            planes: vec![0u8; 3 * 16 * d],
            a: [0.0; 16],
            c: [[0; 16]; 3],
        };
        for j in 0..n {
            let u = &xu[j * d..(j + 1) * d];
            if u.iter().any(|v| !v.is_finite()) {
                return None;
            }
            let m = u.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
            if m == 0.0 {
                continue;
            }
            let a = m / UMAX;
            l.a[j] = a as f32;
            if l.a[j] == 0.0 {
                // Below F32's range (|u| < 1e-38): scored as 0, as a zero interest.
                continue;
            }
            // `a_j` as used (F32), so that `a_j · U` is the interest the kernel scores.
            let inv = 1.0 / l.a[j] as f64;
            let mut sums = [0i32; 3];
            for (e, &v) in u.iter().enumerate() {
                // Rounded to nearest (ties even) by adding 1.5·2⁵² (no libm call: the baseline
                // x86-64 target has no rounding instruction); the integer is then the low bits.
                let x = ((v as f64) * inv).clamp(-UMAX, UMAX);
                let big = (x + 6_755_399_441_055_744.0).to_bits() as u32 as i32;
                // Balanced base-256 digits: the bytes of `U + 128·(2¹⁶ + 2⁸ + 1)` (in
                // `[0, 2²⁴)`), each minus 128.
                let t = (big + 128 * 65793) as u32;
                let at = 3 * (e / 4) * 64 + 4 * j + e % 4;
                for (k, sum) in sums.iter_mut().enumerate() {
                    let b = (t >> (16 - 8 * k)) & 255;
                    l.planes[at + 64 * k] = (b ^ 0x80) as u8;
                    *sum += b as i32 - 128;
                }
            }
            for (c, sum) in l.c.iter_mut().zip(sums) {
                c[j] = 128 * sum;
            }
        }
        if l.pairs {
            for g in 0..3 * d / 4 {
                l.planes.copy_within(g * 64..g * 64 + 32, g * 64 + 32);
            }
            l.a.copy_within(0..8, 8);
            for c in &mut l.c {
                c.copy_within(0..8, 8);
            }
        }
        Some(l)
    }
}

/// Whether this CPU runs [`score_i8`].
pub(crate) fn supported() -> bool {
    super::Level::Avx512.is_supported()
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Scores the I8 `rows` of `src` into `out` (same length) as [`super::simd::score_rows`] does,
/// with `q`'s mode and `n`. Returns the position of the first row index out of range, leaving
/// that output and later ones unwritten.
///
/// # Safety
/// [`supported`] is true; `src` is an I8 source with `scales` (whole rows of `src.row_stride ≥
/// d` bytes); `l` was built for `q.n` interests of `q.d` elements.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn score_i8(
    l: &VnniLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
) -> Result<(), usize> {
    debug_assert_eq!(rows.len(), out.len());
    let (m, res) = in_range_prefix(rows, src.rows);
    if m > 0 {
        // SAFETY: as the caller promises; every index below `m` is in range.
        unsafe { score_in_range(l, q, src, &rows[..m], &mut out[..m]) };
    }
    res
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn score_in_range(
    l: &VnniLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
) {
    // SAFETY: forwarded.
    unsafe {
        if l.pairs {
            blocks::<true>(l, q, src, rows, out)
        } else {
            blocks::<false>(l, q, src, rows, out)
        }
    }
}

/// The rows in blocks of [`ROWS`], each scored in passes over `D` of [`SLOTS`] vectors, a vector
/// holding one row (16 interest lanes) or, `PAIR`, two (rows `s` and `s + 8` of the block in
/// lanes 0–7 and 8–15), each with its three plane accumulators in registers.
// Indexing keeps the per-row arrays (pointers, scales, accumulators) in step.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn blocks<const PAIR: bool>(
    l: &VnniLayout,
    q: &ScoreLayout<'_>,
    src: RawRows,
    rows: &[u32],
    out: &mut [f32],
) {
    let s = Avx512;
    let m = rows.len();
    let groups = q.d / 4;
    let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
    let pl = l.planes.as_ptr();
    let a = _mm512_loadu_ps(l.a.as_ptr());
    let c = l.c.map(|c| _mm512_loadu_si512(c.as_ptr().cast()));
    let two16 = _mm512_set1_ps(65536.0);
    // The upper 8 lanes (a pair's second row).
    const HI: __mmask16 = 0xff00;
    let passes = if PAIR { 1 } else { ROWS / SLOTS };
    let mut y = [0.0f32; ROWS];
    // Two blocks ahead, as the F32 kernels (`simd::pipeline`).
    prefetch_rows(s, src, rows, 0, 2 * ROWS, q.prefetch_l2);
    for i in (0..m).step_by(ROWS) {
        let end = (i + ROWS).min(m);
        prefetch_rows(s, src, rows, i + 2 * ROWS, ROWS, q.prefetch_l2);
        // A short last block is padded (`Staged`; results dropped): the same operations for
        // every row wherever the block ends.
        let Staged { ptrs: ptr, sc, .. } = Staged::<ROWS>::new(src, &rows[i..end]);
        let mut sv = [_mm512_setzero_ps(); ROWS];
        for h in 0..passes {
            let p: [*const u8; SLOTS] = std::array::from_fn(|r| ptr[h * SLOTS + r]);
            let p2: [*const u8; SLOTS] = std::array::from_fn(|r| ptr[SLOTS + r]);
            let mut acc = [[_mm512_setzero_si512(); 3]; SLOTS];
            for g in 0..groups {
                let u = pl.add(g * 192);
                let u0 = _mm512_loadu_si512(u.cast());
                let u1 = _mm512_loadu_si512(u.add(64).cast());
                let u2 = _mm512_loadu_si512(u.add(128).cast());
                for r in 0..SLOTS {
                    let x = _mm512_set1_epi32(p[r].add(4 * g).cast::<i32>().read_unaligned());
                    let x = if PAIR {
                        let x2 = p2[r].add(4 * g).cast::<i32>().read_unaligned();
                        _mm512_mask_set1_epi32(x, HI, x2)
                    } else {
                        x
                    };
                    let x = _mm512_xor_si512(x, flip);
                    acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], x, u0);
                    acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], x, u1);
                    acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], x, u2);
                }
            }
            for r in 0..SLOTS {
                let hi = _mm512_sub_epi32(acc[r][0], c[0]);
                let lo = _mm512_add_epi32(
                    _mm512_slli_epi32::<8>(_mm512_sub_epi32(acc[r][1], c[1])),
                    _mm512_sub_epi32(acc[r][2], c[2]),
                );
                let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), two16, _mm512_cvtepi32_ps(lo));
                let row_scale = if PAIR {
                    _mm512_mask_mov_ps(_mm512_set1_ps(sc[r]), HI, _mm512_set1_ps(sc[SLOTS + r]))
                } else {
                    _mm512_set1_ps(sc[h * SLOTS + r])
                };
                sv[h * SLOTS + r] = _mm512_mul_ps(_mm512_mul_ps(v, a), row_scale);
            }
        }
        // Lanes = rows: transposed, column j is interest j's score for the block's 16 rows
        // (pairs: rows 0–7 in the lower half of t[j], rows 8–15 in that of t[8 + j]).
        let t = s.transpose(sv);
        let col = |j: usize| {
            if PAIR {
                _mm512_shuffle_f32x4::<0x44>(t[j], t[SLOTS + j])
            } else {
                t[j]
            }
        };
        if end - i == ROWS {
            finish_columns(s, q, col, out.as_mut_ptr().add(i));
        } else {
            finish_columns(s, q, col, y.as_mut_ptr());
            out[i..end].copy_from_slice(&y[..end - i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `U` back from the layout's three planes for interest `j`, element `e`.
    fn digits(l: &VnniLayout, j: usize, e: usize) -> i64 {
        let s = |k: usize| l.planes[(3 * (e / 4) + k) * 64 + 4 * j + e % 4] as i8 as i64;
        s(0) * 65536 + s(1) * 256 + s(2)
    }

    #[test]
    fn planes_hold_each_interest_to_24_bits() {
        let (n, d) = (3, 8);
        // Extremes (±max, which must reach ±UMAX exactly), zero, tiny and mid values; an
        // all-zero interest.
        let mut xu = vec![0.0f32; n * d];
        xu[..d].copy_from_slice(&[2.5, -2.5, 0.0, 1e-7, -1.25, 0.3, -0.7, 2.4999]);
        xu[2 * d..].copy_from_slice(&[-1e-3, 3e-4, 7e-4, -5e-4, 1e-3, 0.0, 1e-9, -2e-4]);
        // Values whose step would be below F32's range: a zero interest.
        let tiny = VnniLayout::new(&[1e-40, -2e-40, 0.0, 3e-41], 1, 4).unwrap();
        assert_eq!((tiny.a[0], tiny.c[0][0]), (0.0, 0));
        assert!(tiny.planes.iter().all(|&b| b == 0));
        let l = VnniLayout::new(&xu, n, d).unwrap();
        assert_eq!(l.a[1], 0.0);
        assert_eq!(l.a[3..8], [0.0; 5]);
        for j in 0..n {
            let mut sums = [0i64; 3];
            for e in 0..d {
                let u = digits(&l, j, e);
                assert!(u.abs() <= UMAX as i64, "{u}");
                let back = l.a[j] as f64 * u as f64;
                // Within half a step of the interest's value.
                let err = (back - xu[j * d + e] as f64).abs();
                assert!(
                    err <= 0.5 * l.a[j] as f64 * (1.0 + 1e-6),
                    "j={j} e={e}: {err}"
                );
                for (k, sum) in sums.iter_mut().enumerate() {
                    *sum += l.planes[(3 * (e / 4) + k) * 64 + 4 * j + e % 4] as i8 as i64;
                }
            }
            for (c, sum) in l.c.iter().zip(sums) {
                assert_eq!(c[j] as i64, 128 * sum);
            }
        }
        // n ≤ 8: lanes 8–15 repeat lanes 0–7 (a vector scores two rows).
        assert!(l.pairs);
        for g in l.planes.chunks_exact(64) {
            assert_eq!(g[..32], g[32..]);
        }
        assert_eq!(l.a[..8], l.a[8..]);
        assert!(l.c.iter().all(|c| c[..8] == c[8..]));
        assert!(!VnniLayout::new(&[1.0; 9 * 4], 9, 4).unwrap().pairs);
        assert_eq!(digits(&l, 0, 0), UMAX as i64);
        assert_eq!(digits(&l, 0, 1), -(UMAX as i64));
    }

    #[test]
    fn shapes_it_cannot_score_get_no_layout() {
        assert!(VnniLayout::new(&[1.0; 17 * 4], 17, 4).is_none());
        assert!(VnniLayout::new(&[1.0; 6], 1, 6).is_none());
        assert!(VnniLayout::new(&[1.0; 8], 2, 8).is_none());
        assert!(VnniLayout::new(&[f32::NAN; 4], 1, 4).is_none());
        assert!(VnniLayout::new(&[], 0, 4).is_none());
        assert!(VnniLayout::new(&[1.0; 4], 1, 4).is_some());
    }
}
