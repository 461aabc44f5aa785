//! What the GPU plan (`plan.rs`) needs from a device: buffers, copies, and one generic kernel
//! launch. Two implementations: [`super::device::CudaBackend`] (cudarc, a real GPU) and
//! `super::emu::EmuBackend` (feature `cuda-emulation`) (the same kernels compiled for the CPU).
//! Keeping the plan generic means the orchestration — buffer sizes, strides, offsets, the order of
//! launches — is exercised end to end in CI even though CI has no GPU.
//!
//! A kernel is launched with its parameter struct (`src/abi.rs`, e.g. [`crate::cuda::abi::ScoreParams`]),
//! which the caller fills: shapes, modes, and the device addresses of the buffers, taken with
//! [`input`] / [`output`] (which check that the extent the kernel touches lies inside the buffer;
//! an element offset addresses a column block of a wider row-major matrix, e.g. layer `l`'s
//! output inside the `n × r·D` concat buffer). [`Backend::launch`] passes the struct as the
//! kernel's one by-value argument, so no backend knows any kernel's arguments.
//!
//! Per-request transfers go through two batch-level calls rather than one call per buffer:
//! [`Backend::upload_batch`] sends every host input of a batch at once and hands back a
//! [`Backend::Staging`] that [`Backend::read_back`] consumes after the last launch. That pairing is
//! what lets the GPU stage the copies through page-locked host memory it reuses across batches,
//! enqueue them all asynchronously and synchronise once: the staging memory has to stay untouched
//! from the first upload until that synchronisation, so the backend, not the plan, owns it.

use std::time::Instant;

use super::launch::Geometry;
use crate::abi::{In, KernelParams, Out, StoreRows, Variant};
use crate::tensor::DType;
use crate::{Error, Result};

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

/// A device buffer of `Elem`s: what [`input`] and [`output`] take an address of.
pub trait DeviceBuffer {
    type Elem;
    /// Elements in the buffer.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device address of element 0, for a kernel that reads the buffer.
    fn base_addr(&self) -> u64;
    /// The device address of element 0, for a kernel that writes the buffer.
    fn base_addr_mut(&mut self) -> u64;
}

fn span<B: DeviceBuffer>(b: &B, at: usize, len: usize) -> Result<u64> {
    match at.checked_add(len) {
        Some(end) if end <= b.len() => {
            Ok(b.base_addr() + (at * std::mem::size_of::<B::Elem>()) as u64)
        }
        _ => Err(Error::Device(format!(
            "a kernel argument spans elements {at}..{at}+{len} of a device buffer of {}",
            b.len()
        ))),
    }
}

/// The address of elements `at .. at + len` of `b`, which a kernel reads; an error when they are
/// not all inside `b`.
pub fn input<B: DeviceBuffer>(b: &B, at: usize, len: usize) -> Result<In<B::Elem>> {
    span(b, at, len).map(In::from_addr)
}

/// The address of elements `at .. at + len` of `b`, which a kernel writes; an error when they
/// are not all inside `b`.
pub fn output<B: DeviceBuffer>(b: &mut B, at: usize, len: usize) -> Result<Out<B::Elem>> {
    span(b, at, len)?;
    let base = b.base_addr_mut();
    Ok(Out::from_addr(
        base + (at * std::mem::size_of::<B::Elem>()) as u64,
    ))
}

/// The store kernels' variant for a store of `dtype` (`src/abi.rs` `STORE_DTYPES`).
pub fn store_variant(dtype: DType) -> Result<Variant> {
    Variant::for_store(dtype.name()).ok_or_else(|| {
        Error::Device(format!(
            "the CUDA kernels have no variant for {} stores",
            dtype.name()
        ))
    })
}

/// An item store as a backend uploads it, checked ([`check_store`]).
#[derive(Debug)]
pub struct CheckedStore<'a> {
    /// Exactly `rows × dim` elements of the store's dtype.
    pub bytes: &'a [u8],
    /// I8: one scale per row; `None` for the float dtypes.
    pub scales: Option<Vec<f32>>,
}

/// What every backend checks before uploading a store (the kernels trust it): a variant for
/// `dtype` ([`store_variant`]), `rows × dim` elements in `bytes`, and SPEC §3's rules for the
/// scales, as the store loader applies them to a file (`src/store/load.rs`): `scales`
/// (little-endian F32, any alignment) present exactly for I8, one per row, each finite and
/// ≥ 0, `scale · max|q|` finite in F32, and no value −128. A store that breaks them is an
/// [`Error::Misuse`] naming the rule (a loaded [`crate::ItemStore`] never does), never misread.
pub fn check_store<'a>(
    dtype: DType,
    bytes: &'a [u8],
    scales: Option<&[u8]>,
    rows: usize,
    dim: usize,
) -> Result<CheckedStore<'a>> {
    store_variant(dtype)?;
    let len = rows
        .checked_mul(dim)
        .and_then(|e| e.checked_mul(dtype.size()))
        .ok_or_else(|| Error::Device(format!("a store of {rows} × {dim} is too large")))?;
    let bytes = bytes.get(..len).ok_or_else(|| {
        Error::Device(format!(
            "a store of {rows} × {dim} {} needs {len} bytes, got {}",
            dtype.name(),
            bytes.len()
        ))
    })?;
    let bad = |reason: String| Error::misuse("store scales", reason);
    let scales = match (dtype, scales) {
        (DType::I8, None) => {
            return Err(bad(
                "missing: an I8 store needs one F32 scale per row (SPEC §3)".into(),
            ))
        }
        (DType::I8, Some(b)) => b,
        (_, None) => {
            return Ok(CheckedStore {
                bytes,
                scales: None,
            })
        }
        (_, Some(_)) => {
            return Err(bad(format!(
                "given with {} vectors; only I8 stores have scales",
                dtype.name()
            )))
        }
    };
    if scales.len() != rows * 4 {
        return Err(bad(format!(
            "{} bytes, expected {} (one F32 per row of {rows})",
            scales.len(),
            rows * 4
        )));
    }
    let mut out = Vec::with_capacity(rows);
    for (r, c) in scales.chunks_exact(4).enumerate() {
        let s = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let q = &bytes[r * dim..(r + 1) * dim];
        // The loader's order: the values, then the scale.
        if q.contains(&0x80) {
            return Err(bad(format!(
                "row {r} holds the value -128 (I8 values are in [-127, 127])"
            )));
        }
        crate::store::check_row_scale(r, s, q).map_err(bad)?;
        out.push(s);
    }
    Ok(CheckedStore {
        bytes,
        scales: Some(out),
    })
}

/// A point in a backend's stream of work, for per-kernel timing ([`Backend::mark`]): a CUDA
/// event on the GPU, a host timestamp on a backend whose launches finish before they return.
pub struct Mark(MarkKind);

enum MarkKind {
    Host(Instant),
    Event(cudarc::driver::CudaEvent),
}

impl std::fmt::Debug for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            MarkKind::Host(t) => f.debug_tuple("Mark::Host").field(t).finish(),
            MarkKind::Event(_) => f.write_str("Mark::Event"),
        }
    }
}

impl Mark {
    /// The host clock now.
    pub fn now() -> Mark {
        Mark(MarkKind::Host(Instant::now()))
    }

    /// A CUDA event already recorded on the stream (created with timing enabled).
    pub(crate) fn event(e: cudarc::driver::CudaEvent) -> Mark {
        Mark(MarkKind::Event(e))
    }

    /// Microseconds from `self` to `end`. Two events must have been recorded on one stream and
    /// have completed (read them after the stream was synchronised).
    pub fn elapsed_us(&self, end: &Mark) -> Result<f64> {
        match (&self.0, &end.0) {
            (MarkKind::Host(a), MarkKind::Host(b)) => {
                Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e6)
            }
            (MarkKind::Event(a), MarkKind::Event(b)) => a
                .elapsed_ms(b)
                .map(|ms| f64::from(ms) * 1e3)
                .map_err(|e| Error::Driver {
                    what: "reading a kernel's timing events".into(),
                    source: Box::new(e),
                }),
            _ => Err(Error::Device(
                "a host timestamp and a device event cannot be compared".into(),
            )),
        }
    }
}

/// A batch's hold on its backend ([`Backend::begin_batch`]): dropping it ends the batch.
#[derive(Default)]
pub struct BatchScope(Option<Box<dyn std::any::Any>>);

impl BatchScope {
    /// A scope whose end is `guard`'s drop.
    pub fn new<G: 'static>(guard: G) -> Self {
        BatchScope(Some(Box::new(guard)))
    }
}

impl std::fmt::Debug for BatchScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BatchScope")
            .field(&self.0.is_some())
            .finish()
    }
}

/// Device operations: buffers, copies, and [`Backend::launch`] for every kernel.
pub trait Backend {
    /// F32 device buffer.
    type F: DeviceBuffer<Elem = f32>;
    /// I32 device buffer (offsets, top-k positions).
    type I: DeviceBuffer<Elem = i32>;
    /// U32 device buffer (store row indices).
    type U: DeviceBuffer<Elem = u32>;
    /// An item store's `vectors` in its own dtype.
    type Store;
    /// The host memory a batch's transfers go through, held from [`Backend::upload_batch`] to
    /// [`Backend::read_back`]. Dropping it without a read-back (a batch that failed in between)
    /// must leave it safe to reuse: the GPU waits for the batch's copies before recycling it.
    type Staging;

    /// Uploads `rows × dim` elements of `dtype` and, for I8, the rows' scales (`scales`:
    /// little-endian F32 bytes), after [`check_store`].
    fn upload_store(
        &self,
        dtype: DType,
        bytes: &[u8],
        scales: Option<&[u8]>,
        rows: usize,
        dim: usize,
    ) -> Result<Self::Store>;
    fn store_desc(&self, s: &Self::Store) -> StoreDesc;
    /// The address of a store's rows, for the store kernels (`gather`, `score`, `score_mma`),
    /// whose variant ([`store_variant`]) reads them as the store's dtype. 16-byte aligned: the
    /// I8 kernels' 128-bit loads and `score_mma`'s 16-byte `cp.async` rely on it.
    fn store_rows(&self, s: &Self::Store) -> In<StoreRows>;
    /// The address of an I8 store's `rows` scales (`AttendParams::scales`,
    /// `ScoreParams::scales`); null for a float store.
    fn store_scales(&self, s: &Self::Store) -> In<f32>;
    // One buffer per call, synchronous downloads: for the weights at load time and for tests.
    // A batch's per-request data goes through `upload_batch` / `read_back` below.
    fn upload_f32(&self, v: &[f32]) -> Result<Self::F>;
    fn upload_i32(&self, v: &[i32]) -> Result<Self::I>;
    fn upload_u32(&self, v: &[u32]) -> Result<Self::U>;
    /// A buffer of `len` zeros. Only for a kernel that relies on zero contents (accumulates into
    /// it, or reads slots it may not write); every other buffer is [`Backend::scratch_f32`].
    fn zeros_f32(&self, len: usize) -> Result<Self::F>;
    fn zeros_i32(&self, len: usize) -> Result<Self::I>;
    /// A buffer of `len` elements whose contents are unspecified (stale data of an earlier batch,
    /// or poison under the emulation): for a kernel that writes every element before anything
    /// reads it. Inside a batch ([`Backend::begin_batch`]) it comes from the backend's
    /// persistent workspace and costs neither an allocation nor a memset once warm.
    fn scratch_f32(&self, len: usize) -> Result<Self::F> {
        self.zeros_f32(len)
    }
    fn scratch_i32(&self, len: usize) -> Result<Self::I> {
        self.zeros_i32(len)
    }
    fn download_f32(&self, b: &Self::F) -> Result<Vec<f32>>;
    fn download_i32(&self, b: &Self::I) -> Result<Vec<i32>>;

    /// Starts a batch on the calling thread: the backend binds it to a lane (on the GPU a stream
    /// with its own staging and workspace, [`super::pool`]) until the returned scope is dropped.
    /// Every buffer, copy and launch of the batch between the two goes to that lane; buffers
    /// taken in the batch must be dropped before the scope. An error when the backend has failed
    /// (a device fault earlier). The default: nothing to bind.
    fn begin_batch(&self) -> Result<BatchScope> {
        Ok(BatchScope::default())
    }

    /// Why the backend has failed (a device fault that poisoned it), if it has: every batch is
    /// then refused at [`Backend::begin_batch`]. The default: never.
    fn failed(&self) -> Option<String> {
        None
    }

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

    /// Runs the kernel entry point `<P::DESC.op>_<variant.suffix>` over `geo` with `p` as its one
    /// argument (nothing when `geo` is empty). The kernel contract (strides, offsets, limits) is
    /// the one documented at the top of `kernels/<op>.cu`; `launch.rs` gives the geometry and
    /// checks the limits.
    ///
    /// # Safety
    /// Every address in `p` must be one of this backend's (from [`input`], [`output`],
    /// [`Backend::store_rows`] or [`Backend::store_scales`]) and cover what the kernel reads or writes through it for the
    /// shapes in `p` and `geo`, and the buffers must live until the kernel has run (on the GPU:
    /// until they are dropped, which is ordered after the launch on the same stream). Index
    /// arguments (rows, offsets) must be in range.
    unsafe fn launch<P: KernelParams>(&self, variant: Variant, geo: &Geometry, p: &P)
        -> Result<()>;

    /// A mark of the work enqueued so far, for per-kernel timing (only called while timing is
    /// on). The default, the host clock, is right for a backend whose launches have finished
    /// when they return (the emulation); the GPU records an event on its stream.
    fn mark(&self) -> Result<Mark> {
        Ok(Mark::now())
    }
}

/// The name of the entry point `<op>_<suffix>` of `P`'s kernel.
pub fn entry_point<P: KernelParams>(variant: Variant) -> String {
    format!("{}_{}", P::DESC.op, variant.suffix)
}
