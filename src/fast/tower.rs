//! SPEC §1.2 (Algorithm 1, eq. 2–3) on the CPU fast path: one tower `F(X)`, all heads of a layer
//! at once, in the cheaper order SPEC §1.2 allows (see [`super`]). The oracle is
//! `src/reference/tower.rs`, the GPU's `kernels/attend.cu` + `kernels/attend_combine.cu` (the same
//! rewrite, per key chunk).
//!
//! A layer is a handful of products on [`Kernels::gemm`], laid out so that none copies or
//! transposes the sequence `X` (`L × D`, as gathered):
//!
//! 1. `Q = C Wqᵀ + bq` for all heads (`n × D`, `1/sqrt(d)` folded in), transposed (`D × n`), then
//!    per head `Q̃_kᵀ = Wk_kᵀ Q_kᵀ` (`D × n`, `Wk` read transposed in place) into the columns
//!    `[k·n, (k+1)·n)` of `Q̃ᵀ` (`D × h·n`); layer 0's is a constant of the model;
//! 2. the logits of every head in one product, transposed: `Sᵀ = X Q̃ᵀ` (`L × h·n`);
//! 3. the softmax down each column (vectors across the `h·n` rows of attention, no horizontal
//!    sums), left unnormalised, with `1/Σ` per column;
//! 4. `Z = Pᵀ X` (`h·n × D`, `P`'s transpose read as a view), each row scaled by its `1/Σ`: the
//!    heads' `A_k X`, stacked;
//! 5. per head `Z_k Wv_kᵀ + bv_k` into the head's `d` columns of the concat (`n × D`);
//! 6. `H_l = concat · Woᵀ + bo`, written straight into its column block of
//!    `concat(H_0 … H_{r-1})` (`n × r·D`), which is the next layer's `C` as a strided view and
//!    the merge's input.

use super::{sized, Lin, Scratch};
use crate::config::HcnConfig;
use crate::cpu::{transpose_into, Kernels, MatMut, MatRef};
use crate::model::Tower;

#[derive(Debug, Clone)]
struct LayerPlan {
    /// The query projection of all heads, `[D, D]` transposed, weight and bias scaled by
    /// `1/sqrt(d)`.
    q: Lin,
    /// `Wk` as stored (`[out, in]`): head `k`'s rows `[k·d, (k+1)·d)` read transposed are `Wk_kᵀ`.
    wk: Vec<f32>,
    /// The value projection of all heads, `[D, D]` transposed (head `k`: columns `[k·d, (k+1)·d)`).
    v: Lin,
    o: Lin,
}

#[derive(Debug, Clone)]
pub(crate) struct TowerPlan {
    layers: Vec<LayerPlan>,
    merge: Lin,
    /// Layer 0's `Q̃ᵀ` for all heads, `D × (h·n)`, head-major columns.
    layer0_qt: Vec<f32>,
}

pub(crate) fn tower_plan(t: &Tower, cfg: &HcnConfig, k: &Kernels) -> TowerPlan {
    let (n, dim, h) = (cfg.interests, cfg.dim, cfg.heads);
    let d = dim / h;
    let scale = 1.0 / (d as f32).sqrt();
    let layers: Vec<LayerPlan> = t
        .layers
        .iter()
        .map(|l| LayerPlan {
            q: Lin::rows(&l.q, 0..dim, scale),
            wk: l.k.weight.clone(),
            v: Lin::new(&l.v),
            o: Lin::new(&l.o),
        })
        .collect();
    let mut layer0_qt = vec![0.0f32; dim * h * n];
    let mut s = Scratch::default();
    fold_keys(
        k,
        &layers[0],
        MatRef::new(&t.seeds, n, dim),
        h,
        &mut s,
        &mut layer0_qt,
    );
    TowerPlan {
        layers,
        merge: Lin::new(&t.merge),
        layer0_qt,
    }
}

/// `Q̃ᵀ` (`D × h·n`): column block `k` is `(Wk_k (C Wq_kᵀ + bq_k) / sqrt(d))ᵀ` (step 1 above).
fn fold_keys(
    k: &Kernels,
    layer: &LayerPlan,
    c: MatRef<'_>,
    h: usize,
    s: &mut Scratch,
    qt: &mut [f32],
) {
    let (n, dim) = (c.rows, c.cols);
    let d = dim / h;
    let q = sized(&mut s.qk, n * dim);
    k.gemm(
        c,
        MatRef::new(&layer.q.wt, dim, dim),
        MatMut::new(q, n, dim),
        Some(&layer.q.bias),
        None,
    )
    .expect("user tower: shapes fixed at load");
    let q_t = sized(&mut s.c, dim * n);
    transpose_into(q, n, dim, dim, q_t, n);
    for hd in 0..h {
        k.gemm(
            MatRef::new(&layer.wk[hd * d * dim..(hd + 1) * d * dim], d, dim).t(),
            MatRef::new(&q_t[hd * d * n..(hd + 1) * d * n], d, n),
            MatMut::with_stride(&mut qt[hd * n..], dim, n, h * n),
            None,
            None,
        )
        .expect("user tower: shapes fixed at load");
    }
}

/// Sequences at least this long run a layer's two head groups on two threads (when parallel).
const PARALLEL_HEADS_MIN: usize = 128;

/// Steps 2–4 for the columns `cols` of `Q̃ᵀ` (whole heads, `n` columns each): `Sᵀ`
/// (`L × |cols|`) into `st`, its column softmax (`1/Σ` into `inv`), and `Z` (`|cols| × D`) into
/// `z`. `qt` is all heads' `Q̃ᵀ` (`D × hn`).
#[allow(clippy::too_many_arguments)]
fn attend_heads(
    k: &Kernels,
    x: MatRef<'_>,
    qt: &[f32],
    hn: usize,
    cols: std::ops::Range<usize>,
    st: &mut Vec<f32>,
    inv: &mut Vec<f32>,
    z: &mut Vec<f32>,
) {
    let (len, dim) = (x.rows, x.cols);
    let w = cols.len();
    let shapes = "user tower: shapes fixed at load";
    let st = sized(st, len * w);
    k.gemm(
        x,
        MatRef::with_stride(&qt[cols.start..], dim, w, hn),
        MatMut::new(st, len, w),
        None,
        None,
    )
    .expect(shapes); // Sᵀ = X Q̃ᵀ
    let inv = sized(inv, w);
    k.softmax_cols(st, len, w, w, inv).expect(shapes);
    let z = sized(z, w * dim);
    k.gemm(
        MatRef::new(st, len, w).t(),
        x,
        MatMut::new(z, w, dim),
        None,
        Some(inv),
    )
    .expect(shapes); // Z = Pᵀ X: these heads' A_k X
}

/// `F(X)` for one sequence (`x`: `L × D`), into `out` (`n × D`). A layer's heads go in two
/// groups (the first `⌈h/2⌉`, the rest) whatever `parallel` says, so the bits never depend on
/// it; with `parallel` and a long sequence the groups run on two threads (`rayon::join`): on 2
/// threads the second is otherwise idle once it has resolved the candidates and run the short
/// tower.
pub(crate) fn tower(
    k: &Kernels,
    plan: &TowerPlan,
    cfg: &HcnConfig,
    x: &[f32],
    s: &mut Scratch,
    parallel: bool,
    out: &mut [f32],
) {
    let (n, dim, h, r) = (cfg.interests, cfg.dim, cfg.heads, cfg.layers);
    let d = dim / h;
    let len = x.len() / dim;
    let hn = h * n;
    let shapes = "user tower: shapes fixed at load";
    let split = h.div_ceil(2);
    let xm = MatRef::new(x, len, dim);

    let mut hs = std::mem::take(&mut s.hs);
    let hs_l = sized(&mut hs, n * r * dim); // concat(H_0 … H_{r-1}), n × rD
    let mut heads_buf = std::mem::take(&mut s.heads);
    let heads = sized(&mut heads_buf, n * dim);
    for (l, layer) in plan.layers.iter().enumerate() {
        if len == 0 {
            heads.fill(0.0); // SPEC's empty-sequence rule: every head output is zero.
        } else {
            let mut qt_buf = std::mem::take(&mut s.qt);
            let qt: &[f32] = if l == 0 {
                &plan.layer0_qt
            } else {
                // C = H_{l-1}: column block l-1 of the concat.
                let c = MatRef::with_stride(&hs_l[(l - 1) * dim..], n, dim, r * dim);
                let qt = sized(&mut qt_buf, dim * hn);
                fold_keys(k, layer, c, h, s, qt);
                qt
            };
            {
                let (st1, inv1, z1) = (&mut s.logits, &mut s.sums, &mut s.z);
                let (st2, inv2, z2) = (&mut s.logits2, &mut s.sums2, &mut s.z2);
                let mut first = move || attend_heads(k, xm, qt, hn, 0..split * n, st1, inv1, z1);
                let mut second = move || attend_heads(k, xm, qt, hn, split * n..hn, st2, inv2, z2);
                if parallel && len >= PARALLEL_HEADS_MIN {
                    rayon::join(first, second);
                } else {
                    first();
                    second();
                }
            }
            s.qt = qt_buf;
            for hd in 0..h {
                let z = if hd < split {
                    &s.z[hd * n * dim..(hd + 1) * n * dim]
                } else {
                    &s.z2[(hd - split) * n * dim..(hd - split + 1) * n * dim]
                };
                k.gemm(
                    MatRef::new(z, n, dim),
                    MatRef::with_stride(&layer.v.wt[hd * d..], dim, d, dim),
                    MatMut::with_stride(&mut heads[hd * d..], n, d, dim),
                    Some(&layer.v.bias[hd * d..(hd + 1) * d]),
                    None,
                )
                .expect(shapes); // head_k = (A_k X) Wv_kᵀ + bv_k
            }
        }
        k.gemm(
            MatRef::new(heads, n, dim),
            MatRef::new(&layer.o.wt, dim, dim),
            MatMut::with_stride(&mut hs_l[l * dim..], n, dim, r * dim),
            Some(&layer.o.bias),
            None,
        )
        .expect(shapes); // H_l
    }
    plan.merge.apply(k, hs_l, n, out);
    s.hs = hs;
    s.heads = heads_buf;
}
