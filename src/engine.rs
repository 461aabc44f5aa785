//! The public entry point: an [`Engine`] holds a model and its two stores and serves requests.
//! It is `Send + Sync`; share one behind an `Arc` across threads. The user side
//! ([`Engine::user_interests`]) and the candidate side ([`Engine::score`]) are separate calls so a
//! service can cache a user's interests; [`Engine::run`] does both plus top-k, [`Engine::run_batch`]
//! many requests.
//!
//! Policies are explicit [`EngineOptions`]; the defaults are SPEC's behavior.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::cpu::{Kernels, Level, RowSource, ScoreQuery, TopK};
use crate::error::{Error, Result};
use crate::exec::user::{self, UserPlan};
use crate::model::Model;
use crate::reference;
use crate::store::ItemStore;

/// Where the work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU executor.
    #[default]
    Cpu,
    /// CUDA device `i` (needs the `cuda` feature and a GPU); an error if unavailable.
    Cuda(usize),
    /// CUDA device 0 if usable, otherwise the CPU; [`Engine::device_report`] says why.
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

/// How many threads one request may use. A value, not a global: `Rayon(0)` runs on the caller's
/// current rayon pool (install the engine's calls inside your own pool to control it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Single-threaded.
    None,
    /// Use rayon; `0` = the current pool's threads, `t` = at most `t` parallel chunks.
    Rayon(usize),
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism::Rayon(0)
    }
}

/// Caps that keep one request from exhausting memory. Requests beyond them are rejected.
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

/// Engine options; `Default` is SPEC's behavior on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// default) = rayon's own spin-then-sleep; the `hcn` CLI uses 1 ms.
    pub keep_awake: std::time::Duration,
}

/// The user side of a request (SPEC §4): behavior ids oldest first, profile fields by name, dense
/// features.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserRequest {
    pub long: Vec<u64>,
    pub short: Vec<u64>,
    pub fields: Vec<(String, u64)>,
    pub dense: Vec<f32>,
}

/// A whole request: the user and the candidate ids to score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub user: UserRequest,
    pub candidates: Vec<u64>,
}

/// `X^U`, the user's `n × D` interests (row-major), and how many behaviors were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInterests {
    pub n: usize,
    pub dim: usize,
    pub values: Vec<f32>,
    pub skipped_behaviors: usize,
}

impl UserInterests {
    /// Interest `j` (`X^U_j`).
    pub fn row(&self, j: usize) -> &[f32] {
        &self.values[j * self.dim..(j + 1) * self.dim]
    }
}

/// Scores aligned with the request's candidate list; `None` for candidates not in the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub scores: Vec<Option<f32>>,
    /// Unknown candidate ids, in request order (one entry per occurrence).
    pub missing_candidates: Vec<u64>,
}

/// One top-k entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Position in the request's candidate list.
    pub position: usize,
    pub id: u64,
    pub score: f32,
}

/// What [`Engine::run`] returns for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub scores: Vec<Option<f32>>,
    /// The `k` best by score, descending; ties by lower position. Empty when no `k` was asked.
    pub top_k: Vec<Scored>,
    pub missing_candidates: Vec<u64>,
    pub skipped_behaviors: usize,
    pub interests: UserInterests,
}

/// The engine: a model, its token store and its candidate store.
pub struct Engine {
    model: Arc<Model>,
    tokens: Arc<ItemStore>,
    candidates: Arc<ItemStore>,
    options: EngineOptions,
    device_report: String,
    /// The fast CPU path's kernels and precomputed weights; `None` on the reference path.
    fast: Option<(Kernels, UserPlan)>,
    /// The keep-awake poller of [`EngineOptions::keep_awake`].
    spinner: Arc<crate::spin::Spinner>,
    /// The GPU executor when the engine runs on CUDA (`run` / `run_batch` go there).
    #[cfg(feature = "cuda")]
    cuda: Option<crate::cuda::CudaExecutor>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.path)
            .field("tokens", &self.tokens.path)
            .field("candidates", &self.candidates.path)
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
        let tokens = Arc::new(ItemStore::load(tokens)?);
        let candidates = Arc::new(ItemStore::load(candidates)?);
        Self::new(model, tokens, candidates, options)
    }

    /// Builds an engine from loaded parts; checks that their dimensions agree.
    pub fn new(
        model: Arc<Model>,
        tokens: Arc<ItemStore>,
        candidates: Arc<ItemStore>,
        options: EngineOptions,
    ) -> Result<Self> {
        let d = model.config.dim;
        for (what, store) in [("token store", &tokens), ("candidate store", &candidates)] {
            if store.dim() != d {
                return Err(Error::Incompatible(format!(
                    "{what} {} has vectors of dimension {}, the model {} has D = {d}",
                    store.path.display(),
                    store.dim(),
                    model.path.display()
                )));
            }
        }
        #[cfg(feature = "cuda")]
        let (cuda, device_report) = match options.device {
            Device::Cpu => (None, "cpu: requested".to_string()),
            Device::Cuda(i) => {
                let exec = crate::cuda::CudaExecutor::new(&model, &tokens, &candidates, i)?;
                let report = format!("cuda:{i} ({})", exec.device_name());
                (Some(exec), report)
            }
            Device::Auto => match crate::cuda::probe()
                .map_err(Error::Device)
                .and_then(|_| crate::cuda::CudaExecutor::new(&model, &tokens, &candidates, 0))
            {
                Ok(exec) => {
                    let report = format!("cuda:0 ({})", exec.device_name());
                    (Some(exec), report)
                }
                Err(e) => (None, format!("cpu: CUDA not usable: {e}")),
            },
        };
        #[cfg(not(feature = "cuda"))]
        let device_report = match options.device {
            Device::Cpu => "cpu: requested".to_string(),
            Device::Auto => "cpu: no CUDA support in this build (feature `cuda` off)".to_string(),
            Device::Cuda(i) => {
                return Err(Error::Device(format!(
                    "cuda:{i} requested but this build has no CUDA support (rebuild with `--features cuda`)"
                )))
            }
        };
        let fast = match options.kernels {
            CpuKernels::Reference => None,
            CpuKernels::Auto => Some(Kernels::detect()),
            CpuKernels::Level(level) => Some(Kernels::new(level).ok_or_else(|| {
                Error::Device(format!("this CPU lacks the {} instructions", level.name()))
            })?),
        }
        .map(|k| (k, UserPlan::new(&model, &k)));
        Ok(Engine {
            model,
            tokens,
            candidates,
            options,
            device_report,
            fast,
            spinner: Arc::default(),
            #[cfg(feature = "cuda")]
            cuda,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokens(&self) -> &ItemStore {
        &self.tokens
    }

    pub fn candidates(&self) -> &ItemStore {
        &self.candidates
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Which device serves requests and why (e.g. why `Auto` fell back to the CPU).
    pub fn device_report(&self) -> &str {
        &self.device_report
    }
}

/// A top-k selector with its winner buffer.
type TopKScratch = (TopK, Vec<(usize, f32)>);

thread_local! {
    /// Per-thread top-k selector and buffers, reused across requests.
    static TOP_K: std::cell::RefCell<TopKScratch> =
        std::cell::RefCell::new((TopK::new(), Vec::new()));
}

/// Candidate ids resolved to store rows (see [`Engine::resolve_candidates`]).
pub(crate) struct ResolvedCandidates {
    /// One row per candidate; row 0 at the positions of unknown ids.
    rows: Vec<u32>,
    /// Positions of unknown ids, ascending.
    missing_positions: Vec<usize>,
    /// Unknown ids, in request order.
    missing: Vec<u64>,
}

/// A user request after validation: token rows (SPEC §1.1 applied) and field ids in config order.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedUser {
    pub long_rows: Vec<u32>,
    pub short_rows: Vec<u32>,
    pub field_ids: Vec<usize>,
    pub skipped_behaviors: usize,
}

/// Smallest number of candidates worth handing to another thread.
const MIN_PARALLEL_CHUNK: usize = 2048;

impl Engine {
    /// `X^U` for one user (SPEC §1.1–1.4). Validates the profile fields and dense features, skips
    /// behavior ids not in the token store (or rejects them under [`UnknownIds::Reject`]) and keeps
    /// the most recent `long_len` / `short_len` tokens.
    pub fn user_interests(&self, user: &UserRequest) -> Result<UserInterests> {
        let resolved = self.resolve_user(user)?;
        let cfg = &self.model.config;
        let x_long = self.gather_tokens(&resolved.long_rows);
        let x_short = self.gather_tokens(&resolved.short_rows);
        let values = match &self.fast {
            None => reference::user_interests(
                &self.model,
                &x_long,
                &x_short,
                &resolved.field_ids,
                &user.dense,
            ),
            Some((kernels, plan)) => {
                let mut out = vec![0.0f32; cfg.interests * cfg.dim];
                user::user_interests(
                    kernels,
                    &self.model,
                    plan,
                    &x_long,
                    &x_short,
                    &resolved.field_ids,
                    &user.dense,
                    self.options.parallelism != Parallelism::None,
                    &mut out,
                );
                out
            }
        };
        check_interests_finite(&values, cfg.dim)?;
        Ok(UserInterests {
            n: cfg.interests,
            dim: cfg.dim,
            values,
            skipped_behaviors: resolved.skipped_behaviors,
        })
    }

    /// One score per candidate (SPEC §1.5), aligned with `candidates`; candidates not in the store
    /// get `None` and are listed in `missing_candidates` (or reject the request under
    /// [`UnknownIds::Reject`]).
    pub fn score(&self, interests: &UserInterests, candidates: &[u64]) -> Result<Scores> {
        Ok(self.score_and_select(interests, candidates, None)?.0)
    }

    /// Scores and, when `k` is given, the top-k, in one pass: each chunk of candidates is scored,
    /// checked and pre-selected (its own best `k`) by the thread that scored it, while its scores
    /// are in that core's cache; only the chunks' few winners are merged here. Reading every
    /// score again on the calling thread would pull each cache line across cores.
    fn score_and_select(
        &self,
        interests: &UserInterests,
        candidates: &[u64],
        k: Option<usize>,
    ) -> Result<(Scores, Vec<Scored>)> {
        self.check_interests(interests)?;
        let resolved = self.resolve_candidates(candidates)?;
        self.score_resolved(interests, candidates, resolved, k)
    }

    /// [`Engine::score_and_select`] on candidates already resolved to store rows.
    fn score_resolved(
        &self,
        interests: &UserInterests,
        candidates: &[u64],
        resolved: ResolvedCandidates,
        k: Option<usize>,
    ) -> Result<(Scores, Vec<Scored>)> {
        let ResolvedCandidates {
            rows,
            missing_positions,
            missing: missing_candidates,
        } = resolved;
        let mut scores = vec![None; candidates.len()];
        let query = match &self.fast {
            Some((kern, _)) => Some(kern.score_query(
                &interests.values,
                interests.n,
                interests.dim,
                self.model.config.score,
            )?),
            None => None,
        };
        let chunk = |offset: usize, out: &mut [Option<f32>], rows: &[u32]| {
            if self.candidates.is_empty() {
                // Every candidate is unknown and there is no stand-in row: nothing to score.
                return Ok(Vec::new());
            }
            let mut y = vec![0.0f32; rows.len()];
            self.score_rows(query.as_ref(), interests, rows, &mut y)?;
            // One vectorised pass; the search for the offending candidate only when it fails.
            let all_finite = y.iter().fold(true, |ok, v| ok & v.is_finite());
            for (o, &v) in out.iter_mut().zip(&y) {
                *o = Some(v);
            }
            // Unknown ids had a stand-in row: drop their scores; -inf marks them for the
            // selection (every other score is finite once checked below).
            let from = missing_positions.partition_point(|&p| p < offset);
            let to = missing_positions.partition_point(|&p| p < offset + out.len());
            for &p in &missing_positions[from..to] {
                out[p - offset] = None;
                y[p - offset] = f32::NEG_INFINITY;
            }
            if !all_finite {
                check_scores_finite(out, &candidates[offset..offset + out.len()], offset)?;
            }
            let mut winners = Vec::new();
            if let Some(k) = k {
                TOP_K.with(|cell| {
                    let (selector, _) = &mut *cell.borrow_mut();
                    selector.select_scores(&y, k, &mut winners);
                });
                winners.iter_mut().for_each(|w| w.0 += offset);
            }
            Ok::<_, Error>(winners)
        };
        let chunks = self.parallel_chunks(candidates.len());
        let per_chunk: Vec<Vec<(usize, f32)>> = if chunks <= 1 {
            vec![chunk(0, &mut scores, &rows)?]
        } else {
            let size = candidates.len().div_ceil(chunks);
            scores
                .par_chunks_mut(size)
                .zip(rows.par_chunks(size))
                .enumerate()
                .map(|(c, (out, rows))| chunk(c * size, out, rows))
                .collect::<Result<_>>()?
        };
        let top = match k {
            None => Vec::new(),
            Some(k) => {
                // Each chunk's best k arrive ordered (the chunks sorted them in parallel): a
                // linear merge, ties by lower position (SPEC §1.5), gives the request's best k.
                let mut winners = Vec::with_capacity(k);
                TopK::merge_ordered(&per_chunk, k, &mut winners);
                scored(&winners, candidates)
            }
        };
        Ok((
            Scores {
                scores,
                missing_candidates,
            },
            top,
        ))
    }

    /// The `k` best scored candidates, descending, ties by lower position (SPEC §1.5).
    pub fn top_k(&self, scores: &Scores, candidates: &[u64], k: usize) -> Vec<Scored> {
        TOP_K.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (selector, winners) = &mut *guard;
            selector.select_by(scores.scores.len(), |i| scores.scores[i], k, winners);
            scored(winners, candidates)
        })
    }

    /// The whole request: interests, scores, top-k (when `top_k` is given).
    pub fn run(&self, request: &Request, top_k: Option<usize>) -> Result<Response> {
        #[cfg(feature = "cuda")]
        if let Some(exec) = &self.cuda {
            return self
                .run_cuda(exec, std::slice::from_ref(request), top_k)
                .pop()
                .unwrap_or_else(|| Err(Error::Device("the GPU returned no response".into())));
        }
        let parallel = self.options.parallelism != Parallelism::None;
        let (interests, (scores, top)) = if parallel {
            // While one thread computes the user side, another resolves the candidates and pulls
            // their store rows towards the caches (the last-level cache is shared), stopping when
            // the user side is done: the scoring that follows finds them closer than DRAM.
            let done = AtomicBool::new(false);
            let (interests, resolved) = rayon::join(
                || {
                    let interests = self.user_interests(&request.user);
                    done.store(true, AtomicOrdering::Release);
                    interests
                },
                || {
                    let resolved = self.resolve_candidates(&request.candidates)?;
                    self.warm_rows(&resolved.rows, &done);
                    Ok::<_, Error>(resolved)
                },
            );
            let interests = interests?;
            self.check_interests(&interests)?;
            let selected =
                self.score_resolved(&interests, &request.candidates, resolved?, top_k)?;
            (interests, selected)
        } else {
            let interests = self.user_interests(&request.user)?;
            let selected = self.score_and_select(&interests, &request.candidates, top_k)?;
            (interests, selected)
        };
        if parallel {
            self.spinner.extend(self.options.keep_awake);
        }
        Ok(Response {
            scores: scores.scores,
            top_k: top,
            missing_candidates: scores.missing_candidates,
            skipped_behaviors: interests.skipped_behaviors,
            interests,
        })
    }

    /// Many requests; results in request order, one failure does not affect the others.
    pub fn run_batch(&self, requests: &[Request], top_k: Option<usize>) -> Vec<Result<Response>> {
        #[cfg(feature = "cuda")]
        if let Some(exec) = &self.cuda {
            return self.run_cuda(exec, requests, top_k);
        }
        match self.options.parallelism {
            Parallelism::None => requests.iter().map(|r| self.run(r, top_k)).collect(),
            Parallelism::Rayon(_) => requests.par_iter().map(|r| self.run(r, top_k)).collect(),
        }
    }

    /// A batch on the GPU: ids resolved here (same rules and errors as the CPU path), one
    /// `run_batch` of the executor for every valid request, results mapped back to ids.
    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        exec: &crate::cuda::CudaExecutor,
        requests: &[Request],
        top_k: Option<usize>,
    ) -> Vec<Result<Response>> {
        struct Prepared {
            user: ResolvedUser,
            rows: Vec<u32>,
            positions: Vec<usize>,
            missing: Vec<u64>,
            len: usize,
        }
        let prepared: Vec<Result<Prepared>> = requests
            .iter()
            .map(|r| {
                let user = self.resolve_user(&r.user)?;
                let c = self.resolve_candidates(&r.candidates)?;
                let missing = c.missing;
                let mut gaps = c.missing_positions.iter().peekable();
                let (mut positions, mut rows) = (Vec::new(), Vec::new());
                for (i, &row) in c.rows.iter().enumerate() {
                    if gaps.next_if_eq(&&i).is_none() {
                        positions.push(i);
                        rows.push(row);
                    }
                }
                Ok(Prepared {
                    user,
                    rows,
                    positions,
                    missing,
                    len: r.candidates.len(),
                })
            })
            .collect();
        let inputs: Vec<crate::cuda::UserInput<'_>> = prepared
            .iter()
            .zip(requests)
            .filter_map(|(p, r)| p.as_ref().ok().map(|p| (p, r)))
            .map(|(p, r)| crate::cuda::UserInput {
                long_rows: &p.user.long_rows,
                short_rows: &p.user.short_rows,
                field_ids: &p.user.field_ids,
                dense: &r.user.dense,
                candidate_rows: &p.rows,
            })
            .collect();
        let outputs = match exec.run_batch(&inputs, top_k.unwrap_or(0)) {
            Ok(o) => o,
            Err(e) => {
                let msg = e.to_string();
                return prepared
                    .into_iter()
                    .map(|p| p.and_then(|_| Err(Error::Device(msg.clone()))))
                    .collect();
            }
        };
        let cfg = &self.model.config;
        let mut outputs = outputs.into_iter();
        prepared
            .into_iter()
            .zip(requests)
            .map(|(p, r)| {
                let p = p?;
                let out = outputs.next().ok_or_else(|| {
                    Error::Device("the GPU returned fewer users than sent".into())
                })?;
                let mut scores = vec![None; p.len];
                for (&pos, &s) in p.positions.iter().zip(&out.scores) {
                    scores[pos] = Some(s);
                }
                let top_k = out
                    .top_k
                    .iter()
                    .map(|&(i, score)| {
                        let position = p.positions[i];
                        Scored {
                            position,
                            id: r.candidates[position],
                            score,
                        }
                    })
                    .collect();
                Ok(Response {
                    scores,
                    top_k,
                    missing_candidates: p.missing,
                    skipped_behaviors: p.user.skipped_behaviors,
                    interests: UserInterests {
                        n: cfg.interests,
                        dim: cfg.dim,
                        values: out.interests,
                        skipped_behaviors: p.user.skipped_behaviors,
                    },
                })
            })
            .collect()
    }

    /// Store rows of the candidates, with row 0 standing in for unknown ids (whose positions are
    /// listed; their scores are discarded), and the unknown ids in request order. Dense rows let
    /// the scoring kernel run over whole chunks without compacting around the (rare) gaps.
    fn resolve_candidates(&self, candidates: &[u64]) -> Result<ResolvedCandidates> {
        let limit = self.options.limits.max_candidates;
        if candidates.len() > limit {
            return Err(Error::request(
                "candidates",
                format!(
                    "{} candidates exceed the limit of {limit}",
                    candidates.len()
                ),
            ));
        }
        // Written in place (no `push`): this loop runs once per candidate.
        let mut rows = vec![0u32; candidates.len()];
        let mut missing_positions = Vec::new();
        let mut missing = Vec::new();
        for (i, (&id, row)) in candidates.iter().zip(rows.iter_mut()).enumerate() {
            match self.candidates.lookup(id) {
                Some(r) => *row = r,
                None => {
                    if self.options.unknown_candidates == UnknownIds::Reject {
                        return Err(Error::request(
                            format!("candidates[{i}]"),
                            format!("id {id} is not in the candidate store"),
                        ));
                    }
                    missing.push(id);
                    missing_positions.push(i);
                    // `*row` stays 0: the stand-in row.
                }
            }
        }
        Ok(ResolvedCandidates {
            rows,
            missing_positions,
            missing,
        })
    }

    /// Touches the store rows of `rows` in order until `done` is set (a cache hint only).
    /// Between runs of rows it lets rayon hand this thread pending work first: the user side
    /// offers its short tower to another thread, which must not wait for a mere cache warm-up.
    fn warm_rows(&self, rows: &[u32], done: &AtomicBool) {
        let store = &self.candidates.vectors;
        for chunk in rows.chunks(256) {
            if done.load(AtomicOrdering::Acquire) {
                return;
            }
            rayon::yield_now();
            if done.load(AtomicOrdering::Acquire) {
                return;
            }
            for &r in chunk {
                if (r as usize) < store.rows() {
                    crate::tensor::prefetch(store.row_bytes(r as usize));
                }
            }
        }
    }

    fn check_interests(&self, interests: &UserInterests) -> Result<()> {
        let cfg = &self.model.config;
        if interests.n != cfg.interests
            || interests.dim != cfg.dim
            || interests.values.len() != cfg.interests * cfg.dim
        {
            return Err(Error::request(
                "interests",
                format!(
                    "expected {} × {} values, found {} × {} ({} values)",
                    cfg.interests,
                    cfg.dim,
                    interests.n,
                    interests.dim,
                    interests.values.len()
                ),
            ));
        }
        if let Some(i) = interests.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::request(
                "interests",
                format!("value {i} is not finite"),
            ));
        }
        Ok(())
    }

    /// How many pieces to split `m` candidates into.
    fn parallel_chunks(&self, m: usize) -> usize {
        match self.options.parallelism {
            Parallelism::None => 1,
            Parallelism::Rayon(t) => {
                let threads = if t == 0 {
                    rayon::current_num_threads()
                } else {
                    t
                };
                threads.min(m / MIN_PARALLEL_CHUNK).max(1)
            }
        }
    }

    fn score_rows(
        &self,
        query: Option<&ScoreQuery>,
        interests: &UserInterests,
        rows: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        if let Some(q) = query {
            return q.score_rows(RowSource::from_matrix(&self.candidates.vectors)?, rows, out);
        }
        let mode = self.model.config.score;
        let mut x = vec![0.0f32; self.model.config.dim];
        for (o, &r) in out.iter_mut().zip(rows) {
            self.candidates.vectors.row_into(r as usize, &mut x);
            *o = reference::score(&interests.values, interests.n, &x, mode);
        }
        Ok(())
    }

    fn gather_tokens(&self, rows: &[u32]) -> Vec<f32> {
        let d = self.model.config.dim;
        let mut x = vec![0.0f32; rows.len() * d];
        // Every row's loads first, then the widening: the rows are random in a large mapping.
        for &r in rows {
            crate::tensor::prefetch(self.tokens.vectors.row_bytes(r as usize));
        }
        for (chunk, &r) in x.chunks_exact_mut(d).zip(rows) {
            self.tokens.vectors.row_into(r as usize, chunk);
        }
        x
    }

    /// SPEC §1.1 and §4's request rules for the user side.
    pub(crate) fn resolve_user(&self, user: &UserRequest) -> Result<ResolvedUser> {
        let cfg = &self.model.config;
        let mut skipped = 0;
        let long_rows = self.resolve_sequence("long", &user.long, cfg.long_len, &mut skipped)?;
        let short_rows =
            self.resolve_sequence("short", &user.short, cfg.short_len, &mut skipped)?;

        // Profile fields: every configured field exactly once, by name, id inside its vocabulary.
        let mut field_ids = vec![usize::MAX; cfg.user_fields.len()];
        for (name, id) in &user.fields {
            let Some(f) = cfg.user_fields.iter().position(|f| &f.name == name) else {
                let known: Vec<&str> = cfg.user_fields.iter().map(|f| f.name.as_str()).collect();
                return Err(Error::request(
                    format!("fields.{name}"),
                    format!("not a profile field of this model (fields: {known:?})"),
                ));
            };
            if field_ids[f] != usize::MAX {
                return Err(Error::request(format!("fields.{name}"), "given twice"));
            }
            let vocab = cfg.user_fields[f].vocab;
            if *id >= vocab as u64 {
                return Err(Error::request(
                    format!("fields.{name}"),
                    format!("id {id} is outside the vocabulary 0..{vocab}"),
                ));
            }
            field_ids[f] = *id as usize;
        }
        if let Some(f) = field_ids.iter().position(|&v| v == usize::MAX) {
            return Err(Error::request(
                format!("fields.{}", cfg.user_fields[f].name),
                "missing (every profile field of the model is required)",
            ));
        }
        if user.dense.len() != cfg.user_dense {
            return Err(Error::request(
                "dense",
                format!(
                    "expected {} values, found {}",
                    cfg.user_dense,
                    user.dense.len()
                ),
            ));
        }
        if let Some(i) = user.dense.iter().position(|v| !v.is_finite()) {
            return Err(Error::request(
                format!("dense[{i}]"),
                format!("{} is not a finite number", user.dense[i]),
            ));
        }
        Ok(ResolvedUser {
            long_rows,
            short_rows,
            field_ids,
            skipped_behaviors: skipped,
        })
    }

    /// Drops ids not in the token store (counting them), then keeps the most recent `max_len`.
    fn resolve_sequence(
        &self,
        field: &str,
        ids: &[u64],
        max_len: usize,
        skipped: &mut usize,
    ) -> Result<Vec<u32>> {
        let limit = self.options.limits.max_behavior_ids;
        if ids.len() > limit {
            return Err(Error::request(
                field,
                format!("{} behavior ids exceed the limit of {limit}", ids.len()),
            ));
        }
        let mut rows = Vec::with_capacity(ids.len().min(max_len));
        for (i, &id) in ids.iter().enumerate() {
            match self.tokens.lookup(id) {
                Some(r) => rows.push(r),
                None if self.options.unknown_behaviors == UnknownIds::Reject => {
                    return Err(Error::request(
                        format!("{field}[{i}]"),
                        format!("behavior id {id} is not in the token store"),
                    ))
                }
                None => *skipped += 1,
            }
        }
        if rows.len() > max_len {
            rows.drain(..rows.len() - max_len);
        }
        Ok(rows)
    }
}

/// Every weight is finite (checked at load), but large ones can still overflow F32 for some
/// inputs. Say so as a request error, rather than let `score` blame its `interests` argument.
fn check_interests_finite(values: &[f32], dim: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::request(
            "request",
            format!(
                "X^U[{}][{}] is {}: the model's arithmetic overflows F32 for this request",
                i / dim,
                i % dim,
                values[i]
            ),
        )),
    }
}

/// Selected `(position, score)` pairs with their candidate ids.
fn scored(winners: &[(usize, f32)], candidates: &[u64]) -> Vec<Scored> {
    winners
        .iter()
        .map(|&(position, score)| Scored {
            position,
            id: candidates[position],
            score,
        })
        .collect()
}

/// A finite X^U and finite vectors can still overflow F32 in the dot products. A non-finite score
/// must not be returned: JSON writes it as `null`, the mark of a missing candidate.
/// `candidates` are the ids of `scores`, which start at request position `offset`.
fn check_scores_finite(scores: &[Option<f32>], candidates: &[u64], offset: usize) -> Result<()> {
    match scores
        .iter()
        .position(|s| s.is_some_and(|v| !v.is_finite()))
    {
        None => Ok(()),
        Some(i) => Err(Error::request(
            format!("candidates[{}]", offset + i),
            format!(
                "the score of id {} is {}: the model's arithmetic overflows F32 for this candidate",
                candidates[i],
                scores[i].unwrap_or(f32::NAN)
            ),
        )),
    }
}

#[allow(dead_code)]
fn assert_engine_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
}
