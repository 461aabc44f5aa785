//! Synthetic SPEC files for benchmarks: a random-init model of a SPEC §6 profile and token /
//! candidate stores of any size, written in the SPEC §2/§3 format (so they go through the same
//! loader as exported models). Deterministic for a seed. Not for training: weights are random.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::safetensors_file::padded_header;
use crate::tensor::{narrow, quantize_row, DType};

/// A SPEC §6 benchmark profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// D = 48, n = 8, h = 4, r = 4, ℓ_L = 120, ℓ_S = 30; 10,000 candidates per request.
    Public,
    /// D = 128, n = 16, h = 4, r = 4, ℓ_L = 500, ℓ_S = 50; 50,000 candidates per request.
    Industrial,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Public => "public",
            Profile::Industrial => "industrial",
        }
    }

    /// `(D, n, h, r, ℓ_L, ℓ_S)`.
    pub fn sizes(self) -> (usize, usize, usize, usize, usize, usize) {
        match self {
            Profile::Public => (48, 8, 4, 4, 120, 30),
            Profile::Industrial => (128, 16, 4, 4, 500, 50),
        }
    }

    /// SPEC §6's candidates per request.
    pub fn candidates_per_request(self) -> usize {
        match self {
            Profile::Public => 10_000,
            Profile::Industrial => 50_000,
        }
    }
}

struct Tensor {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a safetensors header for `entries` (name, dtype name, shape, byte length), data follows;
/// the `vectors` entry, if any, starts page-aligned (`safetensors_file::padded_header`).
fn write_header(
    w: &mut impl Write,
    meta: Option<(&str, &str)>,
    entries: &[(String, &str, Vec<usize>, usize)],
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    if let Some((k, v)) = meta {
        header.insert("__metadata__".into(), serde_json::json!({ k: v }));
    }
    let (mut offset, mut at) = (0usize, 0usize);
    for (name, dtype, shape, len) in entries {
        if name == "vectors" {
            at = offset;
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    w.write_all(&padded_header(&serde_json::Value::Object(header), at))
}

/// Writes a random model of `profile` (F32) to `path`.
pub fn write_model(path: &Path, profile: Profile, seed: u64) -> Result<()> {
    let (d, n, h, r, ll, ls) = profile.sizes();
    let mut rng = SplitMix64::new(seed);
    let mut tensors = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, scale: f32, rng: &mut SplitMix64| {
        let len = shape.iter().product();
        let values = rng.vec(len, scale);
        tensors.push(Tensor {
            name,
            shape,
            values,
        });
    };
    let fields = [("age", 10usize), ("gender", 3), ("city", 100)];
    let (width, dense, hidden) = (8usize, 8usize, 128usize);
    let lin = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    for tower in ["long", "short"] {
        push(format!("{tower}.seeds"), vec![n, d], 1.0, &mut rng);
        for l in 0..r {
            for p in ["q", "k", "v", "o"] {
                // Sharper queries so attention is not uniform.
                let s = if p == "q" { 2.5 * lin(d) } else { lin(d) };
                push(
                    format!("{tower}.layers.{l}.{p}.weight"),
                    vec![d, d],
                    s,
                    &mut rng,
                );
                push(
                    format!("{tower}.layers.{l}.{p}.bias"),
                    vec![d],
                    0.1,
                    &mut rng,
                );
            }
        }
        push(
            format!("{tower}.merge.weight"),
            vec![d, r * d],
            lin(r * d),
            &mut rng,
        );
        push(format!("{tower}.merge.bias"), vec![d], 0.1, &mut rng);
    }
    push(
        "co_interest.weight".into(),
        vec![d, 3 * d],
        lin(3 * d),
        &mut rng,
    );
    push("co_interest.bias".into(), vec![d], 0.1, &mut rng);
    for (name, vocab) in fields {
        push(
            format!("user.fields.{name}.embedding"),
            vec![vocab, width],
            1.0,
            &mut rng,
        );
    }
    let in0 = fields.len() * width + dense;
    push(
        "user.mlp.0.weight".into(),
        vec![hidden, in0],
        lin(in0),
        &mut rng,
    );
    push("user.mlp.0.bias".into(), vec![hidden], 0.1, &mut rng);
    push(
        "user.mlp.1.weight".into(),
        vec![d, hidden],
        lin(hidden),
        &mut rng,
    );
    push("user.mlp.1.bias".into(), vec![d], 0.1, &mut rng);
    push("fusion.weight".into(), vec![d, 2 * d], lin(2 * d), &mut rng);
    push("fusion.bias".into(), vec![d], 0.1, &mut rng);

    let config = serde_json::json!({
        "format": "hcn/1", "dim": d, "interests": n, "heads": h, "layers": r,
        "long_len": ll, "short_len": ls,
        "co_interest_concat": ["long_aligned", "short_aligned", "short_aligned"],
        "user_fields": fields.iter().map(|(f, v)| serde_json::json!({"name": f, "vocab": v})).collect::<Vec<_>>(),
        "user_dense": dense, "user_mlp_hidden": [hidden], "score": "softmax"
    })
    .to_string();
    let entries: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.clone(), "F32", t.shape.clone(), t.values.len() * 4))
        .collect();
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::new(file);
    write_header(&mut w, Some(("hcn.config", &config)), &entries).map_err(io_err(path))?;
    for t in &tensors {
        w.write_all(&narrow(DType::F32, &t.values))
            .map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))
}

/// Writes a store of `rows` random unit-scale vectors of dimension `dim` in `dtype` to `path`
/// (streamed: a 1M-row store never sits in memory). Ids are absent (row numbers). I8: the same
/// random rows quantized (SPEC §3, [`quantize_row`]), the scales after the vectors.
pub fn write_store(path: &Path, rows: usize, dim: usize, dtype: DType, seed: u64) -> Result<()> {
    let mut rng = SplitMix64::new(seed ^ 0x5707e);
    let mut entries = vec![(
        "vectors".to_string(),
        dtype.name(),
        vec![rows, dim],
        rows * dim * dtype.size(),
    )];
    if dtype == DType::I8 {
        entries.push(("scales".to_string(), "F32", vec![rows], rows * 4));
    }
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write_header(&mut w, None, &entries).map_err(io_err(path))?;
    let mut scales = Vec::new();
    let mut q = vec![0i8; dim];
    for _ in 0..rows {
        let x = rng.vec(dim, 1.0);
        if dtype == DType::I8 {
            scales.extend_from_slice(&quantize_row(&x, &mut q).to_le_bytes());
            w.write_all(bytemuck::cast_slice(&q))
                .map_err(io_err(path))?;
        } else {
            w.write_all(&narrow(dtype, &x)).map_err(io_err(path))?;
        }
    }
    w.write_all(&scales).map_err(io_err(path))?;
    w.flush().map_err(io_err(path))
}

/// Writes `model.safetensors`, `tokens.safetensors` and `candidates.safetensors` of `profile`
/// into `dir` (created), unless they already exist; returns the three paths.
pub fn ensure_profile_files(
    dir: &Path,
    profile: Profile,
    rows: usize,
    dtype: DType,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (d, ..) = profile.sizes();
    let model = dir.join("model.safetensors");
    let tokens = dir.join("tokens.safetensors");
    let candidates = dir.join("candidates.safetensors");
    if !model.exists() {
        write_model(&model, profile, 1)?;
    }
    if !tokens.exists() {
        write_store(&tokens, rows, d, dtype, 2)?;
    }
    if !candidates.exists() {
        write_store(&candidates, rows, d, dtype, 3)?;
    }
    Ok((model, tokens, candidates))
}
