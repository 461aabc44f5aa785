//! Criterion benchmarks of the engine by stage and SPEC §6 profile, named
//! `{device}/{stage}/{profile}/{store dtype}/t{threads}[/b{batch}]`, with `Throughput` in
//! candidates so reports read as candidates/s:
//!
//! - `tower`: the user side (`Engine::user_interests`, full-length sequences);
//! - `score`: scoring one request's candidates (`Engine::score`);
//! - `end_to_end`: `Engine::run_batch` with top-1000, batch 1 and 32;
//! - `floors/fma`, `floors/gather`: this machine's FMA peak per SIMD level and random-row gather
//!   rate (`hcn_prerank::floors`), the floors every figure above is read against.
//!
//! Models and 1M-row stores are synthetic (`hcn_prerank::synth`), written once to
//! `target/bench-models/`. `HCN_BENCH_PROFILES=public` (or `industrial`) limits the run;
//! `HCN_BENCH_ROWS` changes the store size (default 1,000,000).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hcn_prerank::cpu::Level;
use hcn_prerank::floors::{fma_flops_per_thread, fma_peak, gather_rows};
use hcn_prerank::synth::{ensure_profile_files, Profile};
use hcn_prerank::tensor::DType;
use hcn_prerank::{Engine, EngineOptions, Parallelism, Request, UserRequest};

use hcn_prerank::rng::SplitMix64 as Rng;

fn requests(engine: &Engine, count: usize, candidates: usize, seed: u64) -> Vec<Request> {
    let cfg = &engine.model().config;
    let (tokens, cands) = (engine.tokens().len(), engine.candidates().len());
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| Request {
            user: UserRequest {
                long: (0..cfg.long_len)
                    .map(|_| rng.below(tokens) as u64)
                    .collect(),
                short: (0..cfg.short_len)
                    .map(|_| rng.below(tokens) as u64)
                    .collect(),
                fields: cfg
                    .user_fields
                    .iter()
                    .map(|f| (f.name.clone(), rng.below(f.vocab) as u64))
                    .collect(),
                dense: (0..cfg.user_dense).map(|_| rng.symmetric(1.0)).collect(),
            },
            candidates: (0..candidates).map(|_| rng.below(cands) as u64).collect(),
        })
        .collect()
}

fn profiles() -> Vec<Profile> {
    match std::env::var("HCN_BENCH_PROFILES").as_deref() {
        Ok("public") => vec![Profile::Public],
        Ok("industrial") => vec![Profile::Industrial],
        _ => vec![Profile::Public, Profile::Industrial],
    }
}

fn engine(profile: Profile, dtype: DType, threads: usize) -> Engine {
    let rows = std::env::var("HCN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-models")
        .join(format!(
            "{}-{}-{rows}",
            profile.name(),
            dtype.name().to_lowercase()
        ));
    let (m, t, c) = ensure_profile_files(&dir, profile, rows, dtype).expect("write bench model");
    let parallelism = if threads == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    };
    Engine::load(
        m,
        t,
        c,
        EngineOptions {
            parallelism,
            // As the `hcn` CLI: requests come back to back, the second worker stays awake.
            keep_awake: std::time::Duration::from_millis(1),
            ..Default::default()
        },
    )
    .expect("load bench model")
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

fn bench(c: &mut Criterion) {
    for profile in profiles() {
        let m = profile.candidates_per_request();
        for dtype in [DType::F16, DType::I8, DType::F32] {
            let dt = dtype.name().to_lowercase();
            for threads in [1usize, 2] {
                let engine = engine(profile, dtype, threads);
                let pool = pool(threads);
                let reqs = requests(&engine, 32, m, 7);

                if dtype == DType::F16 {
                    let mut g = c.benchmark_group(format!("cpu/tower/{}", profile.name()));
                    g.sample_size(20)
                        .measurement_time(Duration::from_secs(3))
                        .warm_up_time(Duration::from_secs(1));
                    g.throughput(Throughput::Elements(1));
                    g.bench_function(
                        BenchmarkId::from_parameter(format!("{dt}/t{threads}")),
                        |b| {
                            let mut i = 0;
                            b.iter(|| {
                                i = (i + 1) % reqs.len();
                                pool.install(|| engine.user_interests(&reqs[i].user).unwrap())
                            })
                        },
                    );
                    g.finish();
                }

                let interests: Vec<_> = reqs
                    .iter()
                    .map(|r| engine.user_interests(&r.user).unwrap())
                    .collect();
                let mut g = c.benchmark_group(format!("cpu/score/{}", profile.name()));
                g.sample_size(20)
                    .measurement_time(Duration::from_secs(3))
                    .warm_up_time(Duration::from_secs(1));
                g.throughput(Throughput::Elements(m as u64));
                g.bench_function(
                    BenchmarkId::from_parameter(format!("{dt}/t{threads}")),
                    |b| {
                        let mut i = 0;
                        b.iter(|| {
                            i = (i + 1) % reqs.len();
                            pool.install(|| {
                                engine.score(&interests[i], &reqs[i].candidates).unwrap()
                            })
                        })
                    },
                );
                g.finish();

                let mut g = c.benchmark_group(format!("cpu/end_to_end/{}", profile.name()));
                g.sample_size(10)
                    .measurement_time(Duration::from_secs(4))
                    .warm_up_time(Duration::from_secs(1));
                for batch in [1usize, 32] {
                    g.throughput(Throughput::Elements((m * batch) as u64));
                    g.bench_function(
                        BenchmarkId::from_parameter(format!("{dt}/t{threads}/b{batch}")),
                        |b| {
                            let mut i = 0;
                            b.iter(|| {
                                i = (i + batch) % reqs.len();
                                let chunk = &reqs[i.min(reqs.len() - batch)..][..batch];
                                pool.install(|| engine.run_batch(chunk, Some(1000)))
                            })
                        },
                    );
                }
                g.finish();
            }
        }
    }
}

/// This machine's floors (`hcn_prerank::floors`): `floors/fma/{level}/t{threads}` in FLOP/s,
/// `floors/gather/{profile}/f16/t{threads}/p{distance}` in rows/s (one request's candidates, fresh
/// random rows each iteration).
fn floors(c: &mut Criterion) {
    let mut g = c.benchmark_group("floors/fma");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for level in Level::available() {
        for threads in [1usize, 2] {
            g.throughput(Throughput::Elements(
                threads as u64 * fma_flops_per_thread(level),
            ));
            g.bench_function(
                BenchmarkId::from_parameter(format!("{}/t{threads}", level.name())),
                |b| b.iter(|| fma_peak(level, threads, 1)),
            );
        }
    }
    g.finish();
    for profile in profiles() {
        let m = profile.candidates_per_request();
        let engine = engine(profile, DType::F16, 1);
        let matrix = &engine.candidates().vectors;
        let mut rng = Rng::new(11);
        let draws: Vec<Vec<usize>> = (0..64)
            .map(|_| (0..m).map(|_| rng.below(matrix.rows())).collect())
            .collect();
        let mut g = c.benchmark_group(format!("floors/gather/{}", profile.name()));
        g.sample_size(20)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        g.throughput(Throughput::Elements(m as u64));
        for threads in [1usize, 2] {
            let pool = pool(threads);
            for distance in [0usize, 8, 16, 32] {
                g.bench_function(
                    BenchmarkId::from_parameter(format!("f16/t{threads}/p{distance}")),
                    |b| {
                        let mut i = 0;
                        b.iter(|| {
                            i = (i + 1) % draws.len();
                            gather_rows(matrix, &draws[i], distance, &pool)
                        })
                    },
                );
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench, floors);
criterion_main!(benches);
