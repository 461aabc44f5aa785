//! `hcn serve` (SPEC §7): the engine behind gRPC (tonic) and HTTP/JSON (axum), with a batching
//! queue, Prometheus metrics, health, hot reload (admin route and SIGHUP) and graceful shutdown
//! (SIGTERM). Feature `serve` (on by default for the `hcn` binary); embedders who only want the
//! library leave it off and pull no tokio, tonic or axum.
//!
//! - [`batcher`]: the queue, owned by one task;
//! - [`grpc`]: `hcn.v1.Prerank` and `grpc.health.v1.Health`;
//! - [`http`]: the HTTP routes and the loopback admin listener;
//! - [`metrics`]: SPEC §7's metric names.

pub mod batcher;
pub mod codec;
pub mod grpc;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Device, Engine, EngineOptions, Parallelism, SharedEngine};
use pb::prerank_server as grpc_server;

/// The generated protobuf types and gRPC stubs of `proto/hcn/v1/prerank.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hcn.v1");
    mod client {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/client/hcn.v1.rs"));
    }
    pub use client::prerank_client;
}

/// Everything `hcn serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    pub tokens: PathBuf,
    pub candidates: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub device: Device,
    pub threads: usize,
    /// How long the engine's workers keep polling for work after a batch (`EngineOptions::keep_awake`).
    pub keep_awake: Duration,
    /// `EngineOptions::huge_pages`, for every engine a reload builds too.
    pub huge_pages: bool,
    /// `EngineOptions::score_kernel`, for every engine a reload builds too (a reload with
    /// `Tune` times the kernels again and may pick another, within SPEC §5).
    pub score_kernel: crate::options::ScoreKernelChoice,
    pub batch: batcher::BatchLimits,
    /// Largest HTTP body / gRPC message accepted (bytes).
    pub max_body_bytes: usize,
}

/// The files a reload reads.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub model: PathBuf,
    pub tokens: PathBuf,
    pub candidates: PathBuf,
}

/// What every handler shares.
pub struct State {
    pub engine: SharedEngine,
    pub metrics: metrics::Metrics,
    pub ready: AtomicBool,
    /// The files the engine was last loaded from (a reload without a body re-reads them).
    pub files: Mutex<ModelFiles>,
    /// Reloads run one at a time.
    reloading: tokio::sync::Mutex<()>,
    /// The options of every engine built here, the first and each reload's: the device, the
    /// keep-awake window, huge pages, and the engine's pool (`Parallelism::Pool`, shared by all
    /// of them; the queue's owner lives in it).
    options: EngineOptions,
}

impl State {
    /// Loads, validates and warms an engine (one request through it) — nothing is swapped.
    fn build_engine(files: &ModelFiles, options: EngineOptions) -> crate::Result<Engine> {
        let engine = Engine::load(&files.model, &files.tokens, &files.candidates, options)?;
        warm(&engine)?;
        Ok(engine)
    }

    /// Re-reads `files` (or the current ones), swaps the new engine in when it loaded and
    /// warmed; a failure changes nothing. Returns the new model's version.
    pub async fn reload(self: &Arc<Self>, files: Option<ModelFiles>) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let files = match files {
            Some(f) => f,
            None => self.files.lock().map_err(|e| e.to_string())?.clone(),
        };
        let (f, options) = (files.clone(), self.options.clone());
        let built = tokio::task::spawn_blocking(move || State::build_engine(&f, options))
            .await
            .map_err(|e| format!("reload task failed: {e}"));
        let result = match built {
            Ok(Ok(engine)) => {
                let version = engine.version().to_string();
                let device = engine.device_label().to_string();
                self.engine.swap(engine);
                if let Ok(mut current) = self.files.lock() {
                    *current = files;
                }
                self.metrics.set_model(&version, &device);
                tracing::info!(%version, "reloaded");
                Ok(version)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e),
        };
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .reloads
            .get_or_create(&metrics::ReloadLabels {
                result: label.into(),
            })
            .inc();
        if let Err(e) = &result {
            tracing::warn!(error = %e, "reload failed; still serving the previous model");
        }
        result
    }
}

/// One request through a fresh engine (pages in the model, builds the pool, checks it answers).
fn warm(engine: &Engine) -> crate::Result<()> {
    let cfg = &engine.model().config;
    let user = crate::UserRequest {
        long: Vec::new(),
        short: Vec::new(),
        fields: cfg
            .user_fields
            .iter()
            .map(|f| (f.name.clone(), 0))
            .collect(),
        dense: vec![0.0; cfg.user_dense],
    };
    let mut candidates = engine.candidates().row_ids();
    candidates.truncate(64);
    engine.run(&crate::Request { user, candidates }, Some(8))?;
    Ok(())
}

/// Accepted connections with `TCP_NODELAY`: a response's last segment must not wait for the
/// client's delayed ACK (measured: ~40 ms per request without it).
pub(crate) fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    })
}

/// Runs the service until SIGTERM (or SIGINT); blocks the calling thread.
pub fn run(cfg: ServeConfig) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve(cfg))
}

async fn serve(cfg: ServeConfig) -> Result<(), String> {
    let files = ModelFiles {
        model: cfg.model.clone(),
        tokens: cfg.tokens.clone(),
        candidates: cfg.candidates.clone(),
    };
    // The queue's owner is one of the pool's workers (it computes its batches itself), so the
    // pool has at least one more for work submitted from outside (a reload's warm-up).
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        t => t,
    }
    .max(2);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hcn-engine-{i}"))
            .build()
            .map_err(|e| format!("cannot start {threads} engine threads: {e}"))?,
    );
    let options = EngineOptions {
        device: cfg.device,
        parallelism: Parallelism::Pool(Arc::clone(&pool)),
        keep_awake: cfg.keep_awake,
        huge_pages: cfg.huge_pages,
        score_kernel: cfg.score_kernel,
        ..EngineOptions::default()
    };
    let (f, o) = (files.clone(), options.clone());
    let engine = tokio::task::spawn_blocking(move || State::build_engine(&f, o))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot load the engine: {e}"))?;
    let metrics = metrics::Metrics::new();
    metrics.set_model(engine.version(), engine.device_label());
    tracing::info!(
        version = engine.version(),
        device = engine.device_report(),
        score_kernel = engine.score_kernel().unwrap_or("reference"),
        "model loaded"
    );
    let state = Arc::new(State {
        engine: SharedEngine::new(engine),
        metrics,
        ready: AtomicBool::new(false),
        files: Mutex::new(files),
        reloading: tokio::sync::Mutex::new(()),
        options,
    });
    let (queue, queue_owner) = batcher::start(Arc::clone(&state), cfg.batch, pool);

    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc)
        .await
        .map_err(|e| format!("cannot listen on {} (gRPC): {e}", cfg.grpc))?;
    let http_listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|e| format!("cannot listen on {} (HTTP): {e}", cfg.http))?;
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", cfg.admin))?;
    let addr = |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| e.to_string());
    let (ga, ha, aa) = (
        addr(&grpc_listener)?,
        addr(&http_listener)?,
        addr(&admin_listener)?,
    );

    // Shutdown: SIGTERM/SIGINT flips this; every server stops accepting and drains.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|&s| s).await;
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let grpc = tokio::spawn(grpc::serve(
        grpc_listener,
        Arc::clone(&state),
        queue.clone(),
        health.clone(),
        health_service,
        cfg.max_body_bytes,
        stopped(),
    ));
    let http = tokio::spawn(http::serve_public(
        http_listener,
        Arc::clone(&state),
        queue.clone(),
        cfg.max_body_bytes,
        stopped(),
    ));
    let admin = tokio::spawn(http::serve_admin(
        admin_listener,
        Arc::clone(&state),
        stopped(),
    ));
    drop(queue);
    state.ready.store(true, Ordering::Release);
    // One line on stdout, read by the tests and by anyone starting the server by hand.
    println!("hcn serve: grpc {ga} http {ha} admin {aa}");
    tracing::info!(grpc = %ga, http = %ha, admin = %aa, "serving");

    signals(&state).await;
    tracing::info!("shutting down: draining in-flight requests");
    state.ready.store(false, Ordering::Release);
    health
        .set_not_serving::<grpc_server::PrerankServer<grpc::Service>>()
        .await;
    let _ = stop_tx.send(true);
    for (name, task) in [("gRPC", grpc), ("HTTP", http), ("admin", admin)] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("{name} server: {e}")),
            Err(e) => return Err(format!("{name} server task: {e}")),
        }
    }
    // Every handler is done, so every queue sender is gone: the queue drains and its owner ends.
    let _ = tokio::task::spawn_blocking(move || queue_owner.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the model files meanwhile.
async fn signals(state: &Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                let _ = state.reload(None).await;
            }
        }
    }
}

/// When a request's headers were read (before its body).
#[derive(Clone, Copy)]
pub(crate) struct HeadersAt(pub(crate) Instant);

pub(crate) async fn stamp_headers(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    request.extensions_mut().insert(HeadersAt(Instant::now()));
    next.run(request).await
}
