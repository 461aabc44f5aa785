//! The engine's view of the GPU: requests validated and resolved by the front end, one
//! [`Plan::run_batch`] for every valid request of the batch (unknown candidates compacted out,
//! mapped back after), then the shared post-processing (finiteness, the top-k order) of
//! [`crate::post`]. The kernel proposes each user's best `k` (the largest `k` of the batch);
//! [`crate::post::finish`] orders them with the CPU's comparator and keeps each request's own `k`.

use std::time::{Duration, Instant};

use super::backend::Backend;
use super::{CudaExecutor, Plan, UserInput, UserOutput};
use crate::exec::{Ctx, Executor};
use crate::frontend::{Frontend, ResolvedCandidates, ResolvedUser};
use crate::request::{Request, Response, RunOptions, StageTimes};
use crate::{Error, Result};

impl Executor for CudaExecutor {
    fn run_batch(&self, ctx: &Ctx<'_>, calls: &[(&Request, &RunOptions)]) -> Vec<Result<Response>> {
        run_or_fall_back(&self.plan, self.cpu_fallback, ctx, calls)
    }
    fn device_fault(&self) -> Option<String> {
        self.plan.backend().failed()
    }
    fn set_kernel_timing(&self, on: bool) -> bool {
        self.plan.set_kernel_timing(on);
        true
    }
    fn kernel_times(&self) -> Option<crate::KernelTimes> {
        Some(self.plan.kernel_times())
    }
}

/// One request of a batch, ready for the plan.
struct Prepared {
    user: ResolvedUser,
    /// `X̂`, from the host executor (the same for every executor).
    profile: Vec<f32>,
    cands: ResolvedCandidates,
    /// Request positions of the known candidates, in order (the rows sent).
    positions: Vec<usize>,
    rows: Vec<u32>,
}

/// The front end's rules, `X̂` from the host, the known candidates' rows.
fn prepare(ctx: &Ctx<'_>, r: &Request, o: &RunOptions) -> Result<Prepared> {
    let fe = ctx.fe;
    o.check("queued")?;
    let user = fe.resolve_user(&r.user)?;
    let profile = ctx.host.profile(fe, &user.field_ids, &r.user.dense);
    // The finiteness rule: a non-finite X̂ would make X^U non-finite (on the CPU this is caught
    // on X^U; the plan refuses it as an input).
    if let Some(i) = profile.iter().position(|v| !v.is_finite()) {
        return Err(Error::overflow(
            "interests",
            format!(
                "X̂[{i}] (the profile vector) is {}: the model's arithmetic overflows F32 for this request",
                profile[i]
            ),
        ));
    }
    let cands = fe.resolve_candidates(&r.candidates, o)?;
    let mut gaps = cands.missing_positions.iter().peekable();
    let (mut positions, mut rows) = (Vec::new(), Vec::new());
    for (i, &row) in cands.rows.iter().enumerate() {
        if gaps.next_if_eq(&&i).is_none() {
            positions.push(i);
            rows.push(row);
        }
    }
    Ok(Prepared {
        user,
        profile,
        cands,
        positions,
        rows,
    })
}

/// The plan's output for one request, mapped back to request positions and finished by
/// [`crate::post::finish`].
fn finish(
    ctx: &Ctx<'_>,
    p: Prepared,
    out: UserOutput,
    (r, o): (&Request, &RunOptions),
    timings: StageTimes,
) -> Result<Response> {
    let mut scores = vec![None; r.candidates.len()];
    for (&pos, &s) in p.positions.iter().zip(&out.scores) {
        scores[pos] = Some(s);
    }
    let proposals = out
        .top_k
        .iter()
        .filter_map(|&(i, _)| {
            let pos = *p.positions.get(i)?;
            Some((pos, scores[pos]?))
        })
        .collect();
    let computed = crate::post::Computed {
        interests: out.interests,
        scores,
        scores_checked: false,
        proposals,
        timings,
    };
    let cfg = &ctx.fe.model.config;
    crate::post::finish(
        computed,
        &r.candidates,
        &p.user,
        p.cands,
        o,
        (cfg.interests, cfg.dim),
        ctx.version,
    )
}

/// [`run_plan`], and with `cpu_fallback` (`Device::Auto`) a batch the device cannot serve
/// because it has failed — earlier, or while this batch was in flight (its results were then
/// discarded) — runs on the host executor instead: never a wrong answer, and no error for a
/// fault the engine can route around.
fn run_or_fall_back<B: Backend>(
    plan: &Plan<B>,
    cpu_fallback: bool,
    ctx: &Ctx<'_>,
    calls: &[(&Request, &RunOptions)],
) -> Vec<Result<Response>> {
    let failed = || cpu_fallback && plan.backend().failed().is_some();
    if failed() {
        return ctx.host.run_batch(ctx, calls);
    }
    let out = run_plan(plan, ctx, calls);
    if failed() && out.iter().any(|r| r.is_err()) {
        return ctx.host.run_batch(ctx, calls);
    }
    out
}

/// [`Plan::run_batch`] for the engine's requests, whatever the backend (the GPU, or the CPU
/// emulation of [`emulated_engine`]).
fn run_plan<B: Backend>(
    plan: &Plan<B>,
    ctx: &Ctx<'_>,
    calls: &[(&Request, &RunOptions)],
) -> Vec<Result<Response>> {
    let start = Instant::now();
    let prepared: Vec<Result<Prepared>> = calls.iter().map(|(r, o)| prepare(ctx, r, o)).collect();
    let resolve = start.elapsed();
    let inputs: Vec<UserInput<'_>> = prepared
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| UserInput {
            long_rows: &p.user.long_rows,
            short_rows: &p.user.short_rows,
            profile: &p.profile,
            candidate_rows: &p.rows,
        })
        .collect();
    let k_max = calls
        .iter()
        .filter_map(|(r, o)| Frontend::clamp_k(o.top_k, r.candidates.len()))
        .max()
        .unwrap_or(0);
    let t = Instant::now();
    let outputs = match plan.run_batch(&inputs, k_max) {
        Ok(o) => o,
        Err(e) => {
            // The batch failed as a whole: every request in it gets the error, same kind (an
            // error is not `Clone`: the driver's own error stays with the first request).
            let copy = match &e {
                Error::Misuse { what, reason } => Error::misuse(what, reason),
                other => Error::Device(other.to_string()),
            };
            let mut first = Some(e);
            let mut again = |_: ()| {
                first.take().unwrap_or_else(|| match &copy {
                    Error::Misuse { what, reason } => Error::misuse(what, reason),
                    other => Error::Device(other.to_string().trim_start_matches("device: ").into()),
                })
            };
            return prepared
                .into_iter()
                .map(|p| p.and_then(|_| Err(again(()))))
                .collect();
        }
    };
    // On a GPU the user side and the scoring are one launch plan: its time is `score`.
    let timings = StageTimes {
        resolve,
        score: t.elapsed(),
        user: Duration::ZERO,
        top_k: Duration::ZERO,
    };
    let mut outputs = outputs.into_iter();
    prepared
        .into_iter()
        .zip(calls)
        .map(|(p, &call)| {
            let p = p?;
            let out = outputs
                .next()
                .ok_or_else(|| Error::Device("the GPU returned fewer users than sent".into()))?;
            finish(ctx, p, out, call, timings)
        })
        .collect()
}

/// The plan on any backend as an engine executor: the CPU emulation of the kernels ([`emu`],
/// feature `cuda-emulation`), or a test's fault-injecting backend — what the tests use to run
/// whole requests through the GPU's plan without a GPU.
#[cfg(feature = "cuda-emulation")]
struct EmulatedExecutor<B: Backend> {
    plan: Plan<B>,
    cpu_fallback: bool,
}

#[cfg(feature = "cuda-emulation")]
impl<B: Backend> std::fmt::Debug for EmulatedExecutor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedExecutor").finish_non_exhaustive()
    }
}

#[cfg(feature = "cuda-emulation")]
impl<B: Backend + Send + Sync> Executor for EmulatedExecutor<B>
where
    Plan<B>: Send + Sync,
{
    fn run_batch(&self, ctx: &Ctx<'_>, calls: &[(&Request, &RunOptions)]) -> Vec<Result<Response>> {
        run_or_fall_back(&self.plan, self.cpu_fallback, ctx, calls)
    }
    fn set_kernel_timing(&self, on: bool) -> bool {
        self.plan.set_kernel_timing(on);
        true
    }
    fn kernel_times(&self) -> Option<crate::KernelTimes> {
        Some(self.plan.kernel_times())
    }
    fn device_fault(&self) -> Option<String> {
        self.plan.backend().failed()
    }
}

/// An engine whose whole requests run through the GPU plan on the CPU emulation of the kernels
/// (tests only: slow, and not a device). Its front end, post-processing and split API are the
/// engine's own.
#[cfg(feature = "cuda-emulation")]
#[doc(hidden)]
pub fn emulated_engine(
    model: std::sync::Arc<crate::Model>,
    tokens: std::sync::Arc<crate::ItemStore>,
    candidates: std::sync::Arc<crate::ItemStore>,
    options: crate::EngineOptions,
) -> Result<crate::Engine> {
    engine_on_backend(
        super::emu::EmuBackend,
        false,
        model,
        tokens,
        candidates,
        options,
    )
}

/// [`emulated_engine`] on any backend (tests: a fault-injecting one); `cpu_fallback` as
/// `Device::Auto` sets it for the GPU (after a device fault, batches run on the CPU).
#[cfg(feature = "cuda-emulation")]
#[doc(hidden)]
pub fn engine_on_backend<B: Backend + Send + Sync + 'static>(
    backend: B,
    cpu_fallback: bool,
    model: std::sync::Arc<crate::Model>,
    tokens: std::sync::Arc<crate::ItemStore>,
    candidates: std::sync::Arc<crate::ItemStore>,
    options: crate::EngineOptions,
) -> Result<crate::Engine>
where
    Plan<B>: Send + Sync,
{
    let plan = Plan::new(
        backend,
        &model,
        super::StoreSource::from_store(&tokens),
        super::StoreSource::from_store(&candidates),
    )?;
    crate::Engine::with_device(
        model,
        tokens,
        candidates,
        options,
        Box::new(EmulatedExecutor { plan, cpu_fallback }),
        "cuda-emulation (CPU)".into(),
    )
}
