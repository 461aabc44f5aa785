//! SPEC §5 parity: every fixture of `tests/fixtures/` (written by `reference/gen_fixtures.py` from
//! the PyTorch module, float64 on the stored values) through the engine, on `X^U`, every score,
//! the missing/skipped bookkeeping and the top-k — single-threaded and with rayon, via `run`,
//! `run_batch` and the separate user/score calls.

mod common;

use hcn_prerank::cpu::Level;
use hcn_prerank::{reference, CpuKernels, Engine, EngineOptions, Parallelism};

use common::{cases, check_response, CPU_TOL};

#[test]
fn fixtures_exist_and_cover_the_spec() {
    let cases = cases();
    assert!(
        cases.len() >= 10,
        "expected the full fixture set, found {}",
        cases.len()
    );
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for needle in ["tiny", "public", "f16", "bf16", "f32", "_i8"] {
        assert!(
            names.iter().any(|n| n.contains(needle)),
            "no fixture named *{needle}*: {names:?}"
        );
    }
}

#[test]
fn engine_matches_reference_outputs() {
    // The oracle itself, the detected fast path with and without rayon, and every SIMD level
    // this CPU has, forced.
    let mut configs = vec![
        (CpuKernels::Reference, Parallelism::None),
        (CpuKernels::Auto, Parallelism::None),
        (CpuKernels::Auto, Parallelism::Rayon(0)),
        (CpuKernels::Auto, Parallelism::Rayon(3)),
    ];
    configs.extend(
        Level::available()
            .into_iter()
            .map(|l| (CpuKernels::Level(l), Parallelism::Rayon(2))),
    );
    for (kernels, par) in configs {
        for case in cases() {
            let opts = EngineOptions {
                kernels,
                parallelism: par.clone(),
                ..Default::default()
            };
            let engine = Engine::load(&case.model, &case.tokens, &case.candidates, opts)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(case.requests.len(), case.expected.len(), "{}", case.name);
            for (i, (req, exp)) in case.requests.iter().zip(&case.expected).enumerate() {
                let what = format!("{} request {i} ({kernels:?}, {par:?})", case.name);
                let resp = engine
                    .run(req, Some(case.top_k))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                check_response(&what, &resp, exp, &req.candidates, case.top_k, CPU_TOL);
            }
            // The batch call returns the same responses in order.
            let batch = engine.run_batch(&case.requests, Some(case.top_k));
            for (i, (b, req)) in batch.into_iter().zip(&case.requests).enumerate() {
                let single = engine.run(req, Some(case.top_k)).unwrap();
                assert_eq!(
                    b.unwrap(),
                    single,
                    "{} request {i}: batch differs",
                    case.name
                );
            }
        }
    }
}

#[test]
fn split_calls_equal_run_and_reference_score() {
    for case in cases() {
        let engine = case.engine(EngineOptions::default());
        let mode = engine.model().config.score;
        for req in &case.requests {
            let interests = engine.user_interests(&req.user).unwrap();
            let scores = engine.score(&interests, &req.candidates).unwrap();
            let run = engine.run(req, Some(case.top_k)).unwrap();
            assert_eq!(run.scores, scores.scores);
            assert_eq!(run.interests.as_ref(), Some(&interests));
            // Each score equals the oracle on the stored row (exact in f64, I8 rows included).
            let store = engine.candidates();
            let mut x = vec![0.0f64; store.dim()];
            for (&id, s) in req.candidates.iter().zip(&scores.scores) {
                match store.lookup(id) {
                    Some(r) => {
                        store.vectors.row_into_f64(r as usize, &mut x);
                        let want = reference::score_f64(&interests.values, interests.n, &x, mode);
                        let got =
                            s.unwrap_or_else(|| panic!("{}: candidate {id} unscored", case.name));
                        assert!(
                            common::close(f64::from(got), f64::from(want), CPU_TOL),
                            "{}: candidate {id}: {got} vs oracle {want}",
                            case.name
                        );
                    }
                    None => assert_eq!(*s, None),
                }
            }
        }
    }
}

/// The industrial shape (D = 128, n = 16, ℓ = 500/50; no fixture is that large) from the synthetic
/// generator: the fast path — single-threaded, with the two towers on two rayon tasks, and at
/// every SIMD level — against the f64 oracle on the same files.
#[test]
fn industrial_shape_matches_the_oracle() {
    industrial_shape(hcn_prerank::tensor::DType::F16);
}

/// The same with I8 token and candidate stores (SPEC §3; the oracle reads `scale · q` in f64).
#[test]
fn industrial_shape_with_i8_stores_matches_the_oracle() {
    industrial_shape(hcn_prerank::tensor::DType::I8);
}

fn industrial_shape(dtype: hcn_prerank::tensor::DType) {
    use hcn_prerank::synth::{ensure_profile_files, Profile};
    use hcn_prerank::{Request, UserRequest};

    let dir = std::env::temp_dir().join(format!(
        "hcn-parity-industrial-{}-{}",
        dtype.name(),
        std::process::id()
    ));
    let (m, t, c) = ensure_profile_files(&dir, Profile::Industrial, 3000, dtype).unwrap();
    let oracle = Engine::load(
        &m,
        &t,
        &c,
        EngineOptions {
            kernels: CpuKernels::Reference,
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = oracle.model().config.clone();
    let mut rng = hcn_prerank::rng::SplitMix64::new(5);
    let mut next = |n: u64| rng.below(n as usize) as u64;
    let requests: Vec<Request> = [
        (cfg.long_len, cfg.short_len),
        (37, 0),
        (0, 3),
        (cfg.long_len + 20, 1),
    ]
    .iter()
    .map(|&(l, s)| Request {
        user: UserRequest {
            long: (0..l).map(|_| next(3000)).collect(),
            short: (0..s).map(|_| next(3000)).collect(),
            fields: cfg
                .user_fields
                .iter()
                .map(|f| (f.name.clone(), next(f.vocab as u64)))
                .collect(),
            dense: (0..cfg.user_dense)
                .map(|_| next(200) as f32 / 100.0 - 1.0)
                .collect(),
        },
        candidates: (0..5000).map(|_| next(3100)).collect(),
    })
    .collect();
    let want: Vec<_> = requests
        .iter()
        .map(|r| oracle.run(r, Some(50)).unwrap())
        .collect();
    let mut configs = vec![
        (CpuKernels::Auto, Parallelism::None),
        (CpuKernels::Auto, Parallelism::Rayon(2)),
    ];
    configs.extend(
        Level::available()
            .into_iter()
            .map(|l| (CpuKernels::Level(l), Parallelism::Rayon(2))),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // The interests' and scores' bits of the first two configurations (one thread, two).
    type Bits = (Vec<u32>, Vec<Option<u32>>);
    let mut by_threads: Vec<Vec<Bits>> = Vec::new();
    for (kernels, parallelism) in configs {
        let engine = Engine::load(
            &m,
            &t,
            &c,
            EngineOptions {
                kernels,
                parallelism: parallelism.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        let mut bits = Vec::new();
        for (i, (r, w)) in requests.iter().zip(&want).enumerate() {
            let got = pool.install(|| engine.run(r, Some(50))).unwrap();
            let what = format!("industrial {dtype:?} request {i} ({kernels:?}, {parallelism:?})");
            bits.push((
                got.interests
                    .as_ref()
                    .unwrap()
                    .values
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
                got.scores.iter().map(|v| v.map(f32::to_bits)).collect(),
            ));
            for (g, o) in got
                .interests
                .as_ref()
                .unwrap()
                .values
                .iter()
                .zip(&w.interests.as_ref().unwrap().values)
            {
                assert!(
                    common::close(f64::from(*g), f64::from(*o), CPU_TOL),
                    "{what}: X^U {g} vs {o}"
                );
            }
            assert_eq!(got.missing_candidates, w.missing_candidates, "{what}");
            // `run` selects per scoring chunk and merges; the candidates repeat (5,000 draws from
            // 3,100 ids), so equal scores straddle chunks. The merge must equal one selection
            // over all the scores, ties by lower position.
            let scores = hcn_prerank::Scores {
                scores: got.scores.clone(),
                missing_candidates: got.missing_candidates.clone(),
            };
            assert_eq!(
                got.top_k,
                engine.top_k(&scores, &r.candidates, 50),
                "{what}: top-k"
            );
            for (g, o) in got.scores.iter().zip(&w.scores) {
                match (g, o) {
                    (Some(g), Some(o)) => assert!(
                        common::close(f64::from(*g), f64::from(*o), CPU_TOL),
                        "{what}: {g} vs {o}"
                    ),
                    (None, None) => {}
                    _ => panic!("{what}: {g:?} vs {o:?}"),
                }
            }
        }
        if by_threads.len() < 2 {
            by_threads.push(bits);
        }
    }
    // The same bits on one thread and on two (the long tower's head groups then run side by
    // side, the candidates in two chunks).
    assert!(
        by_threads[0] == by_threads[1],
        "industrial {dtype:?}: 1 thread and 2 threads differ in the bits"
    );
    // A batch on two threads: requests in parallel, each splitting its towers across rayon
    // tasks, so a thread waiting in a join runs other requests' jobs (the
    // user side must not hold per-thread state across the join). Same answers as one request at
    // a time.
    let engine = Engine::load(
        &m,
        &t,
        &c,
        EngineOptions {
            parallelism: Parallelism::Rayon(2),
            ..Default::default()
        },
    )
    .unwrap();
    let batch: Vec<Request> = requests.iter().cycle().take(24).cloned().collect();
    let single: Vec<_> = batch
        .iter()
        .map(|r| pool.install(|| engine.run(r, Some(50))).unwrap())
        .collect();
    for round in 0..3 {
        let got = pool.install(|| engine.run_batch(&batch, Some(50)));
        for (i, (g, s)) in got.into_iter().zip(&single).enumerate() {
            assert_eq!(&g.unwrap(), s, "batch round {round} request {i}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
