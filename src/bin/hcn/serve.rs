//! `hcn serve` (SPEC §7): the engine as a network service until SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use hcn_prerank::serve::batcher::BatchLimits;
use hcn_prerank::serve::ServeConfig;

use crate::common::{DeviceArg, EngineFiles};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub files: EngineFiles,
    /// gRPC listen address (`hcn.v1.Prerank`, `grpc.health.v1.Health`).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub grpc: SocketAddr,
    /// HTTP/JSON listen address (`/v1/score`, `/v1/info`, `/health/*`, `/metrics`).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Admin listen address (`POST /admin/reload`); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub admin: SocketAddr,
    /// Where the engine runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Threads of the engine's own pool (0 = one per core; at least 2: the queue's owner is one).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=4096))]
    pub threads: u64,
    /// How long the engine's workers keep polling for work after a batch, in µs (0: they sleep
    /// at once; waking them costs the next request tens of µs on a VM).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub keep_awake_us: u64,
    /// Most requests in one batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65535))]
    pub max_batch_requests: u64,
    /// Most candidates in one batch (a larger request runs alone).
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_candidates: u64,
    /// Longest wait for a batch to fill, in µs. Default: 500 on a GPU; 0 on the CPU, where a
    /// batch runs request by request and waiting only adds latency (requests that arrive while
    /// one runs form the next batch by themselves).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub max_queue_delay_us: Option<u64>,
    /// Most requests waiting; beyond it a request is refused at once (RESOURCE_EXHAUSTED / 429).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_queue: u64,
    /// Largest request body or gRPC message, in bytes (413 / RESOURCE_EXHAUSTED beyond).
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub max_body_bytes: u64,
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let size = |v: u64| usize::try_from(v).map_err(|e| e.to_string());
    let cfg = ServeConfig {
        model: args.files.model,
        tokens: args.files.tokens,
        candidates: args.files.candidates,
        grpc: args.grpc,
        http: args.http,
        admin: args.admin,
        device: args.device.to_device(),
        threads: size(args.threads)?,
        keep_awake: Duration::from_micros(args.keep_awake_us),
        huge_pages: args.files.huge_pages,
        score_kernel: args.files.score_kernel,
        batch: BatchLimits {
            max_requests: size(args.max_batch_requests)?,
            max_candidates: size(args.max_batch_candidates)?,
            max_delay: args.max_queue_delay_us.map(Duration::from_micros),
            max_queue: size(args.max_queue)?,
        },
        max_body_bytes: size(args.max_body_bytes)?,
    };
    hcn_prerank::serve::run(cfg)
}
