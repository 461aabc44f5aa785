//! Loading and validating a model file (SPEC §2): the container checks live in
//! [`crate::safetensors_file`]; this module reads `hcn.config`, derives from it the exact set of
//! tensors and shapes SPEC §2's table requires, and checks the file against that set before any
//! weight is used. Small weights are widened to F32 here, once; user field embedding tables stay in
//! the mapping (they can be large) and are only scanned for non-finite values.
//!
//! Order of checks, so that the first error is the most useful one: container, config, tensors the
//! config does not name, then each expected tensor in SPEC order (presence, dtype, shape, values).

use std::collections::HashSet;
use std::path::Path;

use super::{
    AttentionLayer, FieldEmbedding, Linear, Model, TensorInfo, Tower, UserProfile, Weights,
};
use crate::config::{HcnConfig, CONFIG_KEY};
use crate::error::{Error, Result};
use crate::safetensors_file::{fmt_shape, RawTensor, SafetensorsFile};
use crate::tensor::{first_non_finite, widen, DType, MappedMatrix};

use sha2::Digest;

pub(super) fn load(path: &Path) -> Result<Model> {
    let file = SafetensorsFile::open(path)?;
    let config_text = file.metadata(CONFIG_KEY).ok_or_else(|| Error::Config {
        path: path.to_path_buf(),
        reason: format!("the file's __metadata__ has no `{CONFIG_KEY}` key"),
    })?;
    let config = HcnConfig::from_json(config_text).map_err(|reason| Error::Config {
        path: path.to_path_buf(),
        reason,
    })?;

    let v = Validator {
        file: &file,
        config: &config,
    };
    v.reject_unexpected()?;
    let d = config.dim;
    let long = v.tower("long")?;
    let short = v.tower("short")?;
    let k = config.co_interest_concat.len();
    let co_interest = v.linear("co_interest", d, k * d)?;
    let user = v.user()?;
    let fusion = v.linear("fusion", d, 2 * d)?;

    let mapped: HashSet<String> = config
        .user_fields
        .iter()
        .map(|f| embedding_name(&f.name))
        .collect();
    let tensors = file
        .tensors()
        .iter()
        .map(|t| TensorInfo {
            name: t.name.clone(),
            // Every tensor was checked to be one of the expected ones, all of a float dtype.
            dtype: DType::from_safetensors(t.dtype).unwrap_or(DType::F32),
            shape: t.shape.clone(),
            mapped: mapped.contains(&t.name),
        })
        .collect();

    Ok(Model {
        config,
        weights: Weights {
            long,
            short,
            co_interest,
            user,
            fusion,
        },
        tensors,
        path: path.to_path_buf(),
        sha256: sha2::Sha256::digest(&file.map[..]).into(),
        config_json: config_text.to_string(),
    })
}

fn embedding_name(field: &str) -> String {
    format!("user.fields.{field}.embedding")
}

struct Validator<'a> {
    file: &'a SafetensorsFile,
    config: &'a HcnConfig,
}

impl Validator<'_> {
    fn err(&self, tensor: &str, reason: impl Into<String>) -> Error {
        Error::Tensor {
            path: self.file.path.clone(),
            tensor: tensor.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether SPEC §2 names `name` for this config (shapes are checked later). Decided by parsing
    /// the name rather than by listing every allowed name: a config's `layers` may be large, and a
    /// lying config must not make us build a huge set before the tensors refute it.
    fn is_expected(&self, name: &str) -> bool {
        let c = self.config;
        let linear_part = |rest: &str| matches!(rest, "weight" | "bias");
        // A decimal index below `limit`, written canonically (no sign, no leading zeros).
        let index_below = |s: &str, limit: usize| {
            s.parse::<usize>()
                .is_ok_and(|i| i < limit && i.to_string() == s)
        };
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            ["long" | "short", "seeds"] => true,
            ["long" | "short", "layers", l, "q" | "k" | "v" | "o", p] => {
                index_below(l, c.layers) && linear_part(p)
            }
            ["long" | "short", "merge", p] | ["co_interest" | "fusion", p] => linear_part(p),
            // Without a profile SPEC says X̂ = 0, but its table still lists the MLP: an exporter
            // may write it (input width 0). Both forms load; see `user_profile`.
            ["user", "mlp", i, p] => index_below(i, c.user_mlp_hidden.len() + 1) && linear_part(p),
            _ => c
                .user_fields
                .iter()
                .any(|f| name == embedding_name(&f.name)),
        }
    }

    /// Any tensor the config does not name is an error (file order, so the first is reported).
    fn reject_unexpected(&self) -> Result<()> {
        for t in self.file.tensors() {
            if self.is_expected(&t.name) {
                continue;
            }
            let c = self.config;
            let hint = if t.name.starts_with("user.mlp.") && !c.has_profile() {
                format!(
                    " (the config has no user_fields and no user_dense: X̂ = 0, and a user MLP, if \
                     written, is user.mlp.0 ..= user.mlp.{} with input width 0)",
                    c.user_mlp_hidden.len()
                )
            } else if t.name.starts_with("user.mlp.") {
                format!(
                    " (user_mlp_hidden has {} entries, so the MLP is user.mlp.0 ..= user.mlp.{})",
                    c.user_mlp_hidden.len(),
                    c.user_mlp_hidden.len()
                )
            } else if t.name.starts_with("user.fields.") {
                let names: Vec<&str> = c.user_fields.iter().map(|f| f.name.as_str()).collect();
                format!(" (config user_fields: {names:?})")
            } else if t.name.contains(".layers.") {
                format!(" (config has {} layers)", c.layers)
            } else {
                String::new()
            };
            return Err(self.err(
                &t.name,
                format!("not a tensor of this model (SPEC §2){hint}"),
            ));
        }
        Ok(())
    }

    /// The tensor, which must be present, of a float dtype and of `shape`.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<(&RawTensor, DType)> {
        let t = self.file.get(name).ok_or_else(|| {
            self.err(
                name,
                format!("missing (required, shape {})", fmt_shape(shape)),
            )
        })?;
        let dtype = self.dtype(t)?;
        if t.shape != shape {
            return Err(self.err(
                name,
                format!(
                    "shape {}, expected {}",
                    fmt_shape(&t.shape),
                    fmt_shape(shape)
                ),
            ));
        }
        self.finite(t, dtype)?;
        Ok((t, dtype))
    }

    fn dtype(&self, t: &RawTensor) -> Result<DType> {
        DType::from_safetensors(t.dtype).ok_or_else(|| {
            self.err(
                &t.name,
                format!("dtype {}, expected F32, F16 or BF16", t.dtype),
            )
        })
    }

    /// Scans the stored bytes in place (no copy, so this is fine for mapped tables too).
    fn finite(&self, t: &RawTensor, dtype: DType) -> Result<()> {
        let bytes = self.file.bytes(t);
        if let Some(i) = first_non_finite(dtype, bytes) {
            let size = dtype.size();
            let value = widen(dtype, &bytes[i * size..(i + 1) * size])[0];
            let at = match t.shape.as_slice() {
                [_, cols] if *cols > 0 => format!(" (row {}, column {})", i / cols, i % cols),
                _ => String::new(),
            };
            return Err(self.err(
                &t.name,
                format!("element {i}{at} is {value}; every value must be finite"),
            ));
        }
        Ok(())
    }

    /// A required tensor widened to F32.
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (t, dtype) = self.checked(name, shape)?;
        Ok(widen(dtype, self.file.bytes(t)))
    }

    /// `{prefix}.weight` `[out, in]` (required) and `{prefix}.bias` `[out]` (zeros if absent).
    fn linear(&self, prefix: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let weight = self.dense(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias_name = format!("{prefix}.bias");
        let bias = if self.file.get(&bias_name).is_some() {
            self.dense(&bias_name, &[out_dim])?
        } else {
            vec![0.0; out_dim]
        };
        Ok(Linear {
            weight,
            bias,
            out_dim,
            in_dim,
        })
    }

    fn tower(&self, name: &str) -> Result<Tower> {
        let c = self.config;
        let d = c.dim;
        let seeds = self.dense(&format!("{name}.seeds"), &[c.interests, d])?;
        let layers = (0..c.layers)
            .map(|l| {
                let p = |x: &str| format!("{name}.layers.{l}.{x}");
                Ok(AttentionLayer {
                    q: self.linear(&p("q"), d, d)?,
                    k: self.linear(&p("k"), d, d)?,
                    v: self.linear(&p("v"), d, d)?,
                    o: self.linear(&p("o"), d, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // r·D cannot overflow: from_json caps every size at 2^31 and the weight must fit the file,
        // but the product is formed before that check, so compute it checked.
        let merge_in = c
            .layers
            .checked_mul(d)
            .ok_or_else(|| self.err(&format!("{name}.merge.weight"), "layers × dim overflows"))?;
        let merge = self.linear(&format!("{name}.merge"), d, merge_in)?;
        Ok(Tower {
            seeds,
            layers,
            merge,
        })
    }

    fn user(&self) -> Result<UserProfile> {
        let c = self.config;
        let mut fields = Vec::with_capacity(c.user_fields.len());
        for f in &c.user_fields {
            let name = embedding_name(&f.name);
            let t = self.file.get(&name).ok_or_else(|| {
                self.err(
                    &name,
                    format!("missing (required, shape [{}, width])", f.vocab),
                )
            })?;
            let dtype = self.dtype(t)?;
            match t.shape.as_slice() {
                [vocab, width] if *vocab == f.vocab && *width >= 1 => {}
                [vocab, _] if *vocab != f.vocab => {
                    return Err(self.err(
                        &name,
                        format!(
                            "shape {}, expected [{}, width]: field `{}` has vocab {} in hcn.config",
                            fmt_shape(&t.shape),
                            f.vocab,
                            f.name,
                            f.vocab
                        ),
                    ))
                }
                _ => {
                    return Err(self.err(
                        &name,
                        format!(
                            "shape {}, expected [{}, width] with width >= 1",
                            fmt_shape(&t.shape),
                            f.vocab
                        ),
                    ))
                }
            }
            self.finite(t, dtype)?;
            let table = MappedMatrix::new(
                self.file.map.clone(),
                t.start,
                t.shape[0],
                t.shape[1],
                dtype,
            )
            // The container check proved the tensor lies inside the mapping.
            .ok_or_else(|| self.err(&name, "data does not lie inside the file"))?;
            fields.push(FieldEmbedding {
                name: f.name.clone(),
                table,
            });
        }

        let mut mlp = Vec::new();
        // With no fields and no dense features the MLP is optional; if the file has one it must
        // be complete and consistent (input width 0), and it is then not used: X̂ = 0 (SPEC §1.4),
        // whatever its biases would produce.
        let mlp_in_file = self
            .file
            .tensors()
            .iter()
            .any(|t| t.name.starts_with("user.mlp."));
        if c.has_profile() || mlp_in_file {
            let widths: usize = fields.iter().map(|f| f.width()).sum();
            let mut in_dim = widths + c.user_dense;
            let outs = c.user_mlp_hidden.iter().copied().chain([c.dim]);
            for (i, out_dim) in outs.enumerate() {
                let prefix = format!("user.mlp.{i}");
                let layer = self.linear(&prefix, out_dim, in_dim).map_err(|e| match e {
                    // Say where the expected input width of the first layer comes from.
                    Error::Tensor {
                        path,
                        tensor,
                        reason,
                    } if i == 0 && reason.starts_with("shape") => Error::Tensor {
                        path,
                        tensor,
                        reason: format!(
                            "{reason} (in = {widths} from field embedding widths + {} dense)",
                            c.user_dense
                        ),
                    },
                    other => other,
                })?;
                mlp.push(layer);
                in_dim = out_dim;
            }
        }
        if !c.has_profile() {
            mlp.clear();
        }
        Ok(UserProfile {
            fields,
            dense: c.user_dense,
            mlp,
        })
    }
}
