//! The user side's dense products (SPEC §1.2–1.4): one strided GEMM micro-kernel, written once
//! for every SIMD level (generic over [`Simd`]), and the column softmax of the attention.
//!
//! `C (m×n) = A (m×k) · B (k×n)`, then the epilogue: `C = (A·B) ⊙ row_scale[i] + bias[j]`.
//! `A` is read by broadcasts, so it may have any strides (`A[i][p] = a[i·rsa + p·csa]`: a
//! row-major matrix, or the transpose of one, without copying it); `B` and `C` are read and
//! written by vectors along `n` (unit column stride, any row stride).
//!
//! The micro-kernel keeps an `MR × NV·W` block of `C` in registers while `k` streams by: each
//! step is `NV` vector loads of `B`, `MR` broadcasts of `A` and `MR·NV` FMAs. The tile is chosen
//! per panel of columns from the register file: with 32 vector registers (AVX-512, NEON)
//! `6×4`, `8×3`, `12×2`, `24×1` (24 accumulators, room for the `B` vectors and a broadcast); with
//! 16 (AVX2, scalar) `4×3`, `6×2`, `12×1` (at most 16 live vectors, so nothing spills). A panel
//! narrower than the widest tile takes the taller tile that fits it, so a narrow product (`n` = one or two vectors) still runs enough
//! independent accumulators to hide the FMA latency. Leftover rows go in tiles of 8, 4, 2, 1.
//!
//! Every element of `C` is one accumulator: `bias[j]` (or zero with a row scale), then one FMA
//! per `p` in ascending order, then the scale. So the result does not depend on the tile an
//! element falls in, on `m`, on the panel split or on the number of threads: bit-identical
//! for identical inputs at a given level.

use super::simd::Simd;

/// Vector registers of the level with `W` lanes: 16-lane AVX-512 and 4-lane NEON have 32,
/// 8-lane AVX2 and the scalar level (x86-64's 16 xmm registers) have 16.
const fn registers(w: usize) -> usize {
    if w == 16 || w == 4 {
        32
    } else {
        16
    }
}

/// Bytes of a panel's `B` rows kept in L1 across the tiles of rows (see `Panel::k_blocks`).
const B_BLOCK_BYTES: usize = 32 * 1024;

/// A read-only strided view: element `(i, p)` at `ptr[i·rs + p·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct RawA {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// `C = A·B ⊙ row_scale + bias`, shapes `m×k`, `k×n`, `m×n`; `b` and `c` have unit column
/// stride and row strides `ldb`, `ldc`; `bias` has `n` elements, `row_scale` `m`.
///
/// # Safety
/// `S`'s instructions are present; every element the shapes and strides address is in bounds
/// (`c`'s writable); `c` overlaps none of the inputs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn gemm<S: Simd>(
    s: S,
    m: usize,
    n: usize,
    k: usize,
    a: RawA,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    bias: Option<*const f32>,
    row_scale: Option<*const f32>,
) {
    let w = S::W;
    let wide = registers(w) >= 32;
    let mut j = 0;
    while j < n {
        let vectors = (n - j).div_ceil(w);
        let ep = Epi {
            bias: bias.map(|p| p.add(j)),
            row_scale,
        };
        let p = Panel {
            m,
            k,
            a,
            b: b.add(j),
            ldb,
            c: c.add(j),
            ldc,
            ep,
        };
        // 16 registers: 4 × 3 accumulators + 3 `B` vectors + 1 broadcast is the widest tile.
        let nv = vectors.min(if wide { 4 } else { 3 });
        // Lanes of the panel's last vector.
        let last = (n - j - (nv - 1) * w).min(w);
        match (wide, nv) {
            (true, 4) => p.run::<S, 6, 4>(s, last),
            (true, 3) => p.run::<S, 8, 3>(s, last),
            (true, 2) => p.run::<S, 12, 2>(s, last),
            (true, _) => p.run::<S, 24, 1>(s, last),
            (false, 3 | 4) => p.run::<S, 4, 3>(s, last),
            (false, 2) => p.run::<S, 6, 2>(s, last),
            (false, _) => p.run::<S, 12, 1>(s, last),
        }
        j += nv * w;
    }
}

#[derive(Clone, Copy)]
struct Epi {
    bias: Option<*const f32>,
    row_scale: Option<*const f32>,
}

/// One panel of columns (`NV` vectors wide, the last one with `last` lanes) over all rows.
#[derive(Clone, Copy)]
struct Panel {
    m: usize,
    k: usize,
    a: RawA,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    ep: Epi,
}

impl Panel {
    #[inline(always)]
    unsafe fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S, last: usize) {
        if last == S::W {
            self.k_blocks::<S, MR, NV, false>(s, last)
        } else {
            self.k_blocks::<S, MR, NV, true>(s, last)
        }
    }

    /// `k` in blocks whose rows of the panel's `B` fill [`B_BLOCK_BYTES`], when more than one
    /// tile of rows reuses them: that block stays in L1 while every tile of rows passes over it
    /// (each tile stores its accumulators between blocks and reloads them: the same FMA chain).
    #[inline(always)]
    unsafe fn k_blocks<S: Simd, const MR: usize, const NV: usize, const P: bool>(
        self,
        s: S,
        last: usize,
    ) {
        let kc = if self.m > MR {
            (B_BLOCK_BYTES / (NV * S::W * 4)).max(16)
        } else {
            self.k.max(1)
        };
        let mut p0 = 0;
        loop {
            let p1 = (p0 + kc).min(self.k);
            self.rows::<S, MR, NV, P>(s, last, p0, p1);
            if p1 == self.k {
                break;
            }
            p0 = p1;
        }
    }

    #[inline(always)]
    unsafe fn rows<S: Simd, const MR: usize, const NV: usize, const P: bool>(
        self,
        s: S,
        last: usize,
        p0: usize,
        p1: usize,
    ) {
        let mut i = 0;
        while i + MR <= self.m {
            self.tile::<S, MR, NV, P>(s, i, last, p0, p1);
            i += MR;
        }
        // Leftover rows: tiles of 8, 4, 2, 1 (only the sizes below MR).
        if MR > 8 && i + 8 <= self.m {
            self.tile::<S, 8, NV, P>(s, i, last, p0, p1);
            i += 8;
        }
        if MR > 4 {
            while i + 4 <= self.m {
                self.tile::<S, 4, NV, P>(s, i, last, p0, p1);
                i += 4;
            }
        }
        if MR > 2 && i + 2 <= self.m {
            self.tile::<S, 2, NV, P>(s, i, last, p0, p1);
            i += 2;
        }
        if MR > 1 && i < self.m {
            self.tile::<S, 1, NV, P>(s, i, last, p0, p1);
        }
    }

    /// Rows `[i, i + M)` of the panel, products `[p0, p1)` of `k`: the first block starts
    /// from the bias (or zero), a later one from what the previous block stored; the last
    /// applies the row scale.
    #[inline(always)]
    unsafe fn tile<S: Simd, const M: usize, const NV: usize, const P: bool>(
        self,
        s: S,
        i: usize,
        last: usize,
        p0: usize,
        p1: usize,
    ) {
        let w = S::W;
        let ld = |p: *const f32, v: usize| {
            if P && v == NV - 1 {
                s.load_partial(p, last)
            } else {
                s.load(p)
            }
        };
        let out = self.c.add(i * self.ldc);
        let mut acc = [[s.zero(); NV]; M];
        if p0 > 0 {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = ld(out.add(r * self.ldc + v * w), v);
                }
            }
        } else if let (Some(b), None) = (self.ep.bias, self.ep.row_scale) {
            for v in 0..NV {
                let bv = ld(b.add(v * w), v);
                for row in acc.iter_mut() {
                    row[v] = bv;
                }
            }
        }
        let RawA { ptr, rs, cs } = self.a;
        let mut ap = ptr.add(i * rs + p0 * cs);
        let mut bp = self.b.add(p0 * self.ldb);
        for _ in p0..p1 {
            let mut bv = [s.zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = ld(bp.add(v * w), v);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = s.splat(ap.add(r * rs).read());
                for v in 0..NV {
                    row[v] = s.fma(x, bv[v], row[v]);
                }
            }
            ap = ap.add(cs);
            bp = bp.add(self.ldb);
        }
        if let (Some(sc), true) = (self.ep.row_scale, p1 == self.k) {
            let mut bias = [s.zero(); NV];
            if let Some(b) = self.ep.bias {
                for (v, x) in bias.iter_mut().enumerate() {
                    *x = ld(b.add(v * w), v);
                }
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let f = s.splat(sc.add(i + r).read());
                for v in 0..NV {
                    row[v] = s.fma(row[v], f, bias[v]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                let p = out.add(r * self.ldc + v * w);
                if P && v == NV - 1 {
                    s.store_partial(p, x, last);
                } else {
                    s.store(p, x);
                }
            }
        }
    }
}

/// The softmax of every column of `x` (`rows × cols`, row stride `ld`), left unnormalised:
/// `x[i][j] ← exp(x[i][j] − max_i x[i][j])`, and `inv_sums[j] ← 1 / Σ_i` of those. The attention
/// scales its `A·X` rows by `inv_sums` instead of dividing `rows × cols` probabilities.
///
/// # Safety
/// `S`'s instructions are present; `x` holds `rows × cols` elements at row stride `ld`
/// (`rows ≥ 1`), `inv_sums` holds `cols`.
#[inline(always)]
pub(crate) unsafe fn softmax_cols<S: Simd>(
    s: S,
    x: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
    inv_sums: *mut f32,
) {
    let w = S::W;
    let mut j = 0;
    while j < cols {
        let len = w.min(cols - j);
        let ld_v = |p: *const f32| {
            if len == w {
                s.load(p)
            } else {
                s.load_partial(p, len)
            }
        };
        let st_v = |p: *mut f32, v: S::V| {
            if len == w {
                s.store(p, v)
            } else {
                s.store_partial(p, v, len)
            }
        };
        let col = x.add(j);
        // Two running maxima: independent chains.
        let mut mx = [ld_v(col), ld_v(col)];
        for i in 1..rows {
            mx[i & 1] = s.max(mx[i & 1], ld_v(col.add(i * ld)));
        }
        let mx = s.max(mx[0], mx[1]);
        let mut sum = [s.zero(), s.zero()];
        for i in 0..rows {
            let p = col.add(i * ld);
            let e = s.exp(s.sub(ld_v(p), mx));
            st_v(p, e);
            sum[i & 1] = s.add(sum[i & 1], e);
        }
        let inv = s.div(s.splat(1.0), s.add(sum[0], sum[1]));
        st_v(inv_sums.add(j), inv);
        j += len;
    }
}

/// `dst (cols × rows) ← srcᵀ` for `src` `rows × cols` at row stride `lds`; `dst` has row
/// stride `ldd`. Blocks of 8 × 8 keep both sides within a few cache lines.
pub(crate) fn transpose_into(
    src: &[f32],
    rows: usize,
    cols: usize,
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    const B: usize = 8;
    for i0 in (0..rows).step_by(B) {
        for j0 in (0..cols).step_by(B) {
            for i in i0..(i0 + B).min(rows) {
                for j in j0..(j0 + B).min(cols) {
                    dst[j * ldd + i] = src[i * lds + j];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu::{Kernels, Level, MatMut, MatRef};
    use crate::rng::SplitMix64;

    fn kernels() -> Vec<Kernels> {
        Level::available()
            .into_iter()
            .filter_map(Kernels::new)
            .collect()
    }

    /// Every tile shape and remainder (m up to 53, n across 1–5 vectors of every level, partial
    /// vectors), k in one L1 block or several, a transposed `A` view, padded `B`/`C` rows, bias and row scale: against f64,
    /// and each element bit-identical to the same element computed in a 1 × 1 product (the
    /// promise that tiling never changes a result).
    #[test]
    fn gemm_matches_f64_and_every_element_is_tile_independent() {
        let mut rng = SplitMix64::new(12);
        for m in [1, 2, 5, 7, 13, 24, 25, 53] {
            for kk in [1, 3, 32, 65, 300, 600] {
                for n in [1, 5, 8, 12, 16, 17, 31, 48, 64, 65, 80, 130] {
                    // A stored transposed (k × m, row stride m + 1): a view with (rs, cs) = (1, m + 1).
                    let lda = m + 1;
                    let at: Vec<f32> = (0..kk * lda).map(|_| rng.symmetric(1.0)).collect();
                    let ldb = n + 3;
                    let b: Vec<f32> = (0..kk * ldb).map(|_| rng.symmetric(1.0)).collect();
                    let bias: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
                    let scale: Vec<f32> = (0..m).map(|_| rng.symmetric(2.0)).collect();
                    let a = MatRef {
                        data: &at,
                        rows: m,
                        cols: kk,
                        row_stride: 1,
                        col_stride: lda,
                    };
                    let bm = MatRef::with_stride(&b, kk, n, ldb);
                    for (with_bias, with_scale) in [(false, false), (true, false), (true, true)] {
                        let bias_o = with_bias.then_some(&bias[..]);
                        let scale_o = with_scale.then_some(&scale[..]);
                        for k in kernels() {
                            let ldc = n + 2;
                            let mut c = vec![f32::NAN; m * ldc];
                            k.gemm(
                                a,
                                bm,
                                MatMut::with_stride(&mut c, m, n, ldc),
                                bias_o,
                                scale_o,
                            )
                            .unwrap();
                            for i in 0..m {
                                for j in 0..n {
                                    let dot: f64 = (0..kk)
                                        .map(|p| at[p * lda + i] as f64 * b[p * ldb + j] as f64)
                                        .sum();
                                    let mag: f64 = (0..kk)
                                        .map(|p| {
                                            (at[p * lda + i] as f64 * b[p * ldb + j] as f64).abs()
                                        })
                                        .sum();
                                    let sc = if with_scale { scale[i] as f64 } else { 1.0 };
                                    let bi = if with_bias { bias[j] as f64 } else { 0.0 };
                                    let want = dot * sc + bi;
                                    // f32 rounding of k + 2 operations (γ_k bound, u = 2^-24).
                                    let tol =
                                        (kk as f64 + 2.0) * 6e-8 * (mag * sc.abs() + bi.abs());
                                    let got = c[i * ldc + j];
                                    assert!(
                                        (got as f64 - want).abs() <= tol + 1e-30,
                                        "{:?} m={m} k={kk} n={n} ({i},{j}): {got} vs {want}",
                                        k.level()
                                    );
                                }
                            }
                            // The padding between rows of C is never written.
                            for i in 0..m {
                                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
                            }
                            // One element alone: the same bits.
                            let (i, j) = (m - 1, n - 1);
                            let mut one = [0.0f32];
                            k.gemm(
                                MatRef {
                                    data: &at[i..],
                                    rows: 1,
                                    cols: kk,
                                    row_stride: 1,
                                    col_stride: lda,
                                },
                                MatRef::with_stride(&b[j..], kk, 1, ldb),
                                MatMut::new(&mut one, 1, 1),
                                bias_o.map(|b| &b[j..]),
                                scale_o.map(|s| &s[i..]),
                            )
                            .unwrap();
                            assert_eq!(
                                one[0].to_bits(),
                                c[i * ldc + j].to_bits(),
                                "{:?}",
                                k.level()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_rejects_bad_shapes_and_views() {
        let k = Kernels::detect();
        let a = [0.0f32; 6];
        let b = [0.0f32; 6];
        let mut c = [0.0f32; 4];
        let ok = k.gemm(
            MatRef::new(&a, 2, 3),
            MatRef::new(&b, 3, 2),
            MatMut::new(&mut c, 2, 2),
            None,
            None,
        );
        assert!(ok.is_ok());
        // Inner dimensions differ.
        assert!(k
            .gemm(
                MatRef::new(&a, 3, 2),
                MatRef::new(&b, 3, 2),
                MatMut::new(&mut c, 3, 2),
                None,
                None
            )
            .is_err());
        // B read in columns.
        assert!(k
            .gemm(
                MatRef::new(&a, 2, 3),
                MatRef::new(&b, 2, 3).t(),
                MatMut::new(&mut c, 2, 2),
                None,
                None
            )
            .is_err());
        // A view past its data.
        assert!(k
            .gemm(
                MatRef::with_stride(&a, 2, 3, 4),
                MatRef::new(&b, 3, 2),
                MatMut::new(&mut c, 2, 2),
                None,
                None
            )
            .is_err());
        // C rows past the end.
        assert!(k
            .gemm(
                MatRef::new(&a, 2, 3),
                MatRef::new(&b, 3, 2),
                MatMut::with_stride(&mut c, 2, 2, 3),
                None,
                None
            )
            .is_err());
        // Bias and scale lengths.
        assert!(k
            .gemm(
                MatRef::new(&a, 2, 3),
                MatRef::new(&b, 3, 2),
                MatMut::new(&mut c, 2, 2),
                Some(&[0.0; 3]),
                None
            )
            .is_err());
        assert!(k
            .gemm(
                MatRef::new(&a, 2, 3),
                MatRef::new(&b, 3, 2),
                MatMut::new(&mut c, 2, 2),
                None,
                Some(&[0.0; 3])
            )
            .is_err());
    }

    /// Column softmax against f64, with a column of huge logits and a partial last vector.
    #[test]
    fn softmax_cols_matches_f64() {
        let mut rng = SplitMix64::new(13);
        for rows in [1, 2, 7, 50] {
            for cols in [1, 3, 8, 16, 17, 33, 64] {
                let ld = cols + 1;
                let mut x: Vec<f32> = (0..rows * ld).map(|_| rng.symmetric(20.0)).collect();
                x[0] = 1e30;
                for k in kernels() {
                    let mut y = x.clone();
                    let mut inv = vec![0.0f32; cols];
                    k.softmax_cols(&mut y, rows, cols, ld, &mut inv).unwrap();
                    for j in 0..cols {
                        let mx = (0..rows)
                            .map(|i| x[i * ld + j] as f64)
                            .fold(f64::MIN, f64::max);
                        let sum: f64 = (0..rows).map(|i| (x[i * ld + j] as f64 - mx).exp()).sum();
                        for i in 0..rows {
                            let want = (x[i * ld + j] as f64 - mx).exp() / sum;
                            let got = y[i * ld + j] as f64 * inv[j] as f64;
                            assert!(
                                (got - want).abs() < 1e-6,
                                "{:?} ({i},{j}): {got} vs {want}",
                                k.level()
                            );
                        }
                        // The padding column is untouched.
                        for i in 0..rows {
                            assert_eq!(y[i * ld + cols].to_bits(), x[i * ld + cols].to_bits());
                        }
                    }
                }
            }
        }
    }
}
