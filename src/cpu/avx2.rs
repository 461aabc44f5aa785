//! x86-64 AVX2 + FMA + F16C: 8 lanes. F16 rows widen with `vcvtph2ps`, BF16 rows with a
//! zero-extend and a 16-bit shift, I8 rows with `vpmovsxbd` + `vcvtdq2ps` (16 per 128-bit load).

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::simd::{transpose_via_memory, Simd};

#[derive(Clone, Copy)]
pub(crate) struct Avx2;

/// `-1` then `0` words: eight consecutive words starting at `8 - len` are a mask of `len` lanes.
static MASK_WORDS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

#[inline(always)]
unsafe fn mask(len: usize) -> __m256i {
    _mm256_loadu_si256(MASK_WORDS.as_ptr().add(8 - len).cast())
}

impl Simd for Avx2 {
    const W: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero(self) -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(self, x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, len: usize) -> __m256 {
        // Masked-off lanes are not read, so this never touches memory past `len`.
        _mm256_maskload_ps(p, mask(len))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, v: __m256, len: usize) {
        _mm256_maskstore_ps(p, mask(len), v)
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> __m256 {
        let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
    }
    #[inline(always)]
    unsafe fn load_i8(self, p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
    }
    /// One 128-bit load, both halves sign-extended to 8 × i32 and converted.
    #[inline(always)]
    unsafe fn widen_i8x16(self, p: *const u8, dst: *mut f32) {
        let b = _mm_loadu_si128(p.cast());
        _mm256_storeu_ps(dst, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)));
        let hi = _mm_unpackhi_epi64(b, b);
        _mm256_storeu_ps(dst.add(8), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)));
    }
    #[inline(always)]
    unsafe fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(self, a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(self, a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(self, a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(self, a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(self, a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(self, a: __m256, b: __m256) -> __m256 {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn reduce_add(self, v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn reduce_max(self, v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn round(self, v: __m256) -> __m256 {
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
    #[inline(always)]
    unsafe fn pow2i(self, v: __m256) -> __m256 {
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(127));
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
    }
    /// The classic 8×8 transpose per group of 8: 24 shuffles (unpack pairs, shuffle quads,
    /// swap 128-bit halves).
    #[inline(always)]
    unsafe fn transpose<const N: usize>(self, v: [__m256; N]) -> [__m256; N] {
        if !N.is_multiple_of(8) {
            return transpose_via_memory(self, v);
        }
        let mut out = v;
        for g in 0..N / 8 {
            let r = &v[g * 8..g * 8 + 8];
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
            let o = &mut out[g * 8..g * 8 + 8];
            o[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
            o[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
            o[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
            o[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
            o[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
            o[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
            o[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
            o[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
        }
        out
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
