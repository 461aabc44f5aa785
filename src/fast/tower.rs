//! SPEC §1.2 (Algorithm 1, eq. 2–3) on the CPU fast path: one tower `F(X)`, all heads of a layer
//! at once, in the cheaper order SPEC §1.2 allows (see [`super`]). The oracle is
//! `src/reference/tower.rs`, the GPU's `kernels/attend.cu` + `kernels/attend_combine.cu` (the same
//! rewrite, per key chunk).
//!
//! A layer is a handful of products on [`Kernels::gemm`], laid out so that none copies or
//! transposes the sequence `X` (`L × D`, as gathered):
//!
//! 1. `Q = C Wqᵀ + bq` for all heads (`n × D`, `1/sqrt(d)` folded in), transposed (`D × n`);
//!    layer 0's `Q̃ᵀ` (below) is a constant of the model;
//!
//! then, for each group of heads (two groups of `⌈h/2⌉`, one job each; on two threads they run
//! side by side, so only steps 1 and 6 are serial):
//!
//! 2. per head `Q̃_kᵀ = Wk_kᵀ Q_kᵀ` (`D × n`, `Wk` read transposed in place) into the columns of
//!    the group's `Q̃ᵀ` (`D × w`, `w = n·|group|`);
//! 3. the group's logits in one product, transposed: `Sᵀ = X Q̃ᵀ` (`L × w`), and the softmax
//!    down each column (vectors across the `w` rows of attention, no horizontal sums), left
//!    unnormalised, with `1/Σ` per column;
//! 4. `Z = Pᵀ X` (`w × D`, `P`'s transpose read as a view), each row scaled by its `1/Σ`: the
//!    heads' `A_k X`, stacked;
//! 5. per head `Z_k Wv_kᵀ + bv_k` (`n × d`), copied into the head's `d` columns of the concat
//!    (`n × D`);
//!
//! 6. `H_l = concat · Woᵀ + bo`, written straight into its column block of
//!    `concat(H_0 … H_{r-1})` (`n × r·D`), which is the next layer's `C` as a strided view and
//!    the merge's input.
//!
//! Two groups, not one job per head: a head alone gives products 16 columns wide, whose tiles
//! read `X` twice as often (one head per job was 8–15% slower on one thread, BENCHMARKS.md
//! session 12).

use super::{sized, Lin, Scratch};
use crate::config::HcnConfig;
use crate::cpu::{transpose_into, Kernels, MatMut, MatRef};
use crate::model::Tower;
use rayon::prelude::*;

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

/// `Q̃ᵀ` (`D × h·n`): column block `k` is `(Wk_k (C Wq_kᵀ + bq_k) / sqrt(d))ᵀ` (step 1 above):
/// [`project_queries`], then [`fold_head`] per head.
fn fold_keys(
    k: &Kernels,
    layer: &LayerPlan,
    c: MatRef<'_>,
    h: usize,
    s: &mut Scratch,
    qt: &mut [f32],
) {
    let (n, dim) = (c.rows, c.cols);
    let mut q_t = std::mem::take(&mut s.q_t);
    project_queries(k, layer, c, &mut s.q, &mut q_t);
    for hd in 0..h {
        let qt = MatMut::with_stride(&mut qt[hd * n..], dim, n, h * n);
        fold_head(k, layer, &q_t, h, hd, qt);
    }
    s.q_t = q_t;
}

/// `Qᵀ` (`D × n`, all heads) into `q_t`: `Q = C Wqᵀ + bq` (`1/sqrt(d)` folded in, into `q`),
/// transposed.
fn project_queries(
    k: &Kernels,
    layer: &LayerPlan,
    c: MatRef<'_>,
    q: &mut Vec<f32>,
    q_t: &mut Vec<f32>,
) {
    let (n, dim) = (c.rows, c.cols);
    let q = sized(q, n * dim);
    k.gemm(
        c,
        MatRef::new(&layer.q.wt, dim, dim),
        MatMut::new(q, n, dim),
        Some(&layer.q.bias),
        None,
    )
    .expect("user tower: shapes fixed at load");
    let q_t = sized(q_t, dim * n);
    transpose_into(q, n, dim, dim, q_t, n);
}

/// Head `hd`'s `Q̃_kᵀ = Wk_kᵀ Q_kᵀ` (`D × n`, `Wk` read transposed in place) into `qt`, from
/// all heads' `Qᵀ` (`q_t`, `D × n`; head `k`'s rows `[k·d, (k+1)·d)`).
fn fold_head(k: &Kernels, layer: &LayerPlan, q_t: &[f32], h: usize, hd: usize, qt: MatMut<'_>) {
    let (dim, n) = (qt.rows, qt.cols);
    let d = dim / h;
    k.gemm(
        MatRef::new(&layer.wk[hd * d * dim..(hd + 1) * d * dim], d, dim).t(),
        MatRef::new(&q_t[hd * d * n..(hd + 1) * d * n], d, n),
        qt,
        None,
        None,
    )
    .expect("user tower: shapes fixed at load");
}

/// Sequences at least this long run a layer's head groups on the pool's threads (when
/// parallel).
const PARALLEL_HEADS_MIN: usize = 128;

/// Jobs per layer (of ⌈h / GROUPS⌉ heads each); see the module's notes.
const GROUPS: usize = 2;

/// One group's buffers (grow-only): its heads' `Q̃ᵀ` (layers ≥ 1, `D × w` for `w = g·n`),
/// logits `Sᵀ` (`L × w`), `1/Σ` per column, `Z` (`w × D`) and the heads' outputs (`g` blocks of
/// `n × d`).
#[derive(Default)]
pub(crate) struct HeadScratch {
    qt: Vec<f32>,
    st: Vec<f32>,
    inv: Vec<f32>,
    z: Vec<f32>,
    out: Vec<f32>,
}

/// The heads `heads` of layer `layer` (`q_t`: the layer's `Qᵀ`, `None` for layer 0, whose
/// `Q̃ᵀ` is the plan's), steps 1–5 for those heads alone: their `Q̃ᵀ` (`D × w`), logits
/// `Sᵀ = X Q̃ᵀ` (`L × w`), the column softmax, `Z = Pᵀ X` (`w × D`) scaled by `1/Σ`, and per
/// head `Z_k Wv_kᵀ + bv_k` (`n × d`) into `hs.out`.
#[allow(clippy::too_many_arguments)]
fn attend_heads(
    k: &Kernels,
    plan: &TowerPlan,
    layer: &LayerPlan,
    q_t: Option<&[f32]>,
    x: MatRef<'_>,
    h: usize,
    heads: std::ops::Range<usize>,
    hs: &mut HeadScratch,
) {
    let (len, dim) = (x.rows, x.cols);
    let d = dim / h;
    let shapes = "user tower: shapes fixed at load";
    let n = plan.layer0_qt.len() / (dim * h);
    let (h0, w) = (heads.start, heads.len() * n);
    let qt = match q_t {
        None => MatRef::with_stride(&plan.layer0_qt[h0 * n..], dim, w, h * n),
        Some(q_t) => {
            let qt = sized(&mut hs.qt, dim * w);
            for hd in heads.clone() {
                let at = (hd - h0) * n;
                fold_head(
                    k,
                    layer,
                    q_t,
                    h,
                    hd,
                    MatMut::with_stride(&mut qt[at..], dim, n, w),
                );
            }
            MatRef::new(qt, dim, w)
        }
    };
    let st = sized(&mut hs.st, len * w);
    k.gemm(x, qt, MatMut::new(st, len, w), None, None)
        .expect(shapes); // Sᵀ = X Q̃ᵀ
    let inv = sized(&mut hs.inv, w);
    k.softmax_cols(st, len, w, w, inv).expect(shapes);
    let z = sized(&mut hs.z, w * dim);
    k.gemm(
        MatRef::new(st, len, w).t(),
        x,
        MatMut::new(z, w, dim),
        None,
        Some(inv),
    )
    .expect(shapes); // Z = Pᵀ X: these heads' A_k X
    let out = sized(&mut hs.out, w * d);
    for hd in heads {
        let at = (hd - h0) * n;
        k.gemm(
            MatRef::new(&z[at * dim..(at + n) * dim], n, dim),
            MatRef::with_stride(&layer.v.wt[hd * d..], dim, d, dim),
            MatMut::new(&mut out[at * d..(at + n) * d], n, d),
            Some(&layer.v.bias[hd * d..(hd + 1) * d]),
            None,
        )
        .expect(shapes); // head_k = (A_k X) Wv_kᵀ + bv_k
    }
}

/// `F(X)` for one sequence (`x`: `L × D`), into `out` (`n × D`). Each group of heads of a
/// layer is one job (steps 2–5, [`attend_heads`]), computed the same way whatever `parallel`
/// says, so the bits never depend on it; with `parallel` and a long sequence the groups are
/// spread over the pool (on 2 threads the second is otherwise idle once it has resolved the
/// candidates and run the short tower). Steps 1 and 6 join them.
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
    let shapes = "user tower: shapes fixed at load";
    let xm = MatRef::new(x, len, dim);

    let mut hs = std::mem::take(&mut s.hs);
    let hs_l = sized(&mut hs, n * r * dim); // concat(H_0 … H_{r-1}), n × rD
    let mut heads_buf = std::mem::take(&mut s.heads);
    let heads = sized(&mut heads_buf, n * dim);
    let per = h.div_ceil(GROUPS);
    let groups = h.div_ceil(per);
    if s.head.len() < groups {
        s.head.resize_with(groups, HeadScratch::default);
    }
    for (l, layer) in plan.layers.iter().enumerate() {
        if len == 0 {
            heads.fill(0.0); // SPEC's empty-sequence rule: every head output is zero.
        } else {
            let q_t = (l > 0).then(|| {
                // C = H_{l-1}: column block l-1 of the concat.
                let c = MatRef::with_stride(&hs_l[(l - 1) * dim..], n, dim, r * dim);
                project_queries(k, layer, c, &mut s.q, &mut s.q_t);
                &s.q_t[..dim * n]
            });
            let job = |(g, hsc): (usize, &mut HeadScratch)| {
                let heads = g * per..((g + 1) * per).min(h);
                attend_heads(k, plan, layer, q_t, xm, h, heads, hsc)
            };
            if parallel && len >= PARALLEL_HEADS_MIN {
                s.head[..groups].par_iter_mut().enumerate().for_each(job);
            } else {
                s.head[..groups].iter_mut().enumerate().for_each(job);
            }
            for hd in 0..h {
                let out = &s.head[hd / per].out[(hd % per) * n * d..];
                for i in 0..n {
                    heads[i * dim + hd * d..i * dim + (hd + 1) * d]
                        .copy_from_slice(&out[i * d..(i + 1) * d]);
                }
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
