//! CUDA executor (feature `cuda`): SPEC §1 on an NVIDIA GPU for batches of users.
//!
//! * `kernels/*.cu` (one op per file, shared `common.cuh`) are compiled by build.rs with nvcc into
//!   one fatbin embedded here ([`FATBIN`]; the exact command is [`NVCC_COMMAND`]).
//! * [`plan`] is the order of launches for a batch, generic over a [`backend::Backend`]: the GPU
//!   ([`device::CudaBackend`], cudarc) or the CPU emulation of the same kernels ([`emu`], used by
//!   the tests because CI has no GPU).
//! * [`CudaExecutor`] is the entry point the engine uses: stores and weights are uploaded once,
//!   then [`CudaExecutor::run_batch`] runs `2·(2 + 4r) + 5` launches per batch whatever its size.
//!   A batch's inputs and results cross through page-locked host memory the executor keeps and
//!   reuses (see [`device`]): asynchronous copies on the executor's stream, one synchronisation
//!   per batch.
//!
//! Top-k: the kernel selects the k winners per user exactly on the device (radix select over
//! unique (score, position) keys, see `kernels/topk.cu`); only those k values come back, and the
//! host orders them (k log k).
//!
//! Nothing here touches the driver before [`probe`] said it is there: cudarc's dynamic loader
//! panics when `libcuda.so` is absent, so probing first is what keeps `Device::Auto` safe on
//! machines without a GPU.

pub mod backend;
pub mod device;
#[doc(hidden)]
pub mod emu;
pub mod launch;
pub mod plan;

pub use plan::{Plan, StoreSource, UserInput, UserOutput};

use crate::{Error, ItemStore, Model, Result};

/// The kernels: one fatbin, SASS for sm_80, sm_86, sm_89, sm_90 and compute_80 PTX.
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hcn_kernels.fatbin"));

/// The nvcc command line build.rs ran to produce [`FATBIN`].
pub const NVCC_COMMAND: &str = include_str!(concat!(env!("OUT_DIR"), "/nvcc_command.txt"));

/// Driver entry points the executor reaches through cudarc. cudarc resolves each one lazily and
/// panics when it is missing (a driver older than the CUDA 13.0 API), so they are looked up here
/// first and a missing one becomes a reason, not a panic.
const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuStreamSynchronize",
    // Pinned staging (device.rs): cudarc gives every pinned buffer an event.
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuEventCreate",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
];

/// Says whether a CUDA GPU is usable, and if not, why (no driver library, a driver too old,
/// initialisation failed, no device). Prints nothing and never panics.
pub fn probe() -> std::result::Result<(), String> {
    probe_device(0)
}

/// Like [`probe`], for GPU `ordinal`.
pub fn probe_device(ordinal: usize) -> std::result::Result<(), String> {
    // SAFETY: only tries to dlopen the driver library by its usual names; nothing is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver: libcuda.so could not be loaded".into());
    }
    // SAFETY: the library is present (checked just above), so `culib()` returns it instead of
    // panicking; looking up a symbol does not call it.
    let lib = unsafe { cudarc::driver::sys::culib() };
    for name in REQUIRED_SYMBOLS {
        let mut sym = name.as_bytes().to_vec();
        sym.push(0);
        // SAFETY: a lookup only; the returned symbol is dropped unused. The function type is
        // irrelevant for a lookup.
        if unsafe { lib.get::<unsafe extern "C" fn()>(sym.as_slice()) }.is_err() {
            return Err(format!(
                "the CUDA driver lacks `{name}`: it is older than the CUDA 13.0 API this build uses"
            ));
        }
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| format!("CUDA driver initialisation failed: {e}"))?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err("the CUDA driver sees no GPU".into());
    }
    if ordinal >= count {
        return Err(format!(
            "no CUDA device {ordinal}: the driver sees {count} GPU(s)"
        ));
    }
    Ok(())
}

/// SPEC §1 on one GPU. `Send + Sync`; concurrent `run_batch` calls share the device stream, each
/// with its own pinned staging area from the executor's pool.
#[derive(Debug)]
pub struct CudaExecutor {
    plan: Plan<device::CudaBackend>,
}

impl CudaExecutor {
    /// Opens GPU `device`, loads the kernels, uploads the model's weights and both stores.
    /// Errors: [`Error::Device`] (no usable GPU — the message is [`probe_device`]'s reason —,
    /// out of memory, model outside the kernels' limits), [`Error::Incompatible`] (store D).
    pub fn new(
        model: &Model,
        tokens: &ItemStore,
        candidates: &ItemStore,
        device: usize,
    ) -> Result<Self> {
        probe_device(device).map_err(Error::Device)?;
        let backend = device::CudaBackend::new(device)?;
        let plan = Plan::new(
            backend,
            model,
            StoreSource::from_store(tokens),
            StoreSource::from_store(candidates),
        )?;
        Ok(CudaExecutor { plan })
    }

    /// The GPU's name, e.g. for `hcn bench`'s `"device"` field.
    pub fn device_name(&self) -> &str {
        self.plan.backend().name()
    }

    /// Runs a batch (see [`Plan::run_batch`]): per user, `X^U` (n × D), one score per candidate
    /// row, and the `top_k` best `(position, score)`, best first, ties by lower position.
    /// Inputs are store rows, already resolved from ids by the engine.
    pub fn run_batch(&self, users: &[UserInput<'_>], top_k: usize) -> Result<Vec<UserOutput>> {
        self.plan.run_batch(users, top_k)
    }
}

/// The engine's view of the GPU: requests validated and resolved by the front end, one
/// [`Plan::run_batch`] for every valid request of the batch (unknown candidates compacted out,
/// mapped back after), then the shared post-processing (finiteness, the top-k order) of
/// [`crate::post`]. The kernel proposes each user's best `k` (the largest `k` of the batch);
/// [`crate::post::finish`] orders them with the CPU's comparator and keeps each request's own `k`.
impl crate::exec::Executor for CudaExecutor {
    fn run_batch(
        &self,
        ctx: &crate::exec::Ctx<'_>,
        calls: &[(&crate::Request, &crate::RunOptions)],
    ) -> Vec<Result<crate::Response>> {
        run_plan(&self.plan, ctx, calls)
    }
}

/// [`Plan::run_batch`] for the engine's requests, whatever the backend (the GPU, or the CPU
/// emulation of [`emulated_engine`]).
fn run_plan<B: backend::Backend>(
    plan: &Plan<B>,
    ctx: &crate::exec::Ctx<'_>,
    calls: &[(&crate::Request, &crate::RunOptions)],
) -> Vec<Result<crate::Response>> {
    {
        use crate::frontend::{Frontend, ResolvedCandidates, ResolvedUser};
        use std::time::Instant;
        struct Prepared {
            user: ResolvedUser,
            /// `X̂`, from the host executor (the same for every executor).
            profile: Vec<f32>,
            cands: ResolvedCandidates,
            /// Request positions of the known candidates, in order (the rows sent).
            positions: Vec<usize>,
            rows: Vec<u32>,
        }
        let start = Instant::now();
        let fe = ctx.fe;
        let prepare = |(r, o): &(&crate::Request, &crate::RunOptions)| {
            o.check("queued")?;
            let user = fe.resolve_user(&r.user)?;
            let profile = ctx.host.profile(fe, &user.field_ids, &r.user.dense);
            // The finiteness rule: a non-finite X̂ would make X^U non-finite (on the CPU this is
            // caught on X^U; the plan refuses it as an input).
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
        };
        let prepared: Vec<Result<Prepared>> = calls.iter().map(prepare).collect();
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
                // The batch failed as a whole: every request in it gets the error, same kind.
                let again = |e: &Error| match e {
                    Error::Misuse { what, reason } => Error::misuse(what, reason),
                    other => Error::Device(other.to_string()),
                };
                return prepared
                    .into_iter()
                    .map(|p| p.and_then(|_| Err(again(&e))))
                    .collect();
            }
        };
        let device_time = t.elapsed();
        let cfg = &fe.model.config;
        let mut outputs = outputs.into_iter();
        prepared
            .into_iter()
            .zip(calls)
            .map(|(p, (r, o))| {
                let p = p?;
                let out = outputs.next().ok_or_else(|| {
                    Error::Device("the GPU returned fewer users than sent".into())
                })?;
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
                    timings: crate::StageTimes {
                        resolve,
                        score: device_time,
                        ..Default::default()
                    },
                };
                crate::post::finish(
                    computed,
                    &r.candidates,
                    &p.user,
                    p.cands,
                    o,
                    (cfg.interests, cfg.dim),
                    ctx.version,
                )
            })
            .collect()
    }
}

/// The plan on the CPU emulation of the kernels ([`emu`]), as an engine executor: what the
/// tests use to run whole requests through the GPU's plan without a GPU.
struct EmulatedExecutor {
    plan: Plan<emu::EmuBackend>,
}

impl std::fmt::Debug for EmulatedExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedExecutor").finish_non_exhaustive()
    }
}

impl crate::exec::Executor for EmulatedExecutor {
    fn run_batch(
        &self,
        ctx: &crate::exec::Ctx<'_>,
        calls: &[(&crate::Request, &crate::RunOptions)],
    ) -> Vec<Result<crate::Response>> {
        run_plan(&self.plan, ctx, calls)
    }
}

/// An engine whose whole requests run through the GPU plan on the CPU emulation of the kernels
/// (tests only: slow, and not a device). Its front end, post-processing and split API are the
/// engine's own.
#[doc(hidden)]
pub fn emulated_engine(
    model: std::sync::Arc<Model>,
    tokens: std::sync::Arc<ItemStore>,
    candidates: std::sync::Arc<ItemStore>,
    options: crate::EngineOptions,
) -> Result<crate::Engine> {
    let plan = Plan::new(
        emu::EmuBackend,
        &model,
        StoreSource::from_store(&tokens),
        StoreSource::from_store(&candidates),
    )?;
    crate::Engine::with_device(
        model,
        tokens,
        candidates,
        options,
        Box::new(EmulatedExecutor { plan }),
        "cuda-emulation (CPU)".into(),
    )
}
