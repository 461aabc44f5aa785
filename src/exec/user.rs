//! The fast user side (SPEC §1.2–1.4) in f32: the same math as [`crate::reference`], evaluated in
//! the cheaper order SPEC §1.2 allows:
//!
//! - the key projection is folded into the query: per head `Q̃_k = Q_k Wk_k / sqrt(d)` (`n × D`), and
//!   the logits are `Q̃_k Xᵀ` over the raw tokens (`Q_k bk_kᵀ` is constant along L, softmax drops it);
//! - attention is taken over the raw tokens and the value projection applied after:
//!   `A_k V_k = (A_k X) Wv_kᵀ + bv_k` (rows of `A_k` sum to one; an empty sequence keeps the zero
//!   head output instead).
//!
//! With all heads stacked, a layer is two products with the sequence (`(h·n) × D` by `X`), instead
//! of projecting every token twice (`2·L·D²`). Layer 0's `Q̃` depends only on the seeds and is
//! computed once when the engine is built. Buffers live in a per-thread [`Scratch`].

use std::cell::RefCell;

use super::linalg::{matmul_t, softmax_rows, transpose};
use crate::config::{Block, HcnConfig};
use crate::model::{Linear, Model, Tower};

/// Per-tower values that do not depend on the request.
#[derive(Debug, Clone)]
pub(crate) struct TowerPlan {
    /// Layer 0's `Q̃` for all heads, `(h·n) × D`, head-major, scaled by `1/sqrt(d)`.
    layer0_qt: Vec<f32>,
}

/// What the fast user side precomputes from a model.
#[derive(Debug, Clone)]
pub(crate) struct UserPlan {
    long: TowerPlan,
    short: TowerPlan,
}

impl UserPlan {
    pub(crate) fn new(model: &Model) -> Self {
        let cfg = &model.config;
        let plan = |t: &Tower| {
            let mut q = vec![0.0f32; cfg.interests * cfg.dim];
            let l0 = &t.layers[0];
            matmul_t(
                &t.seeds,
                cfg.interests,
                cfg.dim,
                &l0.q.weight,
                cfg.dim,
                Some(&l0.q.bias),
                &mut q,
            );
            let mut layer0_qt = vec![0.0f32; cfg.heads * cfg.interests * cfg.dim];
            fold_keys(cfg, &q, &l0.k, &mut layer0_qt);
            TowerPlan { layer0_qt }
        };
        UserPlan {
            long: plan(&model.weights.long),
            short: plan(&model.weights.short),
        }
    }
}

/// Reused buffers of one thread (grow-only).
#[derive(Default)]
pub(crate) struct Scratch {
    xt: Vec<f32>,
    qt: Vec<f32>,
    q: Vec<f32>,
    logits: Vec<f32>,
    z: Vec<f32>,
    heads: Vec<f32>,
    hs: Vec<f32>,
    cat: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// `Q̃_k = Q_k Wk_k / sqrt(d)` for every head `k`, into `out` (`(h·n) × D`, head-major).
fn fold_keys(cfg: &HcnConfig, q: &[f32], wk: &Linear, out: &mut [f32]) {
    let (n, dim, h) = (cfg.interests, cfg.dim, cfg.heads);
    let d = dim / h;
    let scale = 1.0 / (d as f32).sqrt();
    out.fill(0.0);
    for k in 0..h {
        for i in 0..n {
            let o = &mut out[(k * n + i) * dim..(k * n + i + 1) * dim];
            for t in 0..d {
                let coef = q[i * dim + k * d + t] * scale;
                let w = wk.row(k * d + t);
                for (oc, &wc) in o.iter_mut().zip(w) {
                    *oc += coef * wc;
                }
            }
        }
    }
}

/// `F(X)` for one sequence (`x`: `L × D`), into `out` (`n × D`).
pub(crate) fn tower(
    t: &Tower,
    plan: &TowerPlan,
    cfg: &HcnConfig,
    x: &[f32],
    s: &mut Scratch,
    out: &mut [f32],
) {
    let (n, dim, h, r) = (cfg.interests, cfg.dim, cfg.heads, cfg.layers);
    let d = dim / h;
    let len = x.len() / dim;
    let hn = h * n;

    let xt = sized(&mut s.xt, dim * len);
    transpose(x, len, dim, xt);
    let hs = sized(&mut s.hs, n * r * dim); // concat(H_0 … H_{r-1}), n × rD
    for (l, layer) in t.layers.iter().enumerate() {
        let heads = sized(&mut s.heads, n * dim);
        if len == 0 {
            heads.fill(0.0); // SPEC's empty-sequence rule: every head output is zero.
        } else {
            let qt: &[f32] = if l == 0 {
                &plan.layer0_qt
            } else {
                // C = H_{l-1}, stored in hs at column block l-1.
                let q = sized(&mut s.q, n * dim);
                for i in 0..n {
                    let c = &hs[i * r * dim + (l - 1) * dim..i * r * dim + l * dim];
                    matmul_t(
                        c,
                        1,
                        dim,
                        &layer.q.weight,
                        dim,
                        Some(&layer.q.bias),
                        &mut q[i * dim..(i + 1) * dim],
                    );
                }
                let qt = sized(&mut s.qt, hn * dim);
                fold_keys(cfg, q, &layer.k, qt);
                qt
            };
            let logits = sized(&mut s.logits, hn * len);
            matmul_t(qt, hn, dim, x, len, None, logits);
            softmax_rows(logits, len);
            let z = sized(&mut s.z, hn * dim);
            matmul_t(logits, hn, len, xt, dim, None, z); // A_k X for every head
            for k in 0..h {
                let wv = &layer.v.weight[k * d * dim..(k + 1) * d * dim];
                let bv = &layer.v.bias[k * d..(k + 1) * d];
                for i in 0..n {
                    let zi = &z[(k * n + i) * dim..(k * n + i + 1) * dim];
                    matmul_t(
                        zi,
                        1,
                        dim,
                        wv,
                        d,
                        Some(bv),
                        &mut heads[i * dim + k * d..i * dim + (k + 1) * d],
                    );
                }
            }
        }
        for i in 0..n {
            let hi = &heads[i * dim..(i + 1) * dim];
            let dst = &mut hs[i * r * dim + l * dim..i * r * dim + (l + 1) * dim];
            matmul_t(hi, 1, dim, &layer.o.weight, dim, Some(&layer.o.bias), dst);
        }
    }
    matmul_t(
        hs,
        n,
        r * dim,
        &t.merge.weight,
        dim,
        Some(&t.merge.bias),
        out,
    );
}

/// `X^U` (n × D) from the gathered token rows, field ids (config order) and dense features.
pub(crate) fn user_interests(
    model: &Model,
    plan: &UserPlan,
    x_long: &[f32],
    x_short: &[f32],
    field_ids: &[usize],
    dense: &[f32],
    out: &mut [f32],
) {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let s = &mut *guard;
        let cfg = &model.config;
        let w = &model.weights;
        let (n, dim) = (cfg.interests, cfg.dim);
        let mut long = vec![0.0f32; n * dim];
        let mut short = vec![0.0f32; n * dim];
        tower(&w.long, &plan.long, cfg, x_long, s, &mut long);
        tower(&w.short, &plan.short, cfg, x_short, s, &mut short);

        // Co-interest network (eq. 4–6).
        let mut e = vec![0.0f32; n * n];
        matmul_t(&long, n, dim, &short, n, None, &mut e); // E = L̂ Ŝᵀ
        let mut rows = e.clone();
        softmax_rows(&mut rows, n); // softmax_j(E_ij)
        let mut et = vec![0.0f32; n * n];
        transpose(&e, n, n, &mut et);
        softmax_rows(&mut et, n); // et[j][i] = softmax_i(E_ij)
        let mut short_t = vec![0.0f32; dim * n];
        let mut long_t = vec![0.0f32; dim * n];
        transpose(&short, n, dim, &mut short_t);
        transpose(&long, n, dim, &mut long_t);
        let mut long_aligned = vec![0.0f32; n * dim];
        let mut short_aligned = vec![0.0f32; n * dim];
        matmul_t(&rows, n, n, &short_t, dim, None, &mut long_aligned);
        matmul_t(&et, n, n, &long_t, dim, None, &mut short_aligned);
        let blocks = &cfg.co_interest_concat;
        let kb = blocks.len();
        let cat = sized(&mut s.cat, n * kb * dim);
        for i in 0..n {
            for (b, block) in blocks.iter().enumerate() {
                let src = match block {
                    Block::Long => &long,
                    Block::Short => &short,
                    Block::LongAligned => &long_aligned,
                    Block::ShortAligned => &short_aligned,
                };
                cat[i * kb * dim + b * dim..i * kb * dim + (b + 1) * dim]
                    .copy_from_slice(&src[i * dim..(i + 1) * dim]);
            }
        }
        let mut x_tilde = vec![0.0f32; n * dim];
        matmul_t(
            cat,
            n,
            kb * dim,
            &w.co_interest.weight,
            dim,
            Some(&w.co_interest.bias),
            &mut x_tilde,
        );

        // Profile (eq. 7): fields in config order, dense last, MLP with ReLU between layers.
        let mut x_hat = vec![0.0f32; dim];
        if cfg.has_profile() && !w.user.mlp.is_empty() {
            let mut x: Vec<f32> = Vec::with_capacity(w.user.input_dim());
            for (field, &id) in w.user.fields.iter().zip(field_ids) {
                let start = x.len();
                x.resize(start + field.width(), 0.0);
                field.table.row_into(id, &mut x[start..]);
            }
            x.extend_from_slice(dense);
            let last = w.user.mlp.len() - 1;
            for (i, layer) in w.user.mlp.iter().enumerate() {
                let mut y = vec![0.0f32; layer.out_dim];
                matmul_t(
                    &x,
                    1,
                    layer.in_dim,
                    &layer.weight,
                    layer.out_dim,
                    Some(&layer.bias),
                    &mut y,
                );
                if i != last {
                    y.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                x = y;
            }
            x_hat.copy_from_slice(&x);
        }

        // Fusion: X^U = concat(X̃, tile_n(X̂)) Wuᵀ + bu.
        let fcat = sized(&mut s.cat, n * 2 * dim);
        for i in 0..n {
            fcat[i * 2 * dim..i * 2 * dim + dim].copy_from_slice(&x_tilde[i * dim..(i + 1) * dim]);
            fcat[i * 2 * dim + dim..(i + 1) * 2 * dim].copy_from_slice(&x_hat);
        }
        matmul_t(
            fcat,
            n,
            2 * dim,
            &w.fusion.weight,
            dim,
            Some(&w.fusion.bias),
            out,
        );
    });
}
