//! SPEC §1.3: the Co-Interest Network (eq. 4–6).

use super::{linear, softmax, to_f32, to_f64};
use crate::config::Block;
use crate::model::Model;

/// `X̃` (n × D) from `L̂` and `Ŝ` (both n × D).
pub fn co_interest(model: &Model, long: &[f32], short: &[f32]) -> Vec<f32> {
    to_f32(&co_interest_f64(model, &to_f64(long), &to_f64(short)))
}

pub(crate) fn co_interest_f64(model: &Model, long: &[f64], short: &[f64]) -> Vec<f64> {
    let (n, dim) = (model.config.interests, model.config.dim);
    let row = |m: &[f64], i: usize| m[i * dim..(i + 1) * dim].to_vec();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();

    // E = L̂ Ŝᵀ (no scaling).
    let e: Vec<f64> = (0..n * n)
        .map(|ij| dot(&row(long, ij / n), &row(short, ij % n)))
        .collect();

    // L̃_i = Σ_j softmax_j(E_ij) Ŝ_j
    let mut long_aligned = vec![0.0f64; n * dim];
    for i in 0..n {
        let mut a = e[i * n..(i + 1) * n].to_vec();
        softmax(&mut a);
        for (j, aj) in a.iter().enumerate() {
            for c in 0..dim {
                long_aligned[i * dim + c] += aj * short[j * dim + c];
            }
        }
    }
    // S̃_j = Σ_i softmax_i(E_ij) L̂_i
    let mut short_aligned = vec![0.0f64; n * dim];
    for j in 0..n {
        let mut a: Vec<f64> = (0..n).map(|i| e[i * n + j]).collect();
        softmax(&mut a);
        for (i, ai) in a.iter().enumerate() {
            for c in 0..dim {
                short_aligned[j * dim + c] += ai * long[i * dim + c];
            }
        }
    }

    let blocks = &model.config.co_interest_concat;
    let k = blocks.len();
    let mut cat = vec![0.0f64; n * k * dim];
    for i in 0..n {
        for (b, block) in blocks.iter().enumerate() {
            let src = match block {
                Block::Long => long,
                Block::Short => short,
                Block::LongAligned => &long_aligned,
                Block::ShortAligned => &short_aligned,
            };
            cat[i * k * dim + b * dim..i * k * dim + (b + 1) * dim]
                .copy_from_slice(&src[i * dim..(i + 1) * dim]);
        }
    }
    linear(&cat, &model.weights.co_interest)
}
