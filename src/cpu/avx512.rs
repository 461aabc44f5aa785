//! x86-64 AVX-512F (with AVX2 + FMA + F16C): 16 lanes. F16 rows widen with the 512-bit
//! `vcvtph2ps`, I8 rows with `vpmovsxbd` + `vcvtdq2ps` (16 per 128-bit load); tails use mask
//! registers instead of blend tables.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::simd::{transpose_via_memory, Simd};

#[derive(Clone, Copy)]
pub(crate) struct Avx512;

#[inline(always)]
fn mask(len: usize) -> __mmask16 {
    ((1u32 << len) - 1) as __mmask16
}

impl Simd for Avx512 {
    const W: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn zero(self) -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(self, x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, len: usize) -> __m512 {
        // Masked-off lanes are not read (no fault past `len`).
        _mm512_maskz_loadu_ps(mask(len), p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, v: __m512, len: usize) {
        _mm512_mask_storeu_ps(p, mask(len), v)
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> __m512 {
        let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
    }
    /// 16 integers: one 128-bit load, sign-extended to 16 × i32 and converted.
    #[inline(always)]
    unsafe fn load_i8(self, p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
    }
    #[inline(always)]
    unsafe fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(self, a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(self, a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(self, a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(self, a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(self, a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(self, a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn reduce_add(self, v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    #[inline(always)]
    unsafe fn reduce_max(self, v: __m512) -> f32 {
        _mm512_reduce_max_ps(v)
    }
    #[inline(always)]
    unsafe fn round(self, v: __m512) -> __m512 {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
    #[inline(always)]
    unsafe fn pow2i(self, v: __m512) -> __m512 {
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(127));
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
    }
    /// 16×16 transpose in 64 shuffles: unpack pairs and shuffle quads inside each 128-bit lane
    /// (as the 8×8 AVX2 one), then a 4×4 transpose of the 128-bit lanes with `vshuff32x4`.
    #[inline(always)]
    unsafe fn transpose<const N: usize>(self, v: [__m512; N]) -> [__m512; N] {
        if !N.is_multiple_of(16) {
            return transpose_via_memory(self, v);
        }
        let mut out = v;
        for g in 0..N / 16 {
            let r = &v[g * 16..g * 16 + 16];
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // u[4g + c], lane L = column 4L + c of rows 4g .. 4g + 3.
            let mut u = [_mm512_setzero_ps(); 16];
            for q in 0..4 {
                let b = 4 * q;
                u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
                u[b + 1] = _mm512_shuffle_ps::<0xee>(t[b], t[b + 2]);
                u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
                u[b + 3] = _mm512_shuffle_ps::<0xee>(t[b + 1], t[b + 3]);
            }
            let o = &mut out[g * 16..g * 16 + 16];
            for c in 0..4 {
                let (a0, a1, a2, a3) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
                let v0 = _mm512_shuffle_f32x4::<0x44>(a0, a1);
                let v1 = _mm512_shuffle_f32x4::<0xee>(a0, a1);
                let v2 = _mm512_shuffle_f32x4::<0x44>(a2, a3);
                let v3 = _mm512_shuffle_f32x4::<0xee>(a2, a3);
                o[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
                o[4 + c] = _mm512_shuffle_f32x4::<0xdd>(v0, v2);
                o[8 + c] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
                o[12 + c] = _mm512_shuffle_f32x4::<0xdd>(v1, v3);
            }
        }
        out
    }
    /// The default scheme (same clamp, reduction and polynomial), with the final `· 2^k` done
    /// by one `vscalefps` instead of building `2^k` in the exponent bits and multiplying
    /// (four instructions); it is the softmax finish's inner loop.
    #[inline(always)]
    unsafe fn exp(self, x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, self.splat(-87.3)), self.splat(88.0));
        let k = self.round(_mm512_mul_ps(x, self.splat(std::f32::consts::LOG2_E)));
        let r = _mm512_fmadd_ps(k, self.splat(-0.693_359_4), x);
        let r = _mm512_fmadd_ps(k, self.splat(2.121_944_4e-4), r);
        let mut p = self.splat(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, self.splat(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, self.splat(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, self.splat(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, self.splat(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, self.splat(0.5));
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), self.splat(1.0));
        _mm512_scalef_ps(e, k)
    }
    #[inline(always)]
    unsafe fn prefetch(self, p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[inline(always)]
    unsafe fn prefetch_l2(self, p: *const u8) {
        _mm_prefetch::<_MM_HINT_T1>(p.cast());
    }
}
