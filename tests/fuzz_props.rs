//! Property tests (proptest, fixed seeds, bounded case counts so CI is deterministic and fast):
//!
//! - the model and store loaders over structured and byte-level mutations of the valid fixture
//!   files never panic, and every failure is a typed error with a non-empty message; rewrites that
//!   keep a file valid (header whitespace, key order) always load, to the same values;
//! - `json::parse_request` over arbitrary strings and over mutations of valid requests never
//!   panics; what it accepts runs through the engine to `Ok` or a request error;
//! - the engine over random valid-shape requests (unknown ids, over-long sequences, duplicate
//!   candidates, any `k`) returns aligned scores, `None` exactly for unknown candidates, and a
//!   top-k that is sorted and consistent with the scores;
//! - the committed corpus `tests/corpus/` is replayed and each file must fail exactly as its
//!   `.expect` file says.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hcn_prerank::json::parse_request;
use hcn_prerank::{Engine, EngineOptions, Error, ItemStore, Limits, Model, Request, UserRequest};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, RngSeed};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// Fixed seed, no persistence file, bounded shrinking: the same cases on every run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x00c0_ffee_5eed),
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    }
}

fn fixture(case: &str, file: &str) -> PathBuf {
    common::fixtures_dir().join(case).join(file)
}

/// Fixture file contents by `case/file`, read once and kept for the whole run.
type ByteCache = Mutex<Vec<(String, &'static [u8])>>;

fn bytes_of(case: &str, file: &str) -> &'static [u8] {
    static CACHE: OnceLock<ByteCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = format!("{case}/{file}");
    let mut c = cache.lock().unwrap();
    if let Some((_, b)) = c.iter().find(|(k, _)| *k == key) {
        return b;
    }
    let b: &'static [u8] = Box::leak(
        std::fs::read(fixture(case, file))
            .unwrap()
            .into_boxed_slice(),
    );
    c.push((key, b));
    b
}

/// A temp file removed on drop (a loaded model may still map it; unlinking is fine on Unix).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file(bytes: &[u8]) -> TempFile {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "hcn-fuzz-props-{}-{n}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, bytes).unwrap();
    TempFile(path)
}

/// The engine the request properties run against: tiny_f32 (two profile fields, three dense
/// features, stores without ids).
fn tiny_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        Engine::load(
            fixture("tiny_f32", "model.safetensors"),
            fixture("tiny_f32", "tokens.safetensors"),
            fixture("tiny_f32", "candidates.safetensors"),
            EngineOptions::default(),
        )
        .unwrap()
    })
}

/// The fixture's two stores, loaded once.
fn stores(case: &str) -> (Arc<ItemStore>, Arc<ItemStore>) {
    type Loaded = Vec<(String, Arc<ItemStore>, Arc<ItemStore>)>;
    static CACHE: OnceLock<Mutex<Loaded>> = OnceLock::new();
    let mut c = CACHE.get_or_init(Default::default).lock().unwrap();
    if let Some((_, t, k)) = c.iter().find(|(n, _, _)| n == case) {
        return (t.clone(), k.clone());
    }
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(case, "case.json")).unwrap())
            .unwrap();
    let load =
        |k: &str| Arc::new(ItemStore::load(fixture(case, meta[k].as_str().unwrap())).unwrap());
    let (t, k) = (load("tokens"), load("candidates"));
    c.push((case.to_string(), t.clone(), k.clone()));
    (t, k)
}

/// tinier_mixed_onefile: no profile, mixed dtypes, one store file with U64 ids.
fn tinier_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let store = fixture("tinier_mixed_onefile", "tokens.safetensors");
        Engine::load(
            fixture("tinier_mixed_onefile", "model.safetensors"),
            &store,
            &store,
            EngineOptions::default(),
        )
        .unwrap()
    })
}

/// A loader error must be one of the loader's typed variants, and say something.
fn check_load_error(e: &Error) -> Result<(), TestCaseError> {
    let ok = match e {
        Error::Format { reason, .. } | Error::Config { reason, .. } => !reason.is_empty(),
        Error::Tensor { reason, .. } => !reason.is_empty(),
        _ => false,
    };
    prop_assert!(ok, "not a loader error variant or empty reason: {e:?}");
    prop_assert!(!e.to_string().is_empty());
    Ok(())
}

/// A request's own error: a bad field, a limit breach or the model's arithmetic overflowing for
/// it (each names the field at fault), never a panic or another kind.
fn check_request_error(e: &Error) -> Result<(), TestCaseError> {
    match e {
        Error::Request { field, reason }
        | Error::Limit { field, reason }
        | Error::Overflow { field, reason } => {
            prop_assert!(!field.is_empty() && !reason.is_empty(), "{e:?}");
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "expected a request error, got {other:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Safetensors mutations
// ---------------------------------------------------------------------------------------------

/// Splits a safetensors file into its parsed header and data (None if the header is not JSON).
fn split(b: &[u8]) -> Option<(Map<String, Value>, Vec<u8>)> {
    let n = usize::try_from(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)).ok()?;
    let end = 8usize.checked_add(n)?;
    let header: Value = serde_json::from_slice(b.get(8..end)?).ok()?;
    Some((header.as_object()?.clone(), b[end..].to_vec()))
}

fn join(header: &Map<String, Value>, pad: usize, data: &[u8]) -> Vec<u8> {
    let mut text = serde_json::to_vec(header).unwrap();
    text.resize(text.len() + pad, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(data);
    out
}

/// Tensor names of a header, sorted (so an index picks the same tensor on every run).
fn tensor_names(h: &Map<String, Value>) -> Vec<String> {
    let mut names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    names.sort();
    names
}

/// A number that stresses size arithmetic.
fn hostile_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..70,
        Just(u32::MAX as u64),
        Just(1u64 << 31),
        Just(1u64 << 40),
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1),
        any::<u64>(),
    ]
}

/// A JSON value of any type, including nested and non-integer numbers.
fn hostile_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        hostile_u64().prop_map(|v| json!(v)),
        any::<i64>().prop_map(|v| json!(v)),
        prop_oneof![Just(-1.5f64), Just(0.5), Just(1e39), Just(-0.0), Just(3.0)]
            .prop_map(|v| json!(v)),
        "[a-z_.]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Float bit patterns that are not finite, for every storage dtype (little-endian).
const NON_FINITE: [&[u8]; 9] = [
    &[0x00, 0x00, 0xc0, 0x7f], // f32 NaN
    &[0x00, 0x00, 0x80, 0x7f], // f32 +Inf
    &[0x00, 0x00, 0x80, 0xff], // f32 -Inf
    &[0x00, 0x7e],             // f16 NaN
    &[0x00, 0x7c],             // f16 +Inf
    &[0x00, 0xfc],             // f16 -Inf
    &[0xc0, 0x7f],             // bf16 NaN
    &[0x80, 0x7f],             // bf16 +Inf
    &[0x80, 0xff],             // bf16 -Inf
];

/// Huge but finite values (the file stays valid; the math may overflow).
const HUGE: [&[u8]; 5] = [
    &[0xe6, 0xb1, 0x61, 0x7f], // f32 3e38
    &[0xe6, 0xb1, 0x61, 0xff], // f32 -3e38
    &[0xff, 0x7b],             // f16 65504
    &[0x62, 0x7f],             // bf16 ~3e38
    &[0x62, 0xff],             // bf16 ~-3e38
];

/// Values SPEC §3 refuses in an I8 store: a `vectors` byte of -128, negative scales (little-endian;
/// an F32 NaN or infinity is in `NON_FINITE`).
const I8_HOSTILE: [&[u8]; 4] = [
    &[0x80],                   // i8 -128
    &[0x00, 0x00, 0x80, 0xbe], // f32 -0.25
    &[0x01, 0x00, 0x00, 0x80], // f32 -1e-45 (the smallest negative)
    &[0x00, 0x00, 0x80, 0x80], // f32 -1.2e-38
];

/// One mutation of a safetensors file. Indices are taken modulo the thing they index.
#[derive(Debug, Clone)]
enum Mutation {
    // Header JSON, re-serialized with a correct length.
    Dtype(usize, &'static str),
    ShapeDim(usize, usize, u64),
    SwapShape(usize),
    DropAxis(usize),
    Offset(usize, usize, u64),
    Rename(usize, String),
    Remove(usize),
    Duplicate(usize, String),
    HeaderValue(usize, Value),
    ConfigKey(usize, Value),
    ConfigRemove(usize),
    ConfigText(String),
    Metadata(Value),
    // Bytes.
    HeaderByte(usize, u8),
    HeaderLen(u64),
    NonFinite(usize, usize),
    Huge(usize, usize),
    I8Hostile(usize, usize),
    DataByte(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
}

const CONFIG_KEYS: [&str; 12] = [
    "format",
    "dim",
    "interests",
    "heads",
    "layers",
    "long_len",
    "short_len",
    "co_interest_concat",
    "user_fields",
    "user_dense",
    "user_mlp_hidden",
    "score",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<usize>;
    let dtype = prop::sample::select(vec![
        "F32", "F16", "BF16", "I8", "F64", "I32", "I64", "U8", "U64", "BOOL", "F8_E4M3", "Q4", "",
    ]);
    prop_oneof![
        // Weighted towards mutations that keep the container valid, so that the config and
        // tensor checks behind it are reached too.
        2 => (idx(), dtype).prop_map(|(t, d)| Mutation::Dtype(t, d)),
        1 => (idx(), idx(), hostile_u64()).prop_map(|(t, a, v)| Mutation::ShapeDim(t, a, v)),
        3 => idx().prop_map(Mutation::SwapShape),
        1 => idx().prop_map(Mutation::DropAxis),
        1 => (idx(), 0usize..2, hostile_u64()).prop_map(|(t, w, v)| Mutation::Offset(t, w, v)),
        3 => (idx(), "[a-z._0-9]{0,24}").prop_map(|(t, n)| Mutation::Rename(t, n)),
        1 => idx().prop_map(Mutation::Remove),
        1 => (idx(), "[a-z._0-9]{1,24}").prop_map(|(t, n)| Mutation::Duplicate(t, n)),
        1 => (idx(), hostile_json()).prop_map(|(t, v)| Mutation::HeaderValue(t, v)),
        4 => (idx(), hostile_json()).prop_map(|(k, v)| Mutation::ConfigKey(k, v)),
        2 => idx().prop_map(Mutation::ConfigRemove),
        1 => "\\PC{0,40}".prop_map(Mutation::ConfigText),
        1 => hostile_json().prop_map(Mutation::Metadata),
        1 => (idx(), any::<u8>()).prop_map(|(i, b)| Mutation::HeaderByte(i, b)),
        1 => hostile_u64().prop_map(Mutation::HeaderLen),
        4 => (idx(), 0..NON_FINITE.len()).prop_map(|(i, p)| Mutation::NonFinite(i, p)),
        3 => (idx(), 0..HUGE.len()).prop_map(|(i, p)| Mutation::Huge(i, p)),
        3 => (idx(), 0..I8_HOSTILE.len()).prop_map(|(i, p)| Mutation::I8Hostile(i, p)),
        2 => (idx(), any::<u8>()).prop_map(|(i, b)| Mutation::DataByte(i, b)),
        1 => idx().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
    ]
}

fn apply(b: &[u8], m: &Mutation) -> Vec<u8> {
    use Mutation::*;
    let header_end = b
        .get(..8)
        .map(|l| u64::from_le_bytes(l.try_into().unwrap()))
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_add(8))
        .filter(|&e| e <= b.len());
    match m {
        HeaderByte(i, byte) => {
            let mut out = b.to_vec();
            if let Some(e) = header_end.filter(|&e| e > 8) {
                out[8 + i % (e - 8)] = *byte;
            }
            return out;
        }
        HeaderLen(v) => {
            let mut out = b.to_vec();
            if out.len() >= 8 {
                out[..8].copy_from_slice(&v.to_le_bytes());
            }
            return out;
        }
        NonFinite(i, p) | Huge(i, p) | I8Hostile(i, p) => {
            let mut out = b.to_vec();
            let pat = match m {
                Huge(..) => HUGE[*p],
                I8Hostile(..) => I8_HOSTILE[*p],
                _ => NON_FINITE[*p],
            };
            if let Some(e) = header_end.filter(|&e| b.len() >= e + pat.len() && b.len() > e) {
                // Aligned to the pattern's width, as a stored element would be.
                let slots = (b.len() - e) / pat.len();
                if slots > 0 {
                    let at = e + (i % slots) * pat.len();
                    out[at..at + pat.len()].copy_from_slice(pat);
                }
            }
            return out;
        }
        DataByte(i, byte) => {
            let mut out = b.to_vec();
            if let Some(e) = header_end.filter(|&e| e < b.len()) {
                out[e + i % (b.len() - e)] = *byte;
            }
            return out;
        }
        Truncate(i) => return b[..i % b.len().max(1)].to_vec(),
        Extend(extra) => return [b, extra].concat(),
        _ => {}
    }
    let Some((mut h, data)) = split(b) else {
        return b.to_vec();
    };
    let names = tensor_names(&h);
    let pick = |i: &usize| names.get(i % names.len().max(1)).cloned();
    match m {
        Dtype(t, d) => {
            if let Some(e) = tensor_entry(&mut h, &names, *t) {
                e.insert("dtype".into(), json!(d));
            }
        }
        ShapeDim(t, a, v) => {
            if let Some(s) = tensor_shape(&mut h, &names, *t) {
                if s.is_empty() {
                    s.push(json!(v));
                } else {
                    let k = a % s.len();
                    s[k] = json!(v);
                }
            }
        }
        SwapShape(t) => {
            if let Some(s) = tensor_shape(&mut h, &names, *t) {
                s.reverse();
            }
        }
        DropAxis(t) => {
            if let Some(s) = tensor_shape(&mut h, &names, *t) {
                s.pop();
            }
        }
        Offset(t, w, v) => {
            if let Some(o) = tensor_entry(&mut h, &names, *t)
                .and_then(|e| e.get_mut("data_offsets"))
                .and_then(Value::as_array_mut)
                .and_then(|o| o.get_mut(*w))
            {
                *o = json!(v);
            }
        }
        Rename(t, new) => {
            if let Some(v) = pick(t).and_then(|n| h.remove(&n)) {
                h.insert(new.clone(), v);
            }
        }
        Remove(t) => {
            if let Some(n) = pick(t) {
                h.remove(&n);
            }
        }
        Duplicate(t, new) => {
            if let Some(v) = pick(t).and_then(|n| h.get(&n).cloned()) {
                h.insert(new.clone(), v);
            }
        }
        HeaderValue(t, v) => {
            if let Some(n) = pick(t) {
                h.insert(n, v.clone());
            }
        }
        ConfigKey(k, v) => edit_config(&mut h, |c| {
            c.insert(CONFIG_KEYS[k % CONFIG_KEYS.len()].to_string(), v.clone());
        }),
        ConfigRemove(k) => edit_config(&mut h, |c| {
            c.remove(CONFIG_KEYS[k % CONFIG_KEYS.len()]);
        }),
        ConfigText(s) => {
            if let Some(md) = h.get_mut("__metadata__").and_then(Value::as_object_mut) {
                if md.contains_key("hcn.config") {
                    md.insert("hcn.config".into(), json!(s));
                }
            }
        }
        Metadata(v) => {
            h.insert("__metadata__".into(), v.clone());
        }
        _ => unreachable!("byte mutations handled above"),
    }
    join(&h, 0, &data)
}

/// The tensor entry index `t` picks, while it is still an object (an earlier mutation may have
/// replaced it by any JSON value).
fn tensor_entry<'a>(
    h: &'a mut Map<String, Value>,
    names: &[String],
    t: usize,
) -> Option<&'a mut Map<String, Value>> {
    let n = names.get(t % names.len().max(1))?;
    h.get_mut(n)?.as_object_mut()
}

fn tensor_shape<'a>(
    h: &'a mut Map<String, Value>,
    names: &[String],
    t: usize,
) -> Option<&'a mut Vec<Value>> {
    tensor_entry(h, names, t)?.get_mut("shape")?.as_array_mut()
}

/// Edits the `hcn.config` JSON inside the metadata, if the file has one.
fn edit_config(h: &mut Map<String, Value>, f: impl FnOnce(&mut Map<String, Value>)) {
    let Some(md) = h.get_mut("__metadata__").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(mut cfg) = md
        .get("hcn.config")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
    else {
        return;
    };
    f(&mut cfg);
    md.insert("hcn.config".into(), json!(Value::Object(cfg).to_string()));
}

/// Model files mutated: (fixture, file) to start from.
const MODEL_SOURCES: [(&str, &str); 3] = [
    ("tinier_mixed_onefile", "model.safetensors"),
    ("tiny_f32", "model.safetensors"),
    ("tiny_bf16_mean", "model.safetensors"),
];
const STORE_SOURCES: [(&str, &str); 5] = [
    ("tinier_mixed_onefile", "tokens.safetensors"),
    ("tiny_f32", "candidates.safetensors"),
    ("tiny_bf16_mean", "tokens.safetensors"),
    // I8 (SPEC §3): `vectors` I8 + `scales` F32, with and without ids.
    ("tinier_mixed_onefile_i8", "store.safetensors"),
    ("tiny_f32_i8", "candidates.safetensors"),
];

/// Cases per property; the whole file runs in well under 30 s in release mode.
const LOADER_CASES: u32 = 4000;
const REQUEST_CASES: u32 = 4000;
const ENGINE_CASES: u32 = 2000;

/// Outcome counts of a fuzz run, printed with `--nocapture` and checked for coverage.
type Tally = Mutex<std::collections::BTreeMap<String, usize>>;

fn count(tally: &Tally, key: impl Into<String>) {
    *tally.lock().unwrap().entry(key.into()).or_default() += 1;
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "Io",
        Error::Format { .. } => "Format",
        Error::Config { .. } => "Config",
        Error::Tensor { .. } => "Tensor",
        Error::Incompatible(_) => "Incompatible",
        Error::Request { .. } => "Request",
        Error::Limit { .. } => "Limit",
        Error::Overflow { .. } => "Overflow",
        Error::Device(_) => "Device",
        _ => "other",
    }
}

/// Runs `LOADER_CASES` cases of 1–3 mutations of `sources` through `check`, which returns the
/// outcome's name; asserts every outcome in `must_see` occurred at least once.
fn fuzz_loader(
    what: &str,
    sources: &'static [(&'static str, &'static str)],
    must_see: &[&str],
    check: impl Fn(&str, &Path, &Tally) -> Result<(), TestCaseError>,
) {
    let tally = Tally::default();
    let mut runner = proptest::test_runner::TestRunner::new(config(LOADER_CASES));
    let strategy = (0..sources.len(), prop::collection::vec(mutation(), 1..4));
    runner
        .run(&strategy, |(src, muts)| {
            let (case, file) = sources[src];
            let mut b = bytes_of(case, file).to_vec();
            for m in &muts {
                b = apply(&b, m);
            }
            let f = temp_file(&b);
            check(case, &f.0, &tally)
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let tally = tally.into_inner().unwrap();
    println!("{what}: {LOADER_CASES} cases (+ shrinking, if any): {tally:?}");
    for key in must_see {
        assert!(
            tally.contains_key(*key),
            "{what}: no case gave {key}: {tally:?}"
        );
    }
}

/// Any 1–3 mutations of a valid model: `Ok` or a typed loader error. A model that still loads
/// also builds an engine over the fixture's stores (or an `Incompatible` error) and serves a
/// request without panicking.
#[test]
fn mutated_models_never_panic() {
    fuzz_loader(
        "models",
        &MODEL_SOURCES,
        &["Format", "Config", "Tensor", "Ok"],
        |case, path, tally| {
            match Model::load(path) {
                Err(e) => {
                    count(tally, variant(&e));
                    check_load_error(&e)?;
                }
                Ok(model) => {
                    count(tally, "Ok");
                    let (tokens, candidates) = stores(case);
                    match Engine::new(
                        Arc::new(model),
                        tokens,
                        candidates,
                        EngineOptions::default(),
                    ) {
                        Err(Error::Incompatible(m)) => prop_assert!(!m.is_empty()),
                        Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                        Ok(engine) => {
                            let line = &request_lines(case)[0];
                            let req =
                                common::request_from_json(&serde_json::from_str(line).unwrap());
                            match engine.run(&req, Some(2)) {
                                Ok(resp) => {
                                    count(tally, "Ok, served");
                                    prop_assert!(
                                        resp.scores.iter().flatten().all(|s| s.is_finite()),
                                        "non-finite score {:?}",
                                        resp.scores
                                    );
                                }
                                Err(e) => {
                                    check_request_error(&e)?;
                                    count(
                                        tally,
                                        format!(
                                            "Ok, request error on {}",
                                            match &e {
                                                Error::Request { field, .. }
                                                | Error::Limit { field, .. }
                                                | Error::Overflow { field, .. } => field.as_str(),
                                                _ => "?",
                                            }
                                        ),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    );
}

/// Any 1–3 mutations of a valid store: `Ok` (every row then readable and finite; an I8 store's
/// scales finite and ≥ 0, no -128) or a typed loader error. SPEC §3's I8 rules reachable by
/// these mutations must each be hit: `scales` misshaped, negative or non-finite, a -128 value.
/// (A missing `scales`, or scales next to float vectors, leave a hole in the data or change a
/// byte size, so the container check answers first: the corpus and `tests/load_errors.rs` have
/// those.)
#[test]
fn mutated_stores_never_panic() {
    fuzz_loader(
        "stores",
        &STORE_SOURCES,
        &[
            "Format",
            "Tensor",
            "Ok",
            "Ok I8",
            "Tensor scales: shape",
            "Tensor scales: value",
            "Tensor vectors: -128",
        ],
        |_, path, tally| {
            match ItemStore::load(path) {
                Err(e) => {
                    count(tally, variant(&e));
                    if let Error::Tensor { tensor, reason, .. } = &e {
                        let rule = if reason.contains("missing") {
                            "missing"
                        } else if reason.contains("shape") {
                            "shape"
                        } else if reason.contains("finite and >= 0")
                            || reason.contains("overflows F32")
                        {
                            "value"
                        } else if reason.contains("only I8") {
                            "not I8"
                        } else if reason.contains("-128") {
                            "-128"
                        } else {
                            "other"
                        };
                        if tensor == "vectors" || tensor == "scales" {
                            count(tally, format!("Tensor {tensor}: {rule}"));
                        }
                    }
                    check_load_error(&e)?;
                }
                Ok(store) => {
                    count(tally, "Ok");
                    let mut row = vec![0.0f32; store.dim()];
                    for r in 0..store.len() {
                        store.vectors.row_into(r, &mut row);
                        prop_assert!(row.iter().all(|v| v.is_finite()));
                        if let Some(scale) = store.vectors.row_scale(r) {
                            prop_assert!(scale.is_finite() && scale >= 0.0, "scale {scale}");
                            prop_assert!(!store.vectors.row_bytes(r).contains(&0x80));
                        }
                    }
                    if store.vectors.scales_bytes().is_some() {
                        count(tally, "Ok I8");
                    }
                }
            }
            Ok(())
        },
    );
}

/// Valid rewrites of every source file keep it loadable, with the same tensors: the header
/// re-serialized (keys in another order) with 0–63 trailing spaces (every source × 64).
#[test]
fn valid_rewrites_always_load() {
    for (case, file) in MODEL_SOURCES {
        let orig = Model::load(fixture(case, file)).unwrap();
        for pad in 0..64 {
            let (h, data) = split(bytes_of(case, file)).unwrap();
            let f = temp_file(&join(&h, pad, &data));
            let model = Model::load(&f.0).unwrap_or_else(|e| panic!("{case} pad {pad}: {e}"));
            assert_eq!(model.weights.fusion.weight, orig.weights.fusion.weight);
            assert_eq!(model.weights.long.seeds, orig.weights.long.seeds);
        }
    }
    for (case, file) in STORE_SOURCES {
        let orig = ItemStore::load(fixture(case, file)).unwrap();
        for pad in 0..64 {
            let (h, data) = split(bytes_of(case, file)).unwrap();
            let f = temp_file(&join(&h, pad, &data));
            let store =
                ItemStore::load(&f.0).unwrap_or_else(|e| panic!("{case} store pad {pad}: {e}"));
            assert_eq!(store.vectors.bytes(), orig.vectors.bytes());
            assert_eq!(store.vectors.scales_bytes(), orig.vectors.scales_bytes());
        }
    }
}

proptest! {
    #![proptest_config(config(LOADER_CASES / 4))]

    /// Any finite value of moderate size written over any element of an all-F32 model leaves a
    /// valid file: it loads, and serves a fixture request with finite scores.
    #[test]
    fn finite_data_edits_always_load(
        edits in prop::collection::vec((any::<usize>(), -64.0f32..64.0), 1..8),
    ) {
        let b = bytes_of("tiny_f32", "model.safetensors");
        let start = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize + 8;
        let mut m = b.to_vec();
        for (i, v) in &edits {
            let at = start + (i % ((b.len() - start) / 4)) * 4;
            m[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        let f = temp_file(&m);
        let model = Model::load(&f.0);
        prop_assert!(model.is_ok(), "{:?}", model.err());
        let (tokens, candidates) = stores("tiny_f32");
        let engine = Engine::new(
            Arc::new(model.unwrap()),
            tokens,
            candidates,
            EngineOptions::default(),
        )
        .unwrap();
        let line = &request_lines("tiny_f32")[0];
        let req = common::request_from_json(&serde_json::from_str(line).unwrap());
        let resp = engine.run(&req, Some(3));
        prop_assert!(resp.is_ok(), "{:?}", resp.err());
        prop_assert!(resp.unwrap().scores.iter().flatten().all(|s| s.is_finite()));
    }
}

// ---------------------------------------------------------------------------------------------
// Request parser
// ---------------------------------------------------------------------------------------------

/// The valid request lines of a fixture.
fn request_lines(case: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(case, "requests.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Number and literal texts serde_json's `Value` cannot carry verbatim (spliced in as raw text).
const RAW: [&str; 22] = [
    "-1",
    "1.0",
    "1e3",
    "-0",
    "0.0",
    "18446744073709551616",
    "18446744073709551615",
    "-9223372036854775809",
    "1e39",
    "-1e39",
    "3.4028235e38",
    "1e400",
    "4.9e-324",
    "NaN",
    "Infinity",
    "-Infinity",
    "\"7\"",
    "null",
    "true",
    "[]",
    "{}",
    DEEP,
];
const MARKER: &str = "@@RAW@@";
/// Stands for an id nested 130 arrays deep (past serde_json's recursion limit of 128).
const DEEP: &str = "@@DEEP@@";

fn raw_text(r: usize) -> String {
    match RAW[r] {
        DEEP => format!("{}1{}", "[".repeat(130), "]".repeat(130)),
        text => text.to_string(),
    }
}
const REQUEST_KEYS: [&str; 7] = [
    "long",
    "short",
    "fields",
    "dense",
    "candidates",
    "labels",
    "",
];

#[derive(Debug, Clone)]
enum RequestMutation {
    SetKey(usize, Value),
    RemoveKey(usize),
    /// An element of an array key (or a new one) becomes raw text `RAW[r]`.
    SetElem(usize, usize, usize),
    /// A profile field (existing, unknown or empty name) becomes raw text.
    SetField(String, usize),
    /// The value of a key wrapped in `depth` arrays or objects.
    Nest(usize, usize, bool),
    Truncate(usize),
    InsertChar(usize, char),
}

fn request_mutation() -> impl Strategy<Value = RequestMutation> {
    use RequestMutation::*;
    let idx = any::<usize>;
    let field = prop::sample::select(vec!["age", "city", "zip", "", "AGE", "age "])
        .prop_map(str::to_string);
    prop_oneof![
        (idx(), hostile_json()).prop_map(|(k, v)| SetKey(k, v)),
        idx().prop_map(RemoveKey),
        (idx(), idx(), 0..RAW.len()).prop_map(|(k, i, r)| SetElem(k, i, r)),
        (field, 0..RAW.len()).prop_map(|(f, r)| SetField(f, r)),
        (
            idx(),
            prop_oneof![1usize..8, Just(127), Just(128), Just(129), Just(5000)],
            any::<bool>()
        )
            .prop_map(|(k, d, o)| Nest(k, d, o)),
        idx().prop_map(Truncate),
        (idx(), any::<char>()).prop_map(|(i, c)| InsertChar(i, c)),
    ]
}

/// Applies `m` to one request line (as JSON text).
fn mutate_request(line: &str, m: &RequestMutation) -> String {
    use RequestMutation::*;
    match m {
        Truncate(i) => {
            let cut = line
                .char_indices()
                .map(|(i, _)| i)
                .nth(i % line.len().max(1))
                .unwrap_or(0);
            return line[..cut].to_string();
        }
        InsertChar(i, c) => {
            let at = line
                .char_indices()
                .map(|(i, _)| i)
                .nth(i % line.len().max(1))
                .unwrap_or(0);
            return format!("{}{c}{}", &line[..at], &line[at..]);
        }
        _ => {}
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let key = |k: &usize| REQUEST_KEYS[k % REQUEST_KEYS.len()].to_string();
    let mut raw: Option<String> = None;
    match m {
        SetKey(k, v) => {
            obj.insert(key(k), v.clone());
        }
        RemoveKey(k) => {
            obj.remove(&key(k));
        }
        SetElem(k, i, r) => {
            let entry = obj.entry(key(k)).or_insert_with(|| json!([]));
            match entry.as_array_mut() {
                Some(a) if !a.is_empty() => {
                    let n = a.len();
                    a[i % n] = json!(MARKER);
                }
                Some(a) => a.push(json!(MARKER)),
                None => *entry = json!([MARKER]),
            }
            raw = Some(raw_text(*r));
        }
        SetField(f, r) => {
            let entry = obj.entry("fields").or_insert_with(|| json!({}));
            if let Some(o) = entry.as_object_mut() {
                o.insert(f.clone(), json!(MARKER));
            }
            raw = Some(raw_text(*r));
        }
        Nest(k, depth, objects) => {
            let k = key(k);
            let inner = obj.get(&k).cloned().unwrap_or(json!([1]));
            let text = inner.to_string();
            let (open, close) = if *objects {
                ("{\"a\":", "}")
            } else {
                ("[", "]")
            };
            obj.insert(k, json!(MARKER));
            raw = Some(format!(
                "{}{text}{}",
                open.repeat(*depth),
                close.repeat(*depth)
            ));
        }
        Truncate(_) | InsertChar(..) => unreachable!(),
    }
    let text = Value::Object(obj).to_string();
    match raw {
        Some(r) => text.replace(&format!("\"{MARKER}\""), &r),
        None => text,
    }
}

/// Parses `line` for `engine`'s model; an accepted request must run to `Ok` or a request error.
fn parse_and_run(engine: &Engine, line: &str, k: usize) -> Result<bool, TestCaseError> {
    match parse_request(line, &engine.model().config) {
        Err(e) => {
            check_request_error(&e)?;
            Ok(false)
        }
        Ok(req) => {
            match engine.run(&req, Some(k)) {
                Ok(resp) => prop_assert_eq!(resp.scores.len(), req.candidates.len()),
                Err(e) => check_request_error(&e)?,
            }
            Ok(true)
        }
    }
}

/// JSON-looking token soup: more likely than uniform text to get deep into the parser.
fn json_soup() -> impl Strategy<Value = String> {
    let tok = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"candidates\"",
        "\"long\"",
        "\"fields\"",
        "\"dense\"",
        "\"age\"",
        "\"city\"",
        "0",
        "1",
        "-1",
        "1.5",
        "1e39",
        "18446744073709551616",
        "null",
        "true",
        "\"x\"",
        " ",
        "\\",
        "\"",
        "\u{0}",
        "é",
    ]);
    prop::collection::vec(tok, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(REQUEST_CASES))]

    /// Arbitrary text and JSON-token soup: a typed request error or a request the engine serves.
    #[test]
    fn arbitrary_lines_never_panic(
        line in prop_oneof![any::<String>(), json_soup()],
        k in 0usize..20,
    ) {
        parse_and_run(tiny_engine(), &line, k)?;
        parse_and_run(tinier_engine(), &line, k)?;
    }

    /// Structured mutations of valid requests (wrong types, hostile numbers, missing and extra
    /// keys, unknown fields, deep nesting, cut lines).
    #[test]
    fn mutated_requests_never_panic(
        which in any::<usize>(),
        muts in prop::collection::vec(request_mutation(), 1..4),
        k in 0usize..20,
    ) {
        let engines = [("tiny_f32", tiny_engine()), ("tinier_mixed_onefile", tinier_engine())];
        for (case, engine) in engines {
            let lines = request_lines(case);
            let mut line = lines[which % lines.len()].clone();
            for m in &muts {
                line = mutate_request(&line, m);
            }
            parse_and_run(engine, &line, k)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Engine over random valid-shape requests
// ---------------------------------------------------------------------------------------------

/// Ids that occur in a fixture's requests (known and unknown ones), plus small row numbers.
fn id_pool(case: &str) -> Vec<u64> {
    let mut pool: Vec<u64> = (0..40).collect();
    for line in request_lines(case) {
        let v: Value = serde_json::from_str(&line).unwrap();
        for k in ["long", "short", "candidates"] {
            pool.extend(
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64),
            );
        }
    }
    pool.push(u64::MAX);
    pool.sort_unstable();
    pool.dedup();
    pool
}

fn ids(pool: Vec<u64>, max_len: usize) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop_oneof![4 => prop::sample::select(pool), 1 => any::<u64>()],
        0..=max_len,
    )
}

/// A random request with a valid shape for `engine`'s model.
fn valid_shape_request(
    case: &'static str,
    engine: &'static Engine,
) -> impl Strategy<Value = Request> {
    let cfg = &engine.model().config;
    let pool = id_pool(case);
    let fields: Vec<BoxedStrategy<(String, u64)>> = cfg
        .user_fields
        .iter()
        .map(|f| {
            (0..f.vocab as u64)
                .prop_map({
                    let n = f.name.clone();
                    move |id| (n.clone(), id)
                })
                .boxed()
        })
        .collect();
    (
        ids(pool.clone(), 2 * cfg.long_len),
        ids(pool.clone(), 2 * cfg.short_len),
        fields,
        prop::collection::vec(-8.0f32..8.0, cfg.user_dense),
        ids(pool, 64),
    )
        .prop_map(|(long, short, fields, dense, candidates)| Request {
            user: UserRequest {
                long,
                short,
                fields,
                dense,
            },
            candidates,
        })
}

/// k as a caller may pass it: small values, around the candidate counts, and huge ones (a
/// client-chosen k must never allocate or panic: it is clamped to the candidates).
fn top_k_values() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..80,
        1 => Just(usize::MAX),
        1 => Just(u32::MAX as usize),
        1 => Just(1usize << 31),
        1 => any::<usize>(),
    ]
}

fn check_response(engine: &Engine, req: &Request, k: usize) -> Result<(), TestCaseError> {
    let resp = engine
        .run(req, Some(k))
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let cands = &req.candidates;
    prop_assert_eq!(resp.scores.len(), cands.len());
    let known = |id: u64| engine.candidates().lookup(id).is_some();
    let missing: Vec<u64> = cands.iter().copied().filter(|&c| !known(c)).collect();
    prop_assert_eq!(&resp.missing_candidates, &missing);
    let skipped = req
        .user
        .long
        .iter()
        .chain(&req.user.short)
        .filter(|&&id| engine.tokens().lookup(id).is_none())
        .count();
    prop_assert_eq!(resp.skipped_behaviors, skipped);
    for (i, (s, &c)) in resp.scores.iter().zip(cands).enumerate() {
        prop_assert_eq!(s.is_none(), !known(c), "score[{}] for id {}", i, c);
        if let Some(s) = s {
            prop_assert!(s.is_finite(), "score[{}] = {}", i, s);
        }
        // The same id scores the same at every position.
        let first = cands.iter().position(|&x| x == c).unwrap();
        prop_assert_eq!(s.map(f32::to_bits), resp.scores[first].map(f32::to_bits));
    }
    let scored = resp.scores.iter().filter(|s| s.is_some()).count();
    prop_assert_eq!(resp.top_k.len(), k.min(scored));
    let mut seen = HashSet::new();
    for (r, t) in resp.top_k.iter().enumerate() {
        prop_assert!(seen.insert(t.position), "position {} twice", t.position);
        prop_assert_eq!(t.id, cands[t.position]);
        prop_assert_eq!(
            Some(t.score.to_bits()),
            resp.scores[t.position].map(f32::to_bits)
        );
        if r > 0 {
            let p = &resp.top_k[r - 1];
            prop_assert!(
                p.score > t.score || (p.score == t.score && p.position < t.position),
                "top_k not sorted at {}",
                r
            );
        }
    }
    // Nothing left out beats the last one taken.
    if let Some(last) = resp.top_k.last() {
        for (i, s) in resp.scores.iter().enumerate() {
            if let (Some(s), false) = (s, seen.contains(&i)) {
                prop_assert!(
                    *s < last.score || (*s == last.score && i > last.position),
                    "candidate {} ({}) left out of top-k",
                    i,
                    s
                );
            }
        }
    }
    // The split API gives the same numbers as `run`.
    let interests = engine.user_interests(&req.user).unwrap();
    prop_assert_eq!(&interests.values, &resp.interests.as_ref().unwrap().values);
    let scores = engine.score(&interests, cands).unwrap();
    prop_assert_eq!(&scores.scores, &resp.scores);
    Ok(())
}

proptest! {
    #![proptest_config(config(ENGINE_CASES))]

    #[test]
    fn engine_on_random_requests_tiny(
        req in valid_shape_request("tiny_f32", tiny_engine()),
        k in top_k_values(),
    ) {
        check_response(tiny_engine(), &req, k)?;
    }

    #[test]
    fn engine_on_random_requests_tinier(
        req in valid_shape_request("tinier_mixed_onefile", tinier_engine()),
        k in top_k_values(),
    ) {
        check_response(tinier_engine(), &req, k)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Request cases with their exact errors (beyond tests/engine.rs and tests/cli.rs)
// ---------------------------------------------------------------------------------------------

/// The field and reason of a request error or a limit breach.
fn request_error(r: hcn_prerank::Result<hcn_prerank::Response>) -> (String, String) {
    match r {
        Err(Error::Request { field, reason }) | Err(Error::Limit { field, reason }) => {
            (field, reason)
        }
        other => panic!("expected a request error, got {other:?}"),
    }
}

#[test]
fn empty_candidate_list_is_valid_and_scores_nothing() {
    let engine = tiny_engine();
    let line = r#"{"long": [1, 2], "fields": {"age": 0, "city": 0}, "dense": [0, 0, 0],
        "candidates": []}"#;
    let req = parse_request(line, &engine.model().config).unwrap();
    let resp = engine.run(&req, Some(5)).unwrap();
    assert!(resp.scores.is_empty() && resp.top_k.is_empty() && resp.missing_candidates.is_empty());
    // The user side is still computed.
    assert_eq!(
        resp.interests.as_ref().unwrap().values.len(),
        resp.interests.as_ref().unwrap().n * resp.interests.as_ref().unwrap().dim
    );
    // A zero candidate cap admits exactly the empty list.
    let opts = EngineOptions {
        limits: Limits {
            max_candidates: 0,
            max_behavior_ids: 2,
        },
        ..Default::default()
    };
    let capped = Engine::load(
        fixture("tiny_f32", "model.safetensors"),
        fixture("tiny_f32", "tokens.safetensors"),
        fixture("tiny_f32", "candidates.safetensors"),
        opts,
    )
    .unwrap();
    assert!(capped.run(&req, None).is_ok());
    let mut one = req.clone();
    one.candidates = vec![0];
    assert_eq!(request_error(capped.run(&one, None)).0, "candidates");
}

#[test]
fn duplicate_candidates_each_get_the_same_score() {
    let engine = tiny_engine();
    let mut req = common::cases()
        .into_iter()
        .find(|c| c.name == "tiny_f32")
        .unwrap()
        .requests[0]
        .clone();
    req.candidates = vec![3, 3, 7, 3, 7];
    let resp = engine.run(&req, Some(5)).unwrap();
    let s: Vec<f32> = resp.scores.iter().map(|s| s.unwrap()).collect();
    assert_eq!(s[0].to_bits(), s[1].to_bits());
    assert_eq!(s[0].to_bits(), s[3].to_bits());
    assert_eq!(s[2].to_bits(), s[4].to_bits());
    // Ties in top-k are broken by lower position, so each duplicate appears, in order.
    let positions: Vec<usize> = resp.top_k.iter().map(|t| t.position).collect();
    let mut want: Vec<usize> = (0..5).collect();
    want.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
    assert_eq!(positions, want);
}

#[test]
fn the_behavior_cap_applies_to_short_and_before_unknown_skipping() {
    let opts = EngineOptions {
        limits: Limits {
            max_candidates: 8,
            max_behavior_ids: 3,
        },
        ..Default::default()
    };
    let engine = Engine::load(
        fixture("tiny_f32", "model.safetensors"),
        fixture("tiny_f32", "tokens.safetensors"),
        fixture("tiny_f32", "candidates.safetensors"),
        opts,
    )
    .unwrap();
    let mut req = common::cases()
        .into_iter()
        .find(|c| c.name == "tiny_f32")
        .unwrap()
        .requests[0]
        .clone();
    req.candidates = vec![1];
    req.user.long = vec![1, 2, 3];
    req.user.short = vec![1, 2, 3, 4];
    let (field, reason) = request_error(engine.run(&req, None));
    assert_eq!(field, "short");
    assert!(
        reason.contains("4 behavior ids exceed the limit of 3"),
        "{reason}"
    );
    // Unknown ids count towards the cap: it bounds the work done per request, not the result.
    req.user.short = vec![u64::MAX; 4];
    assert_eq!(request_error(engine.run(&req, None)).0, "short");
    req.user.short = vec![u64::MAX; 3];
    assert_eq!(engine.run(&req, None).unwrap().skipped_behaviors, 3);
}

#[test]
fn dense_values_overflowing_f32_are_named() {
    let cfg = &tiny_engine().model().config;
    for (dense, field) in [
        ("[1e39, 0, 0]", "dense[0]"),
        ("[0, -3.5e38, 0]", "dense[1]"),
        ("[0, 0, 1.7976931348623157e308]", "dense[2]"),
        ("[0, 0, \"1\"]", "dense[2]"),
        ("[0, null, 0]", "dense[1]"),
    ] {
        let line = format!(
            r#"{{"fields": {{"age": 0, "city": 0}}, "dense": {dense}, "candidates": [1]}}"#
        );
        match parse_request(&line, cfg) {
            Err(Error::Request { field: f, .. }) => assert_eq!(f, field, "{line}"),
            other => panic!("{line}: {other:?}"),
        }
    }
    // The largest finite F32 is accepted, and scores stay finite.
    let line =
        r#"{"fields": {"age": 0, "city": 0}, "dense": [3.4028234e38, 0, 0], "candidates": [1]}"#;
    let req = parse_request(line, cfg).unwrap();
    match tiny_engine().run(&req, None) {
        Ok(resp) => assert!(resp.scores[0].unwrap().is_finite()),
        Err(e) => assert!(matches!(e, Error::Overflow { .. }), "{e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus replay
// ---------------------------------------------------------------------------------------------

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind)
}

/// `key: value` lines of an `.expect` file (`contains` may repeat).
fn read_expect(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: bad line {l}", path.display()));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// Corpus entries: (input file, expect file), sorted by name.
fn corpus(kind: &str, ext: &str) -> Vec<(PathBuf, Vec<(String, String)>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let exp = read_expect(&p.with_extension("expect"));
            (p, exp)
        })
        .collect()
}

/// Checks an error (or success) against its expectation: `kind` (Format, Config, Tensor, Request,
/// Ok), `tensor` / `field` exactly, every `contains` a substring of the message.
fn check_expect(what: &Path, got: Result<(), Error>, exp: &[(String, String)]) {
    let get = |k: &str| {
        exp.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let kind = get("kind").unwrap_or_else(|| panic!("{}: no kind", what.display()));
    let err = match (&got, kind) {
        (Ok(()), "Ok") => return,
        (Ok(()), _) => panic!("{}: loaded/accepted, expected {kind}", what.display()),
        (Err(e), _) => e,
    };
    let (variant, name) = match err {
        Error::Format { .. } => ("Format", None),
        Error::Config { .. } => ("Config", None),
        Error::Tensor { tensor, .. } => ("Tensor", Some(("tensor", tensor))),
        Error::Request { field, .. } => ("Request", Some(("field", field))),
        Error::Io { .. } => ("Io", None),
        Error::Incompatible(_) => ("Incompatible", None),
        Error::Limit { field, .. } => ("Limit", Some(("field", field))),
        Error::Device(_) => ("Device", None),
        other => panic!("unexpected error kind: {other}"),
    };
    assert_eq!(variant, kind, "{}: {err}", what.display());
    if let Some((key, value)) = name {
        if let Some(want) = get(key) {
            assert_eq!(value, want, "{}: {err}", what.display());
        }
    }
    let msg = err.to_string();
    for (k, v) in exp {
        if k == "contains" {
            assert!(
                msg.contains(v.as_str()),
                "{}: `{msg}` lacks `{v}`",
                what.display()
            );
        }
    }
}

#[test]
fn corpus_models_fail_as_recorded() {
    let files = corpus("models", "safetensors");
    assert!(files.len() >= 20, "corpus has {} models", files.len());
    for (path, exp) in &files {
        check_expect(path, Model::load(path).map(drop), exp);
    }
}

#[test]
fn corpus_stores_fail_as_recorded() {
    let files = corpus("stores", "safetensors");
    assert!(files.len() >= 8, "corpus has {} stores", files.len());
    for (path, exp) in &files {
        check_expect(path, ItemStore::load(path).map(drop), exp);
    }
}

/// Each request corpus file is one line for the tiny_f32 model, parsed and then run.
#[test]
fn corpus_requests_fail_as_recorded() {
    let files = corpus("requests", "jsonl");
    assert!(files.len() >= 30, "corpus has {} requests", files.len());
    let engine = tiny_engine();
    for (path, exp) in &files {
        let line = std::fs::read_to_string(path).unwrap();
        let line = line.strip_suffix('\n').unwrap_or(&line);
        assert!(
            !line.contains('\n'),
            "{}: one line per file",
            path.display()
        );
        let got = parse_request(line, &engine.model().config)
            .and_then(|r| engine.run(&r, Some(3)).map(drop));
        check_expect(path, got, exp);
    }
}

/// The same corpus through `hcn score`, each bad line followed by a good one: one output line per
/// input line, each error names its field, and every good request after a bad one is served.
#[test]
fn corpus_requests_through_the_cli_keep_the_stream_going() {
    let files = corpus("requests", "jsonl");
    let good = request_lines("tiny_f32")[0].clone();
    let mut input = String::new();
    for (path, _) in &files {
        input.push_str(
            std::fs::read_to_string(path)
                .unwrap()
                .trim_end_matches('\n'),
        );
        input.push('\n');
        input.push_str(&good);
        input.push('\n');
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hcn"))
        .arg("score")
        .arg("--model")
        .arg(fixture("tiny_f32", "model.safetensors"))
        .arg("--tokens")
        .arg(fixture("tiny_f32", "tokens.safetensors"))
        .arg("--candidates")
        .arg(fixture("tiny_f32", "candidates.safetensors"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2 * files.len());
    let want_good = &lines[1];
    for (i, (path, exp)) in files.iter().enumerate() {
        let (bad, after) = (&lines[2 * i], &lines[2 * i + 1]);
        assert_eq!(
            after,
            want_good,
            "request after {} not served",
            path.display()
        );
        let kind = exp.iter().find(|(k, _)| k == "kind").unwrap().1.as_str();
        if kind == "Ok" {
            assert!(bad.get("scores").is_some(), "{}: {bad}", path.display());
        } else {
            let msg = bad["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: {bad}", path.display()));
            if let Some((_, f)) = exp.iter().find(|(k, _)| k == "field") {
                assert!(msg.contains(&format!("{f}:")), "{}: {msg}", path.display());
            }
        }
    }
}

/// Weights near the F32 maximum load (they are finite) but overflow the arithmetic. The engine
/// must then fail the request with a request error, never return a non-finite score (which JSON
/// would write as `null`, the mark of a missing candidate) nor blame its own `interests`.
#[test]
fn overflowing_weights_fail_the_request_instead_of_scoring_inf() {
    let tally = Tally::default();
    for (case, file) in MODEL_SOURCES {
        let b = bytes_of(case, file);
        let data_start = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize + 8;
        let req =
            common::request_from_json(&serde_json::from_str(&request_lines(case)[0]).unwrap());
        let (tokens, candidates) = stores(case);
        for pat in [HUGE[0], HUGE[3]] {
            // Every 5th aligned element of the data: each tensor is hit at least once or so.
            for at in (data_start..b.len() - pat.len()).step_by(5 * pat.len()) {
                let mut m = b.to_vec();
                m[at..at + pat.len()].copy_from_slice(pat);
                let f = temp_file(&m);
                let Ok(model) = Model::load(&f.0) else {
                    count(&tally, "load error");
                    continue;
                };
                let engine = Engine::new(
                    Arc::new(model),
                    tokens.clone(),
                    candidates.clone(),
                    EngineOptions::default(),
                )
                .unwrap();
                match engine.run(&req, Some(3)) {
                    Ok(resp) => {
                        assert!(
                            resp.scores.iter().flatten().all(|s| s.is_finite()),
                            "{case} @{at}: {:?}",
                            resp.scores
                        );
                        assert!(resp.top_k.iter().all(|t| t.score.is_finite()));
                        count(&tally, "served");
                    }
                    Err(Error::Overflow { field, reason }) => {
                        assert!(
                            reason.contains("overflows F32"),
                            "{case} @{at}: {field}: {reason}"
                        );
                        assert!(
                            field == "interests" || field.starts_with("candidates["),
                            "{field}"
                        );
                        count(
                            &tally,
                            if field == "interests" {
                                "X^U overflow"
                            } else {
                                "score overflow"
                            },
                        );
                    }
                    Err(e) => panic!("{case} @{at}: {e:?}"),
                }
            }
        }
    }
    let tally = tally.into_inner().unwrap();
    println!("huge weights: {tally:?}");
    for key in ["served", "X^U overflow", "score overflow"] {
        assert!(tally.contains_key(key), "no case gave {key}: {tally:?}");
    }
}

proptest! {
    #![proptest_config(config(ENGINE_CASES / 10))]

    /// `run_batch` over a mix of valid and broken requests gives, in order, exactly what `run`
    /// gives for each: one failure does not affect the others.
    #[test]
    fn run_batch_equals_run_request_by_request(
        batch in prop::collection::vec(
            (valid_shape_request("tiny_f32", tiny_engine()), 0usize..4),
            0..24,
        ),
    ) {
        let engine = tiny_engine();
        let requests: Vec<Request> = batch
            .into_iter()
            .map(|(mut r, breakage)| {
                match breakage {
                    1 => r.user.dense.push(0.0),
                    2 => r.user.fields.push(("zip".into(), 0)),
                    _ => {}
                }
                r
            })
            .collect();
        let batched = engine.run_batch(&requests, Some(5));
        prop_assert_eq!(batched.len(), requests.len());
        for (r, got) in requests.iter().zip(&batched) {
            match (got, engine.run(r, Some(5))) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, &b),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => {
                    return Err(TestCaseError::fail(format!("batch {a:?} vs single {b:?}")))
                }
            }
        }
    }
}
