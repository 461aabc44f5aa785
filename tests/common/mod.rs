//! Shared by the integration tests: reading the fixtures of `tests/fixtures/` (format in
//! `tests/fixtures/README.md`) and SPEC §5's comparison rules.
#![allow(dead_code)]

pub mod topk;

use std::path::{Path, PathBuf};

use hcn_prerank::{Request, UserRequest};
use serde_json::Value;

pub const CPU_TOL: f64 = 1e-4;

/// `tests/fixtures`, or `$HCN_FIXTURES` when set (a test binary run away from its source tree:
/// `scripts/gpu-check.sh` runs prepared binaries on a machine without the repository's path).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("HCN_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// One fixture case: its files, requests and float64 expectations.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub model: PathBuf,
    pub tokens: PathBuf,
    pub candidates: PathBuf,
    pub top_k: usize,
    pub requests: Vec<Request>,
    pub expected: Vec<Value>,
}

impl Case {
    /// The case's model and stores loaded with `opts` (panics naming the case).
    pub fn engine(&self, opts: hcn_prerank::EngineOptions) -> hcn_prerank::Engine {
        hcn_prerank::Engine::load(&self.model, &self.tokens, &self.candidates, opts)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

pub fn cases() -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    dirs.sort();
    dirs.into_iter().map(|d| load_case(&d)).collect()
}

fn load_case(dir: &Path) -> Case {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let file = |k: &str| dir.join(meta[k].as_str().unwrap_or_else(|| panic!("case.json: {k}")));
    let lines = |f: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let requests = lines("requests.jsonl")
        .iter()
        .map(request_from_json)
        .collect();
    Case {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        dir: dir.to_path_buf(),
        model: file("model"),
        tokens: file("tokens"),
        candidates: file("candidates"),
        top_k: meta["top_k"].as_u64().unwrap() as usize,
        requests,
        expected: lines("expected.jsonl"),
    }
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_u64().unwrap()).collect())
        .unwrap_or_default()
}

/// Fixture requests are well-formed SPEC §4 lines; the CLI's own parser is tested elsewhere.
pub fn request_from_json(v: &Value) -> Request {
    let fields = v["fields"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| (k.clone(), x.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    let dense = v["dense"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .unwrap_or_default();
    Request {
        user: UserRequest {
            long: ids(&v["long"]),
            short: ids(&v["short"]),
            fields,
            dense,
        },
        candidates: ids(&v["candidates"]),
    }
}

pub fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * (1.0 + want.abs())
}

/// Checks a whole case's responses (in request order) against its float64 expectations under
/// tolerance `tol`; `label` names the path that produced them in failure messages.
pub fn check_case(label: &str, case: &Case, resps: &[hcn_prerank::Response], tol: f64) {
    assert_eq!(
        resps.len(),
        case.expected.len(),
        "{} ({label}): responses",
        case.name
    );
    for (i, ((resp, exp), req)) in resps
        .iter()
        .zip(&case.expected)
        .zip(&case.requests)
        .enumerate()
    {
        check_response(
            &format!("{} request {i} ({label})", case.name),
            resp,
            exp,
            &req.candidates,
            case.top_k,
            tol,
        );
    }
}

/// Checks one response against its float64 expectation under tolerance `tol` (SPEC §5).
pub fn check_response(
    what: &str,
    resp: &hcn_prerank::Response,
    exp: &Value,
    candidates: &[u64],
    k: usize,
    tol: f64,
) {
    // X^U elementwise.
    let rows = exp["interests"].as_array().unwrap();
    assert_eq!(resp.interests.as_ref().unwrap().n, rows.len(), "{what}: n");
    for (j, row) in rows.iter().enumerate() {
        for (c, want) in row.as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = f64::from(resp.interests.as_ref().unwrap().row(j)[c]);
            assert!(
                close(got, want, tol),
                "{what}: X^U[{j}][{c}] = {got}, reference {want}"
            );
        }
    }
    // Every score, with nulls aligned.
    let want_scores: Vec<Option<f64>> = exp["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::as_f64)
        .collect();
    assert_eq!(
        resp.scores.len(),
        want_scores.len(),
        "{what}: number of scores"
    );
    for (i, (got, want)) in resp.scores.iter().zip(&want_scores).enumerate() {
        match (got, want) {
            (Some(g), Some(w)) => assert!(
                close(f64::from(*g), *w, tol),
                "{what}: score[{i}] = {g}, reference {w}"
            ),
            (None, None) => {}
            _ => panic!("{what}: score[{i}] is {got:?}, reference {want:?}"),
        }
    }
    assert_eq!(
        resp.missing_candidates,
        ids(&exp["missing_candidates"]),
        "{what}: missing_candidates"
    );
    assert_eq!(
        resp.skipped_behaviors as u64,
        exp["skipped_behaviors"].as_u64().unwrap(),
        "{what}: skipped_behaviors"
    );

    // Top-k: the reference order from the float64 scores; ids must agree wherever the reference
    // score is separated from its neighbours (including the first one left out) by more than tol.
    let mut order: Vec<(usize, f64)> = want_scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let want_k = k.min(order.len());
    assert_eq!(resp.top_k.len(), want_k, "{what}: top-k length");
    let exp_top: Vec<u64> = exp["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(exp_top.len(), want_k, "{what}: fixture top_k length");
    let separated = |a: f64, b: f64| (a - b).abs() > tol * (1.0 + a.abs().max(b.abs()));
    for (r, got) in resp.top_k.iter().enumerate() {
        let (pos, score) = order[r];
        assert_eq!(
            got.id, candidates[got.position],
            "{what}: top_k[{r}] id/position"
        );
        assert!(
            close(f64::from(got.score), score, tol),
            "{what}: top_k[{r}] score {} vs {score}",
            got.score
        );
        let above = r == 0 || separated(order[r - 1].1, score);
        let below = r + 1 >= order.len() || separated(score, order[r + 1].1);
        if above && below {
            assert_eq!(got.position, pos, "{what}: top_k[{r}] position");
            assert_eq!(got.id, exp_top[r], "{what}: top_k[{r}] id (fixture)");
        }
    }
}

#[cfg(feature = "cuda")]
/// Resolves fixture requests against the stores the way SPEC §1.1/§3 says (unknown behaviors
/// dropped and counted, unknown candidates unscored and listed), runs them as ONE batch through
/// `run` (the emulated plan or the GPU executor), and assembles engine-style responses so `common::check_response` can judge them.
pub fn run_fixture(
    run: impl Fn(
        &[hcn_prerank::cuda::UserInput<'_>],
        usize,
    ) -> hcn_prerank::Result<Vec<hcn_prerank::cuda::UserOutput>>,
    model: &hcn_prerank::Model,
    tokens: &hcn_prerank::ItemStore,
    candidates: &hcn_prerank::ItemStore,
    requests: &[hcn_prerank::Request],
    k: usize,
) -> Vec<hcn_prerank::Response> {
    run_fixture_result(run, model, tokens, candidates, requests, k).expect("the batch runs")
}

/// [`run_fixture`], returning the batch's error instead of panicking on it.
#[cfg(feature = "cuda")]
pub fn run_fixture_result(
    run: impl Fn(
        &[hcn_prerank::cuda::UserInput<'_>],
        usize,
    ) -> hcn_prerank::Result<Vec<hcn_prerank::cuda::UserOutput>>,
    model: &hcn_prerank::Model,
    tokens: &hcn_prerank::ItemStore,
    candidates: &hcn_prerank::ItemStore,
    requests: &[hcn_prerank::Request],
    k: usize,
) -> hcn_prerank::Result<Vec<hcn_prerank::Response>> {
    struct Resolved {
        long: Vec<u32>,
        short: Vec<u32>,
        skipped: usize,
        /// `X̂`, computed on the host (the plan takes it as an input).
        profile: Vec<f32>,
        rows: Vec<u32>,
        /// Request position of each entry of `rows`.
        positions: Vec<usize>,
        missing: Vec<u64>,
    }
    let resolved: Vec<Resolved> = requests
        .iter()
        .map(|r| {
            let known = |ids: &[u64]| -> Vec<u32> {
                ids.iter().filter_map(|&i| tokens.lookup(i)).collect()
            };
            let (long, short) = (known(&r.user.long), known(&r.user.short));
            let skipped = r.user.long.len() + r.user.short.len() - long.len() - short.len();
            let fields: Vec<usize> = model
                .config
                .user_fields
                .iter()
                .map(|f| {
                    let (_, id) = r.user.fields.iter().find(|(n, _)| *n == f.name).unwrap();
                    *id as usize
                })
                .collect();
            let (mut rows, mut positions, mut missing) = (Vec::new(), Vec::new(), Vec::new());
            for (p, &id) in r.candidates.iter().enumerate() {
                match candidates.lookup(id) {
                    Some(row) => {
                        rows.push(row);
                        positions.push(p);
                    }
                    None => missing.push(id),
                }
            }
            Resolved {
                long,
                short,
                skipped,
                profile: hcn_prerank::reference::profile(model, &fields, &r.user.dense),
                rows,
                positions,
                missing,
            }
        })
        .collect();
    let inputs: Vec<hcn_prerank::cuda::UserInput<'_>> = resolved
        .iter()
        .map(|x| hcn_prerank::cuda::UserInput {
            long_rows: &x.long,
            short_rows: &x.short,
            profile: &x.profile,
            candidate_rows: &x.rows,
        })
        .collect();
    let outs = run(&inputs, k)?;
    Ok(outs
        .into_iter()
        .zip(&resolved)
        .zip(requests)
        .map(|((o, x), r)| {
            let mut scores = vec![None; r.candidates.len()];
            for (&p, &s) in x.positions.iter().zip(&o.scores) {
                scores[p] = Some(s);
            }
            let top_k = o
                .top_k
                .iter()
                .map(|&(i, score)| hcn_prerank::Scored {
                    position: x.positions[i],
                    id: r.candidates[x.positions[i]],
                    score,
                })
                .collect();
            hcn_prerank::Response {
                scores,
                top_k,
                missing_candidates: x.missing.clone(),
                skipped_behaviors: x.skipped,
                interests: Some(hcn_prerank::UserInterests {
                    n: model.config.interests,
                    dim: model.config.dim,
                    values: o.interests,
                    skipped_behaviors: x.skipped,
                }),
                model_version: hcn_prerank::Model::version(model).into(),
                timings: Default::default(),
            }
        })
        .collect())
}
