//! Loading model and store files (SPEC §2, §3): a valid tiny model and store load with the exact
//! stored values, and every kind of broken file is an error value of the right variant that names
//! the tensor or the problem — never a panic. Files are written by hand (so that malformed
//! containers can be built) and, for one round trip, by the `safetensors` crate's own writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};
use hcn_prerank::store::IdIndex;
use hcn_prerank::{Error, ItemStore, Model};

// ---------------------------------------------------------------------------------------------
// File building
// ---------------------------------------------------------------------------------------------

/// A temp file removed on drop (the loaded model may still map it; unlinking is fine on Unix).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl TempFile {
    fn path(&self) -> &Path {
        &self.0
    }
}

fn temp_file(bytes: &[u8]) -> TempFile {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "hcn-load-errors-{}-{n}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, bytes).unwrap();
    TempFile(path)
}

/// One tensor to write: name, safetensors dtype name, shape, raw little-endian data.
#[derive(Clone, Debug)]
struct T {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl T {
    fn new(name: &str, dtype: &'static str, shape: &[usize], data: Vec<u8>) -> Self {
        T {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }
}

/// Encodes `vals` in a float storage dtype.
fn encode(dtype: &str, vals: &[f32]) -> Vec<u8> {
    match dtype {
        "F32" => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F16" => vals
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        "BF16" => vals
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("test helper: no float encoding for {other}"),
    }
}

/// The value a stored float reads back as (exact widening of the stored half).
fn stored(dtype: &str, v: f32) -> f32 {
    match dtype {
        "F32" => v,
        "F16" => f16::from_f32(v).to_f32(),
        "BF16" => bf16::from_f32(v).to_f32(),
        other => panic!("test helper: no float encoding for {other}"),
    }
}

/// A safetensors file with the tensors laid out contiguously in the order given. `meta` is the
/// `__metadata__` object as (key, value) pairs.
fn serialize(meta: &[(&str, &str)], tensors: &[T]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !meta.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), m.into());
    }
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype,
                "shape": t.shape,
                "data_offsets": [offset, offset + t.data.len()],
            }),
        );
        offset += t.data.len();
    }
    let data: Vec<u8> = tensors.iter().flat_map(|t| t.data.clone()).collect();
    raw(&serde_json::Value::Object(header).to_string(), &data)
}

/// A file from a literal header and data buffer.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Deterministic values (xorshift), in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
}

/// The shape of a test model; `files()` writes a consistent config and tensor set for it.
#[derive(Clone)]
struct Spec {
    dim: usize,
    interests: usize,
    heads: usize,
    layers: usize,
    concat: Vec<&'static str>,
    /// (name, vocab, width)
    fields: Vec<(&'static str, usize, usize)>,
    dense: usize,
    hidden: Vec<usize>,
    dtype: &'static str,
    /// Write `*.bias` tensors (otherwise they are absent and must read as zeros).
    biases: bool,
}

fn tiny() -> Spec {
    Spec {
        dim: 4,
        interests: 2,
        heads: 2,
        layers: 2,
        concat: vec!["long_aligned", "short_aligned", "short_aligned"],
        fields: vec![("age", 3, 2), ("gender", 2, 3)],
        dense: 2,
        hidden: vec![5],
        dtype: "F32",
        biases: true,
    }
}

impl Spec {
    fn config(&self) -> String {
        let fields: Vec<_> = self
            .fields
            .iter()
            .map(|(n, v, _)| serde_json::json!({"name": n, "vocab": v}))
            .collect();
        serde_json::json!({
            "format": "hcn/1", "dim": self.dim, "interests": self.interests, "heads": self.heads,
            "layers": self.layers, "long_len": 6, "short_len": 3,
            "co_interest_concat": self.concat, "user_fields": fields,
            "user_dense": self.dense, "user_mlp_hidden": self.hidden, "score": "softmax",
        })
        .to_string()
    }

    /// Every tensor SPEC §2 requires for this spec, with seeded values; the f32 values (before
    /// storage rounding) are kept in the same order.
    fn tensors(&self) -> Vec<(T, Vec<f32>)> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let d = self.dim;
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, out: &mut Vec<(T, Vec<f32>)>| {
            let vals = rng.vals(shape.iter().product());
            out.push((
                T::new(&name, self.dtype, &shape, encode(self.dtype, &vals)),
                vals,
            ));
        };
        let mut linear = |prefix: String, o: usize, i: usize, out: &mut Vec<(T, Vec<f32>)>| {
            push(format!("{prefix}.weight"), vec![o, i], out);
            if self.biases {
                push(format!("{prefix}.bias"), vec![o], out);
            }
        };
        for tower in ["long", "short"] {
            for l in 0..self.layers {
                for p in ["q", "k", "v", "o"] {
                    linear(format!("{tower}.layers.{l}.{p}"), d, d, &mut out);
                }
            }
            linear(format!("{tower}.merge"), d, self.layers * d, &mut out);
        }
        linear("co_interest".into(), d, self.concat.len() * d, &mut out);
        linear("fusion".into(), d, 2 * d, &mut out);
        if !self.fields.is_empty() || self.dense > 0 {
            let mut inp = self.fields.iter().map(|f| f.2).sum::<usize>() + self.dense;
            for (i, &o) in self.hidden.iter().chain([&d]).enumerate() {
                linear(format!("user.mlp.{i}"), o, inp, &mut out);
                inp = o;
            }
        }
        let mut push = |name: String, shape: Vec<usize>, out: &mut Vec<(T, Vec<f32>)>| {
            let vals = rng.vals(shape.iter().product());
            out.push((
                T::new(&name, self.dtype, &shape, encode(self.dtype, &vals)),
                vals,
            ));
        };
        for tower in ["long", "short"] {
            push(format!("{tower}.seeds"), vec![self.interests, d], &mut out);
        }
        for (name, vocab, width) in &self.fields {
            push(
                format!("user.fields.{name}.embedding"),
                vec![*vocab, *width],
                &mut out,
            );
        }
        out
    }

    fn file_tensors(&self) -> Vec<T> {
        self.tensors().into_iter().map(|(t, _)| t).collect()
    }

    fn bytes(&self) -> Vec<u8> {
        serialize(&[("hcn.config", &self.config())], &self.file_tensors())
    }

    /// Writes the model with `edit` applied to its tensor list and loads it.
    fn load_with(&self, edit: impl FnOnce(&mut Vec<T>)) -> hcn_prerank::Result<Model> {
        let mut ts = self.file_tensors();
        edit(&mut ts);
        let f = temp_file(&serialize(&[("hcn.config", &self.config())], &ts));
        Model::load(f.path())
    }
}

fn find<'a>(ts: &'a mut [T], name: &str) -> &'a mut T {
    ts.iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("test helper: no tensor {name}"))
}

fn load_bytes(bytes: &[u8]) -> hcn_prerank::Result<Model> {
    let f = temp_file(bytes);
    Model::load(f.path())
}

fn load_store_bytes(bytes: &[u8]) -> hcn_prerank::Result<ItemStore> {
    let f = temp_file(bytes);
    ItemStore::load(f.path())
}

/// Asserts a `Format` error whose reason contains every needle.
#[track_caller]
fn assert_format<T: std::fmt::Debug>(r: hcn_prerank::Result<T>, needles: &[&str]) {
    match r {
        Err(Error::Format { reason, .. }) => {
            for n in needles {
                assert!(reason.contains(n), "reason `{reason}` should mention `{n}`");
            }
        }
        other => panic!("expected a Format error mentioning {needles:?}, got {other:?}"),
    }
}

/// Asserts a `Tensor` error naming `tensor` whose reason contains every needle.
#[track_caller]
fn assert_tensor<T: std::fmt::Debug>(r: hcn_prerank::Result<T>, tensor: &str, needles: &[&str]) {
    match r {
        Err(Error::Tensor {
            tensor: t, reason, ..
        }) => {
            assert_eq!(t, tensor, "wrong tensor named (reason: {reason})");
            for n in needles {
                assert!(reason.contains(n), "reason `{reason}` should mention `{n}`");
            }
        }
        other => panic!("expected a Tensor error on `{tensor}`, got {other:?}"),
    }
}

/// Asserts a `Config` error whose reason contains `needle`.
#[track_caller]
fn assert_config<T: std::fmt::Debug>(r: hcn_prerank::Result<T>, needle: &str) {
    match r {
        Err(Error::Config { reason, .. }) => {
            assert!(
                reason.contains(needle),
                "reason `{reason}` should mention `{needle}`"
            )
        }
        other => panic!("expected a Config error mentioning `{needle}`, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Valid models
// ---------------------------------------------------------------------------------------------

fn check_round_trip(spec: &Spec, model: &Model) {
    let c = &model.config;
    assert_eq!((c.dim, c.interests, c.heads, c.layers), (4, 2, 2, 2));
    assert_eq!(c.user_fields.len(), spec.fields.len());
    let w = &model.weights;
    let want: std::collections::HashMap<String, (T, Vec<f32>)> = spec
        .tensors()
        .into_iter()
        .map(|(t, v)| (t.name.clone(), (t, v)))
        .collect();
    let exact = |name: &str, got: &[f32]| {
        let (_, vals) = &want[name];
        let expect: Vec<f32> = vals.iter().map(|&v| stored(spec.dtype, v)).collect();
        assert_eq!(got, expect.as_slice(), "{name} values");
    };
    exact("long.seeds", &w.long.seeds);
    exact("short.seeds", &w.short.seeds);
    exact("long.layers.1.q.weight", &w.long.layers[1].q.weight);
    exact("short.layers.0.o.weight", &w.short.layers[0].o.weight);
    exact("short.merge.weight", &w.short.merge.weight);
    exact("co_interest.weight", &w.co_interest.weight);
    exact("fusion.weight", &w.fusion.weight);
    exact("user.mlp.1.weight", &w.user.mlp[1].weight);
    if spec.biases {
        exact("long.layers.0.k.bias", &w.long.layers[0].k.bias);
        exact("user.mlp.0.bias", &w.user.mlp[0].bias);
    } else {
        assert_eq!(w.long.layers[0].k.bias, vec![0.0; 4]);
        assert_eq!(w.user.mlp[0].bias, vec![0.0; 5]);
    }
    assert_eq!(w.long.layers.len(), 2);
    assert_eq!((w.long.merge.out_dim, w.long.merge.in_dim), (4, 8));
    assert_eq!((w.co_interest.out_dim, w.co_interest.in_dim), (4, 12));
    assert_eq!((w.fusion.out_dim, w.fusion.in_dim), (4, 8));
    assert_eq!(w.user.mlp.len(), 2);
    assert_eq!((w.user.mlp[0].out_dim, w.user.mlp[0].in_dim), (5, 7));
    assert_eq!((w.user.mlp[1].out_dim, w.user.mlp[1].in_dim), (4, 5));
    assert_eq!(w.user.input_dim(), 7);

    // Embedding tables stay in the mapped file: same bytes as written, read row by row.
    let gender = &w.user.fields[1];
    assert_eq!(gender.name, "gender");
    assert_eq!((gender.vocab(), gender.width()), (2, 3));
    let (t, vals) = &want["user.fields.gender.embedding"];
    assert_eq!(gender.table.bytes(), t.data.as_slice());
    let mut row = vec![0.0f32; 3];
    gender.table.row_into(1, &mut row);
    let expect: Vec<f32> = vals[3..6].iter().map(|&v| stored(spec.dtype, v)).collect();
    assert_eq!(row, expect);

    // Tensor list: every file tensor once, embeddings marked mapped, dtype as stored.
    assert_eq!(model.tensors.len(), want.len());
    for info in &model.tensors {
        let (t, _) = &want[&info.name];
        assert_eq!(info.shape, t.shape, "{}", info.name);
        assert_eq!(info.dtype.name(), spec.dtype, "{}", info.name);
        assert_eq!(
            info.mapped,
            info.name.starts_with("user.fields."),
            "{}",
            info.name
        );
    }
}

#[test]
fn valid_model_round_trips_in_every_dtype() {
    for dtype in ["F32", "F16", "BF16"] {
        for biases in [true, false] {
            let spec = Spec {
                dtype,
                biases,
                ..tiny()
            };
            let f = temp_file(&spec.bytes());
            let model =
                Model::load(f.path()).unwrap_or_else(|e| panic!("{dtype} biases={biases}: {e}"));
            check_round_trip(&spec, &model);
            assert_eq!(model.path, f.path());
            // `tensors` is in file (data offset) order, which here is the order written.
            let names: Vec<String> = spec.file_tensors().into_iter().map(|t| t.name).collect();
            let got: Vec<String> = model.tensors.iter().map(|t| t.name.clone()).collect();
            assert_eq!(got, names);
        }
    }
}

#[test]
fn half_widening_is_exact_not_just_close() {
    // Values with all mantissa bits used in F16 / BF16: widening must reproduce them bit for bit.
    let spec = Spec {
        dtype: "F16",
        ..tiny()
    };
    let m = spec
        .load_with(|ts| {
            let t = find(ts, "fusion.weight");
            let vals: Vec<f32> = (0..32)
                .map(|i| 1.0 + i as f32 / 1024.0 + 1.0 / 2048.0)
                .collect();
            t.data = vals
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
                .collect();
        })
        .unwrap();
    for (i, &w) in m.weights.fusion.weight.iter().enumerate() {
        let v = 1.0 + i as f32 / 1024.0 + 1.0 / 2048.0;
        assert_eq!(w.to_bits(), f16::from_f32(v).to_f32().to_bits());
    }
    let spec = Spec {
        dtype: "BF16",
        ..tiny()
    };
    let m = spec
        .load_with(|ts| {
            let t = find(ts, "fusion.weight");
            t.data = (0..32u16)
                .flat_map(|i| (0x3f80u16 + i * 3).to_le_bytes())
                .collect();
        })
        .unwrap();
    for (i, &w) in m.weights.fusion.weight.iter().enumerate() {
        assert_eq!(w.to_bits(), u32::from(0x3f80u16 + i as u16 * 3) << 16);
    }
}

#[test]
fn file_written_by_the_safetensors_crate_loads() {
    let spec = tiny();
    let ts = spec.file_tensors();
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .map(|t| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                &t.data,
            )
            .unwrap();
            (t.name.clone(), view)
        })
        .collect();
    let meta = std::collections::HashMap::from([("hcn.config".to_string(), spec.config())]);
    let bytes = safetensors::serialize(views, Some(meta)).unwrap();
    let f = temp_file(&bytes);
    let model = Model::load(f.path()).unwrap();
    check_round_trip(&spec, &model);
}

#[test]
fn model_without_profile_has_no_mlp_and_rejects_one() {
    let spec = Spec {
        fields: vec![],
        dense: 0,
        hidden: vec![],
        ..tiny()
    };
    let m = spec.load_with(|_| {}).unwrap();
    assert!(m.weights.user.mlp.is_empty());
    assert!(m.weights.user.fields.is_empty());
    // SPEC's table lists the MLP even without a profile: an exporter may write it with input
    // width 0. It must then be consistent...
    let r = spec.load_with(|ts| {
        ts.push(T::new(
            "user.mlp.0.weight",
            "F32",
            &[4, 1],
            encode("F32", &[0.0; 4]),
        ))
    });
    assert_tensor(r, "user.mlp.0.weight", &["shape [4, 1]", "expected [4, 0]"]);
    // ... and it is not used: X̂ = 0 whatever its biases would give (SPEC §1.4).
    let m = spec
        .load_with(|ts| {
            ts.push(T::new("user.mlp.0.weight", "F32", &[4, 0], Vec::new()));
            ts.push(T::new(
                "user.mlp.0.bias",
                "F32",
                &[4],
                encode("F32", &[1.0, 2.0, 3.0, 4.0]),
            ));
        })
        .unwrap();
    assert!(m.weights.user.mlp.is_empty());
    // A layer beyond the configured depth is still not a tensor of this model.
    let r = spec.load_with(|ts| {
        ts.push(T::new("user.mlp.0.weight", "F32", &[4, 0], Vec::new()));
        ts.push(T::new(
            "user.mlp.1.weight",
            "F32",
            &[4, 4],
            encode("F32", &[0.0; 16]),
        ));
    });
    assert_tensor(r, "user.mlp.1.weight", &["not a tensor"]);

    // Dense features only: the MLP reads just them.
    let spec = Spec {
        fields: vec![],
        dense: 3,
        hidden: vec![],
        ..tiny()
    };
    let m = spec.load_with(|_| {}).unwrap();
    assert_eq!(m.weights.user.mlp.len(), 1);
    assert_eq!(
        (m.weights.user.mlp[0].out_dim, m.weights.user.mlp[0].in_dim),
        (4, 3)
    );
}

#[test]
fn co_interest_width_follows_the_concat_list() {
    let spec = Spec {
        concat: vec!["long", "short"],
        ..tiny()
    };
    let m = spec.load_with(|_| {}).unwrap();
    assert_eq!(m.weights.co_interest.in_dim, 8);
    // The default three-block width is wrong for a two-block list.
    let r = spec.load_with(|ts| {
        let t = find(ts, "co_interest.weight");
        t.shape = vec![4, 12];
        t.data = encode("F32", &[0.5; 48]);
    });
    assert_tensor(r, "co_interest.weight", &["shape [4, 12], expected [4, 8]"]);
}

// ---------------------------------------------------------------------------------------------
// Broken containers
// ---------------------------------------------------------------------------------------------

#[test]
fn unreadable_paths_are_io_errors() {
    let missing = std::env::temp_dir().join(format!("hcn-no-such-file-{}", std::process::id()));
    assert!(matches!(Model::load(&missing), Err(Error::Io { .. })));
    assert!(matches!(ItemStore::load(&missing), Err(Error::Io { .. })));
    let dir = std::env::temp_dir();
    assert!(matches!(
        Model::load(&dir),
        Err(Error::Io { .. }) | Err(Error::Format { .. })
    ));
}

#[test]
fn loaded_model_and_store_are_shareable() {
    fn send_sync<X: Send + Sync>() {}
    send_sync::<Model>();
    send_sync::<ItemStore>();
}

#[test]
fn truncated_files_are_format_errors() {
    let bytes = tiny().bytes();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_format(load_bytes(&[]), &["0 bytes", "too short"]);
    assert_format(load_bytes(&bytes[..7]), &["7 bytes", "too short"]);
    assert_format(load_bytes(&bytes[..8]), &["header length", "past the end"]);
    for cut in [9, 8 + header_len / 2, 8 + header_len - 1] {
        assert_format(load_bytes(&bytes[..cut]), &["header length"]);
    }
    // Header complete, data cut: some tensor's offsets run past the end.
    for cut in [8 + header_len, 8 + header_len + 5, bytes.len() - 1] {
        assert_format(load_bytes(&bytes[..cut]), &["past the end"]);
    }
}

#[test]
fn header_length_larger_than_file_or_limit() {
    let mut bytes = tiny().bytes();
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    assert_format(load_bytes(&bytes), &["header length", "past the end"]);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_format(load_bytes(&bytes), &["larger than"]);
}

#[test]
fn header_that_is_not_json() {
    assert_format(
        load_bytes(&raw("this is not json", &[])),
        &["not a JSON object"],
    );
    assert_format(load_bytes(&raw("[1, 2]", &[])), &["not a JSON object"]);
    let mut bytes = raw("{\"a\": 1}", &[]);
    bytes[10] = 0xff;
    assert_format(load_bytes(&bytes), &["UTF-8"]);
    // An entry that is not {dtype, shape, data_offsets} names the tensor.
    let r = load_bytes(&raw(r#"{"w": {"dtype": "F32", "shape": [1]}}"#, &[0; 4]));
    assert_format(r, &["`w`", "data_offsets"]);
    let r = load_bytes(&raw(
        r#"{"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}"#,
        &[0; 4],
    ));
    assert_format(r, &["`w`"]);
    let r = load_bytes(&raw(r#"{"__metadata__": {"hcn.config": 3}}"#, &[]));
    assert_format(r, &["hcn.config", "string"]);
}

#[test]
fn offsets_past_end_overlaps_holes_and_duplicates() {
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
        &[0; 4],
    ));
    assert_format(r, &["`a`", "past the end"]);
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}"#,
        &[0; 24],
    ));
    assert_format(r, &["`b`", "overlap", "`a`"]);
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
        &[0; 8],
    ));
    assert_format(r, &["`a`", "holes"]);
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#,
        &[0; 12],
    ));
    assert_format(r, &["8 bytes", "not claimed"]);
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}"#,
        &[0; 4],
    ));
    assert_format(r, &["`a`", "before"]);
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
        &[0; 8],
    ));
    assert_format(r, &["`a`", "twice"]);
}

#[test]
fn shape_and_byte_size_must_agree() {
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}"#,
        &[0; 16],
    ));
    assert_format(r, &["`a`", "[3]", "12 bytes", "16"]);
    let r = load_bytes(&raw(
        r#"{"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 16]}}"#,
        &[0; 16],
    ));
    assert_format(r, &["`a`", "8 bytes"]);
}

#[test]
fn huge_shapes_overflow_into_errors() {
    for shape in [
        "[1099511627776, 1099511627776]",
        "[18446744073709551615, 2]",
        "[4611686018427387904]",
        "[2305843009213693952, 0, 9]",
    ] {
        let h = format!(r#"{{"a": {{"dtype": "F32", "shape": {shape}, "data_offsets": [0, 4]}}}}"#);
        let r = load_bytes(&raw(&h, &[0; 4]));
        match r {
            Err(Error::Format { reason, .. }) => assert!(reason.contains("`a`"), "{reason}"),
            other => panic!("{shape}: {other:?}"),
        }
    }
    // A shape with a zero dimension has zero bytes even when another dimension is huge.
    let h = r#"{"a": {"dtype": "F32", "shape": [0, 9223372036854775807], "data_offsets": [0, 0]}}"#;
    assert_config(load_bytes(&raw(h, &[])), "hcn.config");
}

// ---------------------------------------------------------------------------------------------
// Config problems
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_or_malformed_config() {
    let spec = tiny();
    let ts = spec.file_tensors();
    assert_config(load_bytes(&serialize(&[], &ts)), "hcn.config");
    assert_config(load_bytes(&serialize(&[("other", "x")], &ts)), "hcn.config");
    assert_config(
        load_bytes(&serialize(
            &[("hcn.config", "{\"format\": \"hcn/1\", ")],
            &ts,
        )),
        "JSON",
    );
    let mut bad = Spec { heads: 3, ..tiny() };
    assert_config(load_bytes(&bad.bytes()), "divide");
    bad = Spec {
        interests: 0,
        ..tiny()
    };
    assert_config(load_bytes(&bad.bytes()), "interests");
    // The error's Display names the file.
    let f = temp_file(&serialize(&[], &ts));
    let msg = Model::load(f.path()).unwrap_err().to_string();
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Tensors that do not match the config
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_dtypes_are_named() {
    let r = tiny().load_with(|ts| find(ts, "fusion.weight").dtype = "I32");
    assert_tensor(r, "fusion.weight", &["dtype I32", "F32, F16 or BF16"]);
    let r = tiny().load_with(|ts| {
        let t = find(ts, "long.seeds");
        t.dtype = "U8";
        t.data.truncate(8);
    });
    assert_tensor(r, "long.seeds", &["dtype U8"]);
    let r = tiny().load_with(|ts| {
        let t = find(ts, "user.fields.age.embedding");
        t.dtype = "F64";
        t.data.extend_from_slice(&[0; 24]);
    });
    assert_tensor(r, "user.fields.age.embedding", &["dtype F64"]);
    let r = tiny().load_with(|ts| find(ts, "short.layers.1.v.bias").dtype = "I32");
    assert_tensor(r, "short.layers.1.v.bias", &["dtype I32"]);
}

#[test]
fn non_finite_values_in_every_dtype_are_named() {
    for dtype in ["F32", "F16", "BF16"] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let spec = Spec { dtype, ..tiny() };
            for name in [
                "long.layers.1.k.weight",
                "short.seeds",
                "user.mlp.0.weight",
                "user.fields.gender.embedding",
            ] {
                let r = spec.load_with(|ts| {
                    let t = find(ts, name);
                    let size = t.data.len() / t.shape.iter().product::<usize>();
                    t.data[5 * size..6 * size].copy_from_slice(&encode(dtype, &[bad]));
                });
                let text = if bad.is_nan() {
                    "NaN".to_string()
                } else {
                    bad.to_string()
                };
                assert_tensor(r, name, &["element 5", &text, "finite"]);
            }
        }
    }
}

#[test]
fn misshaped_tensors_say_expected_and_found() {
    let r = tiny().load_with(|ts| {
        let t = find(ts, "long.layers.1.q.weight");
        t.shape = vec![4, 3];
        t.data.truncate(48);
    });
    let e = r.unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor `long.layers.1.q.weight`: shape [4, 3], expected [4, 4]"),
        "{e}"
    );
    let r = tiny().load_with(|ts| find(ts, "short.seeds").shape = vec![8]);
    assert_tensor(r, "short.seeds", &["shape [8], expected [2, 4]"]);
    let r = tiny().load_with(|ts| find(ts, "long.merge.weight").shape = vec![8, 4]);
    assert_tensor(r, "long.merge.weight", &["shape [8, 4], expected [4, 8]"]);
    let r = tiny().load_with(|ts| {
        let t = find(ts, "fusion.bias");
        t.shape = vec![1, 4];
    });
    assert_tensor(r, "fusion.bias", &["shape [1, 4], expected [4]"]);
}

#[test]
fn missing_required_tensors_are_named_and_missing_biases_are_zero() {
    for name in [
        "short.merge.weight",
        "long.seeds",
        "long.layers.1.o.weight",
        "co_interest.weight",
        "fusion.weight",
        "user.mlp.1.weight",
        "user.fields.age.embedding",
    ] {
        let r = tiny().load_with(|ts| ts.retain(|t| t.name != name));
        assert_tensor(r, name, &["missing"]);
    }
    let m = tiny()
        .load_with(|ts| ts.retain(|t| t.name != "fusion.bias"))
        .unwrap();
    assert_eq!(m.weights.fusion.bias, vec![0.0; 4]);
}

#[test]
fn extra_tensors_are_named() {
    let z = || encode("F32", &[0.0; 16]);
    for name in [
        "long.layers.2.q.weight",
        "user.mlp.2.weight",
        "user.fields.zip.embedding",
        "foo",
    ] {
        let r = tiny().load_with(|ts| ts.push(T::new(name, "F32", &[4, 4], z())));
        assert_tensor(r, name, &["not a tensor of this model"]);
    }
}

#[test]
fn field_vocab_must_match_config() {
    let r = tiny().load_with(|ts| {
        let t = find(ts, "user.fields.age.embedding");
        t.shape = vec![2, 3];
    });
    assert_tensor(
        r,
        "user.fields.age.embedding",
        &["shape [2, 3], expected [3, width]", "vocab 3"],
    );
    let r = tiny().load_with(|ts| {
        let t = find(ts, "user.fields.age.embedding");
        t.shape = vec![3, 0];
        t.data.clear();
    });
    assert_tensor(r, "user.fields.age.embedding", &["width >= 1"]);
    let r = tiny().load_with(|ts| find(ts, "user.fields.age.embedding").shape = vec![6]);
    assert_tensor(r, "user.fields.age.embedding", &["shape [6]"]);
}

#[test]
fn mlp_shapes_follow_widths_and_hidden() {
    // A wider embedding changes the expected input of user.mlp.0.
    let r = tiny().load_with(|ts| {
        let t = find(ts, "user.fields.gender.embedding");
        t.shape = vec![2, 4];
        t.data = encode("F32", &[0.25; 8]);
    });
    assert_tensor(
        r,
        "user.mlp.0.weight",
        &["shape [5, 7], expected [5, 8]", "dense"],
    );
    let r = tiny().load_with(|ts| {
        let t = find(ts, "user.mlp.1.weight");
        t.shape = vec![4, 6];
        t.data = encode("F32", &[0.25; 24]);
    });
    assert_tensor(r, "user.mlp.1.weight", &["shape [4, 6], expected [4, 5]"]);
    let r = tiny().load_with(|ts| {
        let t = find(ts, "user.mlp.0.bias");
        t.shape = vec![4];
        t.data.truncate(16);
    });
    assert_tensor(r, "user.mlp.0.bias", &["expected [5]"]);
}

// ---------------------------------------------------------------------------------------------
// Stores
// ---------------------------------------------------------------------------------------------

fn store(vectors: Option<T>, ids: Option<T>) -> Vec<u8> {
    let ts: Vec<T> = vectors.into_iter().chain(ids).collect();
    serialize(&[], &ts)
}

fn vectors(dtype: &'static str, n: usize, d: usize) -> (T, Vec<f32>) {
    let vals = Rng(7).vals(n * d);
    (
        T::new("vectors", dtype, &[n, d], encode(dtype, &vals)),
        vals,
    )
}

fn u64_ids(ids: &[u64]) -> T {
    T::new(
        "ids",
        "U64",
        &[ids.len()],
        ids.iter().flat_map(|i| i.to_le_bytes()).collect(),
    )
}

#[test]
fn store_with_u64_ids_above_2_63_and_i64_ids() {
    let ids = [u64::MAX, 1 << 63, 5, (1 << 63) + 12345, 0];
    for dtype in ["F32", "F16", "BF16"] {
        let (v, vals) = vectors(dtype, 5, 3);
        let s = load_store_bytes(&store(Some(v), Some(u64_ids(&ids)))).unwrap();
        assert_eq!((s.len(), s.dim()), (5, 3));
        assert!(s.has_ids());
        assert_eq!(s.vectors.dtype().name(), dtype);
        for (row, &id) in ids.iter().enumerate() {
            assert_eq!(s.lookup(id), Some(row as u32), "id {id}");
            let mut out = [0.0f32; 3];
            s.vectors.row_into(row, &mut out);
            let expect: Vec<f32> = vals[row * 3..row * 3 + 3]
                .iter()
                .map(|&x| stored(dtype, x))
                .collect();
            assert_eq!(out.as_slice(), expect.as_slice());
        }
        assert_eq!(s.lookup(1), None);
        assert_eq!(s.lookup(4), None);
    }
    // I64: the same 64 bits are the id (so -1 is u64::MAX).
    let signed: [i64; 4] = [-1, i64::MIN, 7, i64::MAX];
    let t = T::new(
        "ids",
        "I64",
        &[4],
        signed.iter().flat_map(|i| i.to_le_bytes()).collect(),
    );
    let s = load_store_bytes(&store(Some(vectors("F32", 4, 2).0), Some(t))).unwrap();
    assert_eq!(s.lookup(u64::MAX), Some(0));
    assert_eq!(s.lookup(1 << 63), Some(1));
    assert_eq!(s.lookup(7), Some(2));
    assert_eq!(s.lookup(i64::MAX as u64), Some(3));
    assert_eq!(s.lookup(0), None);
}

#[test]
fn store_without_ids_uses_row_numbers() {
    let s = load_store_bytes(&store(Some(vectors("F16", 6, 2).0), None)).unwrap();
    assert!(matches!(s.index, IdIndex::RowNumber));
    assert!(!s.has_ids());
    for i in 0..6 {
        assert_eq!(s.lookup(i), Some(i as u32));
    }
    assert_eq!(s.lookup(6), None);
    assert_eq!(s.lookup(u64::MAX), None);
    // An empty store is valid.
    let s = load_store_bytes(&store(Some(vectors("F32", 0, 3).0), None)).unwrap();
    assert!(s.is_empty());
    assert_eq!((s.dim(), s.lookup(0)), (3, None));
    let s = load_store_bytes(&store(Some(vectors("F32", 0, 3).0), Some(u64_ids(&[])))).unwrap();
    assert_eq!(s.lookup(0), None);
}

#[test]
fn store_errors_are_named() {
    let v = || Some(vectors("F32", 4, 2).0);
    let r = load_store_bytes(&store(v(), Some(u64_ids(&[10, 11, 12, 11]))));
    assert_tensor(r, "ids", &["id 11", "rows 1 and 3"]);
    let r = load_store_bytes(&store(v(), Some(u64_ids(&[10, 11, 12]))));
    assert_tensor(r, "ids", &["shape [3], expected [4]"]);
    let f32_ids = T::new("ids", "F32", &[4], encode("F32", &[1.0, 2.0, 3.0, 4.0]));
    assert_tensor(
        load_store_bytes(&store(v(), Some(f32_ids))),
        "ids",
        &["dtype F32", "U64 or I64"],
    );
    let two_d = T::new(
        "ids",
        "U64",
        &[4, 1],
        (0..4u64).flat_map(|i| i.to_le_bytes()).collect(),
    );
    assert_tensor(
        load_store_bytes(&store(v(), Some(two_d))),
        "ids",
        &["shape [4, 1]"],
    );
    let flat = T::new("vectors", "F32", &[8], encode("F32", &[0.5; 8]));
    assert_tensor(
        load_store_bytes(&store(Some(flat), None)),
        "vectors",
        &["shape [8], expected [N, D]"],
    );
    let zero_d = T::new("vectors", "F32", &[4, 0], vec![]);
    assert_tensor(
        load_store_bytes(&store(Some(zero_d), None)),
        "vectors",
        &["D >= 1"],
    );
    let ints = T::new("vectors", "I32", &[4, 2], vec![0; 32]);
    assert_tensor(
        load_store_bytes(&store(Some(ints), None)),
        "vectors",
        &["dtype I32"],
    );
    assert_tensor(
        load_store_bytes(&store(None, Some(u64_ids(&[1])))),
        "vectors",
        &["missing"],
    );
    for dtype in ["F32", "F16", "BF16"] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let (mut t, mut vals) = vectors(dtype, 4, 2);
            vals[5] = bad;
            t.data = encode(dtype, &vals);
            let text = if bad.is_nan() {
                "NaN".to_string()
            } else {
                bad.to_string()
            };
            let r = load_store_bytes(&store(Some(t), None));
            assert_tensor(r, "vectors", &["row 2, column 1", &text]);
        }
    }
    let extra = T::new("tokens", "F32", &[1], encode("F32", &[0.0]));
    let r = load_store_bytes(&serialize(&[], &[vectors("F32", 4, 2).0, extra]));
    assert_tensor(r, "tokens", &["not a store tensor"]);
    // A model file passed as a store is rejected by name, not misread.
    let r = load_store_bytes(&tiny().bytes());
    assert!(matches!(r, Err(Error::Tensor { .. })), "{r:?}");
    // Container errors are the same as for models.
    assert_format(load_store_bytes(&[1, 2, 3]), &["too short"]);
}

// ---------------------------------------------------------------------------------------------
// I8 stores (SPEC §3: `vectors` I8 + `scales` F32)
// ---------------------------------------------------------------------------------------------

/// An I8 `vectors` [n, d] with values in [-127, 127] and its `scales` [n] (row 1 all zero with
/// scale 0, as `hcn quantize` writes an all-zero row).
fn i8_store(n: usize, d: usize) -> (T, T, Vec<i8>, Vec<f32>) {
    let mut rng = Rng(11);
    let q: Vec<i8> = (0..n * d)
        .map(|i| {
            if i / d == 1 {
                0
            } else {
                (rng.below(255) as i32 - 127) as i8
            }
        })
        .collect();
    let scales: Vec<f32> = (0..n)
        .map(|r| {
            if r == 1 {
                0.0
            } else {
                0.001 + rng.unit().abs()
            }
        })
        .collect();
    (
        T::new(
            "vectors",
            "I8",
            &[n, d],
            q.iter().map(|&v| v as u8).collect(),
        ),
        T::new("scales", "F32", &[n], encode("F32", &scales)),
        q,
        scales,
    )
}

#[test]
fn i8_store_loads_with_exact_rows_and_ids() {
    let (v, sc, q, scales) = i8_store(5, 3);
    let ids = u64_ids(&[u64::MAX, 1 << 63, 5, 6, 0]);
    // Any tensor order in the file.
    for ts in [
        vec![v.clone(), sc.clone(), ids.clone()],
        vec![ids.clone(), sc.clone(), v.clone()],
    ] {
        let s = load_store_bytes(&serialize(&[], &ts)).unwrap();
        assert_eq!((s.len(), s.dim(), s.vectors.dtype().name()), (5, 3, "I8"));
        assert_eq!(s.lookup(1 << 63), Some(1));
        for r in 0..5 {
            assert_eq!(s.vectors.row_scale(r), Some(scales[r]));
            let (mut f, mut x) = ([0.0f32; 3], [0.0f64; 3]);
            s.vectors.row_into(r, &mut f);
            s.vectors.row_into_f64(r, &mut x);
            for k in 0..3 {
                let qk = q[r * 3 + k];
                // f32: the F32 product (one rounding); f64: exact.
                assert_eq!(f[k], scales[r] * f32::from(qk), "row {r} col {k}");
                assert_eq!(
                    x[k],
                    f64::from(scales[r]) * f64::from(qk),
                    "row {r} col {k}"
                );
            }
        }
    }
    // -0.0 is a zero scale, not a negative one; an empty I8 store is valid.
    let (v, _, _, mut scales) = i8_store(5, 3);
    scales[2] = -0.0;
    let sc = T::new("scales", "F32", &[5], encode("F32", &scales));
    assert!(load_store_bytes(&store(Some(v), Some(sc))).is_ok());
    let empty = [
        T::new("vectors", "I8", &[0, 4], vec![]),
        T::new("scales", "F32", &[0], vec![]),
    ];
    assert!(load_store_bytes(&serialize(&[], &empty))
        .unwrap()
        .is_empty());
}

#[test]
fn i8_store_errors_name_the_tensor() {
    let (v, sc, _, scales) = i8_store(4, 3);
    // `scales` required with I8, forbidden otherwise.
    assert_tensor(
        load_store_bytes(&store(Some(v.clone()), None)),
        "scales",
        &["missing", "required with I8"],
    );
    let f16 = vectors("F16", 4, 3).0;
    assert_tensor(
        load_store_bytes(&store(Some(f16), Some(sc.clone()))),
        "scales",
        &["F16 `vectors`", "only I8 vectors have scales"],
    );
    // Wrong dtype, length, rank.
    let half = T::new("scales", "F16", &[4], encode("F16", &scales));
    assert_tensor(
        load_store_bytes(&store(Some(v.clone()), Some(half))),
        "scales",
        &["dtype F16, expected F32"],
    );
    let short = T::new("scales", "F32", &[3], encode("F32", &scales[..3]));
    assert_tensor(
        load_store_bytes(&store(Some(v.clone()), Some(short))),
        "scales",
        &["shape [3], expected [4]", "one scale per row"],
    );
    let two_d = T::new("scales", "F32", &[4, 1], encode("F32", &scales));
    assert_tensor(
        load_store_bytes(&store(Some(v.clone()), Some(two_d))),
        "scales",
        &["shape [4, 1]"],
    );
    // Negative or non-finite scales, named by row.
    for (bad, text) in [
        (-0.5f32, "-0.5"),
        (-1e-30, "-0.000000000000000000000000000001"),
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let mut s2 = scales.clone();
        s2[2] = bad;
        let t = T::new("scales", "F32", &[4], encode("F32", &s2));
        assert_tensor(
            load_store_bytes(&store(Some(v.clone()), Some(t))),
            "scales",
            &["row 2 is", text, "finite and >= 0"],
        );
    }
    // A scale whose product with the row's q overflows F32 (row values must be finite F32s, as a
    // float store's are); the same scale on an all-zero row, or a small q, is fine.
    let (v2, _, q2, mut s2) = i8_store(4, 3);
    s2[0] = 3e38;
    let t = T::new("scales", "F32", &[4], encode("F32", &s2));
    let r = load_store_bytes(&store(Some(v2.clone()), Some(t)));
    let max = q2[..3].iter().map(|v| v.unsigned_abs()).max().unwrap();
    assert!(max > 1, "test data: row 0 has a large q");
    assert_tensor(r, "scales", &["row 0 is", "overflows F32"]);
    s2[0] = 0.0;
    s2[1] = 3e38; // row 1 is all zero
    let t = T::new("scales", "F32", &[4], encode("F32", &s2));
    assert!(load_store_bytes(&store(Some(v2), Some(t))).is_ok());
    // -128 is outside SPEC §3's [-127, 127].
    let mut m = v.clone();
    m.data[4] = 0x80;
    assert_tensor(
        load_store_bytes(&store(Some(m), Some(sc.clone()))),
        "vectors",
        &["row 1, column 1 is -128", "[-127, 127]"],
    );
    // A store tensor list that is still checked: an extra tensor next to an I8 store.
    let extra = T::new("norms", "F32", &[4], encode("F32", &[1.0; 4]));
    assert_tensor(
        load_store_bytes(&serialize(&[], &[v.clone(), sc.clone(), extra])),
        "norms",
        &["not a store tensor"],
    );
    // Model tensors stay float-only: I8 is a store dtype.
    let r = tiny().load_with(|ts| {
        let t = find(ts, "long.seeds");
        t.dtype = "I8";
        t.data.truncate(8);
    });
    assert_tensor(r, "long.seeds", &["dtype I8", "F32, F16 or BF16"]);
}

/// Both stores of an engine go through the same checks: a bad I8 token store and a bad I8
/// candidate store each fail the engine's load with the tensor named.
#[test]
fn bad_i8_token_or_candidate_store_fails_engine_load() {
    let model = temp_file(&tiny().bytes());
    let good = |n| {
        let (v, sc, _, _) = i8_store(n, 4);
        temp_file(&store(Some(v), Some(sc)))
    };
    let bad = |n| {
        let (v, _, _, mut scales) = i8_store(n, 4);
        scales[0] = -1.0;
        let sc = T::new("scales", "F32", &[n], encode("F32", &scales));
        temp_file(&store(Some(v), Some(sc)))
    };
    let (gt, gc, bt, bc) = (good(9), good(7), bad(9), bad(7));
    let opts = hcn_prerank::EngineOptions::default;
    let ok = hcn_prerank::Engine::load(model.path(), gt.path(), gc.path(), opts());
    assert!(ok.is_ok(), "{:?}", ok.err());
    for (t, c) in [(&bt, &gc), (&gt, &bc)] {
        let r = hcn_prerank::Engine::load(model.path(), t.path(), c.path(), opts());
        match r {
            Err(Error::Tensor { tensor, reason, .. }) => {
                assert_eq!(tensor, "scales");
                assert!(reason.contains("row 0 is -1"), "{reason}");
            }
            other => panic!("expected a scales error, got {:?}", other.err()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// No input panics
// ---------------------------------------------------------------------------------------------

/// Applies one random mutation: truncation, byte flips, digit changes in the header (which hit
/// shapes and offsets), or a non-finite half/float pattern in the data.
fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    let header_end = 8 + u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    match rng.below(6) {
        0 => b.truncate(rng.below(src.len())),
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        2 | 3 => {
            let digits: Vec<usize> = (8..header_end).filter(|&i| b[i].is_ascii_digit()).collect();
            for _ in 0..1 + rng.below(2) {
                let i = digits[rng.below(digits.len())];
                b[i] = b'0' + rng.below(10) as u8;
            }
        }
        4 => {
            let i = header_end + rng.below(src.len() - header_end);
            b[i] = 0xff;
        }
        _ => {
            let i = rng.below(8);
            b[i] = rng.next() as u8;
        }
    }
    b
}

#[test]
fn random_mutations_never_panic() {
    let model = Spec {
        dtype: "F16",
        ..tiny()
    }
    .bytes();
    let (v, _) = vectors("BF16", 6, 3);
    let store_bytes = store(Some(v), Some(u64_ids(&[9, 8, 7, 6, 5, 4])));
    let (v, sc, _, _) = i8_store(6, 3);
    let i8_bytes = serialize(&[], &[v, sc, u64_ids(&[9, 8, 7, 6, 5, 4])]);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut model_ok, mut store_ok, mut i8_ok) = (0, 0, 0);
    for _ in 0..2000 {
        let b = mutate(&mut rng, &model);
        model_ok += usize::from(load_bytes(&b).is_ok());
        let b = mutate(&mut rng, &store_bytes);
        store_ok += usize::from(load_store_bytes(&b).is_ok());
        let b = mutate(&mut rng, &i8_bytes);
        i8_ok += usize::from(load_store_bytes(&b).is_ok());
    }
    // Mutations that leave a file valid (e.g. a changed weight digit pattern) are fine; but most
    // must be caught, or the mutator is not exercising the checks.
    assert!(model_ok < 1000, "{model_ok} of 2000 mutated models loaded");
    assert!(store_ok < 1000, "{store_ok} of 2000 mutated stores loaded");
    assert!(i8_ok < 1500, "{i8_ok} of 2000 mutated I8 stores loaded");
}
