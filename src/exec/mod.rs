//! Executors: the implementations of SPEC §1 behind one interface, [`Executor`]. The engine
//! validates and resolves requests with its [`Frontend`](crate::frontend::Frontend), an executor
//! computes, and [`crate::post`] turns what it computed into a response, the same for all:
//!
//! - [`cpu::FastCpu`]: f32 on the SIMD kernels of [`crate::cpu`], SPEC §1.2's cheaper order;
//! - [`cpu::ReferenceCpu`]: the scalar f64 oracle of [`crate::reference`];
//! - `crate::cuda::CudaExecutor`: the GPU (feature `cuda`; without it a stub whose constructor
//!   says why there is none).
//!
//! [`choose`] picks one at load from [`Device`] and [`CpuKernels`] (`Auto` falls back to the
//! CPU with its reason; a GPU chosen by `Auto` that later fails also hands its batches to the
//! CPU, see [`Executor::device_fault`]).

pub(crate) mod cpu;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::frontend::Frontend;
use crate::options::{Device, EngineOptions};
use crate::request::{Request, Response, RunOptions};

/// What an executor gets besides the requests.
pub(crate) struct Ctx<'a> {
    pub fe: &'a Frontend,
    pub version: &'a Arc<str>,
    /// The CPU executor, for what every executor takes from the host (the profile vector `X̂`).
    #[allow(dead_code)] // read by the CUDA executor
    pub host: &'a cpu::CpuExecutor,
}

/// One implementation of SPEC §1 for batches of requests.
pub(crate) trait Executor: Send + Sync + std::fmt::Debug {
    /// One result per call, in order; one failure does not affect the others. Every executor
    /// validates through `ctx.fe` and finishes through [`crate::post::finish`].
    fn run_batch(&self, ctx: &Ctx<'_>, calls: &[(&Request, &RunOptions)]) -> Vec<Result<Response>>;

    /// Turns per-kernel timing on or off; false when this executor has no kernels to time
    /// (the CPU). See [`crate::kernel_times`].
    fn set_kernel_timing(&self, _on: bool) -> bool {
        false
    }

    /// Per-kernel times since timing was last turned on; `None` without kernels to time.
    fn kernel_times(&self) -> Option<crate::KernelTimes> {
        None
    }

    /// Why the device failed (a fault that poisoned it), if it did: it then serves no batch
    /// (under `Device::Auto` the engine's batches go to the CPU instead).
    fn device_fault(&self) -> Option<String> {
        None
    }
}

/// The executors an engine uses: `host` serves the split API (user side, scores of given
/// interests) and, without a device, whole requests too; `device` serves whole requests when
/// the engine runs on a GPU.
pub(crate) struct Chosen {
    pub host: cpu::CpuExecutor,
    pub device: Option<Box<dyn Executor>>,
    pub report: String,
}

/// Builds the executors `options` ask for.
pub(crate) fn choose(fe: &Frontend, options: &EngineOptions) -> Result<Chosen> {
    let host = cpu::CpuExecutor::new(fe, options)?;
    let (device, report): (Option<Box<dyn Executor>>, String) = match options.device {
        Device::Cpu => (None, "cpu: requested".to_string()),
        Device::Cuda(i) => {
            let exec = crate::cuda::CudaExecutor::new(&fe.model, &fe.tokens, &fe.candidates, i)?;
            let report = format!("cuda:{i} ({})", exec.device_name());
            (Some(Box::new(exec)), report)
        }
        Device::Auto => match crate::cuda::probe()
            .map_err(Error::Device)
            .and_then(|_| crate::cuda::CudaExecutor::new(&fe.model, &fe.tokens, &fe.candidates, 0))
        {
            Ok(exec) => {
                let report = format!("cuda:0 ({})", exec.device_name());
                (Some(Box::new(exec.with_cpu_fallback())), report)
            }
            Err(Error::Device(reason)) => (None, format!("cpu: CUDA not usable: {reason}")),
            Err(e) => (None, format!("cpu: CUDA not usable: {e}")),
        },
    };
    Ok(Chosen {
        host,
        device,
        report,
    })
}
