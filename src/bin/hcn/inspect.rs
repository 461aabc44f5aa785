//! `hcn inspect FILE`: what a model file (config, tensor table, parameter count) or an item store
//! (rows, dimension, dtype, ids) holds. Which one it is comes from the safetensors header alone: a
//! model has `hcn.config` in `__metadata__`, a store has a `vectors` tensor. The file is then
//! loaded with the engine's own loader, so `inspect` also validates it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use hcn_prerank::config::CONFIG_KEY;
use hcn_prerank::cpu::{Level, ScoreKernel};
use hcn_prerank::{ItemStore, Model};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A model file (SPEC §2) or an item store (SPEC §3).
    #[arg(value_name = "MODEL")]
    pub file: PathBuf,
}

/// safetensors' own cap on the JSON header; a larger length is a corrupt file, not a big header.
const MAX_HEADER: u64 = 100_000_000;

pub fn run(args: InspectArgs) -> Result<(), String> {
    let header = read_header(&args.file)?;
    let has_config = header
        .get("__metadata__")
        .and_then(|m| m.get(CONFIG_KEY))
        .is_some();
    if has_config {
        let model = Model::load(&args.file).map_err(|e| e.to_string())?;
        print!("{}", describe_model(&model));
    } else if header.get("vectors").is_some() {
        let store = ItemStore::load(&args.file).map_err(|e| e.to_string())?;
        let ids_dtype = header
            .get("ids")
            .and_then(|t| t.get("dtype"))
            .and_then(Value::as_str);
        print!("{}", describe_store(&store, ids_dtype));
    } else {
        return Err(format!(
            "{}: neither a model (no `{CONFIG_KEY}` in the metadata) nor an item store (no `vectors` tensor)",
            args.file.display()
        ));
    }
    Ok(())
}

/// The safetensors JSON header (8-byte little-endian length, then that many bytes of JSON).
fn read_header(path: &Path) -> Result<Value, String> {
    let shown = path.display();
    let mut file = File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| format!("{shown}: not a safetensors file (no header length: {e})"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(format!(
            "{shown}: not a safetensors file (header length {len} is over {MAX_HEADER})"
        ));
    }
    let mut text = Vec::new();
    file.take(len)
        .read_to_end(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    if text.len() as u64 != len {
        return Err(format!(
            "{shown}: not a safetensors file (header of {len} bytes, file ends after {})",
            text.len()
        ));
    }
    let header: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{shown}: not a safetensors file (header is not JSON: {e})"))?;
    if !header.is_object() {
        return Err(format!(
            "{shown}: not a safetensors file (header is not a JSON object)"
        ));
    }
    Ok(header)
}

fn describe_model(model: &Model) -> String {
    use std::fmt::Write;
    let c = &model.config;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "model: {}", model.path.display());
    let _ = writeln!(s, "  format:             {}", hcn_prerank::config::FORMAT);
    let _ = writeln!(s, "  dim (D):            {}", c.dim);
    let _ = writeln!(s, "  interests (n):      {}", c.interests);
    let rule = ScoreKernel::by_rule(Level::detect(), c.interests);
    let candidates: Vec<String> = ScoreKernel::candidates(c.interests)
        .into_iter()
        .map(ScoreKernel::name)
        .collect();
    let _ = writeln!(
        s,
        "  score kernel here:  {} by rule{}; `--score-kernel tune` times {}",
        rule.name(),
        if rule.vnni {
            " (`/vnni`: with an I8 candidate store and D % 4 = 0; `/vnni` kernels are timed on I8 stores only)"
        } else {
            ""
        },
        candidates.join(", ")
    );
    let _ = writeln!(
        s,
        "  heads (h):          {} (head dim d = {})",
        c.heads,
        c.head_dim()
    );
    let _ = writeln!(s, "  layers (r):         {}", c.layers);
    let _ = writeln!(s, "  long_len:           {}", c.long_len);
    let _ = writeln!(s, "  short_len:          {}", c.short_len);
    let blocks: Vec<&str> = c.co_interest_concat.iter().map(|b| b.name()).collect();
    let _ = writeln!(s, "  co_interest_concat: [{}]", blocks.join(", "));
    let fields = if c.user_fields.is_empty() {
        "none".to_string()
    } else {
        c.user_fields
            .iter()
            .map(|f| format!("{} (vocab {})", f.name, f.vocab))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "  user_fields:        {fields}");
    let _ = writeln!(s, "  user_dense:         {}", c.user_dense);
    let _ = writeln!(s, "  user_mlp_hidden:    {:?}", c.user_mlp_hidden);
    let _ = writeln!(s, "  score:              {}", c.score.name());
    if !c.extra_keys.is_empty() {
        let _ = writeln!(s, "  extra keys (ignored): {}", c.extra_keys.join(", "));
    }

    let name_w = model
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max("tensor".len());
    let shapes: Vec<String> = model
        .tensors
        .iter()
        .map(|t| format!("{:?}", t.shape))
        .collect();
    let shape_w = shapes.iter().map(String::len).max().unwrap_or(0).max(5);
    let _ = writeln!(s, "tensors ({}):", model.tensors.len());
    let _ = writeln!(
        s,
        "  {:name_w$}  {:5}  {:shape_w$}  storage",
        "tensor", "dtype", "shape"
    );
    let mut params: u128 = 0;
    for (t, shape) in model.tensors.iter().zip(&shapes) {
        let _ = writeln!(
            s,
            "  {:name_w$}  {:5}  {:shape_w$}  {}",
            t.name,
            t.dtype.name(),
            shape,
            if t.mapped { "mapped" } else { "in memory" }
        );
        params += t.shape.iter().map(|&d| d as u128).product::<u128>();
    }
    let _ = writeln!(s, "parameters: {params}");
    s
}

fn describe_store(store: &ItemStore, ids_dtype: Option<&str>) -> String {
    let ids = match (store.has_ids(), ids_dtype) {
        (true, Some(d)) => format!("present ({d})"),
        (true, None) => "present".to_string(),
        (false, _) => "absent (the id is the row number)".to_string(),
    };
    let dtype = store.vectors.dtype().name();
    let scales = if store.vectors.scales_bytes().is_some() {
        " (row i = scales[i] · vectors[i], F32 scales)"
    } else {
        ""
    };
    format!(
        "store: {}\n  rows (N): {}\n  dim (D):  {}\n  dtype:    {dtype}{scales}\n  ids:      {ids}\n",
        store.path.display(),
        store.len(),
        store.dim(),
    )
}
