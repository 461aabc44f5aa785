//! aarch64 NEON: 4 lanes. NEON is part of the aarch64 baseline, so this level is always
//! available there. The kernels the x86 levels specialise exist here too: F16 rows widen with
//! `fcvtl` and BF16 rows with a zero-extend and a 16-bit shift, score blocks transpose 4×4 in
//! registers (`trn1`/`trn2`), rows are prefetched with `prfm pldl1keep`. `fcvtl` and `prfm` are
//! inline assembly: their intrinsics (`vcvt_f32_f16` needs the unstable `f16` type, `_prefetch`)
//! are not stable. The rows-in-lanes scoring kernel is AVX-512's only (it needs 16 lanes): NEON
//! scores with interests in lanes, as AVX2 does.
//!
//! Built and tested (under qemu-user) by `scripts/test-aarch64.sh`.

use std::arch::aarch64::*;
use std::arch::asm;

use super::simd::{transpose_via_memory, Simd};

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
        // The 4 halves as one little-endian u64 (any alignment): lane i = element i.
        let h = vcreate_u16(u64::from_le(p.cast::<u64>().read_unaligned()));
        let out: float32x4_t;
        // SAFETY: `fcvtl` (half → single, exact, subnormals included) is base AArch64 FP/SIMD;
        // registers only.
        asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            out = lateout(vreg) out,
            options(pure, nomem, nostack, preserves_flags)
        );
        out
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> float32x4_t {
        let h = vcreate_u16(u64::from_le(p.cast::<u64>().read_unaligned()));
        vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(h)))
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
    /// 4×4 transpose per group of 4: `trn1`/`trn2` on 32-bit lanes, then on 64-bit pairs.
    #[inline(always)]
    unsafe fn transpose<const N: usize>(self, v: [float32x4_t; N]) -> [float32x4_t; N] {
        if !N.is_multiple_of(4) {
            return transpose_via_memory(self, v);
        }
        let mut out = v;
        for g in 0..N / 4 {
            let r = &v[g * 4..g * 4 + 4];
            // t0 = a0 b0 a2 b2, t1 = a1 b1 a3 b3, t2 = c0 d0 c2 d2, t3 = c1 d1 c3 d3.
            let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r[0], r[1]));
            let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r[0], r[1]));
            let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r[2], r[3]));
            let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r[2], r[3]));
            let o = &mut out[g * 4..g * 4 + 4];
            o[0] = vreinterpretq_f32_f64(vtrn1q_f64(t0, t2));
            o[1] = vreinterpretq_f32_f64(vtrn1q_f64(t1, t3));
            o[2] = vreinterpretq_f32_f64(vtrn2q_f64(t0, t2));
            o[3] = vreinterpretq_f32_f64(vtrn2q_f64(t1, t3));
        }
        out
    }
    #[inline(always)]
    unsafe fn prefetch(self, p: *const u8) {
        crate::tensor::prefetch_line(p);
    }
    #[inline(always)]
    unsafe fn prefetch_l2(self, p: *const u8) {
        // SAFETY: `prfm` is a hint, as in `tensor::prefetch_line`.
        unsafe {
            std::arch::asm!(
                "prfm pldl2keep, [{p}]",
                p = in(reg) p,
                options(readonly, nostack, preserves_flags)
            )
        };
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
