//! End-to-end tests of the `hcn` binary (SPEC §4): they write a tiny SPEC §2 model and SPEC §3
//! stores with the `safetensors` crate, run the built binary on them and check its output lines,
//! exit codes and stderr. Fixtures under `tests/fixtures/<case>/` (exported by the PyTorch side),
//! when present, are scored too and compared with their expected outputs.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

const HCN: &str = env!("CARGO_BIN_EXE_hcn");

/// The tiny model's sizes.
const D: usize = 4;
const N_INTERESTS: usize = 2;
const VOCAB_AGE: usize = 3;
const DENSE: usize = 2;
/// Store rows and their external ids (row i has id `ID_BASE + 7 i`, so ids are not row numbers).
const ROWS: usize = 20;
const ID_BASE: u64 = 1000;

fn id_of(row: usize) -> u64 {
    ID_BASE + 7 * row as u64
}

use hcn_prerank::rng::SplitMix64 as Rng;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `tensors` (name, dtype, shape, bytes) and `metadata` to `path`.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::tensor::serialize(views, metadata).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A per-test directory under cargo's scratch space.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The three files of a tiny engine: D = 4, n = 2, h = 2, r = 1, ℓ_L = 3, ℓ_S = 2, one field
/// `age` (vocab 3, width 2), 2 dense features, no hidden MLP layer; one store (with `ids`) serves
/// as both token and candidate store.
struct Tiny {
    model: PathBuf,
    store: PathBuf,
}

impl Tiny {
    fn new(test: &str) -> Self {
        let dir = scratch(test);
        let mut rng = Rng::new(42);
        let mut t: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut add = |name: &str, shape: Vec<usize>, rng: &mut Rng| {
            let len = shape.iter().product();
            t.push((
                name.to_string(),
                Dtype::F32,
                shape,
                f32_bytes(&rng.vec(len, 0.6)),
            ));
        };
        for side in ["long", "short"] {
            add(&format!("{side}.seeds"), vec![N_INTERESTS, D], &mut rng);
            for p in ["q", "k", "v", "o"] {
                add(&format!("{side}.layers.0.{p}.weight"), vec![D, D], &mut rng);
                add(&format!("{side}.layers.0.{p}.bias"), vec![D], &mut rng);
            }
            add(&format!("{side}.merge.weight"), vec![D, D], &mut rng);
            add(&format!("{side}.merge.bias"), vec![D], &mut rng);
        }
        add("co_interest.weight", vec![D, 3 * D], &mut rng);
        add("co_interest.bias", vec![D], &mut rng);
        add("user.fields.age.embedding", vec![VOCAB_AGE, 2], &mut rng);
        add("user.mlp.0.weight", vec![D, 2 + DENSE], &mut rng);
        add("user.mlp.0.bias", vec![D], &mut rng);
        add("fusion.weight", vec![D, 2 * D], &mut rng);
        // fusion.bias left out on purpose: an absent bias is zero.
        let config = format!(
            r#"{{"format": "hcn/1", "dim": {D}, "interests": {N_INTERESTS}, "heads": 2, "layers": 1,
                "long_len": 3, "short_len": 2,
                "user_fields": [{{"name": "age", "vocab": {VOCAB_AGE}}}], "user_dense": {DENSE},
                "user_mlp_hidden": [], "score": "softmax", "exporter": "tests/cli.rs"}}"#
        );
        let model = dir.join("model.safetensors");
        write_safetensors(
            &model,
            &t,
            Some(HashMap::from([("hcn.config".to_string(), config)])),
        );

        let vectors = rng.vec(ROWS * D, 0.6);
        let ids: Vec<u8> = (0..ROWS).flat_map(|r| id_of(r).to_le_bytes()).collect();
        let store = dir.join("store.safetensors");
        write_safetensors(
            &store,
            &[
                (
                    "vectors".into(),
                    Dtype::F32,
                    vec![ROWS, D],
                    f32_bytes(&vectors),
                ),
                ("ids".into(), Dtype::U64, vec![ROWS], ids),
            ],
            None,
        );
        Tiny { model, store }
    }

    fn engine_args(&self) -> Vec<String> {
        vec![
            "--model".into(),
            self.model.display().to_string(),
            "--tokens".into(),
            self.store.display().to_string(),
            "--candidates".into(),
            self.store.display().to_string(),
        ]
    }

    /// `hcn score` with `extra` flags, `stdin` as the request stream.
    fn score(&self, extra: &[&str], stdin: &str) -> Output {
        let mut args = vec!["score".to_string()];
        args.extend(self.engine_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        run(&args, stdin)
    }
}

fn run(args: &[String], stdin: &str) -> Output {
    let mut child = Command::new(HCN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hcn");
    // The binary may exit before reading stdin (bad model): a broken pipe here is expected.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A valid request for the tiny model over `candidates`.
fn request(candidates: &[u64]) -> String {
    serde_json::json!({
        "long": [id_of(1), id_of(5), id_of(2), id_of(9)],
        "short": [id_of(3), 999_999],
        "fields": {"age": 2},
        "dense": [0.25, -1.5],
        "candidates": candidates,
    })
    .to_string()
}

fn f32s(v: &Value) -> Vec<Option<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

#[test]
fn bad_model_path_fails_before_reading_requests() {
    let tiny = Tiny::new("bad_model_path");
    let missing = tiny.model.with_file_name("no-such-model.safetensors");
    let mut args = vec!["score".to_string(), "--model".into()];
    args.push(missing.display().to_string());
    args.extend(tiny.engine_args()[2..].iter().cloned());
    let out = run(&args, &format!("{}\n", request(&[id_of(0)])));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no-such-model.safetensors"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_store_fails_before_reading_requests() {
    let tiny = Tiny::new("bad_store");
    let junk = tiny.store.with_file_name("junk-store.safetensors");
    std::fs::write(&junk, b"this is not a safetensors file").unwrap();
    let args: Vec<String> = [
        "score",
        "--model",
        &tiny.model.display().to_string(),
        "--tokens",
        &tiny.store.display().to_string(),
        "--candidates",
        &junk.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&args, &format!("{}\n", request(&[id_of(0)])));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("junk-store.safetensors"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_line_gets_its_own_error_and_the_stream_goes_on() {
    let tiny = Tiny::new("bad_line");
    let good = request(&[id_of(0), id_of(4)]);
    // CRLF line ends are fine; blank and whitespace-only lines are skipped.
    let input = format!("{good}\r\n{{\"candidates\": [1, \n\n   \r\n{good}\n");
    let out = tiny.score(&[], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 3, "blank lines give no output");
    assert!(lines[0].get("scores").is_some());
    assert!(lines[1]["error"].as_str().unwrap().contains("JSON"));
    assert_eq!(lines[1].as_object().unwrap().len(), 1);
    // Same request, same answer.
    assert_eq!(lines[0], lines[2]);
}

#[test]
fn rejected_requests_name_the_field() {
    let tiny = Tiny::new("rejected");
    let cases = [
        (
            r#"{"candidates": [-1], "fields": {"age": 0}, "dense": [0, 0]}"#,
            "candidates[0]",
        ),
        (
            r#"{"candidates": [1.0], "fields": {"age": 0}, "dense": [0, 0]}"#,
            "candidates[0]",
        ),
        (r#"{"fields": {"age": 0}, "dense": [0, 0]}"#, "candidates"),
        (
            r#"{"candidates": [1], "fields": {"age": 3}, "dense": [0, 0]}"#,
            "fields.age",
        ),
        (
            r#"{"candidates": [1], "fields": {}, "dense": [0, 0]}"#,
            "fields.age",
        ),
        (
            r#"{"candidates": [1], "fields": {"age": 0, "zip": 1}, "dense": [0, 0]}"#,
            "fields.zip",
        ),
        (
            r#"{"candidates": [1], "fields": {"age": 0}, "dense": [0]}"#,
            "dense",
        ),
        (
            r#"{"candidates": [1], "fields": {"age": 0}, "dense": [0, 1e39]}"#,
            "dense[1]",
        ),
        (r#"[1, 2]"#, "request"),
    ];
    let input: String = cases.iter().map(|(l, _)| format!("{l}\n")).collect();
    let out = tiny.score(&[], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), cases.len());
    for (line, (req, field)) in lines.iter().zip(cases) {
        let msg = line["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{req} was accepted: {line}"));
        assert!(msg.contains(&format!("{field}:")), "{req}: {msg}");
    }
}

#[test]
fn missing_candidates_are_null_and_never_in_top_k() {
    let tiny = Tiny::new("top_k");
    let candidates: Vec<u64> = vec![
        id_of(3),
        5,
        id_of(7),
        id_of(0),
        u64::MAX,
        id_of(3),
        id_of(11),
    ];
    let out = tiny.score(&["--top-k", "3"], &format!("{}\n", request(&candidates)));
    assert!(out.status.success(), "{}", stderr(&out));
    let line = &stdout_lines(&out)[0];
    let scores = f32s(&line["scores"]);
    assert_eq!(scores.len(), candidates.len());
    assert_eq!(scores[1], None);
    assert_eq!(scores[4], None);
    assert!(scores
        .iter()
        .enumerate()
        .all(|(i, s)| s.is_some() == (i != 1 && i != 4)));
    assert_eq!(line["missing_candidates"], serde_json::json!([5, u64::MAX]));
    // The same candidate twice scores the same.
    assert_eq!(scores[0], scores[5]);
    // One short-term behavior id (999999) is not in the token store; the long one is truncated
    // to ℓ_L, which is not a skip.
    assert_eq!(line["skipped_behaviors"].as_u64(), Some(1));

    let top = line["top_k"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    // Expected: positions by score descending, ties by lower position.
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| scores[i].is_some())
        .collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .unwrap()
            .total_cmp(&scores[a].unwrap())
            .then(a.cmp(&b))
    });
    for (entry, &pos) in top.iter().zip(&order) {
        assert_eq!(entry["id"].as_u64(), Some(candidates[pos]));
        assert_eq!(entry["score"].as_f64().map(|s| s as f32), scores[pos]);
    }
    assert!(line.get("interests").is_none());
}

#[test]
fn top_k_larger_than_the_scored_candidates_returns_them_all() {
    let tiny = Tiny::new("top_k_large");
    let out = tiny.score(
        &["--top-k", "50"],
        &format!("{}\n", request(&[id_of(1), 3, id_of(2)])),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = &stdout_lines(&out)[0];
    assert_eq!(line["top_k"].as_array().unwrap().len(), 2);
}

/// A caller-chosen k is clamped to the candidates, whatever its size: these values crashed the
/// process ("capacity overflow", or an abort allocating k entries).
#[test]
fn huge_top_k_is_clamped_never_a_crash() {
    let tiny = Tiny::new("top_k_huge");
    for k in [
        "18446744073709551615",
        "4294967295",
        "2147483648",
        "1000000000000",
    ] {
        let out = tiny.score(
            &["--top-k", k],
            &format!("{}\n", request(&[id_of(1), 3, id_of(2)])),
        );
        assert!(out.status.success(), "--top-k {k}: {}", stderr(&out));
        let line = &stdout_lines(&out)[0];
        assert_eq!(line["top_k"].as_array().unwrap().len(), 2, "--top-k {k}");
    }
}

/// `hcn bench` sizes that could not be held are refused with a message, not an abort.
#[test]
fn bench_refuses_sizes_it_cannot_hold() {
    let tiny = Tiny::new("bench_huge");
    for (flag, value, says) in [
        ("--candidates-per-request", "18446744073709551615", "limit"),
        ("--requests", "18446744073709551615", "GiB"),
        ("--threads", "18446744073709551615", "threads"),
    ] {
        let mut args = vec!["bench".to_string()];
        args.extend(tiny.engine_args());
        args.extend([flag.to_string(), value.to_string()]);
        if flag != "--candidates-per-request" {
            args.extend(["--candidates-per-request".to_string(), "10".to_string()]);
        }
        let out = run(&args, "");
        assert!(!out.status.success(), "{flag} {value}");
        assert!(
            stderr(&out).contains(says),
            "{flag} {value}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

/// `hcn bench --kernel-times` times CUDA kernels: on the CPU it is refused before any work,
/// naming the device and what to use instead.
#[test]
fn bench_kernel_times_needs_a_gpu_engine() {
    let tiny = Tiny::new("bench_kernel_times");
    let mut args = vec!["bench".to_string()];
    args.extend(tiny.engine_args());
    for a in [
        "--requests",
        "2",
        "--candidates-per-request",
        "10",
        "--kernel-times",
    ] {
        args.push(a.into());
    }
    let out = run(&args, "");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--kernel-times") && err.contains("--device cuda"),
        "{err}"
    );
    assert!(stdout_lines(&out).is_empty(), "nothing measured");
}

#[test]
fn emit_interests_gives_n_rows_of_d() {
    let tiny = Tiny::new("interests");
    let out = tiny.score(
        &["--emit-interests"],
        &format!("{}\n", request(&[id_of(1)])),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = &stdout_lines(&out)[0];
    let rows = line["interests"].as_array().unwrap();
    assert_eq!(rows.len(), N_INTERESTS);
    for row in rows {
        let row = f32s(row);
        assert_eq!(row.len(), D);
        assert!(row.iter().all(|x| x.is_some_and(f32::is_finite)));
    }
    assert!(line.get("top_k").is_none());

    // The score is eq. 8 on the emitted X^U and the candidate's stored vector.
    let x: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| f32s(r).into_iter().map(Option::unwrap).collect())
        .collect();
    let y = f32s(&line["scores"])[0].unwrap();
    let v = store_row(&tiny.store, 1);
    let s: Vec<f64> = x
        .iter()
        .map(|xj| {
            xj.iter()
                .zip(&v)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        })
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = s.iter().map(|sj| (sj - m).exp()).collect();
    let want = w.iter().zip(&s).map(|(a, b)| a * b).sum::<f64>() / w.iter().sum::<f64>();
    assert!(
        (f64::from(y) - want).abs() <= 1e-4 * (1.0 + want.abs()),
        "{y} vs {want}"
    );
}

/// Row `r` of the tiny store's `vectors`, read back from the file.
fn store_row(path: &Path, r: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor("vectors").unwrap();
    v.data()[r * D * 4..(r + 1) * D * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn request_file_and_many_chunks_keep_order() {
    let tiny = Tiny::new("order");
    // More lines than one engine batch, each with its own number of candidates.
    let requests: Vec<String> = (0..150)
        .map(|i| {
            if i % 37 == 5 {
                "not json".to_string()
            } else {
                let c: Vec<u64> = (0..1 + i % 9).map(|k| id_of((i + k) % ROWS)).collect();
                request(&c)
            }
        })
        .collect();
    let file = tiny.model.with_file_name("requests.jsonl");
    std::fs::write(&file, requests.join("\n")).unwrap(); // no final newline on purpose
    let from_file = tiny.score(&["--request", &file.display().to_string()], "");
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let lines = stdout_lines(&from_file);
    assert_eq!(lines.len(), requests.len());
    for (i, line) in lines.iter().enumerate() {
        if i % 37 == 5 {
            assert!(line.get("error").is_some(), "line {i}: {line}");
        } else {
            assert_eq!(
                line["scores"].as_array().unwrap().len(),
                1 + i % 9,
                "line {i}"
            );
        }
    }
    let from_stdin = tiny.score(&["--request", "-"], &requests.join("\n"));
    assert_eq!(from_stdin.stdout, from_file.stdout);
}

#[test]
fn missing_request_file_is_a_failure() {
    let tiny = Tiny::new("no_request_file");
    let out = tiny.score(&["--request", "/nonexistent/requests.jsonl"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/requests.jsonl"));
}

#[test]
fn cuda_without_support_is_a_load_failure() {
    if cfg!(feature = "cuda") {
        return; // with CUDA compiled in, the answer depends on the machine
    }
    let tiny = Tiny::new("cuda");
    let out = tiny.score(
        &["--device", "cuda"],
        &format!("{}\n", request(&[id_of(0)])),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).to_lowercase().contains("cuda"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    // `auto` falls back to the CPU.
    let out = tiny.score(
        &["--device", "auto"],
        &format!("{}\n", request(&[id_of(0)])),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn inspect_prints_config_and_tensors() {
    let tiny = Tiny::new("inspect");
    let out = run(&["inspect".into(), tiny.model.display().to_string()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "dim (D):            4",
        "interests (n):      2",
        "age (vocab 3)",
        "user_dense:         2",
        "softmax",
        "exporter", // an extra key is shown
        "long.layers.0.q.weight",
        "user.fields.age.embedding",
        "fusion.weight",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    // Parameter count: every tensor written by Tiny::new.
    let per_side = N_INTERESTS * D + 4 * (D * D + D) + D * D + D;
    let total = 2 * per_side + (D * 3 * D + D) + VOCAB_AGE * 2 + (D * (2 + DENSE) + D) + D * 2 * D;
    assert!(text.contains(&format!("parameters: {total}")), "{text}");

    let out = run(&["inspect".into(), tiny.store.display().to_string()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("rows (N): {ROWS}")), "{text}");
    assert!(text.contains(&format!("dim (D):  {D}")), "{text}");
    assert!(text.contains("present (U64)"), "{text}");

    let junk = tiny.model.with_file_name("junk.bin");
    std::fs::write(&junk, [1u8, 2, 3]).unwrap();
    let out = run(&["inspect".into(), junk.display().to_string()], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("junk.bin"));
}

/// Reads an I8 store's rows back as (q, scale) with the engine's loader.
fn i8_rows(path: &Path) -> Vec<(Vec<i8>, f32)> {
    let s = hcn_prerank::ItemStore::load(path).unwrap();
    assert_eq!(s.vectors.dtype().name(), "I8");
    (0..s.len())
        .map(|r| {
            let q = s.vectors.row_bytes(r).iter().map(|&b| b as i8).collect();
            (q, s.vectors.row_scale(r).unwrap())
        })
        .collect()
}

#[test]
fn quantize_writes_an_i8_store_as_the_spec_says() {
    let tiny = Tiny::new("quantize");
    let dir = tiny.store.parent().unwrap().to_path_buf();
    // Rows chosen for SPEC §3's rules: ties to even (scale 1: 2.5 → 2, 3.5 → 4, -0.5 → 0), an
    // all-zero row (scale 0), a negative maximum, and an ordinary row.
    let rows: [[f32; 4]; 4] = [
        [127.0, 2.5, 3.5, -0.5],
        [0.0, 0.0, -0.0, 0.0],
        [-0.3, 0.1, 0.2, -0.05],
        [1e-3, -7.25, 3.0, 0.0],
    ];
    let ids: Vec<u8> = [9u64, 4, u64::MAX, 0]
        .iter()
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let src = dir.join("rows.safetensors");
    write_safetensors(
        &src,
        &[
            (
                "vectors".into(),
                Dtype::F32,
                vec![4, 4],
                f32_bytes(rows.as_flattened()),
            ),
            ("ids".into(), Dtype::U64, vec![4], ids),
        ],
        None,
    );
    let dst = dir.join("rows8.safetensors");
    let out = run(
        &[
            "quantize".into(),
            "--in".into(),
            src.display().to_string(),
            "--out".into(),
            dst.display().to_string(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = &stdout_lines(&out)[0];
    assert_eq!(line["rows"], 4);
    assert_eq!(line["dim"], 4);
    assert_eq!(line["from"], "F32");
    assert_eq!(line["zero_rows"], 1);
    assert_eq!(line["vector_bytes_in"], 64);
    assert_eq!(line["vector_bytes_out"], 16 + 16);
    let got = i8_rows(&dst);
    assert_eq!(got[0], (vec![127, 2, 4, 0], 1.0));
    assert_eq!(got[1], (vec![0; 4], 0.0));
    // The rule written out independently: scale = max|x| / 127 and x / scale in F32, half to even.
    for (r, row) in rows.iter().enumerate() {
        let scale = row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        let q: Vec<i8> = row
            .iter()
            .map(|&v| {
                if scale == 0.0 {
                    0
                } else {
                    (v / scale).round_ties_even() as i8
                }
            })
            .collect();
        assert_eq!(got[r], (q, scale), "row {r}");
    }
    // Ids copied, same dtype.
    let a = hcn_prerank::ItemStore::load(&src).unwrap();
    let b = hcn_prerank::ItemStore::load(&dst).unwrap();
    assert_eq!(a.row_ids(), b.row_ids());
    let insp = run(&["inspect".into(), dst.display().to_string()], "");
    let text = String::from_utf8(insp.stdout).unwrap();
    assert!(
        text.contains("I8 (row i = scales[i] · vectors[i]"),
        "{text}"
    );
    assert!(text.contains("present (U64)"), "{text}");

    // The tiny engine's store quantized in place (written aside, renamed over it) scores every
    // candidate, close to the F32 store's scores.
    let before = tiny.score(
        &["--top-k", "3"],
        &request(&[id_of(0), id_of(7), id_of(19)]),
    );
    let out = run(
        &[
            "quantize".into(),
            "--in".into(),
            tiny.store.display().to_string(),
            "--out".into(),
            tiny.store.display().to_string(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_lines(&out)[0]["rows"], ROWS as u64);
    let after = tiny.score(
        &["--top-k", "3"],
        &request(&[id_of(0), id_of(7), id_of(19)]),
    );
    assert!(after.status.success(), "{}", stderr(&after));
    let (f, q) = (&stdout_lines(&before)[0], &stdout_lines(&after)[0]);
    for (x, y) in f32s(&f["scores"]).iter().zip(f32s(&q["scores"])) {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!((x - y).abs() <= 0.05 * (1.0 + x.abs()), "F32 {x} vs I8 {y}");
    }
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn quantize_failures_name_the_file_and_leave_nothing_behind() {
    let tiny = Tiny::new("quantize-fail");
    let dir = tiny.store.parent().unwrap().to_path_buf();
    let q = |input: &Path, output: &Path| {
        run(
            &[
                "quantize".into(),
                "--in".into(),
                input.display().to_string(),
                "--out".into(),
                output.display().to_string(),
            ],
            "",
        )
    };
    // A model is not a store: the loader names the tensor.
    let out = q(&tiny.model, &dir.join("m8.safetensors"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a store tensor"),
        "{}",
        stderr(&out)
    );
    // A missing input, an output directory that does not exist.
    let out = q(&dir.join("nope.safetensors"), &dir.join("x8.safetensors"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nope.safetensors"),
        "{}",
        stderr(&out)
    );
    let out = q(&tiny.store, &dir.join("no/such/dir/s8.safetensors"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("s8.safetensors"), "{}", stderr(&out));
    // Usage: both flags are required.
    let out = run(&["quantize".into(), "--in".into(), "x".into()], "");
    assert_eq!(out.status.code(), Some(2));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("8.safetensors")),
        "{names:?}"
    );
}

#[test]
fn bench_prints_one_json_line() {
    let tiny = Tiny::new("bench");
    let mut args = vec!["bench".to_string()];
    args.extend(tiny.engine_args());
    for a in [
        "--requests",
        "5",
        "--candidates-per-request",
        "100",
        "--batch",
        "2",
        "--threads",
        "1",
        "--top-k",
        "10",
    ] {
        args.push(a.into());
    }
    let out = run(&args, "");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1);
    let v = &lines[0];
    assert_eq!(v["requests"].as_u64(), Some(5));
    assert_eq!(v["batch"].as_u64(), Some(2));
    assert_eq!(v["threads"].as_u64(), Some(1));
    assert_eq!(v["device"].as_str(), Some("cpu"));
    let median = v["median_us"].as_f64().unwrap();
    let p90 = v["p90_us"].as_f64().unwrap();
    let p99 = v["p99_us"].as_f64().unwrap();
    assert!(0.0 < median && median <= p90 && p90 <= p99, "{v}");
    assert!(v["candidates_per_s"].as_f64().unwrap() > 0.0);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys.len(), 8, "{keys:?}");
    // Keys in SPEC §4's order.
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let at: Vec<usize> = [
        "requests",
        "batch",
        "threads",
        "device",
        "median_us",
        "p90_us",
        "p99_us",
        "candidates_per_s",
    ]
    .iter()
    .map(|k| text.find(&format!("\"{k}\"")).unwrap())
    .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(
        stderr(&out).contains("CPU score kernel"),
        "{}",
        stderr(&out)
    );
}

/// `hcn bench --write-requests F`: the requests drawn, as SPEC §4 lines that `hcn score` takes
/// back (full-length sequences, `--candidates-per-request` candidates each, store ids).
#[test]
fn bench_writes_the_requests_it_times() {
    let tiny = Tiny::new("bench_write");
    let file = scratch("bench_write_requests").join("requests.jsonl");
    let mut args = vec!["bench".to_string()];
    args.extend(tiny.engine_args());
    for a in [
        "--requests",
        "4",
        "--candidates-per-request",
        "7",
        "--threads",
        "1",
    ] {
        args.push(a.into());
    }
    args.extend(["--write-requests".into(), file.display().to_string()]);
    let out = run(&args, "");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let known: Vec<u64> = (0..ROWS).map(id_of).collect();
    for v in &lines {
        assert_eq!(v["long"].as_array().unwrap().len(), 3, "{v}");
        assert_eq!(v["short"].as_array().unwrap().len(), 2, "{v}");
        let candidates = v["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 7, "{v}");
        assert!(
            candidates
                .iter()
                .all(|c| known.contains(&c.as_u64().unwrap())),
            "{v}"
        );
        assert!(
            v["fields"]["age"].as_u64().unwrap() < VOCAB_AGE as u64,
            "{v}"
        );
        assert_eq!(v["dense"].as_array().unwrap().len(), DENSE, "{v}");
    }
    let mut args = vec!["score".to_string()];
    args.extend(tiny.engine_args());
    let out = run(&args, &text);
    assert!(out.status.success(), "{}", stderr(&out));
    let answers = stdout_lines(&out);
    assert_eq!(answers.len(), 4);
    for a in &answers {
        assert_eq!(a["scores"].as_array().unwrap().len(), 7, "{a}");
        assert!(
            a["missing_candidates"]
                .as_array()
                .is_none_or(|m| m.is_empty()),
            "{a}"
        );
    }
}

#[test]
fn score_kernel_flag_pins_tunes_or_names_the_error() {
    let tiny = Tiny::new("score_kernel");
    let bench = |kernel: &str, floors: bool| {
        let mut args = vec!["bench".to_string()];
        args.extend(tiny.engine_args());
        for a in [
            "--requests",
            "3",
            "--candidates-per-request",
            "50",
            "--threads",
            "1",
        ] {
            args.push(a.into());
        }
        args.extend(["--score-kernel".to_string(), kernel.to_string()]);
        if floors {
            args.push("--floors".into());
        }
        run(&args, "")
    };
    let out = bench("tune", false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("tuned at load"), "{}", stderr(&out));
    let out = bench("scalar/interleaved", true);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(
        lines[1]["score_kernel"].as_str(),
        Some("scalar/interleaved/l2 (pinned)")
    );
    // The user side against the FMA peak: on one thread, both shares use the same peak.
    let share = lines[1]["user_share_of_fma_peak"].as_f64().unwrap();
    assert!(share > 0.0, "{}", lines[1]);
    assert_eq!(
        lines[1]["user_share_of_fma_peak_all_threads"].as_f64(),
        Some(share)
    );
    let out = bench("scalar/interleaved/l1", true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout_lines(&out)[1]["score_kernel"].as_str(),
        Some("scalar/interleaved/l1 (pinned)")
    );
    // Unusable and unknown kernels: clear errors, no panic.
    let out = bench("scalar/lanes", false);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("scalar/lanes"), "{}", stderr(&out));
    let out = bench("avx1024/interleaved", false);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("LEVEL/LAYOUT"), "{}", stderr(&out));
}

#[test]
fn eval_reports_auc_and_logloss() {
    let tiny = Tiny::new("eval");
    let mut lines = Vec::new();
    for i in 0..10usize {
        let candidates: Vec<u64> = (0..6)
            .map(|k| id_of((i * 3 + k) % ROWS))
            .chain([4])
            .collect();
        let labels: Vec<u8> = (0..7).map(|k| ((i + k) % 3 == 0) as u8).collect();
        let mut v: Value = serde_json::from_str(&request(&candidates)).unwrap();
        v["labels"] = serde_json::json!(labels);
        lines.push(v.to_string());
    }
    let data = tiny.model.with_file_name("eval.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let mut args = vec!["eval".to_string()];
    args.extend(tiny.engine_args());
    args.extend(["--data".to_string(), data.display().to_string()]);
    let out = run(&args, "");
    assert!(out.status.success(), "{}", stderr(&out));
    let v = &stdout_lines(&out)[0];
    assert_eq!(v["requests"].as_u64(), Some(10));
    // Candidate id 4 is not in the store: 6 scored examples per request.
    assert_eq!(v["examples"].as_u64(), Some(60));
    let auc = v["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc));
    assert!(v["logloss"].as_f64().unwrap() > 0.0);

    // A line without labels stops the run and names the line.
    std::fs::write(&data, format!("{}\n{}\n", lines[0], request(&[id_of(1)]))).unwrap();
    let out = run(&args, "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
}

/// SPEC §5's CPU tolerance.
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-4 * (1.0 + want.abs())
}

/// Runs `hcn score --top-k K --emit-interests` on a reference case (model, stores, requests and
/// float64 expected output, the format of `tests/fixtures/README.md`) and compares every line.
fn check_reference_case(
    name: &str,
    dir: &Path,
    model: &str,
    tokens: &str,
    candidates: &str,
    top_k: u64,
) {
    let args: Vec<String> = [
        "score",
        "--model",
        &dir.join(model).display().to_string(),
        "--tokens",
        &dir.join(tokens).display().to_string(),
        "--candidates",
        &dir.join(candidates).display().to_string(),
        "--request",
        &dir.join("requests.jsonl").display().to_string(),
        "--top-k",
        &top_k.to_string(),
        "--emit-interests",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&args, "");
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    let got = stdout_lines(&out);
    let expected: Vec<Value> = std::fs::read_to_string(dir.join("expected.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), expected.len(), "{name}: line count");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        let at = format!("{name} line {}", i + 1);
        assert!(g.get("error").is_none(), "{at}: {g}");
        assert_eq!(g["missing_candidates"], e["missing_candidates"], "{at}");
        assert_eq!(g["skipped_behaviors"], e["skipped_behaviors"], "{at}");

        let (gs, es) = (
            g["scores"].as_array().unwrap(),
            e["scores"].as_array().unwrap(),
        );
        assert_eq!(gs.len(), es.len(), "{at}: scores");
        for (j, (x, y)) in gs.iter().zip(es).enumerate() {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => assert!(close(x, y), "{at}: scores[{j}] {x} vs {y}"),
                (None, None) => assert!(x.is_null() && y.is_null()),
                _ => panic!("{at}: scores[{j}] {x} vs {y}"),
            }
        }

        let (gi, ei) = (
            g["interests"].as_array().unwrap(),
            e["interests"].as_array().unwrap(),
        );
        assert_eq!(gi.len(), ei.len(), "{at}: interests rows");
        for (gr, er) in gi.iter().zip(ei) {
            let (gr, er) = (gr.as_array().unwrap(), er.as_array().unwrap());
            assert_eq!(gr.len(), er.len(), "{at}: interests width");
            for (x, y) in gr.iter().zip(er) {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(close(x, y), "{at}: interests {x} vs {y}");
            }
        }

        // The generator avoids near-ties at the top-k boundary, so the ids must match exactly.
        let (gt, et) = (
            g["top_k"].as_array().unwrap(),
            e["top_k"].as_array().unwrap(),
        );
        assert_eq!(gt.len(), et.len(), "{at}: top_k length");
        for (x, y) in gt.iter().zip(et) {
            assert_eq!(x["id"], y["id"], "{at}: top_k");
            let (xs, ys) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
            assert!(close(xs, ys), "{at}: top_k score {xs} vs {ys}");
        }
    }
}

#[test]
fn fixtures_score_like_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let entries = std::fs::read_dir(&root).expect("tests/fixtures is committed");
    let mut cases: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    cases.sort();
    for dir in &cases {
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        check_reference_case(
            &name,
            dir,
            case["model"].as_str().unwrap(),
            case["tokens"].as_str().unwrap(),
            case["candidates"].as_str().unwrap(),
            case["top_k"].as_u64().unwrap(),
        );
    }
    assert!(cases.len() >= 10, "{} fixture cases", cases.len());
}

#[test]
fn default_weights_score_like_the_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    assert!(
        dir.join("expected.jsonl").is_file(),
        "weights/expected.jsonl is committed"
    );
    // weights/README.md: the expected output keeps the top 10.
    check_reference_case(
        "weights",
        &dir,
        "hcn-public.safetensors",
        "tokens.safetensors",
        "candidates.safetensors",
        10,
    );
}

#[test]
fn default_weights_inspect_and_bench() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let model = dir.join("hcn-public.safetensors");
    assert!(model.is_file(), "the default model is committed");
    let out = run(&["inspect".into(), model.display().to_string()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("dim (D):            48"), "{text}");
    assert!(text.contains("long_len:           120"), "{text}");

    let args: Vec<String> = [
        "bench",
        "--model",
        &model.display().to_string(),
        "--tokens",
        &dir.join("tokens.safetensors").display().to_string(),
        "--candidates",
        &dir.join("candidates.safetensors").display().to_string(),
        "--requests",
        "5",
        "--candidates-per-request",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&args, "");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1);
    for key in [
        "requests",
        "batch",
        "threads",
        "device",
        "median_us",
        "p90_us",
        "p99_us",
        "candidates_per_s",
    ] {
        assert!(lines[0].get(key).is_some(), "{key} missing: {}", lines[0]);
    }
    assert_eq!(lines[0]["threads"].as_u64(), Some(2));
}

#[test]
fn stdin_requests_are_answered_one_at_a_time() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    // A client that writes one request and waits for its answer before sending the next: the
    // binary must not wait for a full batch of lines before answering.
    let tiny = Tiny::new("interactive");
    let mut args = vec!["score".to_string()];
    args.extend(tiny.engine_args());
    let mut child = Command::new(HCN)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for i in 0..3 {
        writeln!(stdin, "{}", request(&[id_of(i), id_of(i + 1)])).unwrap();
        stdin.flush().unwrap();
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["scores"].as_array().unwrap().len(), 2, "{line}");
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no answer to request {i} while stdin stays open: {e}");
            }
        }
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// `--device auto` on a machine without a usable GPU scores on the CPU and prints nothing on
/// stderr (the probe is silent).
#[test]
fn device_auto_is_silent_and_scores() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_f32");
    let req = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap();
    let args: Vec<String> = [
        "score",
        "--model",
        &dir.join("model.safetensors").display().to_string(),
        "--tokens",
        &dir.join("tokens.safetensors").display().to_string(),
        "--candidates",
        &dir.join("candidates.safetensors").display().to_string(),
        "--device",
        "auto",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&args, &req);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "stderr must stay empty");
    let lines = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        lines.lines().count(),
        req.lines().filter(|l| !l.trim().is_empty()).count()
    );
    assert!(
        lines.lines().all(|l| l.starts_with("{\"scores\"")),
        "{lines}"
    );
}
