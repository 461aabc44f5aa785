//! The public entry point: an [`Engine`] holds a model and its two stores and serves requests.
//! It is `Send + Sync`; share one behind an `Arc` across threads.
//!
//! The engine is a facade over three parts: the front end (`src/frontend.rs`: every rule about what a request
//! may contain), an executor (`src/exec/`: the CPU fast path, the f64 reference, or CUDA)
//! chosen at load, and the shared post-processing ([`crate::post`]: the finiteness rule, the
//! top-k order, the response).
//!
//! The user side ([`Engine::user_interests`]) and the candidate side ([`Engine::score`]) are
//! separate calls so a service can cache a user's interests (they run on the CPU executor);
//! [`Engine::run`] does both plus top-k, [`Engine::run_batch`] many requests, and their `_with`
//! forms take per-call [`RunOptions`] (k per request, what to return, a deadline).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::exec::{self, cpu::CpuExecutor, Ctx, Executor};
use crate::frontend::Frontend;
use crate::model::Model;
use crate::store::ItemStore;

// The types of the engine's API, also at their old paths (`hcn_prerank::engine::…`).
pub use crate::options::{CpuKernels, Device, EngineOptions, Limits, Parallelism, UnknownIds};
pub use crate::request::{
    CancelToken, Request, Response, RunOptions, Scored, Scores, StageTimes, UserInterests,
    UserRequest,
};

/// The engine: a model, its token store and its candidate store.
pub struct Engine {
    fe: Frontend,
    options: EngineOptions,
    version: Arc<str>,
    device_report: String,
    /// The CPU executor (the split API, and whole requests without a device).
    host: CpuExecutor,
    /// The GPU executor when the engine runs on one.
    device: Option<Box<dyn Executor>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.fe.model.path)
            .field("tokens", &self.fe.tokens.path)
            .field("candidates", &self.fe.candidates.path)
            .field("version", &self.version)
            .field("options", &self.options)
            .finish()
    }
}

impl Engine {
    /// Loads the three files and builds an engine.
    pub fn load(
        model: impl AsRef<Path>,
        tokens: impl AsRef<Path>,
        candidates: impl AsRef<Path>,
        options: EngineOptions,
    ) -> Result<Self> {
        let model = Arc::new(Model::load(model)?);
        let (mut tokens, mut candidates) = (ItemStore::load(tokens)?, ItemStore::load(candidates)?);
        if options.huge_pages {
            (tokens, candidates) = (tokens.in_huge_pages()?, candidates.in_huge_pages()?);
        }
        Self::new(model, Arc::new(tokens), Arc::new(candidates), options)
    }

    /// Builds an engine from loaded parts; checks that their dimensions agree.
    pub fn new(
        model: Arc<Model>,
        tokens: Arc<ItemStore>,
        candidates: Arc<ItemStore>,
        options: EngineOptions,
    ) -> Result<Self> {
        let fe = Frontend::new(model, tokens, candidates, &options)?;
        let chosen = exec::choose(&fe, &options)?;
        let version: Arc<str> = match &options.model_version {
            Some(v) => v.as_str().into(),
            None => fe.model.version().into(),
        };
        Ok(Engine {
            fe,
            options,
            version,
            device_report: chosen.report,
            host: chosen.host,
            device: chosen.device,
        })
    }

    /// An engine whose whole requests go to `device` (the CUDA module's emulated executor).
    #[allow(dead_code)] // only the `cuda` feature builds one
    pub(crate) fn with_device(
        model: Arc<Model>,
        tokens: Arc<ItemStore>,
        candidates: Arc<ItemStore>,
        options: EngineOptions,
        device: Box<dyn Executor>,
        report: String,
    ) -> Result<Self> {
        let mut engine = Self::new(model, tokens, candidates, options)?;
        engine.device = Some(device);
        engine.device_report = report;
        Ok(engine)
    }

    pub fn model(&self) -> &Model {
        &self.fe.model
    }

    pub fn tokens(&self) -> &ItemStore {
        &self.fe.tokens
    }

    pub fn candidates(&self) -> &ItemStore {
        &self.fe.candidates
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Which device serves requests and why (e.g. why `Auto` fell back to the CPU).
    pub fn device_report(&self) -> &str {
        &self.device_report
    }

    /// Why the device executor failed (a fault that poisoned the GPU), if it did: it then serves
    /// no more batches — they fail with that reason, or, when `Device::Auto` chose the GPU, run
    /// on the CPU. `None` on the CPU and on a healthy GPU.
    pub fn device_fault(&self) -> Option<String> {
        self.device.as_ref().and_then(|d| d.device_fault())
    }

    /// The CPU fast path's candidate-scoring kernel and how it was chosen, e.g.
    /// `avx512/tiles/l2 (by rule)` or `avx512/interleaved/l1 (tuned at load, …)`
    /// ([`EngineOptions::score_kernel`]); `None` on the reference path. (A GPU serving requests
    /// scores with its own kernels; this is the CPU's, used for fallbacks.)
    pub fn score_kernel(&self) -> Option<&str> {
        self.host.score_kernel()
    }

    /// Whether a batch of requests costs much less than its requests one by one, so that a
    /// server should wait a little for one to fill: true on a GPU (one launch plan per batch);
    /// false on the CPU, where a batch runs request by request (a request that finds the engine
    /// idle should start at once; those arriving meanwhile form the next batch by themselves).
    pub fn batches_pay_off(&self) -> bool {
        self.device.is_some()
    }

    /// Turns per-kernel timing of the device executor on (clearing earlier times) or off, and
    /// says whether there is one to time: false on the CPU (nothing changes then). On a GPU each
    /// kernel launch of a batch is bracketed by two CUDA events; off (the default) it costs a
    /// launch one atomic load. See [`crate::kernel_times`] for what the figures mean; toggle it
    /// between batches.
    pub fn set_kernel_timing(&self, on: bool) -> bool {
        self.device
            .as_ref()
            .is_some_and(|d| d.set_kernel_timing(on))
    }

    /// Per-kernel device times accumulated since [`Engine::set_kernel_timing`] last turned
    /// timing on; `None` when the engine runs on the CPU.
    pub fn kernel_times(&self) -> Option<crate::KernelTimes> {
        self.device.as_ref().and_then(|d| d.kernel_times())
    }

    /// The short name of the device serving requests (`cpu`, `cuda:0`): [`device_label`] of
    /// [`Engine::device_report`].
    pub fn device_label(&self) -> &str {
        device_label(&self.device_report)
    }

    /// The model version every [`Response`] carries: [`EngineOptions::model_version`] or the
    /// first 16 hex digits of the model file's SHA-256 (SPEC §7).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The size limits of a request, checked without doing any work (a service can reject a
    /// request before queueing it). The same checks run again inside every call.
    pub fn check_limits(&self, request: &Request) -> Result<()> {
        self.fe.check_limits(request)
    }

    /// `X^U` for one user (SPEC §1.1–1.4), on the CPU executor. Validates the profile fields
    /// and dense features, skips behavior ids not in the token store (or rejects them under
    /// [`UnknownIds::Reject`]) and keeps the most recent `long_len` /
    /// `short_len` tokens.
    pub fn user_interests(&self, user: &UserRequest) -> Result<UserInterests> {
        let resolved = self.fe.resolve_user(user)?;
        let values = self.host.interests(&self.fe, &resolved, &user.dense)?;
        let cfg = &self.fe.model.config;
        Ok(UserInterests {
            n: cfg.interests,
            dim: cfg.dim,
            values,
            skipped_behaviors: resolved.skipped_behaviors,
        })
    }

    /// One score per candidate (SPEC §1.5), aligned with `candidates`, on the CPU executor;
    /// candidates not in the store get `None` and are listed in `missing_candidates` (or reject
    /// the request under [`UnknownIds::Reject`]).
    pub fn score(&self, interests: &UserInterests, candidates: &[u64]) -> Result<Scores> {
        self.fe.check_interests(interests)?;
        let opts = RunOptions::default();
        let resolved = self.fe.resolve_candidates(candidates, &opts)?;
        let (scores, _, _) = self.host.install(|| {
            self.host.score_and_select(
                &self.fe,
                &interests.values,
                candidates,
                &resolved,
                None,
                &opts,
            )
        })?;
        Ok(Scores {
            scores,
            missing_candidates: resolved.missing,
        })
    }

    /// The `k` best scored candidates, descending, ties by lower position (SPEC §1.5). Any `k`
    /// is accepted (clamped to the number of scores).
    pub fn top_k(&self, scores: &Scores, candidates: &[u64], k: usize) -> Vec<Scored> {
        let k = k.min(scores.scores.len());
        let mut winners = Vec::new();
        exec::cpu::with_top_k(|selector| {
            selector.select_by(scores.scores.len(), |i| scores.scores[i], k, &mut winners)
        });
        winners
            .iter()
            .filter_map(|&(position, score)| {
                Some(Scored {
                    position,
                    id: *candidates.get(position)?,
                    score,
                })
            })
            .collect()
    }

    /// The whole request: interests, scores, top-k (when `top_k` is given; any value is
    /// accepted and clamped to the number of candidates).
    pub fn run(&self, request: &Request, top_k: Option<usize>) -> Result<Response> {
        self.run_with(request, &RunOptions::top_k(top_k))
    }

    /// [`Engine::run`] with per-call options.
    pub fn run_with(&self, request: &Request, options: &RunOptions) -> Result<Response> {
        self.run_batch_with(&[(request, options)])
            .pop()
            .unwrap_or_else(|| Err(Error::Device("the executor returned no response".into())))
    }

    /// Many requests with one `top_k`; results in request order, one failure does not affect
    /// the others.
    pub fn run_batch(&self, requests: &[Request], top_k: Option<usize>) -> Vec<Result<Response>> {
        let opts = RunOptions::top_k(top_k);
        let calls: Vec<(&Request, &RunOptions)> = requests.iter().map(|r| (r, &opts)).collect();
        self.run_batch_with(&calls)
    }

    /// Many requests, each with its own options (k, what to return, deadline); results in
    /// order. On a GPU the batch is one launch plan; on the CPU its requests run in parallel.
    pub fn run_batch_with(&self, calls: &[(&Request, &RunOptions)]) -> Vec<Result<Response>> {
        let ctx = Ctx {
            fe: &self.fe,
            version: &self.version,
            host: &self.host,
        };
        let out = match &self.device {
            Some(device) => device.run_batch(&ctx, calls),
            None => self.host.run_batch(&ctx, calls),
        };
        if out.len() == calls.len() {
            return out;
        }
        // An executor that loses track of a request must not shift the others' answers.
        let msg = format!(
            "the executor returned {} responses for {} requests",
            out.len(),
            calls.len()
        );
        calls
            .iter()
            .map(|_| Err(Error::Device(msg.clone())))
            .collect()
    }
}

/// The short name of the device serving requests (`cpu`, `cuda:0`), from
/// an engine's device report ([`Engine::device_report`]), which starts with it (e.g. `"cpu: requested"`,
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

#[allow(dead_code)]
fn assert_engine_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
}

#[cfg(test)]
mod tests {
    use super::device_label;

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
