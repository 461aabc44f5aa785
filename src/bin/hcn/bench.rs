//! `hcn bench`: latency and throughput of the engine itself (SPEC §4). Requests are drawn from a
//! seeded RNG before any timing: full-length long and short sequences (the model's `long_len` /
//! `short_len`) from the token store, candidates uniformly from the candidate store, profile field
//! ids uniformly within their vocabularies and dense features uniform in [-1, 1). Everything runs
//! inside a rayon pool of `--threads` threads; after a warm-up, each batch of `--batch` requests is
//! timed from [`Engine::run_batch`] call to its top-k results. No JSON is parsed in the timed part.

use std::time::Instant;

use clap::Args;
use hcn_prerank::cpu::Level;
use hcn_prerank::floors::{
    anon_huge_pages_kib, cpu_identity, fma_peak, gather_rate, user_side_flops, vnni_peak, FmaPeak,
};
use hcn_prerank::tensor::DType;
use hcn_prerank::{CpuKernels, Engine, ItemStore, Request, StageTimes, UserRequest};
use serde::Serialize;

use crate::common::{load_engine, DeviceArg, EngineFiles, Rng};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub files: EngineFiles,
    /// Candidates scored per request.
    #[arg(long, default_value_t = 50_000)]
    pub candidates_per_request: usize,
    /// Requests timed (after the warm-up).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Requests per engine call; one latency sample is one batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Threads of the rayon pool the engine runs in.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub threads: u64,
    /// Top-k returned per request.
    #[arg(long, default_value_t = 1000)]
    pub top_k: usize,
    /// Where the engine runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Seed of the request generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also measure this machine's floors (FMA peak per SIMD level, random-row gather rate of
    /// the candidate store at 1 and --threads threads, several prefetch distances) and write a
    /// second JSON line: the floors, the median time of each stage of a request, and the
    /// scoring stage against max(gather floor, FMA floor).
    #[arg(long)]
    pub floors: bool,
    /// Per-kernel device times (needs an engine on a GPU: --device cuda): after the timed run,
    /// the same batches once more with CUDA events around every kernel launch, and one more JSON
    /// line with each kernel's times (the timed run's figures are measured without the events).
    #[arg(long)]
    pub kernel_times: bool,
    /// Also write the requests drawn (the same ones timed) to this file as SPEC §4 JSON lines,
    /// before timing: the service's load tests send them (`scripts/serve_bench.sh`).
    #[arg(long, value_name = "FILE")]
    pub write_requests: Option<std::path::PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let threads = usize::try_from(args.threads).map_err(|e| e.to_string())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
    let engine = load_engine(&args.files, args.device)?;
    // Asked before any work: only a device executor has kernels to time.
    if args.kernel_times && !engine.set_kernel_timing(false) {
        return Err(format!(
            "--kernel-times times the CUDA kernels, and this engine runs on {} (use --device cuda)",
            engine.device_report()
        ));
    }
    if let Some(k) = engine.score_kernel() {
        // Not in the JSON line, whose keys SPEC §4 fixes (`--floors` adds it to its own line).
        eprintln!("hcn bench: CPU score kernel {k}");
    }
    let requests = generate(&engine, &args)?;
    if let Some(path) = &args.write_requests {
        write_requests(path, &requests)?;
    }
    let batch = usize::try_from(args.batch).map_err(|e| e.to_string())?;
    let batches: Vec<&[Request]> = requests.chunks(batch).collect();

    let mut stages: Vec<StageTimes> = Vec::new();
    let (mut latencies_us, timed_seconds, scored) = pool.install(|| {
        // Warm-up: caches, page faults of the mapped stores, lazy device setup.
        let warmup = (batches.len() / 10).clamp(1, 10);
        for b in batches.iter().cycle().take(warmup) {
            check(engine.run_batch(b, Some(args.top_k)))?;
        }
        let mut latencies = Vec::with_capacity(batches.len());
        let mut total = 0.0f64;
        let mut scored = 0u64;
        for b in &batches {
            let start = Instant::now();
            let out = engine.run_batch(b, Some(args.top_k));
            let seconds = start.elapsed().as_secs_f64();
            stages.extend(out.iter().flatten().map(|r| r.timings));
            check(out)?;
            latencies.push(seconds * 1e6);
            total += seconds;
            scored += b.iter().map(|r| r.candidates.len() as u64).sum::<u64>();
        }
        Ok::<_, String>((latencies, total, scored))
    })?;

    latencies_us.sort_by(f64::total_cmp);
    let report = Report {
        requests: requests.len(),
        batch,
        threads,
        device: engine.device_label(),
        median_us: percentile(&latencies_us, 0.5),
        p90_us: percentile(&latencies_us, 0.9),
        p99_us: percentile(&latencies_us, 0.99),
        candidates_per_s: if timed_seconds > 0.0 {
            scored as f64 / timed_seconds
        } else {
            0.0
        },
    };
    let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    println!("{line}");
    if args.floors {
        let line = floors_report(&engine, &args, &pool, &stages)?;
        println!("{line}");
    }
    if args.kernel_times {
        let line = kernel_times_line(&engine, &batches, args.top_k, &pool)?;
        println!("{line}");
    }
    Ok(())
}

/// `--write-requests`: one SPEC §4 request per line (`dense` as shortest round-trip floats, so
/// a server parses back the same values).
fn write_requests(path: &std::path::Path, requests: &[Request]) -> Result<(), String> {
    use std::io::Write;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(fail)?);
    for r in requests {
        let fields: serde_json::Map<String, serde_json::Value> = r
            .user
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        let line = serde_json::json!({
            "long": r.user.long,
            "short": r.user.short,
            "fields": fields,
            "dense": r.user.dense,
            "candidates": r.candidates,
        });
        serde_json::to_writer(&mut out, &line).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(fail)?;
    }
    out.flush().map_err(fail)
}

/// `--kernel-times`: every batch once more with the per-kernel timing switch on, then one JSON
/// line `{"kernel_times": {...}, "batch", "device", "median_us"}` (`median_us`: the batches'
/// latency during this pass, events included, to show what the events cost).
fn kernel_times_line(
    engine: &Engine,
    batches: &[&[Request]],
    top_k: usize,
    pool: &rayon::ThreadPool,
) -> Result<String, String> {
    if !engine.set_kernel_timing(true) {
        return Err(format!(
            "--kernel-times: the engine on {} has no kernels to time",
            engine.device_report()
        ));
    }
    let latencies = pool.install(|| {
        let mut latencies = Vec::with_capacity(batches.len());
        for b in batches {
            let start = Instant::now();
            let out = engine.run_batch(b, Some(top_k));
            latencies.push(start.elapsed().as_secs_f64() * 1e6);
            check(out)?;
        }
        Ok::<_, String>(latencies)
    });
    let times = engine.kernel_times();
    engine.set_kernel_timing(false);
    let mut latencies = latencies?;
    latencies.sort_by(f64::total_cmp);
    let times = times.ok_or("--kernel-times: the engine returned no kernel times")?;
    let out = serde_json::json!({
        "kernel_times": times,
        "batch": batches.first().map_or(0, |b| b.len()),
        "device": engine.device_label(),
        "median_us": percentile(&latencies, 0.5),
    });
    serde_json::to_string(&out).map_err(|e| e.to_string())
}

/// `--floors`: this machine's limits and the request's stages against them (one JSON line).
fn floors_report(
    engine: &Engine,
    args: &BenchArgs,
    pool: &rayon::ThreadPool,
    stages: &[StageTimes],
) -> Result<String, String> {
    let threads = pool.current_num_threads();
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    let fma: Vec<FmaPeak> = Level::ALL
        .into_iter()
        .flat_map(|l| counts.iter().filter_map(move |&t| fma_peak(l, t, 5)))
        .chain(counts.iter().filter_map(|&t| vnni_peak(t, 5)))
        .collect();
    let matrix = &engine.candidates().vectors;
    let rows = args.candidates_per_request;
    let pools = counts
        .iter()
        .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut gather = Vec::new();
    for p in &pools {
        for distance in [0, 4, 8, 16, 32] {
            gather.push(gather_rate(matrix, rows, 15, distance, p, args.seed));
        }
    }
    // The same gather on an anonymous copy advised MADV_HUGEPAGE: what page walks cost.
    let before = anon_huge_pages_kib();
    let mut huge_pages = serde_json::Value::Null;
    if let Ok(copy) = matrix.to_anonymous(true) {
        let granted = anon_huge_pages_kib()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(b));
        let rates: Vec<_> = pools
            .iter()
            .map(|p| gather_rate(&copy, rows, 15, 16, p, args.seed))
            .collect();
        huge_pages = serde_json::json!({"granted_kib": granted, "gather": rates});
    }
    let median_us = |f: &dyn Fn(&StageTimes) -> std::time::Duration| {
        let mut v: Vec<f64> = stages.iter().map(|s| f(s).as_secs_f64() * 1e6).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let stages_us = serde_json::json!({
        "resolve": median_us(&|s| s.resolve),
        "user": median_us(&|s| s.user),
        "score": median_us(&|s| s.score),
        "top_k": median_us(&|s| s.top_k),
    });
    // The scoring stage's floors at the bench's thread count: the best gather, and the FMAs of
    // n × D products per candidate at the best level's peak.
    let level = match engine.options().kernels {
        CpuKernels::Level(l) => l,
        CpuKernels::Auto | CpuKernels::Reference => Level::detect(),
    };
    let best_gather_us = gather
        .iter()
        .filter(|g| g.threads == threads)
        .map(|g| g.ms_per_draw * 1e3)
        .fold(f64::INFINITY, f64::min);
    let cfg = &engine.model().config;
    // I8 rows under a `/vnni` kernel: 3 `vpdpbusd` (128 byte operations each) per 4 elements
    // of a row, whatever n ≤ 16; otherwise n × D FMAs.
    let vnni = matrix.dtype() == DType::I8
        && engine
            .score_kernel()
            .is_some_and(|k| k.split(' ').next().is_some_and(|k| k.ends_with("/vnni")));
    let (score_flops, arith) = if vnni {
        ((rows * 3 * cfg.dim * 32) as f64, "avx512_vnni")
    } else {
        ((rows * cfg.interests * cfg.dim * 2) as f64, level.name())
    };
    let peak = fma
        .iter()
        .find(|p| p.level == arith && p.threads == threads)
        .map_or(0.0, |p| p.gflops);
    let fma_us = if peak > 0.0 {
        score_flops / (peak * 1e3)
    } else {
        0.0
    };
    let floor_us = best_gather_us.max(fma_us);
    let score_us = median_us(&|s| s.score);
    // The user side against this level's FMA peak on one thread and on `threads` (its towers and
    // head groups use the pool; the other thread also resolves the candidates meanwhile).
    let peak_of = |t: usize| {
        fma.iter()
            .find(|p| p.level == level.name() && p.threads == t)
            .map_or(0.0, |p| p.gflops)
    };
    let user_flops = user_side_flops(cfg);
    let user_us = median_us(&|s| s.user);
    let user_share = |peak: f64| {
        if user_us > 0.0 && peak > 0.0 {
            user_flops / (user_us * 1e-6) / (peak * 1e9)
        } else {
            0.0
        }
    };
    let out = serde_json::json!({
        "cpu": cpu_identity(),
        "level": level.name(),
        "score_kernel": engine.score_kernel(),
        "threads": threads,
        "fma": fma,
        "gather": gather,
        "gather_huge_pages": huge_pages,
        "stages_us": stages_us,
        "score_floor_us": {"gather": best_gather_us, "fma": fma_us},
        "score_vs_floor": if floor_us > 0.0 { score_us / floor_us } else { 0.0 },
        "user_flops": user_flops,
        "user_share_of_fma_peak": user_share(peak_of(1)),
        "user_share_of_fma_peak_all_threads": user_share(peak_of(threads)),
    });
    serde_json::to_string(&out).map_err(|e| e.to_string())
}

/// The output line, keys in SPEC §4 order.
#[derive(Serialize)]
struct Report<'a> {
    requests: usize,
    batch: usize,
    threads: usize,
    device: &'a str,
    median_us: f64,
    p90_us: f64,
    p99_us: f64,
    candidates_per_s: f64,
}

/// A failed request in a benchmark is a failure of the benchmark.
fn check(results: Vec<hcn_prerank::Result<hcn_prerank::Response>>) -> Result<(), String> {
    results.into_iter().try_for_each(|r| {
        r.map(drop)
            .map_err(|e| format!("benchmark request failed: {e}"))
    })
}

/// All `--requests` requests, drawn before any timing.
fn generate(engine: &Engine, args: &BenchArgs) -> Result<Vec<Request>, String> {
    let cfg = &engine.model().config;
    let token_ids = nonempty_ids(engine.tokens(), "token")?;
    let candidate_ids = nonempty_ids(engine.candidates(), "candidate")?;
    // Every request is drawn before timing: refuse sizes that cannot be held, instead of
    // letting an allocation abort the process.
    let limit = engine.options().limits.max_candidates;
    if args.candidates_per_request > limit {
        return Err(format!(
            "--candidates-per-request {} exceeds the engine's limit of {limit} candidates per request",
            args.candidates_per_request
        ));
    }
    const MAX_BYTES: u128 = 8 << 30;
    let per_request = (args.candidates_per_request + cfg.long_len + cfg.short_len) as u128 * 8;
    let bytes = per_request * u128::from(args.requests);
    if bytes > MAX_BYTES {
        return Err(format!(
            "--requests {} × {} candidates would need {:.1} GiB of pre-drawn requests (at most {} GiB)",
            args.requests,
            args.candidates_per_request,
            bytes as f64 / f64::from(1u32 << 30),
            MAX_BYTES >> 30
        ));
    }
    let mut rng = Rng::new(args.seed);
    let draw = |ids: &[u64], count: usize, rng: &mut Rng| -> Vec<u64> {
        (0..count).map(|_| ids[rng.below(ids.len())]).collect()
    };
    let mut out = Vec::with_capacity(args.requests as usize);
    for _ in 0..args.requests {
        let long = draw(&token_ids, cfg.long_len, &mut rng);
        let short = draw(&token_ids, cfg.short_len, &mut rng);
        let fields = cfg
            .user_fields
            .iter()
            .map(|f| (f.name.clone(), rng.below(f.vocab) as u64))
            .collect();
        let dense = (0..cfg.user_dense).map(|_| rng.symmetric(1.0)).collect();
        let candidates = draw(&candidate_ids, args.candidates_per_request, &mut rng);
        out.push(Request {
            user: UserRequest {
                long,
                short,
                fields,
                dense,
            },
            candidates,
        });
    }
    Ok(out)
}

fn nonempty_ids(store: &ItemStore, what: &str) -> Result<Vec<u64>, String> {
    if store.is_empty() {
        return Err(format!(
            "the {what} store {} is empty: nothing to draw requests from",
            store.path.display()
        ));
    }
    Ok(store.row_ids())
}

/// The `q`-quantile of sorted samples, interpolating linearly between the two closest ranks
/// (numpy's default), so the median of an even count is the mean of the middle two.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => {
            let pos = q * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    /// `--kernel-times` on the GPU plan run by the CPU emulation of the kernels: one entry per
    /// (kernel, site), every launch of every batch counted.
    #[cfg(feature = "cuda-emulation")]
    #[test]
    fn kernel_times_line_under_the_emulation() {
        use std::sync::Arc;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_f32");
        let model = Arc::new(hcn_prerank::Model::load(dir.join("model.safetensors")).unwrap());
        let tokens =
            Arc::new(hcn_prerank::ItemStore::load(dir.join("tokens.safetensors")).unwrap());
        let cands =
            Arc::new(hcn_prerank::ItemStore::load(dir.join("candidates.safetensors")).unwrap());
        let engine = hcn_prerank::cuda::emulated_engine(
            model,
            tokens,
            cands,
            hcn_prerank::EngineOptions::default(),
        )
        .unwrap();
        let args = super::BenchArgs {
            files: crate::common::EngineFiles {
                model: "unused".into(),
                tokens: "unused".into(),
                candidates: "unused".into(),
                huge_pages: false,
                score_kernel: hcn_prerank::ScoreKernelChoice::Rule,
            },
            candidates_per_request: 20,
            requests: 6,
            batch: 3,
            threads: 1,
            top_k: 5,
            device: crate::common::DeviceArg::Cuda,
            seed: 1,
            floors: false,
            kernel_times: true,
            write_requests: None,
        };
        let requests = super::generate(&engine, &args).unwrap();
        let batches: Vec<&[hcn_prerank::Request]> = requests.chunks(3).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let line = super::kernel_times_line(&engine, &batches, 5, &pool).unwrap();
        eprintln!("{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let kt = &v["kernel_times"];
        assert_eq!(kt["batches"], 2, "{line}");
        assert_eq!(kt["span"]["count"], 2, "{line}");
        assert_eq!(v["batch"], 3);
        let kernels = kt["kernels"].as_array().unwrap();
        let site = |s: &str| {
            kernels
                .iter()
                .find(|k| k["site"] == s)
                .unwrap_or_else(|| panic!("no site {s} in {line}"))
        };
        assert_eq!(site("score")["count"], 2);
        assert_eq!(site("topk.hist")["kernel"], "topk_hist_f32");
        assert_eq!(site("topk.compact")["kernel"], "topk_compact_f32");
        assert_eq!(site("topk.select")["kernel"], "topk_select_f32");
        assert_eq!(site("co_fusion")["count"], 2);
        let r = engine.model().config.layers as u64;
        assert_eq!(site("tower.attend")["count"], 2 * r);
        assert_eq!(site("tower.combine")["kernel"], "attend_combine_f32");
        let launches: u64 = kernels.iter().map(|k| k["count"].as_u64().unwrap()).sum();
        assert_eq!(launches, 2 * (2 * r + 5), "{line}");
        for k in kernels {
            assert!(k["min_us"].as_f64().unwrap() >= 0.0, "{line}");
        }
        // The switch is off again: nothing more is recorded.
        let before = engine.kernel_times().unwrap();
        engine.run_batch(batches[0], Some(5));
        assert_eq!(engine.kernel_times().unwrap(), before);
    }

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        let w: Vec<f64> = (0..101).map(f64::from).collect();
        assert_eq!(percentile(&w, 0.9), 90.0);
        assert_eq!(percentile(&w, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
