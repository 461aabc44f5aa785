//! The portable level: one lane, plain `f32` arithmetic. It runs everywhere, and because it is
//! the same generic kernel code as the vector levels with `W = 1`, it exercises the kernels'
//! blocking and tail logic on any machine.

use half::{bf16, f16};

use super::simd::Simd;

#[derive(Clone, Copy)]
pub(crate) struct Scalar;

impl Simd for Scalar {
    const W: usize = 1;
    type V = f32;

    #[inline(always)]
    unsafe fn zero(self) -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        p.read_unaligned()
    }
    #[inline(always)]
    unsafe fn load_partial(self, _p: *const f32, _len: usize) -> f32 {
        // `len < W = 1`: nothing to load.
        0.0
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        p.write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn store_partial(self, _p: *mut f32, _v: f32, _len: usize) {}
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u8) -> f32 {
        f16::from_bits(u16::from_le(p.cast::<u16>().read_unaligned())).to_f32()
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> f32 {
        bf16::from_bits(u16::from_le(p.cast::<u16>().read_unaligned())).to_f32()
    }
    #[inline(always)]
    unsafe fn load_i8(self, p: *const u8) -> f32 {
        f32::from(p.cast::<i8>().read())
    }
    #[inline(always)]
    unsafe fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        // Not `mul_add`: without hardware FMA that is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    unsafe fn min(self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    #[inline(always)]
    unsafe fn reduce_add(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn reduce_max(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn round(self, v: f32) -> f32 {
        v.round_ties_even()
    }
    #[inline(always)]
    unsafe fn pow2i(self, v: f32) -> f32 {
        f32::from_bits(((v as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    unsafe fn exp(self, x: f32) -> f32 {
        x.exp()
    }
}
