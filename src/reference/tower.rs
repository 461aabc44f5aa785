//! SPEC §1.2: hierarchical multi-interest extraction (Algorithm 1, eq. 2–3), written as printed.

use super::{linear, softmax, to_f32, to_f64};
use crate::config::HcnConfig;
use crate::model::Tower;

/// `F(X)` for one sequence: `x` is `L × D` (L may be 0), the result `n × D`.
pub fn tower(t: &Tower, cfg: &HcnConfig, x: &[f32]) -> Vec<f32> {
    to_f32(&tower_f64(t, cfg, &to_f64(x)))
}

pub(crate) fn tower_f64(t: &Tower, cfg: &HcnConfig, x: &[f64]) -> Vec<f64> {
    let (n, dim, h) = (cfg.interests, cfg.dim, cfg.heads);
    let d = dim / h;
    let len = x.len() / dim;
    let scale = 1.0 / (d as f64).sqrt();

    let mut c = to_f64(&t.seeds); // C_0
    let mut outputs: Vec<Vec<f64>> = Vec::with_capacity(t.layers.len());
    for layer in &t.layers {
        let q = linear(&c, &layer.q); // n × D
        let k = linear(x, &layer.k); // L × D
        let v = linear(x, &layer.v); // L × D
                                     // concat(head_0 … head_{h-1}): n × D. An empty sequence leaves every head output at zero
                                     // (SPEC's rule), so H_l = bo_l below.
        let mut heads = vec![0.0f64; n * dim];
        if len > 0 {
            for head in 0..h {
                let cols = head * d..(head + 1) * d;
                for i in 0..n {
                    let qi = &q[i * dim..(i + 1) * dim];
                    let mut a: Vec<f64> = (0..len)
                        .map(|j| {
                            let kj = &k[j * dim..(j + 1) * dim];
                            cols.clone().map(|col| qi[col] * kj[col]).sum::<f64>() * scale
                        })
                        .collect();
                    softmax(&mut a);
                    for col in cols.clone() {
                        heads[i * dim + col] = (0..len).map(|j| a[j] * v[j * dim + col]).sum();
                    }
                }
            }
        }
        let h_l = linear(&heads, &layer.o);
        c = h_l.clone();
        outputs.push(h_l);
    }
    // F = concat(H_0, …, H_{r-1}) Wmᵀ + bm, concatenated along the feature axis per interest.
    let r = outputs.len();
    let mut cat = vec![0.0f64; n * r * dim];
    for i in 0..n {
        for (l, h_l) in outputs.iter().enumerate() {
            cat[i * r * dim + l * dim..i * r * dim + (l + 1) * dim]
                .copy_from_slice(&h_l[i * dim..(i + 1) * dim]);
        }
    }
    linear(&cat, &t.merge)
}
