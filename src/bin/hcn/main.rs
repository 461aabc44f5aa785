//! `hcn`, the engine's command line (SPEC §4). One file per subcommand:
//! - `score` ([`score`]): JSON Lines requests in, one response or `{"error": …}` line out each;
//! - `inspect` ([`inspect`]): what a model or store file holds;
//! - `bench` ([`bench`](mod@bench)): latency and throughput of the engine on seeded random requests;
//! - `eval` ([`eval`]): AUC and log loss of the engine's scores on labelled requests;
//! - `quantize` ([`quantize`]): an I8 store (SPEC §3) from any store.
//!
//! Exit codes: 0 when the command ran (per-request errors of `score` are output lines, not
//! failures), 1 for a failure (bad model, store, device, input file, write error), 2 for a usage
//! error (clap's).

mod bench;
mod common;
mod eval;
mod inspect;
mod quantize;
mod score;
#[cfg(feature = "serve")]
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hcn",
    version,
    about = "HCN pre-ranking engine: score candidates for a user from a model and two item stores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score JSON Lines requests (one per line) and write one JSON response per line.
    Score(score::ScoreArgs),
    /// Print a model's config and tensor table, or a store's size and dtype.
    Inspect(inspect::InspectArgs),
    /// Time the engine on seeded random requests; prints one JSON line.
    Bench(bench::BenchArgs),
    /// AUC and log loss of the engine's scores on requests with `labels`; prints one JSON line.
    Eval(eval::EvalArgs),
    /// Write an I8 store (SPEC §3: per-row F32 scale, round half to even) from any store.
    Quantize(quantize::QuantizeArgs),
    /// Serve the engine over gRPC and HTTP until SIGTERM (SPEC §7).
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => score::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Quantize(args) => quantize::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hcn: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn score_defaults_follow_spec() {
        let cli = Cli::try_parse_from([
            "hcn",
            "score",
            "--model",
            "m",
            "--tokens",
            "t",
            "--candidates",
            "c",
        ])
        .unwrap();
        let Command::Score(a) = cli.command else {
            panic!("not score")
        };
        assert_eq!(a.request, "-");
        assert_eq!(a.top_k, None);
        assert_eq!(a.device, common::DeviceArg::Cpu);
        assert!(!a.emit_interests);
    }

    #[test]
    fn bench_defaults_follow_spec() {
        let cli = Cli::try_parse_from([
            "hcn",
            "bench",
            "--model",
            "m",
            "--tokens",
            "t",
            "--candidates",
            "c",
        ])
        .unwrap();
        let Command::Bench(a) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(
            (
                a.candidates_per_request,
                a.requests,
                a.batch,
                a.threads,
                a.top_k,
                a.seed
            ),
            (50_000, 200, 1, 2, 1000, 0)
        );
        assert_eq!(a.device, common::DeviceArg::Cpu);
    }

    #[test]
    fn rejects_unknown_devices_and_zero_sizes() {
        let base = [
            "hcn",
            "bench",
            "--model",
            "m",
            "--tokens",
            "t",
            "--candidates",
            "c",
        ];
        for extra in [
            &["--device", "tpu"][..],
            &["--batch", "0"],
            &["--threads", "0"],
            &["--requests", "0"],
        ] {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
        let ok = Cli::try_parse_from([
            "hcn",
            "score",
            "--model",
            "m",
            "--tokens",
            "t",
            "--candidates",
            "c",
            "--device",
            "cuda",
        ])
        .unwrap();
        let Command::Score(a) = ok.command else {
            panic!("not score")
        };
        assert_eq!(a.device.to_device(), hcn_prerank::Device::Cuda(0));
    }
}
