//! What the subcommands share: the `--device` flag, loading the engine with messages that name the
//! file, and a tiny seeded RNG (bench requests must be reproducible without a new dependency).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hcn_prerank::{Device, Engine, EngineOptions, ItemStore};

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
        ..EngineOptions::default()
    };
    Engine::load(&files.model, &files.tokens, &files.candidates, options)
        .map_err(|e| format!("cannot load the engine: {e}"))
}

/// The short name of the device serving requests (`cpu`, `cuda:0`), from
/// [`Engine::device_report`], which starts with it (e.g. `"cpu: requested"`,
/// `"cuda:0: NVIDIA H100"`, `"cuda:0 (NVIDIA H100)"`). Falls back to the text before the first
/// `": "`.
pub fn device_label(report: &str) -> &str {
    if let Some(rest) = report.strip_prefix("cuda") {
        // "cuda" plus an optional ":<index>".
        let index_len = rest
            .strip_prefix(':')
            .map(|r| r.bytes().take_while(u8::is_ascii_digit).count())
            .filter(|&n| n > 0)
            .map_or(0, |n| n + 1);
        return &report[..4 + index_len];
    }
    if report.starts_with("cpu") {
        return "cpu";
    }
    report.split(": ").next().unwrap_or(report)
}

/// Item id of every row of a store (the `ids` tensor, or the row number when it has none).
pub fn row_ids(store: &ItemStore) -> Vec<u64> {
    match &store.index {
        hcn_prerank::store::IdIndex::RowNumber => (0..store.len() as u64).collect(),
        hcn_prerank::store::IdIndex::Map(map) => {
            let mut ids = vec![0u64; store.len()];
            for (&id, &row) in map {
                // The loader built the map from the `ids` tensor, one entry per row.
                if let Some(slot) = ids.get_mut(row as usize) {
                    *slot = id;
                }
            }
            ids
        }
    }
}

/// `hcn bench`'s generator; `reference/bench_peers.py` reproduces its stream.
pub use hcn_prerank::rng::SplitMix64 as Rng;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_label_takes_the_device_part() {
        assert_eq!(device_label("cpu: requested"), "cpu");
        assert_eq!(device_label("cuda:0: NVIDIA H100"), "cuda:0");
        assert_eq!(device_label("cuda:12 (NVIDIA H100)"), "cuda:12");
        assert_eq!(device_label("cuda: no index"), "cuda");
        assert_eq!(device_label("cpu"), "cpu");
        assert_eq!(device_label("cpu (fallback: no GPU)"), "cpu");
        assert_eq!(device_label("metal: hypothetical"), "metal");
    }
}
