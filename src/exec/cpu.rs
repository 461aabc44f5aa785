//! The CPU executors: one driver ([`CpuExecutor`]) over two implementations of the math
//! ([`CpuMath`]): [`FastCpu`] (f32 SIMD kernels, SPEC §1.2's cheaper order) and [`ReferenceCpu`]
//! (the scalar f64 oracle). The driver does what both share: the pool, the user side overlapped
//! with candidate resolution, chunked scoring with each chunk's finiteness check and
//! pre-selection of its best k while its scores are in cache, the merge, keep-awake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::{Ctx, Executor};
use crate::cpu::{tune_score_kernel, Kernels, RowSource, ScoreKernel, TopK};
use crate::error::{Error, Result};
use crate::fast::{self, UserPlan};
use crate::frontend::{Frontend, ResolvedCandidates, ResolvedUser};
use crate::options::{CpuKernels, EngineOptions, Parallelism, ScoreKernelChoice};
use crate::post::{self, Computed};
use crate::reference;
use crate::request::{Request, Response, RunOptions, StageTimes};

/// Scores store rows: `out[i] = y(X^U, row rows[i])`.
pub(crate) type RowScorer<'a> = Box<dyn Fn(&[u32], &mut [f32]) -> Result<()> + Sync + 'a>;

/// The math of SPEC §1 on the CPU, as the driver needs it.
pub(crate) trait CpuMath: Send + Sync + std::fmt::Debug {
    /// `X^U` (`n × D`) of a resolved user; `parallel`: the towers may run side by side.
    fn interests(
        &self,
        fe: &Frontend,
        user: &ResolvedUser,
        dense: &[f32],
        parallel: bool,
    ) -> Result<Vec<f32>>;
    /// `X̂` (SPEC §1.4, `D` values): the profile vector, computed on the host for every
    /// executor (the GPU plan takes it as an input).
    fn profile(&self, fe: &Frontend, field_ids: &[usize], dense: &[f32]) -> Vec<f32>;
    /// A scorer of candidate-store rows for these (finite, well-shaped) interests.
    fn scorer<'a>(&'a self, fe: &'a Frontend, interests: &'a [f32]) -> Result<RowScorer<'a>>;
    /// The scoring kernel and how it was chosen (`None`: the reference path).
    fn score_kernel(&self) -> Option<&str> {
        None
    }
}

/// f32 on the SIMD kernels of [`crate::cpu`].
#[derive(Debug)]
pub(crate) struct FastCpu {
    kernels: Kernels,
    plan: UserPlan,
    score: ScoreKernel,
    /// `score`'s name and how it was chosen, for reports.
    score_report: String,
}

impl FastCpu {
    fn new(fe: &Frontend, kernels: Kernels, choice: ScoreKernelChoice) -> Result<Self> {
        let n = fe.model.config.interests;
        let (score, score_report) = match choice {
            ScoreKernelChoice::Rule => {
                // VNNI only changes how I8 rows are scored: named where it is used.
                let k = ScoreKernel::by_rule(kernels.level(), n)
                    .for_store(fe.candidates.vectors.dtype(), fe.model.config.dim);
                (k, format!("{} (by rule)", k.name()))
            }
            ScoreKernelChoice::Pinned(k) => {
                // A pinned `/vnni` scores other stores and shapes as without it (`ScoreKernel`).
                k.check(n)?;
                (k, format!("{} (pinned)", k.name()))
            }
            ScoreKernelChoice::Tune => {
                let src = RowSource::from_matrix(&fe.candidates.vectors)?;
                let t = tune_score_kernel(src, n, fe.model.config.score, TUNE_ROWS, TUNE_ROUNDS)?;
                let times: Vec<String> = t
                    .times_us
                    .iter()
                    .map(|(k, us)| format!("{} {us:.0} µs", k.name()))
                    .collect();
                let report = format!(
                    "{} (tuned at load, {TUNE_ROWS} rows: {})",
                    t.kernel.name(),
                    times.join(", ")
                );
                (t.kernel, report)
            }
        };
        let plan = UserPlan::new(&fe.model, &kernels);
        Ok(FastCpu {
            kernels,
            plan,
            score,
            score_report,
        })
    }
}

/// Rows and rounds of [`tune_score_kernel`] at load: a few ms for the SPEC §6 profiles.
const TUNE_ROWS: usize = 2048;
const TUNE_ROUNDS: usize = 5;

impl CpuMath for FastCpu {
    fn interests(
        &self,
        fe: &Frontend,
        user: &ResolvedUser,
        dense: &[f32],
        parallel: bool,
    ) -> Result<Vec<f32>> {
        let cfg = &fe.model.config;
        let x_long = self.gather_tokens(fe, &user.long_rows)?;
        let x_short = self.gather_tokens(fe, &user.short_rows)?;
        let x_hat = self.profile(fe, &user.field_ids, dense);
        let mut out = vec![0.0f32; cfg.interests * cfg.dim];
        fast::user_interests(
            &self.kernels,
            &fe.model,
            &self.plan,
            &x_long,
            &x_short,
            &x_hat,
            parallel,
            &mut out,
        );
        Ok(out)
    }

    fn profile(&self, fe: &Frontend, field_ids: &[usize], dense: &[f32]) -> Vec<f32> {
        fast::profile::profile(&self.kernels, &fe.model, &self.plan.mlp, field_ids, dense)
    }

    fn scorer<'a>(&'a self, fe: &'a Frontend, interests: &'a [f32]) -> Result<RowScorer<'a>> {
        let cfg = &fe.model.config;
        let q = self
            .score
            .query(interests, cfg.interests, cfg.dim, cfg.score)?;
        let store = &fe.candidates.vectors;
        Ok(Box::new(move |rows, out| {
            q.score_rows(RowSource::from_matrix(store)?, rows, out)
        }))
    }

    fn score_kernel(&self) -> Option<&str> {
        Some(&self.score_report)
    }
}

impl FastCpu {
    /// Token rows gathered into `rows.len() × D` f32 by the SIMD kernels (I8 rows: `scale · q`).
    fn gather_tokens(&self, fe: &Frontend, rows: &[u32]) -> Result<Vec<f32>> {
        let mut x = vec![0.0f32; rows.len() * fe.model.config.dim];
        self.kernels
            .gather_rows(RowSource::from_matrix(&fe.tokens.vectors)?, rows, &mut x)?;
        Ok(x)
    }
}

/// The scalar f64 oracle of [`crate::reference`].
#[derive(Debug)]
pub(crate) struct ReferenceCpu;

impl CpuMath for ReferenceCpu {
    fn interests(
        &self,
        fe: &Frontend,
        user: &ResolvedUser,
        dense: &[f32],
        _: bool,
    ) -> Result<Vec<f32>> {
        let x_long = gather_tokens_f64(fe, &user.long_rows);
        let x_short = gather_tokens_f64(fe, &user.short_rows);
        Ok(reference::user_interests_f64(
            &fe.model,
            &x_long,
            &x_short,
            &user.field_ids,
            dense,
        ))
    }

    fn profile(&self, fe: &Frontend, field_ids: &[usize], dense: &[f32]) -> Vec<f32> {
        reference::profile(&fe.model, field_ids, dense)
    }

    fn scorer<'a>(&'a self, fe: &'a Frontend, interests: &'a [f32]) -> Result<RowScorer<'a>> {
        let cfg = &fe.model.config;
        let (n, dim, mode) = (cfg.interests, cfg.dim, cfg.score);
        Ok(Box::new(move |rows, out| {
            let store = &fe.candidates.vectors;
            let mut x = vec![0.0f64; dim];
            for (o, &r) in out.iter_mut().zip(rows) {
                check_row(r, store.rows())?;
                store.row_into_f64(r as usize, &mut x);
                *o = reference::score_f64(interests, n, &x, mode);
            }
            Ok(())
        }))
    }
}

/// A row index the front end resolved is inside its store; an error (not a panic) if not.
fn check_row(r: u32, rows: usize) -> Result<()> {
    if (r as usize) < rows {
        Ok(())
    } else {
        Err(Error::Incompatible(format!(
            "row index {r} is outside the store's {rows} rows"
        )))
    }
}

/// Token rows gathered into `rows.len() × D` f64, exactly (I8 rows: `f64(scale) · q`).
fn gather_tokens_f64(fe: &Frontend, rows: &[u32]) -> Vec<f64> {
    let d = fe.model.config.dim;
    let store = &fe.tokens.vectors;
    let mut x = vec![0.0f64; rows.len() * d];
    for (chunk, &r) in x.chunks_exact_mut(d).zip(rows) {
        // The front end resolved the rows from this store.
        if (r as usize) < store.rows() {
            store.row_into_f64(r as usize, chunk);
        }
    }
    x
}

thread_local! {
    /// Per-thread top-k selector and buffers, reused across requests.
    static TOP_K: std::cell::RefCell<TopK> = std::cell::RefCell::new(TopK::new());
}

/// Runs `f` with this thread's reusable top-k selector (its buffers are kept between calls).
pub(crate) fn with_top_k<R>(f: impl FnOnce(&mut TopK) -> R) -> R {
    TOP_K.with(|cell| f(&mut cell.borrow_mut()))
}

/// Smallest number of candidates worth handing to another thread.
const MIN_PARALLEL_CHUNK: usize = 2048;
/// Rows scored between two deadline / cancellation checks (when the call has either).
const CHECK_EVERY: usize = 8192;

/// The CPU driver over one [`CpuMath`].
#[derive(Debug)]
pub(crate) struct CpuExecutor {
    math: Box<dyn CpuMath>,
    parallelism: Parallelism,
    /// The pool of [`Parallelism::Threads`] / [`Parallelism::Pool`]; calls run inside it.
    pool: Option<Arc<rayon::ThreadPool>>,
    spinner: Arc<crate::spin::Spinner>,
    keep_awake: Duration,
}

impl CpuExecutor {
    pub fn new(fe: &Frontend, options: &EngineOptions) -> Result<Self> {
        let math: Box<dyn CpuMath> = match options.kernels {
            CpuKernels::Reference => Box::new(ReferenceCpu),
            CpuKernels::Auto => {
                Box::new(FastCpu::new(fe, Kernels::detect(), options.score_kernel)?)
            }
            CpuKernels::Level(level) => {
                let kernels = Kernels::new(level).ok_or_else(|| {
                    Error::Device(format!("this CPU lacks the {} instructions", level.name()))
                })?;
                Box::new(FastCpu::new(fe, kernels, options.score_kernel)?)
            }
        };
        let pool = match &options.parallelism {
            Parallelism::Threads(t) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(*t)
                    .thread_name(|i| format!("hcn-{i}"))
                    .build()
                    .map_err(|e| Error::Device(format!("could not start {t} threads: {e}")))?,
            )),
            Parallelism::Pool(p) => Some(Arc::clone(p)),
            Parallelism::None | Parallelism::Rayon(_) => None,
        };
        Ok(CpuExecutor {
            math,
            parallelism: options.parallelism.clone(),
            pool,
            spinner: Arc::default(),
            keep_awake: options.keep_awake,
        })
    }

    fn parallel(&self) -> bool {
        self.parallelism != Parallelism::None
    }

    /// The fast path's scoring kernel and how it was chosen (`None`: the reference path).
    pub fn score_kernel(&self) -> Option<&str> {
        self.math.score_kernel()
    }

    /// Runs `f` on the engine's pool when it has one (so the global pool stays unbuilt).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// How many pieces to split `m` candidates into (called inside [`CpuExecutor::install`]).
    fn parallel_chunks(&self, m: usize) -> usize {
        let threads = match self.parallelism {
            Parallelism::None => return 1,
            Parallelism::Rayon(t) if t > 0 => t,
            _ => rayon::current_num_threads(),
        };
        threads.min(m / MIN_PARALLEL_CHUNK).max(1)
    }

    /// `X̂` of a resolved user (for an executor that takes it as an input).
    #[allow(dead_code)] // the CUDA executor
    pub fn profile(&self, fe: &Frontend, field_ids: &[usize], dense: &[f32]) -> Vec<f32> {
        self.math.profile(fe, field_ids, dense)
    }

    /// `X^U` of a resolved user, checked finite.
    pub fn interests(&self, fe: &Frontend, user: &ResolvedUser, dense: &[f32]) -> Result<Vec<f32>> {
        let values = self.install(|| self.math.interests(fe, user, dense, self.parallel()))?;
        post::check_interests_finite(&values, fe.model.config.dim)?;
        Ok(values)
    }

    /// One request, inside the pool.
    fn run_one(&self, ctx: &Ctx<'_>, req: &Request, opts: &RunOptions) -> Result<Response> {
        let fe = ctx.fe;
        let start = Instant::now();
        opts.check("before the user side")?;
        let user = fe.resolve_user(&req.user)?;
        let mut times = StageTimes {
            resolve: start.elapsed(),
            ..StageTimes::default()
        };
        let dim = fe.model.config.dim;
        let (interests, resolved) = if self.parallel() {
            // While one thread computes the user side, another resolves the candidates (and
            // picks up the short tower the user side offers). It does not pull the candidates'
            // rows towards the caches any more: the scoring kernels prefetch their own rows, and
            // on a Zen 5 that warm-up (into the other core's L2) left F16 scoring no faster and
            // made I8 scoring 2× slower (BENCHMARKS.md, session 7).
            let (interests, resolved) = rayon::join(
                || {
                    let t = Instant::now();
                    let x = self.math.interests(fe, &user, &req.user.dense, true);
                    (x, t.elapsed())
                },
                || {
                    let t = Instant::now();
                    let r = fe.resolve_candidates(&req.candidates, opts)?;
                    Ok::<_, Error>((r, t.elapsed()))
                },
            );
            let (resolved, resolve) = resolved?;
            times.user = interests.1;
            times.resolve += resolve;
            (interests.0?, resolved)
        } else {
            let t = Instant::now();
            let x = self.math.interests(fe, &user, &req.user.dense, false)?;
            times.user = t.elapsed();
            let t = Instant::now();
            let r = fe.resolve_candidates(&req.candidates, opts)?;
            times.resolve += t.elapsed();
            (x, r)
        };
        post::check_interests_finite(&interests, dim)?;
        opts.check("after the user side")?;
        let k = Frontend::clamp_k(opts.top_k, req.candidates.len());
        let (scores, proposals, score_time) =
            self.score_and_select(fe, &interests, &req.candidates, &resolved, k, opts)?;
        times.score = score_time.0;
        times.top_k = score_time.1;
        let computed = Computed {
            interests,
            scores,
            scores_checked: true,
            proposals,
            timings: times,
        };
        let cfg = &fe.model.config;
        post::finish(
            computed,
            &req.candidates,
            &user,
            resolved,
            opts,
            (cfg.interests, cfg.dim),
            ctx.version,
        )
    }

    /// Scores (when `opts.return_scores`, aligned with `ids`, `None` at unknown ones) and, when
    /// `k` is given, the best `k` `(position, score)`, ordered, in one pass: each chunk of
    /// candidates is scored, checked and pre-selected (its own best `k`) by the thread that
    /// scored it, while its scores are in that core's cache; only the chunks' few winners are
    /// merged here. Reading every score again on the calling thread would pull each cache line
    /// across cores. Also returns the time of the scoring and of the merge.
    #[allow(clippy::type_complexity)]
    pub fn score_and_select(
        &self,
        fe: &Frontend,
        interests: &[f32],
        ids: &[u64],
        resolved: &ResolvedCandidates,
        k: Option<usize>,
        opts: &RunOptions,
    ) -> Result<(Vec<Option<f32>>, Vec<(usize, f32)>, (Duration, Duration))> {
        let start = Instant::now();
        let m = ids.len();
        let mut scores = if opts.return_scores {
            vec![None; m]
        } else {
            Vec::new()
        };
        let scorer = self.math.scorer(fe, interests)?;
        let job = ChunkJob {
            scorer: &scorer,
            fe,
            resolved,
            ids,
            k,
            opts,
        };
        let chunk =
            |offset: usize, out: &mut [Option<f32>], rows: &[u32]| job.run(offset, out, rows);
        let rows = &resolved.rows;
        let chunks = self.parallel_chunks(m);
        let per_chunk: Vec<Vec<(usize, f32)>> = if chunks <= 1 {
            vec![chunk(0, &mut scores, rows)?]
        } else {
            let size = m.div_ceil(chunks);
            if scores.is_empty() {
                rows.par_chunks(size)
                    .enumerate()
                    .map(|(c, rows)| chunk(c * size, &mut [], rows))
                    .collect::<Result<_>>()?
            } else {
                scores
                    .par_chunks_mut(size)
                    .zip(rows.par_chunks(size))
                    .enumerate()
                    .map(|(c, (out, rows))| chunk(c * size, out, rows))
                    .collect::<Result<_>>()?
            }
        };
        let scored = start.elapsed();
        let mut winners = Vec::new();
        if let Some(k) = k {
            // Each chunk's best k arrive ordered (the chunks sorted them in parallel): a
            // linear merge, ties by lower position (SPEC §1.5), gives the request's best k.
            winners.reserve(k);
            TopK::merge_ordered(&per_chunk, k, &mut winners);
        }
        Ok((scores, winners, (scored, start.elapsed() - scored)))
    }

    /// Keep-awake after a request (see [`crate::spin`]).
    fn after_request(&self) {
        if self.parallel() {
            self.spinner.extend(self.keep_awake);
        }
    }
}

impl Executor for CpuExecutor {
    fn run_batch(&self, ctx: &Ctx<'_>, calls: &[(&Request, &RunOptions)]) -> Vec<Result<Response>> {
        self.install(|| {
            let out = match self.parallelism {
                Parallelism::None => calls.iter().map(|(r, o)| self.run_one(ctx, r, o)).collect(),
                _ if calls.len() == 1 => vec![self.run_one(ctx, calls[0].0, calls[0].1)],
                _ => calls
                    .par_iter()
                    .map(|(r, o)| self.run_one(ctx, r, o))
                    .collect(),
            };
            self.after_request();
            out
        })
    }
}

/// One chunk of a request's candidates, scored by the thread that takes it.
struct ChunkJob<'a> {
    scorer: &'a RowScorer<'a>,
    fe: &'a Frontend,
    resolved: &'a ResolvedCandidates,
    ids: &'a [u64],
    k: Option<usize>,
    opts: &'a RunOptions,
}

impl ChunkJob<'_> {
    /// Scores `rows` (request positions `offset..`) into `out` (empty when the caller wants no
    /// scores), applies the finiteness rule, and returns the chunk's best `k`, ordered.
    fn run(
        &self,
        offset: usize,
        out: &mut [Option<f32>],
        rows: &[u32],
    ) -> Result<Vec<(usize, f32)>> {
        let (missing, opts) = (&self.resolved.missing_positions, self.opts);
        if self.fe.candidates.is_empty() {
            // Every candidate is unknown and there is no stand-in row: nothing to score.
            return Ok(Vec::new());
        }
        let mut y = vec![0.0f32; rows.len()];
        if opts.can_stop() {
            for (ys, rs) in y.chunks_mut(CHECK_EVERY).zip(rows.chunks(CHECK_EVERY)) {
                opts.check("scoring")?;
                (self.scorer)(rs, ys)?;
            }
        } else {
            (self.scorer)(rows, &mut y)?;
        }
        post::check_scores_finite(&y, offset, |p| self.resolved.is_known(p), self.ids)?;
        for (o, &v) in out.iter_mut().zip(&y) {
            *o = Some(v);
        }
        // Unknown ids had a stand-in row: drop their scores; -inf marks them for the
        // selection (every other score is finite, checked above).
        let from = missing.partition_point(|&p| p < offset);
        let to = missing.partition_point(|&p| p < offset + rows.len());
        for &p in &missing[from..to] {
            if let Some(o) = out.get_mut(p - offset) {
                *o = None;
            }
            y[p - offset] = f32::NEG_INFINITY;
        }
        let mut winners = Vec::new();
        if let Some(k) = self.k {
            with_top_k(|selector| selector.select_scores(&y, k, &mut winners));
            winners.iter_mut().for_each(|w| w.0 += offset);
        }
        Ok(winners)
    }
}
