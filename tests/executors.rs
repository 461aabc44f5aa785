//! One test driver over every executor (llama.cpp's test-backend-ops is the model): the same
//! fixture and random batches through the f64 reference, the CPU fast path at every SIMD level
//! (one thread and two), the GPU plan on the CPU emulation of its kernels (feature `cuda`) and a
//! real GPU when one is present. Every answer is judged against the reference, and the rules the
//! executors must share are checked on cases made to break them: ties (duplicate candidates),
//! missing candidates, any k (0, huge), k per request within one batch, arithmetic overflow,
//! a passed deadline, a cancelled request, what a caller asked to get back.

mod common;

use common::{close, Case, CPU_TOL};
use hcn_prerank::cpu::{Layout, Level, ScoreKernel};
use hcn_prerank::rng::SplitMix64;
use hcn_prerank::{
    CancelToken, CpuKernels, Engine, EngineOptions, ErrorKind, Parallelism, Request, Response,
    RunOptions, ScoreKernelChoice,
};
use std::time::Instant;

/// SPEC §5's GPU tolerance.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const GPU_TOL: f64 = 2e-3;

struct Exec {
    name: String,
    engine: Engine,
    tol: f64,
}

fn executors(case: &Case) -> Vec<Exec> {
    let load = |opts: EngineOptions| {
        Engine::load(&case.model, &case.tokens, &case.candidates, opts)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name))
    };
    let mut out = vec![Exec {
        name: "reference".into(),
        engine: load(EngineOptions {
            kernels: CpuKernels::Reference,
            ..Default::default()
        }),
        tol: CPU_TOL,
    }];
    let n = out[0].engine.model().config.interests;
    for level in Level::available() {
        for (label, parallelism) in [
            ("1 thread", Parallelism::None),
            ("2 threads", Parallelism::Threads(2)),
        ] {
            out.push(Exec {
                name: format!("cpu {} {label}", level.name()),
                engine: load(EngineOptions {
                    kernels: CpuKernels::Level(level),
                    parallelism,
                    ..Default::default()
                }),
                tol: CPU_TOL,
            });
        }
        // The level's other scoring layouts, where the model's `n` allows them.
        let rule = ScoreKernel::by_rule(level, n);
        for layout in Layout::ALL.into_iter().filter(|&l| l != rule.layout) {
            let other = ScoreKernel { layout, ..rule };
            if other.unusable(n).is_some() {
                continue;
            }
            let engine = load(EngineOptions {
                kernels: CpuKernels::Level(level),
                parallelism: Parallelism::Threads(2),
                score_kernel: ScoreKernelChoice::Pinned(other),
                ..Default::default()
            });
            assert_eq!(
                engine.score_kernel(),
                Some(format!("{} (pinned)", other.name()).as_str())
            );
            out.push(Exec {
                name: format!("cpu {} pinned, 2 threads", other.name()),
                engine,
                tol: CPU_TOL,
            });
        }
    }
    let tuned = load(EngineOptions {
        score_kernel: ScoreKernelChoice::Tune,
        ..Default::default()
    });
    assert!(tuned.score_kernel().unwrap().contains("tuned at load"));
    out.push(Exec {
        name: format!("cpu tuned: {}", tuned.score_kernel().unwrap()),
        engine: tuned,
        tol: CPU_TOL,
    });
    #[cfg(feature = "cuda-emulation")]
    {
        use std::sync::Arc;
        let model = Arc::new(hcn_prerank::Model::load(&case.model).unwrap());
        let tokens = Arc::new(hcn_prerank::ItemStore::load(&case.tokens).unwrap());
        let candidates = Arc::new(hcn_prerank::ItemStore::load(&case.candidates).unwrap());
        let i8 = [&tokens, &candidates]
            .iter()
            .any(|s| s.vectors.dtype() == hcn_prerank::tensor::DType::I8);
        match hcn_prerank::cuda::emulated_engine(
            model,
            tokens,
            candidates,
            EngineOptions::default(),
        ) {
            Ok(engine) => out.push(Exec {
                name: "cuda plan (emulated)".into(),
                engine,
                tol: GPU_TOL,
            }),
            // I8 stores have kernels (attend_mma_i8 / attend_i8, score_mma_i8 / score_i8): never skipped.
            Err(e) if i8 => panic!("{}: {e}", case.name),
            // A model outside the kernels' limits: the GPU refuses it at load, by design.
            Err(e) => eprintln!("{}: no emulated GPU executor: {e}", case.name),
        }
    }
    #[cfg(feature = "cuda")]
    {
        let opts = EngineOptions {
            device: hcn_prerank::Device::Cuda(0),
            ..Default::default()
        };
        if hcn_prerank::cuda::probe().is_ok() {
            match Engine::load(&case.model, &case.tokens, &case.candidates, opts) {
                Ok(engine) => out.push(Exec {
                    name: "cuda:0".into(),
                    engine,
                    tol: GPU_TOL,
                }),
                Err(e) => panic!("{}: {e}", case.name),
            }
        }
    }
    out
}

/// `got` against the reference's `want` for the same request: scores within `tol`, the same
/// missing candidates and skipped behaviors, the top-k the same wherever the reference's scores
/// are separated by more than the tolerance, and ordered by the one comparator.
fn judge(what: &str, got: &Response, want: &Response, opts: &RunOptions, m: usize, tol: f64) {
    assert_eq!(
        got.missing_candidates, want.missing_candidates,
        "{what}: missing"
    );
    assert_eq!(
        got.skipped_behaviors, want.skipped_behaviors,
        "{what}: skipped"
    );
    assert_eq!(got.model_version, want.model_version, "{what}: version");
    assert_eq!(
        got.model_version.len(),
        16,
        "{what}: version {}",
        got.model_version
    );
    assert_eq!(
        got.interests.is_some(),
        opts.return_interests,
        "{what}: interests"
    );
    if let (Some(g), Some(w)) = (&got.interests, &want.interests) {
        for (i, (a, b)) in g.values.iter().zip(&w.values).enumerate() {
            assert!(
                close(f64::from(*a), f64::from(*b), tol),
                "{what}: X^U[{i}] {a} vs {b}"
            );
        }
    }
    if opts.return_scores {
        assert_eq!(got.scores.len(), m, "{what}: scores");
        for (i, (a, b)) in got.scores.iter().zip(&want.scores).enumerate() {
            match (a, b) {
                (Some(a), Some(b)) => assert!(
                    close(f64::from(*a), f64::from(*b), tol),
                    "{what}: score[{i}] {a} vs {b}"
                ),
                (None, None) => {}
                _ => panic!("{what}: score[{i}] {a:?} vs {b:?}"),
            }
        }
    } else {
        assert!(got.scores.is_empty(), "{what}: scores not asked for");
    }
    let scored = m - got.missing_candidates.len();
    let k = opts.top_k.map_or(0, |k| k.min(scored));
    assert_eq!(got.top_k.len(), k, "{what}: top-k length");
    for w in got.top_k.windows(2) {
        assert_eq!(
            hcn_prerank::post::better(w[0].score, w[1].score, w[0].position, w[1].position),
            std::cmp::Ordering::Less,
            "{what}: top-k order {w:?}"
        );
    }
    for t in &got.top_k {
        assert!(t.score.is_finite(), "{what}: {t:?}");
    }
    // Same winners wherever the reference separates them: compare rank by rank while the
    // reference's consecutive scores (including the first left out) differ by more than tol.
    let ref_scores: Vec<f32> = want.top_k.iter().map(|t| t.score).collect();
    for (r, (g, w)) in got.top_k.iter().zip(&want.top_k).enumerate() {
        let sep = |a: f32, b: f32| {
            (f64::from(a) - f64::from(b)).abs() > 2.0 * tol * (1.0 + f64::from(a).abs())
        };
        let before = r == 0 || sep(ref_scores[r - 1], ref_scores[r]);
        let after = r + 1 >= ref_scores.len() || sep(ref_scores[r], ref_scores[r + 1]);
        if before && after {
            assert_eq!(g.position, w.position, "{what}: top-k rank {r}");
            assert_eq!(g.id, w.id, "{what}: top-k rank {r}");
        }
    }
}

/// Runs `calls` through every executor and judges each answer against the reference's.
fn compare(case: &Case, execs: &[Exec], calls: &[(&Request, &RunOptions)], label: &str) {
    let want = execs[0].engine.run_batch_with(calls);
    for e in &execs[1..] {
        let got = e.engine.run_batch_with(calls);
        assert_eq!(got.len(), calls.len());
        for (i, ((g, w), (req, opts))) in got.iter().zip(&want).zip(calls).enumerate() {
            let what = format!("{} {label} #{i} on {}", case.name, e.name);
            match (g, w) {
                (Ok(g), Ok(w)) => judge(&what, g, w, opts, req.candidates.len(), e.tol),
                (Err(g), Err(w)) => assert_eq!(g.kind(), w.kind(), "{what}: {g} vs {w}"),
                _ => panic!("{what}: {g:?} vs reference {w:?}"),
            }
        }
    }
}

fn opts(k: Option<usize>, scores: bool, interests: bool) -> RunOptions {
    RunOptions {
        top_k: k,
        return_scores: scores,
        return_interests: interests,
        ..RunOptions::default()
    }
}

/// The fixture requests in one batch, each with its own k and return flags.
#[test]
fn fixture_batches_with_per_request_options_agree_on_every_executor() {
    for case in common::cases() {
        let execs = executors(&case);
        let ks = [
            Some(case.top_k),
            None,
            Some(0),
            Some(1),
            Some(usize::MAX),
            Some(u32::MAX as usize + 1),
        ];
        let options: Vec<RunOptions> = (0..case.requests.len())
            .map(|i| opts(ks[i % ks.len()], i % 3 != 1, i % 4 != 2))
            .collect();
        let calls: Vec<(&Request, &RunOptions)> = case.requests.iter().zip(&options).collect();
        compare(&case, &execs, &calls, "fixture batch");
        // And against the float64 expectations, with the fixture's k.
        for e in &execs {
            let resps: Vec<Response> = e
                .engine
                .run_batch(&case.requests, Some(case.top_k))
                .into_iter()
                .map(|r| r.unwrap_or_else(|err| panic!("{} on {}: {err}", case.name, e.name)))
                .collect();
            common::check_case(&e.name, &case, &resps, e.tol);
        }
    }
}

/// Random requests: unknown behaviors and candidates, duplicates (exact ties, which every
/// executor must break by the lower position), k from 0 to huge.
#[test]
fn random_batches_with_ties_and_missing_ids_agree_on_every_executor() {
    let mut rng = SplitMix64::new(7);
    for case in common::cases()
        .into_iter()
        .filter(|c| c.name.starts_with("tin"))
    {
        let execs = executors(&case);
        let e = &execs[0].engine;
        let (tok_ids, cand_ids) = (e.tokens().row_ids(), e.candidates().row_ids());
        let mut requests = Vec::new();
        let mut options = Vec::new();
        for i in 0..12 {
            let mut req = case.requests[i % case.requests.len()].clone();
            let draw = |rng: &mut SplitMix64, ids: &[u64], len: usize| -> Vec<u64> {
                (0..len)
                    .map(|_| {
                        let unknown = u64::MAX - rng.below(1000) as u64;
                        if rng.below(8) == 0 || ids.is_empty() || ids.contains(&unknown) {
                            unknown // not in the store
                        } else {
                            ids[rng.below(ids.len())]
                        }
                    })
                    .collect()
            };
            let (nl, ns, nc) = (rng.below(40), rng.below(12), 1 + rng.below(200));
            req.user.long = draw(&mut rng, &tok_ids, nl);
            req.user.short = draw(&mut rng, &tok_ids, ns);
            let mut c = draw(&mut rng, &cand_ids, nc);
            // Exact ties: the same ids again at later positions.
            let dup: Vec<u64> = c.iter().step_by(3).copied().collect();
            c.extend(dup);
            req.candidates = c;
            let k = [0, 1, 5, 50, usize::MAX][rng.below(5)];
            requests.push(req);
            options.push(opts(Some(k), rng.below(2) == 0, rng.below(2) == 0));
        }
        let calls: Vec<(&Request, &RunOptions)> = requests.iter().zip(&options).collect();
        compare(&case, &execs, &calls, "random batch");
        // Ties: a duplicate's score is bit-identical to its first occurrence's, and the earlier
        // position ranks first on every executor.
        for ex in &execs {
            for (r, (req, o)) in calls.iter().enumerate() {
                let resp = ex.engine.run_with(req, o).unwrap();
                for w in resp.top_k.windows(2) {
                    if w[0].score.to_bits() == w[1].score.to_bits() {
                        assert!(w[0].position < w[1].position, "{} #{r}: {w:?}", ex.name);
                    }
                }
            }
        }
    }
}

/// Arithmetic overflow, a passed deadline, a cancelled request: the same error kind from every
/// executor, and never a non-finite score (which JSON would write as a missing candidate).
#[test]
fn overflow_deadline_and_cancellation_are_the_same_error_everywhere() {
    let case = common::cases()
        .into_iter()
        .find(|c| c.name == "tiny_f32")
        .unwrap();
    let execs = executors(&case);
    let mut huge = case.requests[0].clone();
    huge.user.dense = vec![3.0e38; huge.user.dense.len()];
    huge.user.dense[0] = -3.0e38;
    for e in &execs {
        match e.engine.run(&huge, Some(3)) {
            Ok(resp) => assert!(
                resp.scores.iter().flatten().all(|s| s.is_finite()),
                "{}: {:?}",
                e.name,
                resp.scores
            ),
            Err(err) => assert_eq!(err.kind(), ErrorKind::Internal, "{}: {err}", e.name),
        }
    }
    // F32 executors overflow here (the f64 reference may not): the case does exercise the rule.
    assert!(
        execs.iter().any(|e| e.engine.run(&huge, Some(3)).is_err()),
        "no executor overflowed"
    );

    let req = &case.requests[0];
    let passed = RunOptions {
        deadline: Some(Instant::now()),
        ..RunOptions::top_k(Some(3))
    };
    let token = CancelToken::new();
    token.cancel();
    let cancelled = RunOptions {
        cancel: Some(token),
        ..RunOptions::top_k(Some(3))
    };
    for e in &execs {
        let err = e.engine.run_with(req, &passed).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{}: {err}", e.name);
        let err = e.engine.run_with(req, &cancelled).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{}: {err}", e.name);
        // The others in the same batch are still answered.
        let fine = RunOptions::top_k(Some(3));
        let out = e
            .engine
            .run_batch_with(&[(req, &passed), (req, &fine), (req, &cancelled)]);
        assert!(
            out[0].is_err() && out[1].is_ok() && out[2].is_err(),
            "{}",
            e.name
        );
    }
}
