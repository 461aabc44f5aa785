//! SPEC §1.4's profile vector `X̂` on the CPU fast path: computed once per user on the host for
//! every executor (the GPU plan takes it as an input). The oracle is `src/reference/profile.rs`.

use super::Lin;
use crate::cpu::Kernels;
use crate::model::Model;

/// `X̂ ∈ R^D`: fields (config order) looked up, dense features last, the MLP with ReLU between
/// layers; zero for a model with no profile.
pub(crate) fn profile(
    k: &Kernels,
    model: &Model,
    mlp: &[Lin],
    field_ids: &[usize],
    dense: &[f32],
) -> Vec<f32> {
    let cfg = &model.config;
    let mut x_hat = vec![0.0f32; cfg.dim];
    let w = &model.weights;
    if cfg.has_profile() && !mlp.is_empty() {
        let mut x: Vec<f32> = Vec::with_capacity(w.user.input_dim());
        for (field, &id) in w.user.fields.iter().zip(field_ids) {
            let start = x.len();
            x.resize(start + field.width(), 0.0);
            field.table.row_into(id, &mut x[start..]);
        }
        x.extend_from_slice(dense);
        let last = mlp.len() - 1;
        for (i, layer) in mlp.iter().enumerate() {
            let mut y = vec![0.0f32; layer.out_dim];
            layer.apply(k, &x, 1, &mut y);
            if i != last {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            x = y;
        }
        x_hat.copy_from_slice(&x);
    }
    x_hat
}
