//! The engine as a pre-ranking service embeds it, through the public API only (as an external
//! crate would): run it with
//!
//! ```sh
//! cargo run --release --example embed
//! ```
//!
//! It serves the bundled model (`weights/`) from several threads on the engine's own pool, with a
//! different k per request inside one batch; reads the model version and per-stage times off each
//! response; cancels a large request by deadline and measures how long its work ran past the
//! deadline; maps every error to a gRPC status through `Error::kind`; and checks at the end that
//! rayon's global pool was never built. Every claim is asserted: the process exits non-zero if
//! one fails. The last line is a JSON summary (`tests/embedder.rs` runs this and reads it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hcn_prerank::json::parse_request;
use hcn_prerank::{
    Device, Engine, EngineOptions, Error, Parallelism, Request, RunOptions, UserInterests,
};

fn grpc_status(e: &Error) -> &'static str {
    e.kind().grpc_name()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    // The engine owns a 2-thread pool: the host program's own rayon use (and the global pool)
    // is left alone.
    let options = EngineOptions {
        parallelism: Parallelism::Threads(2),
        keep_awake: Duration::from_millis(1),
        ..EngineOptions::default()
    };
    let engine = Arc::new(Engine::load(
        dir.join("hcn-public.safetensors"),
        dir.join("tokens.safetensors"),
        dir.join("candidates.safetensors"),
        options,
    )?);
    let version = engine.version().to_string();
    assert_eq!(version.len(), 16, "SPEC §7: 16 hex digits");
    let requests: Vec<Request> = std::fs::read_to_string(dir.join("requests.jsonl"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_request(l, &engine.model().config))
        .collect::<Result<_, _>>()?;

    // 1. Four handler threads, each sending one batch whose requests ask for different k.
    let ks = [1usize, 10, 100, usize::MAX];
    let mut stage_sums = [Duration::ZERO; 4];
    let answered = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let engine = Arc::clone(&engine);
                let requests = &requests;
                s.spawn(move || {
                    let options: Vec<RunOptions> = (0..requests.len())
                        .map(|i| RunOptions {
                            top_k: Some(ks[(i + t) % ks.len()]),
                            return_scores: false,
                            return_interests: false,
                            ..RunOptions::default()
                        })
                        .collect();
                    let calls: Vec<_> = requests.iter().zip(&options).collect();
                    engine.run_batch_with(&calls)
                })
            })
            .collect();
        let mut answered = 0;
        for (t, h) in handles.into_iter().enumerate() {
            for (i, r) in h.join().expect("handler thread").into_iter().enumerate() {
                let r = r.expect("a good request");
                let k = ks[(i + t) % ks.len()];
                let scored = requests[i].candidates.len() - r.missing_candidates.len();
                assert_eq!(r.top_k.len(), k.min(scored), "k per request");
                assert_eq!(&*r.model_version, version, "the model that answered");
                assert!(
                    r.scores.is_empty() && r.interests.is_none(),
                    "not asked for"
                );
                let st = r.timings;
                for (sum, d) in stage_sums
                    .iter_mut()
                    .zip([st.resolve, st.user, st.score, st.top_k])
                {
                    *sum += d;
                }
                answered += 1;
            }
        }
        answered
    });
    let per = |d: Duration| d.as_secs_f64() * 1e6 / answered as f64;
    println!(
        "{answered} requests from 4 threads, k per request {ks:?}; mean stage times: resolve {:.1} µs, user side {:.1} µs, scoring {:.1} µs, top-k {:.1} µs; model {version}",
        per(stage_sums[0]),
        per(stage_sums[1]),
        per(stage_sums[2]),
        per(stage_sums[3])
    );

    // 2. A deadline stops a large request's work: 1M candidates (≈ tens of ms of scoring), a
    //    deadline 5 ms out; the call returns DEADLINE_EXCEEDED soon after the deadline.
    let mut big = requests[0].clone();
    let ids = big.candidates.clone();
    big.candidates = ids.iter().cycle().take(1 << 20).copied().collect();
    let full = Instant::now();
    engine.run_with(&big, &RunOptions::top_k(Some(100)))?;
    let full = full.elapsed();
    let mut overrun = Vec::new();
    for _ in 0..20 {
        let deadline = Instant::now() + Duration::from_millis(5);
        let opts = RunOptions {
            deadline: Some(deadline),
            ..RunOptions::top_k(Some(100))
        };
        let err = engine.run_with(&big, &opts).expect_err("past its deadline");
        assert_eq!(grpc_status(&err), "DEADLINE_EXCEEDED", "{err}");
        overrun.push(Instant::now().saturating_duration_since(deadline));
    }
    overrun.sort();
    let median_overrun = overrun[overrun.len() / 2];
    let max_overrun = overrun[overrun.len() - 1];
    println!(
        "1M candidates: {:.1} ms uncancelled; with a 5 ms deadline the call returned {:.0} µs (median) / {:.0} µs (max of 20) after it",
        full.as_secs_f64() * 1e3,
        median_overrun.as_secs_f64() * 1e6,
        max_overrun.as_secs_f64() * 1e6
    );

    // 3. Every error maps to a gRPC status without reading its message.
    let mut statuses = Vec::new();
    let mut bad = requests[0].clone();
    bad.user.fields[0].1 = u64::MAX; // outside the field's vocabulary
    statuses.push(("bad field", engine.run(&bad, Some(5)).unwrap_err()));
    let mut huge = requests[0].clone();
    huge.candidates = vec![0; (1 << 20) + 1];
    statuses.push((
        "too many candidates",
        engine.run(&huge, Some(5)).unwrap_err(),
    ));
    let wrong = UserInterests {
        n: 1,
        dim: 1,
        values: vec![0.0],
        skipped_behaviors: 0,
    };
    statuses.push(("misused split API", engine.score(&wrong, &[1]).unwrap_err()));
    let no_gpu = Engine::load(
        dir.join("hcn-public.safetensors"),
        dir.join("tokens.safetensors"),
        dir.join("candidates.safetensors"),
        EngineOptions {
            device: Device::Cuda(0),
            ..EngineOptions::default()
        },
    );
    if let Err(e) = no_gpu {
        statuses.push(("cuda:0 without a GPU", e));
    }
    statuses.push((
        "missing file",
        Engine::load("/nonexistent", "/x", "/y", EngineOptions::default()).unwrap_err(),
    ));
    let want = [
        ("bad field", "INVALID_ARGUMENT"),
        ("too many candidates", "RESOURCE_EXHAUSTED"),
        ("misused split API", "INTERNAL"),
        ("cuda:0 without a GPU", "UNAVAILABLE"),
        ("missing file", "FAILED_PRECONDITION"),
    ];
    for (what, e) in &statuses {
        let expected = want.iter().find(|w| w.0 == *what).map(|w| w.1).unwrap();
        assert_eq!(grpc_status(e), expected, "{what}: {e}");
        println!("{what:>22} -> {:<20} {e}", grpc_status(e));
    }

    // 4. The global pool was never built: building it now succeeds.
    let global_unbuilt = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .is_ok();
    assert!(global_unbuilt, "the engine built rayon's global pool");
    println!("rayon's global pool was never built by the engine");

    println!(
        "{{\"answered\":{answered},\"model_version\":\"{version}\",\"deadline_overrun_median_us\":{:.1},\"deadline_overrun_max_us\":{:.1},\"full_1m_ms\":{:.2},\"global_pool_unbuilt\":{global_unbuilt}}}",
        median_overrun.as_secs_f64() * 1e6,
        max_overrun.as_secs_f64() * 1e6,
        full.as_secs_f64() * 1e3
    );
    Ok(())
}
