//! SPEC §1.3 (eq. 4–6), the Co-Interest Network, on the CPU fast path. The oracle is
//! `src/reference/co_interest.rs`, the GPU's `kernels/co_fusion.cu`.

use super::{sized, Lin, Scratch};
use crate::config::{Block, HcnConfig};
use crate::cpu::Kernels;

/// `X̃ = concat(blocks) Wcᵀ + bc` (`n × D`) from `L̂` and `Ŝ` (`n × D` each).
pub(crate) fn co_interest(
    k: &Kernels,
    wc: &Lin,
    cfg: &HcnConfig,
    long: &[f32],
    short: &[f32],
    s: &mut Scratch,
) -> Vec<f32> {
    let (n, dim) = (cfg.interests, cfg.dim);
    let mut short_t = vec![0.0f32; dim * n];
    for i in 0..n {
        for c in 0..dim {
            short_t[c * n + i] = short[i * dim + c];
        }
    }
    let mut e = vec![0.0f32; n * n];
    k.matmul(long, n, dim, &short_t, n, None, &mut e)
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
    k.matmul(&rows, n, n, short, dim, None, &mut long_aligned)
        .expect("shapes");
    k.matmul(&cols, n, n, long, dim, None, &mut short_aligned)
        .expect("shapes");
    let blocks = &cfg.co_interest_concat;
    let kb = blocks.len();
    let cat = sized(&mut s.cat, n * kb * dim);
    for i in 0..n {
        for (b, block) in blocks.iter().enumerate() {
            let src = match block {
                Block::Long => long,
                Block::Short => short,
                Block::LongAligned => &long_aligned,
                Block::ShortAligned => &short_aligned,
            };
            cat[i * kb * dim + b * dim..i * kb * dim + (b + 1) * dim]
                .copy_from_slice(&src[i * dim..(i + 1) * dim]);
        }
    }
    let mut x_tilde = vec![0.0f32; n * dim];
    wc.apply(k, cat, n, &mut x_tilde);
    x_tilde
}
