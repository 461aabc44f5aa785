//! CUDA executor (feature `cuda`): SPEC §1 on an NVIDIA GPU for batches of users.
//!
//! * `kernels/*.cu` (one op per file, shared `common.cuh`) are compiled by build.rs with nvcc into
//!   one fatbin embedded here ([`FATBIN`]; the exact command is [`NVCC_COMMAND`]).
//! * Each kernel takes one argument, its parameter struct, defined once in [`abi`] (`src/abi.rs`)
//!   and written by build.rs into the header the kernels include.
//! * [`plan`] is the order of launches for a batch, generic over a [`backend::Backend`]: the GPU
//!   ([`device::CudaBackend`], cudarc) or the CPU emulation of the same kernels ([`emu`], used by
//!   the tests because CI has no GPU).
//! * [`CudaExecutor`] is the entry point the engine uses: stores and weights are uploaded once,
//!   then [`CudaExecutor::run_batch`] runs `2r + 5` launches per batch (13 for r = 4)
//!   whatever its size.
//!   A batch runs on one of the executor's streams (lanes) with that lane's persistent device
//!   workspace and page-locked staging (see [`device`], [`pool`]): no device allocation once
//!   warm, asynchronous copies, one synchronisation per batch.
//!
//! Top-k: three launches select the k winners per user exactly on the device (`kernels/topk.cu`):
//! a histogram of the scores' top bits over many blocks, the threshold bucket and the survivors
//! compacted over many blocks, then one block per user sorts the survivors — or, when too many
//! scores share the threshold bucket, runs the exact one-block radix select over unique
//! (score, position) keys. Only those k values come back ([`plan::top_k`]); the host puts them
//! in the one order (already in it on the sorted path: one linear pass).
//!
//! Nothing here touches the driver before [`probe`] said it is there: cudarc's dynamic loader
//! panics when `libcuda.so` is absent, so probing first is what keeps `Device::Auto` safe on
//! machines without a GPU.

/// The host–kernel interface (`src/abi.rs`): every kernel's parameter struct, the store dtypes
/// the store kernels are instantiated for, and the codes both sides share. build.rs writes the
/// same definitions into the C header the kernels include.
pub mod abi {
    pub use crate::abi::*;
}
pub mod backend;
pub mod device;
#[cfg(feature = "cuda-emulation")]
#[doc(hidden)]
pub mod emu;
mod executor;
pub mod launch;
pub mod plan;
pub mod pool;
mod timing;

#[cfg(feature = "cuda-emulation")]
pub use executor::{emulated_engine, engine_on_backend};
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
    // The lanes' own non-blocking streams (device.rs), and the context-wide synchronisation
    // before the backend frees what the lanes read.
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuCtxSynchronize",
    "cuCtxGetCurrent",
    // Pinned staging (device.rs): cudarc gives every pinned buffer an event.
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuEventCreate",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
    // The per-kernel timing switch (`Backend::mark`): events recorded on the stream.
    "cuEventRecord",
    "cuEventElapsedTime_v2",
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

/// SPEC §1 on one GPU. `Send + Sync`; concurrent `run_batch` calls run on different streams
/// (lanes), each with its own pinned staging and device workspace ([`device`], [`pool`]).
#[derive(Debug)]
pub struct CudaExecutor {
    plan: Plan<device::CudaBackend>,
    /// Chosen by `Device::Auto`: after a device fault, batches go to the host executor.
    cpu_fallback: bool,
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
        Ok(CudaExecutor {
            plan,
            cpu_fallback: false,
        })
    }

    /// After a device fault ([`CudaExecutor::device_fault`]) the engine's batches run on the
    /// CPU executor instead of failing (what `Device::Auto` asks for; an explicit
    /// `Device::Cuda` keeps reporting the fault).
    pub(crate) fn with_cpu_fallback(mut self) -> Self {
        self.cpu_fallback = true;
        self
    }

    /// Why the GPU failed (a sticky device fault), if it did: every later batch is then refused
    /// (or, chosen by `Device::Auto`, served by the CPU).
    pub fn device_fault(&self) -> Option<String> {
        use backend::Backend;
        self.plan.backend().failed()
    }

    /// The GPU's name, e.g. for `hcn bench`'s `"device"` field.
    pub fn device_name(&self) -> &str {
        self.plan.backend().name()
    }

    /// Turns per-kernel timing on (clearing earlier times) or off; see [`Plan::set_kernel_timing`].
    pub fn set_kernel_timing(&self, on: bool) {
        self.plan.set_kernel_timing(on);
    }

    /// Per-kernel device times since timing was last turned on (CUDA events around each launch).
    pub fn kernel_times(&self) -> crate::KernelTimes {
        self.plan.kernel_times()
    }

    /// Runs a batch (see [`Plan::run_batch`]): per user, `X^U` (n × D), one score per candidate
    /// row, and the `top_k` best `(position, score)`, best first, ties by lower position.
    /// Inputs are store rows, already resolved from ids by the engine.
    pub fn run_batch(&self, users: &[UserInput<'_>], top_k: usize) -> Result<Vec<UserOutput>> {
        self.plan.run_batch(users, top_k)
    }
}
