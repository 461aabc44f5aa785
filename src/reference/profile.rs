//! SPEC §1.4: the user profile `X̂` and the fusion `X^U` (eq. 7).

use super::{linear, to_f32, to_f64};
use crate::model::Model;

/// `X̂` (D): field embeddings in config order, then the dense features, through the MLP with ReLU
/// between layers. Zero when the model has neither fields nor dense features.
pub fn profile(model: &Model, field_ids: &[usize], dense: &[f32]) -> Vec<f32> {
    to_f32(&profile_f64(model, field_ids, dense))
}

pub(crate) fn profile_f64(model: &Model, field_ids: &[usize], dense: &[f32]) -> Vec<f64> {
    let user = &model.weights.user;
    if !model.config.has_profile() || user.mlp.is_empty() {
        return vec![0.0; model.config.dim];
    }
    let mut x: Vec<f64> = Vec::with_capacity(user.input_dim());
    for (field, &id) in user.fields.iter().zip(field_ids) {
        let mut row = vec![0.0f32; field.width()];
        field.table.row_into(id, &mut row);
        x.extend(row.iter().map(|&v| f64::from(v)));
    }
    x.extend(dense.iter().map(|&v| f64::from(v)));
    let last = user.mlp.len() - 1;
    for (i, layer) in user.mlp.iter().enumerate() {
        x = linear(&x, layer);
        if i != last {
            x.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    x
}

/// `X^U = concat(X̃, tile_n(X̂)) Wuᵀ + bu` (n × D).
pub fn fuse(model: &Model, x_tilde: &[f32], x_hat: &[f32]) -> Vec<f32> {
    to_f32(&fuse_f64(model, &to_f64(x_tilde), &to_f64(x_hat)))
}

pub(crate) fn fuse_f64(model: &Model, x_tilde: &[f64], x_hat: &[f64]) -> Vec<f64> {
    let (n, dim) = (model.config.interests, model.config.dim);
    let mut cat = Vec::with_capacity(n * 2 * dim);
    for i in 0..n {
        cat.extend_from_slice(&x_tilde[i * dim..(i + 1) * dim]);
        cat.extend_from_slice(x_hat);
    }
    linear(&cat, &model.weights.fusion)
}
