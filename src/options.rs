//! [`EngineOptions`]: every policy of an engine, chosen when it is built. `Default` is SPEC's
//! behaviour on the CPU.

use std::sync::Arc;
use std::time::Duration;

use crate::cpu::{Level, ScoreKernel};

/// Where the work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU executor.
    #[default]
    Cpu,
    /// CUDA device `i` (needs the `cuda` feature and a GPU); an error if unavailable.
    Cuda(usize),
    /// CUDA device 0 if usable, otherwise the CPU; [`Engine::device_report`](crate::Engine::device_report) says why.
    Auto,
}

/// What to do with an id that is not in its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownIds {
    /// SPEC's rule: unknown behaviors are skipped and counted, unknown candidates get no score and
    /// are listed as missing.
    #[default]
    Skip,
    /// Reject the whole request with an error naming the first unknown id.
    Reject,
}

/// Which threads one request may use.
#[derive(Debug, Clone)]
pub enum Parallelism {
    /// Single-threaded, on the calling thread.
    None,
    /// The rayon pool the call runs in (rayon's global pool when called from an ordinary
    /// thread, which builds it on first use); `0` = all its threads, `t` = at most `t` parallel
    /// chunks.
    Rayon(usize),
    /// A pool of `t` threads the engine builds and owns (`0` = one per core). The global pool is
    /// left alone.
    Threads(usize),
    /// A pool the caller built (shared with other work, sized by the host program). The global
    /// pool is left alone.
    Pool(Arc<rayon::ThreadPool>),
}

impl Default for Parallelism {
    /// [`Parallelism::Rayon`]`(0)`: the calling pool, all its threads.
    fn default() -> Self {
        Parallelism::Rayon(0)
    }
}

impl PartialEq for Parallelism {
    fn eq(&self, other: &Self) -> bool {
        use Parallelism::*;
        match (self, other) {
            (None, None) => true,
            (Rayon(a), Rayon(b)) | (Threads(a), Threads(b)) => a == b,
            (Pool(a), Pool(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Caps that keep one request from exhausting memory. Requests beyond them are rejected with
/// [`Error::Limit`](crate::Error::Limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most candidates in one request.
    pub max_candidates: usize,
    /// Most behavior ids in one sequence before unknown-skipping and truncation.
    pub max_behavior_ids: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_candidates: 1 << 20,
            max_behavior_ids: 1 << 16,
        }
    }
}

/// Which CPU implementation computes the math.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKernels {
    /// The fast path (f32, SPEC §1.2's cheaper evaluation order) on the best SIMD level of this
    /// CPU ([`Level::detect`]).
    #[default]
    Auto,
    /// The fast path forced to one instruction-set level (an error at build time if the CPU
    /// lacks it); tests use it to check every level.
    Level(Level),
    /// The scalar f64 reference path ([`crate::reference`]): slow, the oracle.
    Reference,
}

/// How the CPU fast path picks its candidate-scoring kernel ([`ScoreKernel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreKernelChoice {
    /// By rule from the level and `n` ([`ScoreKernel::by_rule`]): the same on every load.
    #[default]
    Rule,
    /// Timed at load on the model's shape and the candidate store
    /// ([`crate::cpu::tune_score_kernel`], a few ms); the fastest is kept. Two loads may pick
    /// different (near-equal) kernels, whose scores agree within SPEC §5, not bit for bit.
    Tune,
    /// This kernel (an error at load if this CPU or the model's `n` cannot use it).
    Pinned(ScoreKernel),
}

/// Engine options; `Default` is SPEC's behavior on the CPU.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineOptions {
    pub device: Device,
    pub kernels: CpuKernels,
    pub unknown_behaviors: UnknownIds,
    pub unknown_candidates: UnknownIds,
    pub parallelism: Parallelism,
    pub limits: Limits,
    /// After each request on a rayon pool, keep the pool's workers polling for the next
    /// request's work for this long instead of letting them fall asleep (the `spin` module
    /// explains: waking a sleeping worker costs tens of µs on a VM, a whole `public` request).
    /// Costs the pool's cores, busy for up to this window after the last request. Zero (the
    /// default) = rayon's own spin-then-sleep; the `hcn` CLI uses 1 ms. Works from any calling
    /// thread with [`Parallelism::Threads`] or [`Parallelism::Pool`]; with the other modes only
    /// when the call runs on a rayon worker.
    pub keep_awake: Duration,
    /// [`Engine::load`](crate::Engine::load) copies both stores into anonymous memory advised
    /// for transparent huge pages instead of reading them from their file mappings: fewer page
    /// walks for random rows (measured on a 2-vCPU Xeon VM: the random gather 16–19% faster,
    /// BENCHMARKS.md), at the cost of the stores' size in private memory (not shared, not
    /// evictable page cache) and the copy's time at load. Off by default.
    pub huge_pages: bool,
    /// How the fast path's scoring kernel is chosen (by rule unless asked otherwise); the
    /// choice is in [`Engine::score_kernel`](crate::Engine::score_kernel).
    pub score_kernel: ScoreKernelChoice,
    /// The model version echoed in every [`Response`](crate::Response); `None` = the first 16 hex
    /// digits of the model file's SHA-256 (SPEC §7), computed at load.
    pub model_version: Option<String>,
}
