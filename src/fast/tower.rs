//! SPEC §1.2 (Algorithm 1, eq. 2–3) on the CPU fast path: one tower `F(X)`, all heads of a layer
//! at once, in the cheaper order SPEC §1.2 allows (see [`super`]). The oracle is
//! `src/reference/tower.rs`, the GPU's `kernels/attention.cu` (+ `linear.cu`).

use super::{sized, Lin, Scratch};
use crate::config::HcnConfig;
use crate::cpu::Kernels;
use crate::model::Tower;

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
pub(crate) struct TowerPlan {
    layers: Vec<LayerPlan>,
    merge: Lin,
    /// Layer 0's `Q̃` for all heads, `(h·n) × D`, head-major.
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
pub(crate) fn tower(
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
