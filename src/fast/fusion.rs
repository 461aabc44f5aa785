//! SPEC §1.4's fusion (eq. 7) on the CPU fast path. The oracle is `fuse` in
//! `src/reference/profile.rs`; the GPU runs it at the end of `kernels/co_fusion.cu`
//! (`src/cuda/plan.rs`).

use super::{sized, Lin, Scratch};
use crate::config::HcnConfig;
use crate::cpu::Kernels;

/// `X^U = concat(X̃, tile_n(X̂)) Wuᵀ + bu` into `out` (`n × D`).
pub(crate) fn fuse(
    k: &Kernels,
    wu: &Lin,
    cfg: &HcnConfig,
    x_tilde: &[f32],
    x_hat: &[f32],
    s: &mut Scratch,
    out: &mut [f32],
) {
    let (n, dim) = (cfg.interests, cfg.dim);
    let fcat = sized(&mut s.cat, n * 2 * dim);
    for i in 0..n {
        fcat[i * 2 * dim..i * 2 * dim + dim].copy_from_slice(&x_tilde[i * dim..(i + 1) * dim]);
        fcat[i * 2 * dim + dim..(i + 1) * 2 * dim].copy_from_slice(x_hat);
    }
    wu.apply(k, fcat, n, out);
}
