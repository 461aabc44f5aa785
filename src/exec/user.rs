//! The fast user side (SPEC §1.2–1.4) in f32 on the SIMD kernels of [`crate::cpu`]: the same
//! math as [`crate::reference`], evaluated in the cheaper order SPEC §1.2 allows:
//!
//! - the key projection is folded into the query: per head `Q̃_k = Q_k Wk_k / sqrt(d)` (`n × D`),
//!   and the logits are `Q̃_k Xᵀ` over the raw tokens (`Q_k bk_kᵀ` is constant along L, the softmax
//!   drops it);
//! - attention is taken over the raw tokens and the value projection applied after:
//!   `A_k V_k = (A_k X) Wv_kᵀ + bv_k` (rows of `A_k` sum to one; an empty sequence keeps the zero
//!   head output instead).
//!
//! With all heads stacked, a layer is two products with the sequence (`(h·n) × D` by `Xᵀ`, then
//! `(h·n) × L` by `X`) instead of projecting every token twice (`2·L·D²`). Layer 0's `Q̃` depends
//! only on the seeds and is computed once when the engine is built; every weight is stored
//! transposed (`[in, out]`) for the kernels, and `1/sqrt(d)` is folded into the query weights.
//! Buffers live in a per-thread [`Scratch`] that only grows.

use std::cell::RefCell;

use crate::config::{Block, HcnConfig};
use crate::cpu::{transpose, Kernels};
use crate::model::{Linear, Model, Tower};

/// A linear layer stored for the kernels: weight transposed to `[in, out]`.
#[derive(Debug, Clone)]
struct Lin {
    wt: Vec<f32>,
    bias: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
}

impl Lin {
    fn new(l: &Linear) -> Self {
        Lin {
            wt: transpose(&l.weight, l.out_dim, l.in_dim),
            bias: l.bias.clone(),
            in_dim: l.in_dim,
            out_dim: l.out_dim,
        }
    }

    /// Output rows `[rows.start, rows.end)` of `l` only, optionally scaled.
    fn rows(l: &Linear, rows: std::ops::Range<usize>, scale: f32) -> Self {
        let w: Vec<f32> = l.weight[rows.start * l.in_dim..rows.end * l.in_dim]
            .iter()
            .map(|v| v * scale)
            .collect();
        let out = rows.len();
        Lin {
            wt: transpose(&w, out, l.in_dim),
            bias: l.bias[rows].iter().map(|v| v * scale).collect(),
            in_dim: l.in_dim,
            out_dim: out,
        }
    }

    /// `out (m × out) = x (m × in) Wᵀ + b`.
    fn apply(&self, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
        // Lengths are fixed by the validated model and the scratch sizing below; an error here
        // would be a bug in this file, not bad input.
        k.matmul(
            x,
            m,
            self.in_dim,
            &self.wt,
            self.out_dim,
            Some(&self.bias),
            out,
        )
        .expect("user tower: shapes fixed at load");
    }
}

#[derive(Debug, Clone)]
struct HeadPlan {
    /// Query rows of this head, scaled by `1/sqrt(d)`: `[D, d]` transposed.
    q: Lin,
    /// `Wk_k`: rows `[k·d, (k+1)·d)` of `Wk`, `d × D` (already the `[in, out]` layout for
    /// `Q_k Wk_k`).
    wk: Vec<f32>,
    /// Value rows of this head: `[D, d]` transposed.
    v: Lin,
}

#[derive(Debug, Clone)]
struct LayerPlan {
    heads: Vec<HeadPlan>,
    o: Lin,
}

#[derive(Debug, Clone)]
struct TowerPlan {
    layers: Vec<LayerPlan>,
    merge: Lin,
    /// Layer 0's `Q̃` for all heads, `(h·n) × D`, head-major.
    layer0_qt: Vec<f32>,
}

/// What the fast user side precomputes from a model (weights in the kernels' layout).
#[derive(Debug, Clone)]
pub(crate) struct UserPlan {
    long: TowerPlan,
    short: TowerPlan,
    co_interest: Lin,
    mlp: Vec<Lin>,
    fusion: Lin,
}

impl UserPlan {
    pub(crate) fn new(model: &Model, k: &Kernels) -> Self {
        let cfg = &model.config;
        let w = &model.weights;
        UserPlan {
            long: tower_plan(&w.long, cfg, k),
            short: tower_plan(&w.short, cfg, k),
            co_interest: Lin::new(&w.co_interest),
            mlp: w.user.mlp.iter().map(Lin::new).collect(),
            fusion: Lin::new(&w.fusion),
        }
    }
}

fn tower_plan(t: &Tower, cfg: &HcnConfig, k: &Kernels) -> TowerPlan {
    let (n, dim, h) = (cfg.interests, cfg.dim, cfg.heads);
    let d = dim / h;
    let scale = 1.0 / (d as f32).sqrt();
    let layers: Vec<LayerPlan> = t
        .layers
        .iter()
        .map(|l| LayerPlan {
            heads: (0..h)
                .map(|hd| HeadPlan {
                    q: Lin::rows(&l.q, hd * d..(hd + 1) * d, scale),
                    wk: l.k.weight[hd * d * dim..(hd + 1) * d * dim].to_vec(),
                    v: Lin::rows(&l.v, hd * d..(hd + 1) * d, 1.0),
                })
                .collect(),
            o: Lin::new(&l.o),
        })
        .collect();
    let mut layer0_qt = vec![0.0f32; h * n * dim];
    let mut qk = vec![0.0f32; n * d];
    fold_keys(k, &layers[0], &t.seeds, n, dim, d, &mut qk, &mut layer0_qt);
    TowerPlan {
        layers,
        merge: Lin::new(&t.merge),
        layer0_qt,
    }
}

/// `Q̃_k = (C Wq_kᵀ + bq_k) Wk_k / sqrt(d)` for every head, into `out` (`(h·n) × D`).
#[allow(clippy::too_many_arguments)]
fn fold_keys(
    k: &Kernels,
    layer: &LayerPlan,
    c: &[f32],
    n: usize,
    dim: usize,
    d: usize,
    qk: &mut [f32],
    out: &mut [f32],
) {
    for (hd, head) in layer.heads.iter().enumerate() {
        head.q.apply(k, c, n, qk);
        k.matmul(
            qk,
            n,
            d,
            &head.wk,
            dim,
            None,
            &mut out[hd * n * dim..(hd + 1) * n * dim],
        )
        .expect("user tower: shapes fixed at load");
    }
}

/// Reused buffers of one thread (grow-only).
#[derive(Default)]
struct Scratch {
    xt: Vec<f32>,
    qt: Vec<f32>,
    qk: Vec<f32>,
    logits: Vec<f32>,
    z: Vec<f32>,
    heads: Vec<f32>,
    hs: Vec<f32>,
    c: Vec<f32>,
    cat: Vec<f32>,
}

thread_local! {
    /// One scratch per tower (long, short): the towers may run side by side.
    static SCRATCH: RefCell<(Scratch, Scratch)> = RefCell::default();
}

/// Total sequence length below which the two towers run one after the other even when
/// parallel: handing the short tower to another thread costs a wake-up (tens of µs on a VM).
const PARALLEL_TOWERS_MIN: usize = 64;

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// One layer's attention over all heads at once: logits `Q̃_k Xᵀ`, softmax, `A_k X`, then each
/// head's value projection, written to `out` as `n` rows of `h·d` (the heads' concat).
struct Heads<'a> {
    k: &'a Kernels,
    layer: &'a LayerPlan,
    qt: &'a [f32],
    x: &'a [f32],
    xt: &'a [f32],
    n: usize,
    dim: usize,
    d: usize,
    len: usize,
}

impl Heads<'_> {
    fn run(&self, logits: &mut [f32], z: &mut [f32], out: &mut [f32]) {
        let Heads {
            k,
            layer,
            qt,
            x,
            xt,
            n,
            dim,
            d,
            len,
        } = *self;
        let h = layer.heads.len();
        let rows = h * n;
        k.matmul(qt, rows, dim, xt, len, None, logits)
            .expect("shapes");
        for row in logits.chunks_exact_mut(len) {
            k.softmax_inplace(row);
        }
        k.matmul(logits, rows, len, x, dim, None, z)
            .expect("shapes"); // A_k X
        let width = h * d;
        let mut head_out = vec![0.0f32; n * d];
        for (j, head) in layer.heads.iter().enumerate() {
            head.v
                .apply(k, &z[j * n * dim..(j + 1) * n * dim], n, &mut head_out);
            for i in 0..n {
                out[i * width + j * d..i * width + (j + 1) * d]
                    .copy_from_slice(&head_out[i * d..(i + 1) * d]);
            }
        }
    }
}

/// `F(X)` for one sequence (`x`: `L × D`), into `out` (`n × D`).
fn tower(
    k: &Kernels,
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
    for (j, row) in x.chunks_exact(dim).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            xt[c * len + j] = v;
        }
    }
    let hs = sized(&mut s.hs, n * r * dim); // concat(H_0 … H_{r-1}), n × rD
    for (l, layer) in plan.layers.iter().enumerate() {
        let heads = sized(&mut s.heads, n * dim);
        if len == 0 {
            heads.fill(0.0); // SPEC's empty-sequence rule: every head output is zero.
        } else {
            let qt: &[f32] = if l == 0 {
                &plan.layer0_qt
            } else {
                // C = H_{l-1}, held in hs at column block l-1.
                let c = sized(&mut s.c, n * dim);
                for i in 0..n {
                    c[i * dim..(i + 1) * dim]
                        .copy_from_slice(&hs[i * r * dim + (l - 1) * dim..i * r * dim + l * dim]);
                }
                let qt = sized(&mut s.qt, hn * dim);
                fold_keys(k, layer, c, n, dim, d, sized(&mut s.qk, n * d), qt);
                qt
            };
            let logits = sized(&mut s.logits, hn * len);
            let z = sized(&mut s.z, hn * dim);
            let block = Heads {
                k,
                layer,
                qt,
                x,
                xt,
                n,
                dim,
                d,
                len,
            };
            block.run(logits, z, heads);
        }
        let h_l = sized(&mut s.c, n * dim);
        layer.o.apply(k, heads, n, h_l);
        for i in 0..n {
            hs[i * r * dim + l * dim..i * r * dim + (l + 1) * dim]
                .copy_from_slice(&h_l[i * dim..(i + 1) * dim]);
        }
    }
    plan.merge.apply(k, hs, n, out);
}

/// `X^U` (n × D) from the gathered token rows, field ids (config order) and dense features.
#[allow(clippy::too_many_arguments)]
pub(crate) fn user_interests(
    k: &Kernels,
    model: &Model,
    plan: &UserPlan,
    x_long: &[f32],
    x_short: &[f32],
    field_ids: &[usize],
    dense: &[f32],
    parallel: bool,
    out: &mut [f32],
) {
    // The scratch is taken out of the thread-local for the whole call, not borrowed: the towers
    // call `rayon::join`, and a rayon thread waiting there may run another request's job on this
    // thread, which then finds an empty scratch instead of a `RefCell` already borrowed.
    let mut scratch = SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    {
        let (s, s_short) = (&mut scratch.0, &mut scratch.1);
        let cfg = &model.config;
        let (n, dim) = (cfg.interests, cfg.dim);
        let mut long = vec![0.0f32; n * dim];
        let mut short = vec![0.0f32; n * dim];
        let (long_len, short_len) = (x_long.len() / dim.max(1), x_short.len() / dim.max(1));
        if parallel && short_len > 0 && long_len + short_len >= PARALLEL_TOWERS_MIN {
            // The towers are independent until the co-interest network.
            rayon::join(
                || tower(k, &plan.long, cfg, x_long, s, &mut long),
                || tower(k, &plan.short, cfg, x_short, s_short, &mut short),
            );
        } else {
            tower(k, &plan.long, cfg, x_long, s, &mut long);
            tower(k, &plan.short, cfg, x_short, s, &mut short);
        }

        // Co-interest network (eq. 4–6).
        let mut short_t = vec![0.0f32; dim * n];
        for i in 0..n {
            for c in 0..dim {
                short_t[c * n + i] = short[i * dim + c];
            }
        }
        let mut e = vec![0.0f32; n * n];
        k.matmul(&long, n, dim, &short_t, n, None, &mut e)
            .expect("shapes"); // E = L̂ Ŝᵀ
        let mut rows = e.clone();
        rows.chunks_exact_mut(n).for_each(|r| k.softmax_inplace(r)); // softmax_j(E_ij)
        let mut cols = vec![0.0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                cols[j * n + i] = e[i * n + j];
            }
        }
        cols.chunks_exact_mut(n).for_each(|r| k.softmax_inplace(r)); // cols[j][i] = softmax_i(E_ij)
        let mut long_aligned = vec![0.0f32; n * dim];
        let mut short_aligned = vec![0.0f32; n * dim];
        k.matmul(&rows, n, n, &short, dim, None, &mut long_aligned)
            .expect("shapes");
        k.matmul(&cols, n, n, &long, dim, None, &mut short_aligned)
            .expect("shapes");
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
        plan.co_interest.apply(k, cat, n, &mut x_tilde);

        // Profile (eq. 7): fields in config order, dense last, MLP with ReLU between layers.
        let mut x_hat = vec![0.0f32; dim];
        let w = &model.weights;
        if cfg.has_profile() && !plan.mlp.is_empty() {
            let mut x: Vec<f32> = Vec::with_capacity(w.user.input_dim());
            for (field, &id) in w.user.fields.iter().zip(field_ids) {
                let start = x.len();
                x.resize(start + field.width(), 0.0);
                field.table.row_into(id, &mut x[start..]);
            }
            x.extend_from_slice(dense);
            let last = plan.mlp.len() - 1;
            for (i, layer) in plan.mlp.iter().enumerate() {
                let mut y = vec![0.0f32; layer.out_dim];
                layer.apply(k, &x, 1, &mut y);
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
        plan.fusion.apply(k, fcat, n, out);
    }
    SCRATCH.with(|cell| *cell.borrow_mut() = scratch);
}
