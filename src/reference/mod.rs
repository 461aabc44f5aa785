//! The plain reference path of SPEC §1: scalar, single-threaded, obviously correct. Every stage
//! accumulates and passes intermediates in f64; only the public results are rounded to f32. It is the
//! oracle every fast path (each SIMD level, rayon on and off, CUDA) is tested against, and it is
//! written to read like SPEC.md: one function per section.
//!
//! - [`tower`]: hierarchical multi-interest extraction, §1.2 (Algorithm 1, eq. 2–3)
//! - [`co_interest`]: the Co-Interest Network, §1.3 (eq. 4–6)
//! - [`profile`] and [`fuse`]: user profile MLP and fusion, §1.4 (eq. 7)
//! - [`score`]: per-candidate aggregation, §1.5 (eq. 8)

mod co_interest;
mod profile;
mod score;
mod tower;

pub use co_interest::co_interest;
pub use profile::{fuse, profile};
pub use score::{score, score_f64};
pub use tower::tower;

use crate::model::{Linear, Model};

/// `y = x Wᵀ + b` for `x` of `m` rows, in f64.
pub(crate) fn linear(x: &[f64], lin: &Linear) -> Vec<f64> {
    let m = x.len() / lin.in_dim.max(1);
    let mut y = vec![0.0f64; m * lin.out_dim];
    for i in 0..m {
        let xi = &x[i * lin.in_dim..(i + 1) * lin.in_dim];
        for o in 0..lin.out_dim {
            let w = lin.row(o);
            let mut acc = f64::from(lin.bias[o]);
            for c in 0..lin.in_dim {
                acc += xi[c] * f64::from(w[c]);
            }
            y[i * lin.out_dim + o] = acc;
        }
    }
    y
}

/// Numerically stable softmax of `v` in place (f64).
pub(crate) fn softmax(v: &mut [f64]) {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

pub(crate) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

pub(crate) fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// `X^U` (n × D) for one user: both towers, the co-interest network, the profile and the fusion.
/// `x_long` / `x_short` are the token rows after SPEC §1.1's skipping and truncation (row-major,
/// `L × D` / `S × D`), `field_ids` the profile field ids in config order (validated against the
/// vocabularies), `dense` the dense features.
pub fn user_interests(
    model: &Model,
    x_long: &[f32],
    x_short: &[f32],
    field_ids: &[usize],
    dense: &[f32],
) -> Vec<f32> {
    user_interests_f64(model, &to_f64(x_long), &to_f64(x_short), field_ids, dense)
}

/// [`user_interests`] with the token rows in f64: the stored values exactly, I8 rows included
/// (`scale · q` is not always an f32; SPEC §3 has the reference evaluate it in float64).
pub fn user_interests_f64(
    model: &Model,
    x_long: &[f64],
    x_short: &[f64],
    field_ids: &[usize],
    dense: &[f32],
) -> Vec<f32> {
    let cfg = &model.config;
    let long = tower::tower_f64(&model.weights.long, cfg, x_long);
    let short = tower::tower_f64(&model.weights.short, cfg, x_short);
    let x_tilde = co_interest::co_interest_f64(model, &long, &short);
    let x_hat = profile::profile_f64(model, field_ids, dense);
    to_f32(&profile::fuse_f64(model, &x_tilde, &x_hat))
}
