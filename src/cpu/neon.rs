//! aarch64 NEON: 4 lanes. NEON is part of the aarch64 baseline, so this level is always
//! available there. F16 rows widen lane by lane (the `vcvt_f32_f16` intrinsic is not stable);
//! there is no stable prefetch intrinsic, so the hardware prefetchers are on their own.
//!
//! Not compiled on the x86-64 development machine (no aarch64 target installed there).

use std::arch::aarch64::*;

use half::f16;

use super::simd::Simd;

#[derive(Clone, Copy)]
pub(crate) struct Neon;

impl Simd for Neon {
    const W: usize = 4;
    type V = float32x4_t;

    #[inline(always)]
    unsafe fn zero(self) -> float32x4_t {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn splat(self, x: f32) -> float32x4_t {
        vdupq_n_f32(x)
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> float32x4_t {
        // `ld1` has no alignment requirement beyond the element's, and aarch64 Linux allows
        // unaligned element access for normal memory.
        vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, len: usize) -> float32x4_t {
        let mut t = [0.0f32; 4];
        std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), len);
        vld1q_f32(t.as_ptr())
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: float32x4_t) {
        vst1q_f32(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, v: float32x4_t, len: usize) {
        let mut t = [0.0f32; 4];
        vst1q_f32(t.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(t.as_ptr(), p, len);
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u8) -> float32x4_t {
        let mut t = [0.0f32; 4];
        for (i, o) in t.iter_mut().enumerate() {
            let b = p.add(2 * i).cast::<u16>().read_unaligned();
            *o = f16::from_bits(u16::from_le(b)).to_f32();
        }
        vld1q_f32(t.as_ptr())
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> float32x4_t {
        let mut h = [0u16; 4];
        std::ptr::copy_nonoverlapping(p, h.as_mut_ptr().cast::<u8>(), 8);
        let w = vmovl_u16(vld1_u16(h.as_ptr()));
        vreinterpretq_f32_u32(vshlq_n_u32::<16>(w))
    }
    #[inline(always)]
    unsafe fn fma(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vaddq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vsubq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmulq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn div(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vdivq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmaxq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vminq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn reduce_add(self, v: float32x4_t) -> f32 {
        vaddvq_f32(v)
    }
    #[inline(always)]
    unsafe fn reduce_max(self, v: float32x4_t) -> f32 {
        vmaxvq_f32(v)
    }
    #[inline(always)]
    unsafe fn round(self, v: float32x4_t) -> float32x4_t {
        vrndnq_f32(v)
    }
    #[inline(always)]
    unsafe fn pow2i(self, v: float32x4_t) -> float32x4_t {
        let e = vaddq_s32(vcvtq_s32_f32(v), vdupq_n_s32(127));
        vreinterpretq_f32_s32(vshlq_n_s32::<23>(e))
    }

    // I8 store rows (SPEC §3). Not run on the x86-64 development machine.

    /// 4 integers (one 32-bit load), sign-extended twice and converted.
    #[inline(always)]
    unsafe fn load_i8(self, p: *const u8) -> float32x4_t {
        let b = vreinterpret_s8_u32(vdup_n_u32(p.cast::<u32>().read_unaligned()));
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))))
    }
    /// 16 integers: one 128-bit load, widened in registers to four vectors.
    #[inline(always)]
    unsafe fn widen_i8x16(self, p: *const u8, dst: *mut f32) {
        let b = vld1q_s8(p.cast());
        let lo = vmovl_s8(vget_low_s8(b));
        let hi = vmovl_high_s8(b);
        vst1q_f32(dst, vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))));
        vst1q_f32(dst.add(4), vcvtq_f32_s32(vmovl_high_s16(lo)));
        vst1q_f32(dst.add(8), vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))));
        vst1q_f32(dst.add(12), vcvtq_f32_s32(vmovl_high_s16(hi)));
    }
}
