//! What the subcommands share: the `--device` flag, loading the engine with messages that name the
//! file, and a tiny seeded RNG (bench requests must be reproducible without a new dependency).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hcn_prerank::cpu::ScoreKernel;
use hcn_prerank::{Device, Engine, EngineOptions, ScoreKernelChoice};

/// `--device cpu|cuda|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The CPU executor.
    Cpu,
    /// CUDA device 0.
    Cuda,
    /// CUDA device 0 if usable, else the CPU.
    Auto,
}

impl DeviceArg {
    pub fn to_device(self) -> Device {
        match self {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda(0),
            DeviceArg::Auto => Device::Auto,
        }
    }
}

/// `--model M --tokens T --candidates C`, shared by score, bench and eval.
#[derive(Args, Debug, Clone)]
pub struct EngineFiles {
    /// Model file (safetensors with `hcn.config` metadata, SPEC §2).
    #[arg(long, value_name = "M")]
    pub model: PathBuf,
    /// Token store: behavior tokens by item id (SPEC §3).
    #[arg(long, value_name = "T")]
    pub tokens: PathBuf,
    /// Candidate store: item vectors by item id (SPEC §3); may be the token store's file.
    #[arg(long, value_name = "C")]
    pub candidates: PathBuf,
    /// Copy the stores into memory advised for transparent huge pages instead of reading their
    /// file mappings (fewer page walks for random rows; costs their size in private memory).
    #[arg(long)]
    pub huge_pages: bool,
    /// The CPU's candidate-scoring kernel: `rule` (by the SIMD level and `n`), `tune` (time
    /// each kernel at load on this model and store, keep the fastest), or a kernel name such
    /// as `avx512/tiles`, `avx512/lanes`, `avx2/interleaved/l1`, `avx512/tiles/l2/vnni` (pinned, for
    /// reproducible runs; `/vnni`: I8 candidate rows scored with AVX-512 VNNI).
    #[arg(long, value_name = "K", default_value = "rule", value_parser = parse_score_kernel)]
    pub score_kernel: ScoreKernelChoice,
}

fn parse_score_kernel(s: &str) -> Result<ScoreKernelChoice, String> {
    match s {
        "rule" => Ok(ScoreKernelChoice::Rule),
        "tune" => Ok(ScoreKernelChoice::Tune),
        name => ScoreKernel::from_name(name)
            .map(ScoreKernelChoice::Pinned)
            .ok_or_else(|| {
                format!(
                    "`{name}` is not `rule`, `tune` or a kernel LEVEL/LAYOUT[/PREFETCH] \
                     (LEVEL: scalar, avx2, avx512, neon; LAYOUT: interleaved, lanes, tiles; \
                     PREFETCH: l2 (default), l1)"
                )
            }),
    }
}

/// The CLI's `EngineOptions::keep_awake`.
pub const KEEP_AWAKE: std::time::Duration = std::time::Duration::from_millis(1);

/// Loads the model and stores and builds the engine; the error message names the file at fault
/// (the library's errors already carry the path).
pub fn load_engine(files: &EngineFiles, device: DeviceArg) -> Result<Engine, String> {
    let options = EngineOptions {
        device: device.to_device(),
        // Requests arrive back to back (a JSONL stream, a benchmark loop): keep the second
        // worker awake between them rather than paying its wake-up in each request.
        keep_awake: KEEP_AWAKE,
        huge_pages: files.huge_pages,
        score_kernel: files.score_kernel,
        ..EngineOptions::default()
    };
    Engine::load(&files.model, &files.tokens, &files.candidates, options)
        .map_err(|e| format!("cannot load the engine: {e}"))
}

/// `hcn bench`'s generator; `reference/bench_peers.py` reproduces its stream.
pub use hcn_prerank::rng::SplitMix64 as Rng;
