//! The HCN model (SPEC §2) as the executors see it: validated config plus weights. Small weight
//! matrices are widened to F32 once at load (they are read on every request); user field embedding
//! tables stay in the memory-mapped file and only the looked-up rows are widened.
//!
//! Names follow the model file: `long`, `short`, `seeds`, `layers.{l}.{q,k,v,o}`, `merge`,
//! `co_interest`, `user.fields.{name}.embedding`, `user.mlp.{i}`, `fusion`.

mod load;

use std::path::{Path, PathBuf};

use crate::config::HcnConfig;
use crate::tensor::{DType, MappedMatrix};

/// `nn.Linear`: `y = x Wᵀ + b`; `weight` is `[out, in]` row-major, `bias` is `[out]` (zeros when
/// the file has no bias tensor).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub out_dim: usize,
    pub in_dim: usize,
}

impl Linear {
    /// Row `o` of the weight (the `in_dim` coefficients of output `o`).
    #[inline]
    pub fn row(&self, o: usize) -> &[f32] {
        &self.weight[o * self.in_dim..(o + 1) * self.in_dim]
    }
}

/// One poly-attention layer `l` of a tower (SPEC §1.2): `{q,k,v,o}` projections, all `[D, D]`.
#[derive(Debug, Clone)]
pub struct AttentionLayer {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
}

/// The hierarchical multi-interest extractor for one sequence (`long` or `short`).
#[derive(Debug, Clone)]
pub struct Tower {
    /// `C_0`, `n × D` row-major.
    pub seeds: Vec<f32>,
    /// `r` layers.
    pub layers: Vec<AttentionLayer>,
    /// `[D, r·D]`.
    pub merge: Linear,
}

/// A categorical profile field's embedding table, `[vocab, width]`, left in the mapped file.
#[derive(Debug, Clone)]
pub struct FieldEmbedding {
    pub name: String,
    pub table: MappedMatrix,
}

impl FieldEmbedding {
    pub fn vocab(&self) -> usize {
        self.table.rows()
    }

    pub fn width(&self) -> usize {
        self.table.cols()
    }
}

/// User profile tower (SPEC §1.4): fields in config order, then `dense` features, through the MLP.
#[derive(Debug, Clone)]
pub struct UserProfile {
    pub fields: Vec<FieldEmbedding>,
    pub dense: usize,
    /// `user.mlp.0 … user.mlp.{m-1}`, ReLU between layers, last outputs `D`. Empty when the model
    /// has no fields and no dense features (then `X̂ = 0`).
    pub mlp: Vec<Linear>,
}

impl UserProfile {
    /// Width of the MLP input: sum of field embedding widths plus `dense`.
    pub fn input_dim(&self) -> usize {
        self.fields.iter().map(|f| f.width()).sum::<usize>() + self.dense
    }
}

/// Every weight of the model, F32.
#[derive(Debug, Clone)]
pub struct Weights {
    pub long: Tower,
    pub short: Tower,
    /// `[D, k·D]`, `k = config.co_interest_concat.len()`.
    pub co_interest: Linear,
    pub user: UserProfile,
    /// `[D, 2D]`.
    pub fusion: Linear,
}

/// One row of `hcn inspect`'s tensor table: a tensor as stored in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// True for tensors left in the mapped file rather than widened into memory.
    pub mapped: bool,
}

/// A loaded, validated model. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Model {
    pub config: HcnConfig,
    pub weights: Weights,
    /// Every tensor of the file, in file order.
    pub tensors: Vec<TensorInfo>,
    pub path: PathBuf,
    /// SHA-256 of the whole file, taken at load.
    pub sha256: [u8; 32],
    /// The file's `hcn.config` text, as stored.
    pub config_json: String,
}

impl Model {
    /// Memory-maps and validates a SPEC §2 model file. Every problem is an [`crate::Error`] that
    /// names the file and, where there is one, the tensor.
    ///
    /// The file must not be modified or truncated while the model (or a clone of one of its
    /// embedding tables) is alive: the tables are read from the mapping, and a truncated file makes
    /// those reads fault. Replace a model file by writing a new file and renaming it over the old.
    pub fn load(path: impl AsRef<Path>) -> crate::Result<Self> {
        load::load(path.as_ref())
    }

    /// The model's version as SPEC §7 defines it: the first 16 hex digits of the file's SHA-256.
    pub fn version(&self) -> String {
        self.sha256[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
