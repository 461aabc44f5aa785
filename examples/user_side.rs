//! The user side alone (SPEC §1.1–1.4, `Engine::user_interests`) on the calling thread, for
//! profiling it (`valgrind --tool=callgrind`, `perf record`) and timing it against this core's
//! FMA peak:
//!
//! ```sh
//! cargo run --release --example user_side -- target/synth/industrial [iterations] [level]
//! ```
//!
//! The folder holds `model.safetensors` and `tokens.safetensors` (`examples/synth_profile.rs`;
//! the candidate store is the token store, unused here). Full-length sequences of random ids.
//! Prints one JSON line: the median µs, `floors::user_side_flops` as a share of the level's
//! 1-thread FMA peak, and a checksum of `X^U` (bit-identical runs give the same one).

use std::path::PathBuf;
use std::time::Instant;

use hcn_prerank::cpu::Level;
use hcn_prerank::floors::{fma_peak, user_side_flops};
use hcn_prerank::options::CpuKernels;
use hcn_prerank::rng::SplitMix64;
use hcn_prerank::{Engine, EngineOptions, Parallelism, UserRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: user_side DIR [iterations] [level]")?,
    );
    let iterations: usize = args.next().map_or(Ok(200), |v| v.parse())?;
    let level = match args.next() {
        Some(name) => Level::from_name(&name).ok_or(format!("unknown level {name}"))?,
        None => Level::detect(),
    };
    let engine = Engine::load(
        dir.join("model.safetensors"),
        dir.join("tokens.safetensors"),
        dir.join("tokens.safetensors"),
        EngineOptions {
            kernels: CpuKernels::Level(level),
            parallelism: Parallelism::None,
            ..Default::default()
        },
    )?;
    let cfg = engine.model().config.clone();
    let tokens = engine.tokens().len();
    let mut rng = SplitMix64::new(3);
    let user = UserRequest {
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
    };
    let first = engine.user_interests(&user)?;
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let again = engine.user_interests(&user)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(again.values, first.values, "the same request twice differs");
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let flops = user_side_flops(&cfg);
    let peak = fma_peak(level, 1, 1).ok_or("level not supported")?.gflops;
    let checksum = first
        .values
        .iter()
        .fold(0u64, |h, v| h.rotate_left(5) ^ u64::from(v.to_bits()));
    println!(
        "{{\"level\":\"{}\",\"median_us\":{median:.1},\"min_us\":{:.1},\"user_flops\":{flops},\"peak_gflops\":{peak:.1},\"share_of_peak\":{:.3},\"checksum\":\"{checksum:016x}\"}}",
        level.name(),
        times.first().copied().unwrap_or(f64::NAN),
        flops / (median * 1e3) / peak
    );
    Ok(())
}
