//! The fast CPU path of SPEC §1.1–1.4 (the user side) in f32 on the SIMD kernels of [`crate::cpu`]: the same
//! math as [`crate::reference`], evaluated in the cheaper order SPEC §1.2 allows:
//!
//! - the key projection is folded into the query: per head `Q̃_k = Q_k Wk_k / sqrt(d)` (`n × D`),
//!   and the logits are `Q̃_k Xᵀ` over the raw tokens (`Q_k bk_kᵀ` is constant along L, the softmax
//!   drops it);
//! - attention is taken over the raw tokens and the value projection applied after:
//!   `A_k V_k = (A_k X) Wv_kᵀ + bv_k` (rows of `A_k` sum to one; an empty sequence keeps the zero
//!   head output instead).
//!
//! With all heads stacked, a layer is two products with the sequence (`X Q̃ᵀ` for every head's
//! logits, then `Pᵀ X`) instead of projecting every token twice (`2·L·D²`); [`tower`] lists the
//! layer's products, all on [`Kernels::gemm`](crate::cpu::Kernels::gemm) (strided views, so `X`
//! is never copied or transposed). Layer 0's `Q̃` depends only on the seeds and is computed once
//! when the engine is built; weights are stored transposed (`[in, out]`) for the kernels where
//! they are read in vectors, and `1/sqrt(d)` is folded into the query weights. Buffers live in a
//! per-thread [`Scratch`] that only grows.
//!
//! One file per SPEC section, side by side with [`crate::reference`] (the f64 oracle) and
//! `kernels/` (the GPU): [`tower`] (§1.2), [`co_interest`] (§1.3), [`profile`] and [`fusion`]
//! (§1.4); scoring (§1.5) is [`crate::cpu::ScoreQuery`] driven by `src/exec/cpu.rs`.

pub(crate) mod co_interest;
pub(crate) mod fusion;
pub(crate) mod profile;
pub(crate) mod tower;

use std::cell::RefCell;

use crate::cpu::{transpose, Kernels};
use crate::model::{Linear, Model};
use tower::TowerPlan;

/// A linear layer stored for the kernels: weight transposed to `[in, out]`.
#[derive(Debug, Clone)]
pub(crate) struct Lin {
    pub wt: Vec<f32>,
    pub bias: Vec<f32>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Lin {
    pub fn new(l: &Linear) -> Self {
        Lin {
            wt: transpose(&l.weight, l.out_dim, l.in_dim),
            bias: l.bias.clone(),
            in_dim: l.in_dim,
            out_dim: l.out_dim,
        }
    }

    /// Output rows `[rows.start, rows.end)` of `l` only, optionally scaled.
    pub fn rows(l: &Linear, rows: std::ops::Range<usize>, scale: f32) -> Self {
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
    pub fn apply(&self, k: &Kernels, x: &[f32], m: usize, out: &mut [f32]) {
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

/// What the fast user side precomputes from a model (weights in the kernels' layout).
#[derive(Debug, Clone)]
pub(crate) struct UserPlan {
    long: TowerPlan,
    short: TowerPlan,
    co_interest: Lin,
    pub(crate) mlp: Vec<Lin>,
    fusion: Lin,
}

impl UserPlan {
    pub(crate) fn new(model: &Model, k: &Kernels) -> Self {
        let cfg = &model.config;
        let w = &model.weights;
        UserPlan {
            long: tower::tower_plan(&w.long, cfg, k),
            short: tower::tower_plan(&w.short, cfg, k),
            co_interest: Lin::new(&w.co_interest),
            mlp: w.user.mlp.iter().map(Lin::new).collect(),
            fusion: Lin::new(&w.fusion),
        }
    }
}

/// Reused buffers of one thread (grow-only).
#[derive(Default)]
pub(crate) struct Scratch {
    /// Per head group of a layer (see `tower::tower`).
    pub head: Vec<tower::HeadScratch>,
    /// A layer's `Q` and `Qᵀ`, all heads.
    pub q: Vec<f32>,
    pub q_t: Vec<f32>,
    pub heads: Vec<f32>,
    pub hs: Vec<f32>,
    pub cat: Vec<f32>,
}

thread_local! {
    /// One scratch per tower (long, short): the towers may run side by side.
    pub(crate) static SCRATCH: RefCell<(Scratch, Scratch)> = RefCell::default();
}

/// Total sequence length below which the two towers run one after the other even when
/// parallel: handing the short tower to another thread costs a wake-up (tens of µs on a VM).
pub(crate) const PARALLEL_TOWERS_MIN: usize = 64;

pub(crate) fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// `X^U` (n × D) from the gathered token rows and `X̂` (the profile vector, [`profile::profile`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn user_interests(
    k: &Kernels,
    model: &Model,
    plan: &UserPlan,
    x_long: &[f32],
    x_short: &[f32],
    x_hat: &[f32],
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
                || tower::tower(k, &plan.long, cfg, x_long, s, true, &mut long),
                || tower::tower(k, &plan.short, cfg, x_short, s_short, true, &mut short),
            );
        } else {
            tower::tower(k, &plan.long, cfg, x_long, s, parallel, &mut long);
            tower::tower(k, &plan.short, cfg, x_short, s, parallel, &mut short);
        }
        let x_tilde = co_interest::co_interest(k, &plan.co_interest, cfg, &long, &short, s);
        fusion::fuse(k, &plan.fusion, cfg, &x_tilde, x_hat, s, out);
    }
    SCRATCH.with(|cell| *cell.borrow_mut() = scratch);
}
