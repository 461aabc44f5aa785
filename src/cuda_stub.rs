//! The CUDA executor of a build without the `cuda` feature (candle's dummy-backend pattern): the
//! same names as `src/cuda/`, whose constructor answers why there is no GPU, so no code outside
//! `src/cuda/` needs a `cfg`.

use crate::error::{Error, Result};
use crate::exec::{Ctx, Executor};
use crate::request::{Request, Response, RunOptions};
use crate::{ItemStore, Model};

const REASON: &str = "no CUDA support in this build (rebuild with `--features cuda`)";

/// Always `Err`: this build has no CUDA.
pub fn probe() -> std::result::Result<(), String> {
    Err(REASON.to_string())
}

/// Never constructed: [`CudaExecutor::new`] always fails.
#[derive(Debug)]
pub struct CudaExecutor(std::convert::Infallible);

impl CudaExecutor {
    /// Always [`Error::Device`]: this build has no CUDA.
    pub fn new(_: &Model, _: &ItemStore, _: &ItemStore, device: usize) -> Result<Self> {
        Err(Error::Device(format!(
            "cuda:{device} requested but {REASON}"
        )))
    }

    pub fn device_name(&self) -> &str {
        match self.0 {}
    }

    pub(crate) fn with_cpu_fallback(self) -> Self {
        self
    }

    pub fn device_fault(&self) -> Option<String> {
        match self.0 {}
    }
}

impl Executor for CudaExecutor {
    fn run_batch(&self, _: &Ctx<'_>, _: &[(&Request, &RunOptions)]) -> Vec<Result<Response>> {
        match self.0 {}
    }
}
