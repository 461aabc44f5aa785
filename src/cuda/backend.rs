//! What the GPU plan (`plan.rs`) needs from a device: buffers, copies, and one call per kernel.
//! Two implementations: [`super::device::CudaBackend`] (cudarc, a real GPU) and
//! `super::emu::EmuBackend` (feature `cuda-emulation`) (the same kernels compiled for the CPU). Keeping the plan generic
//! means the orchestration — buffer sizes, strides, offsets, the order of launches — is exercised
//! end to end in CI even though CI has no GPU.
//!
//! Buffers are passed as `(buffer, element offset)` where a kernel reads or writes a column block
//! of a wider row-major matrix (e.g. layer `l`'s output inside the `n × r·D` concat buffer).
//!
//! Per-request transfers go through two batch-level calls rather than one call per buffer:
//! [`Backend::upload_batch`] sends every host input of a batch at once and hands back a
//! [`Backend::Staging`] that [`Backend::read_back`] consumes after the last launch. That pairing is
//! what lets the GPU stage the copies through page-locked host memory it reuses across batches,
//! enqueue them all asynchronously and synchronise once: the staging memory has to stay untouched
//! from the first upload until that synchronisation, so the backend, not the plan, owns it.

use crate::tensor::DType;
use crate::Result;

/// Shape and dtype of an uploaded item store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDesc {
    pub dtype: DType,
    pub rows: usize,
    pub dim: usize,
}

/// One batch's per-request host inputs, uploaded together by [`Backend::upload_batch`]
/// (candidate and token rows, their offsets, the fusion input).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostInputs<'a> {
    pub u32s: &'a [&'a [u32]],
    pub i32s: &'a [&'a [i32]],
    pub f32s: &'a [&'a [f32]],
}

/// The device copies of a [`HostInputs`], one buffer per input slice, same order. An empty input
/// may give a buffer of one unused element (CUDA rejects empty allocations).
pub struct DeviceInputs<B: Backend + ?Sized> {
    pub u32s: Vec<B::U>,
    pub i32s: Vec<B::I>,
    pub f32s: Vec<B::F>,
}

/// Device operations; every method maps to one kernel launch or one copy. Kernel-level contracts
/// (strides, offsets, limits) are those documented at the top of each `kernels/*.cu`.
#[allow(clippy::too_many_arguments)]
pub trait Backend {
    /// F32 device buffer.
    type F;
    /// I32 device buffer (offsets, top-k positions).
    type I;
    /// U32 device buffer (store row indices).
    type U;
    /// An item store's `vectors` in its own dtype.
    type Store;
    /// The host memory a batch's transfers go through, held from [`Backend::upload_batch`] to
    /// [`Backend::read_back`]. Dropping it without a read-back (a batch that failed in between)
    /// must leave it safe to reuse: the GPU waits for the batch's copies before recycling it.
    type Staging;

    fn upload_store(
        &self,
        dtype: DType,
        bytes: &[u8],
        rows: usize,
        dim: usize,
    ) -> Result<Self::Store>;
    fn store_desc(&self, s: &Self::Store) -> StoreDesc;
    // One buffer per call, synchronous downloads: for the weights at load time and for tests.
    // A batch's per-request data goes through `upload_batch` / `read_back` below.
    fn upload_f32(&self, v: &[f32]) -> Result<Self::F>;
    fn upload_i32(&self, v: &[i32]) -> Result<Self::I>;
    fn upload_u32(&self, v: &[u32]) -> Result<Self::U>;
    fn zeros_f32(&self, len: usize) -> Result<Self::F>;
    fn zeros_i32(&self, len: usize) -> Result<Self::I>;
    fn download_f32(&self, b: &Self::F) -> Result<Vec<f32>>;
    fn download_i32(&self, b: &Self::I) -> Result<Vec<i32>>;

    /// Copies every input of a batch to a new device buffer (see [`DeviceInputs`]). The copies may
    /// still be in flight when this returns; the returned staging keeps their host side alive.
    fn upload_batch(&self, inputs: HostInputs<'_>) -> Result<(Self::Staging, DeviceInputs<Self>)>;
    /// Waits for the device to finish the batch (once), then calls `read` with the whole contents
    /// of `f32s` and `i32s`, in order. The slices are only valid inside `read`.
    fn read_back<R>(
        &self,
        staging: Self::Staging,
        f32s: &[&Self::F],
        i32s: &[&Self::I],
        read: impl FnOnce(&[&[f32]], &[&[i32]]) -> R,
    ) -> Result<R>;

    /// `linear.cu`.
    fn linear(
        &self,
        x: (&Self::F, usize),
        ldx: usize,
        w: &Self::F,
        b: &Self::F,
        y: (&mut Self::F, usize),
        ldy: usize,
        rows: usize,
        in_dim: usize,
        out_dim: usize,
        relu: bool,
    ) -> Result<()>;
    /// `gather.cu`: the first `count` entries of `rows`.
    fn gather(
        &self,
        store: &Self::Store,
        rows: &Self::U,
        count: usize,
        out: &mut Self::F,
    ) -> Result<()>;
    /// `attention.cu`; K and V are column blocks `k_off`, `v_off` of one buffer.
    fn attention(
        &self,
        q: (&Self::F, usize),
        ldq: usize,
        q_user_stride: usize,
        kv: &Self::F,
        k_off: usize,
        v_off: usize,
        ldkv: usize,
        offsets: &Self::I,
        out: (&mut Self::F, usize),
        ldo: usize,
        users: usize,
        n: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<()>;
    /// `co_interest.cu`; `blocks` codes 0 long, 1 short, 2 long_aligned, 3 short_aligned.
    fn co_interest(
        &self,
        lhat: &Self::F,
        shat: &Self::F,
        ld_in: usize,
        out: &mut Self::F,
        ldo: usize,
        users: usize,
        n: usize,
        dim: usize,
        blocks: &[u8],
    ) -> Result<()>;
    /// `score.cu`; `max_m` is the largest per-user candidate count (sizes the grid).
    fn score(
        &self,
        store: &Self::Store,
        rows: &Self::U,
        offsets: &Self::I,
        xu: &Self::F,
        users: usize,
        max_m: usize,
        n: usize,
        mode: i32,
        out: &mut Self::F,
    ) -> Result<()>;
    /// `topk.cu`.
    fn topk(
        &self,
        scores: &Self::F,
        offsets: &Self::I,
        users: usize,
        k: usize,
        pos: &mut Self::I,
        val: &mut Self::F,
    ) -> Result<()>;
}
