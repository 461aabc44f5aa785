//! The real GPU: [`Backend`] over cudarc's driver API. Loads the fatbin that build.rs embedded
//! (SASS for sm_80/86/89/90, PTX for newer GPUs) and launches a kernel with its parameter struct
//! (`src/abi.rs`) as the one by-value argument ([`Backend::launch`]), with the geometry from
//! [`super::launch`]. Every driver error becomes [`Error::Driver`] naming the operation.
//!
//! **Lanes** ([`super::pool`]): the backend owns [`LANES`] non-blocking streams, each with its
//! own page-locked staging and its own device workspace, and a batch holds one of them from
//! [`Backend::begin_batch`] to the end of the batch. Concurrent batches therefore run on
//! different streams (one's copies can overlap another's kernels) and never share a buffer or a
//! staging area; a batch waits only when every lane is busy. The legacy default stream is not
//! used at all. Load-time work (weights, stores) and single launches outside a batch (the GPU
//! tests) go to a separate `load` stream, synchronised after each upload.
//!
//! **Workspaces**: every buffer of a batch — its uploaded inputs and every scratch or zeroed
//! buffer of the plan — is a [`Lease`] from its lane's pools, so a warm lane allocates no device
//! memory for a batch of a shape it has seen or a smaller one; only [`Backend::zeros_f32`] /
//! `zeros_i32` pay a memset (the top-k histogram and counts: one per batch).
//!
//! **Event tracking is disabled** (`CudaContext::disable_event_tracking`, before any buffer is
//! allocated), so no buffer carries cudarc's read/write events and no launch or copy records
//! any. Its safety contract is kept by construction: a lane's buffers and staging are used only
//! on the lane's stream, in order; a lane is handed to another batch only after its stream was
//! synchronised (the read-back's one synchronisation, or the one the end of a failed batch does);
//! load-time buffers are complete (their stream synchronised) before any lane reads them, are
//! read-only afterwards, and are freed only after the context is synchronised (the backend's
//! drop). Nothing is freed while a stream may still use it: a lane's buffers live as long as the
//! lane.
//!
//! **Faults**: a driver error that poisons the context (a sticky error: illegal address, launch
//! failure, …, or any error from synchronising a stream, which reports asynchronous faults) marks
//! the backend failed. The batch whose own call returned it gets it as its error; a batch in
//! flight at the same time gets an error saying the device failed during it; every later batch
//! is refused at [`Backend::begin_batch`] with the first reason. No batch ever returns results
//! read after a fault. A lane whose stream cannot be synchronised is abandoned with its buffers
//! (leaked, never reused).
//!
//! Per-request transfers are staged through page-locked (pinned) host memory: a copy from or to
//! pageable memory makes the driver bounce it through its own pinned buffer and, for downloads,
//! blocks until it is done. A batch copies its inputs into its lane's staging and enqueues every
//! host→device copy asynchronously, launches its kernels, enqueues every device→host copy into
//! the same staging and synchronises the stream once before reading the results. Each staging
//! buffer grows — to the next power of two — only when a larger batch arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DriverError, LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};

use super::backend::{
    entry_point, Backend, BatchScope, DeviceBuffer, DeviceInputs, HostInputs, Mark, StoreDesc,
};
use super::launch::Geometry;
use super::pool::{BatchGuard, Lane, LanePool, Lanes, Lease};
use crate::abi::{In, KernelParams, StoreRows, Variant, KERNELS};
use crate::tensor::DType;
use crate::{Error, Result};

/// Streams (lanes) per GPU: one batch can upload while another computes and a third reads back.
pub const LANES: usize = 3;

/// Whether `e` leaves the context unusable (CUDA's "sticky" errors: every later call of the
/// process on this context fails the same way).
fn is_sticky(e: &DriverError) -> bool {
    matches!(
        e.0 as u32,
        214 // ECC_UNCORRECTABLE
            | 700 // ILLEGAL_ADDRESS
            | 702 // LAUNCH_TIMEOUT
            | 709 // CONTEXT_IS_DESTROYED
            | 710 // ASSERT
            | 714..=719 // HARDWARE_STACK_ERROR, ILLEGAL_INSTRUCTION, MISALIGNED_ADDRESS,
                        // INVALID_ADDRESS_SPACE, INVALID_PC, LAUNCH_FAILED
    )
}

fn cfg(g: &Geometry) -> LaunchConfig {
    LaunchConfig {
        grid_dim: g.grid,
        block_dim: g.block,
        shared_mem_bytes: 0,
    }
}

/// An uploaded store: the raw bytes of its `vectors` (the kernel variant reads them as its dtype;
/// device allocations are 256-byte aligned, so typed loads are aligned).
#[derive(Debug)]
pub struct DeviceStore {
    bytes: CudaSlice<u8>,
    /// I8: the rows' scales; `None` for the float dtypes.
    scales: Option<CudaSlice<f32>>,
    desc: StoreDesc,
}

/// Every entry point of the module (`src/abi.rs` `KERNELS`), by (op, variant suffix).
type Kernels = HashMap<(&'static str, &'static str), CudaFunction>;

/// A kernel's parameter struct as its one by-value argument: cudarc pushes a pointer to it and
/// the driver copies the `size_of::<P>()` bytes into the kernel's parameter space, where the
/// entry point `<op>_<suffix>(const P p)` reads them. `repr(transparent)`, so the bytes are the
/// struct's, whose C layout the generated header asserts (sizes and offsets) and whose Rust
/// layout `src/abi.rs`'s test checks against the same numbers.
#[repr(transparent)]
struct ByValue<P>(P);

// SAFETY: `KernelParams` is implemented only for `#[repr(C)]` structs of plain-data fields
// (integers, floats, `repr(i32)` enums, u64 device addresses) laid out as the kernels' C structs.
unsafe impl<P: KernelParams> DeviceRepr for ByValue<P> {}

impl<T> DeviceBuffer for CudaSlice<T> {
    type Elem = T;
    fn len(&self) -> usize {
        CudaSlice::len(self)
    }
    // Event tracking is disabled for the whole context (see the module doc), so the guard
    // cudarc returns records nothing; it is dropped at once.
    fn base_addr(&self) -> u64 {
        let (ptr, _record) = self.device_ptr(self.stream());
        ptr
    }
    fn base_addr_mut(&mut self) -> u64 {
        let stream = self.stream().clone();
        let (ptr, _record) = self.device_ptr_mut(&stream);
        ptr
    }
}

/// Smallest pinned buffer, in elements: small batches all fit in the first allocation.
const MIN_PINNED: usize = 4096;

/// `cuMemHostAlloc` flags for host→device staging: write-combined memory is not snooped by the
/// CPU caches, which speeds up the PCIe transfer; the host only ever writes it, sequentially.
const UPLOAD_FLAGS: u32 = cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED;
/// Flags for device→host staging: plain cached pinned memory, because the host reads it back
/// (reads from write-combined memory are uncached and very slow).
const DOWNLOAD_FLAGS: u32 = 0;

/// The capacity, in elements, a pinned buffer grows to for `len` elements of `elem` bytes: the
/// next power of two (at least [`MIN_PINNED`]), or exactly `len` when that would overflow.
/// `None` when even `len` elements are more bytes than an allocation can have (cudarc asserts
/// `bytes < isize::MAX` and would panic, so this is checked before calling it).
fn pinned_capacity(len: usize, elem: usize) -> Option<usize> {
    let fits = |n: usize| n.checked_mul(elem).is_some_and(|b| b < isize::MAX as usize);
    let grown = len.max(MIN_PINNED).checked_next_power_of_two();
    match grown {
        Some(c) if fits(c) => Some(c),
        _ if fits(len.max(1)) => Some(len.max(1)),
        _ => None,
    }
}

/// Bytes of `len` elements of `T`, checked so that cudarc's own multiplication cannot overflow.
fn device_bytes<T>(len: usize) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b < isize::MAX as usize)
        .ok_or_else(|| Error::Device(format!("a device buffer of {len} elements is too large")))
}

/// One growable pinned buffer. Never shrinks; reallocated only when a batch needs more.
#[derive(Debug)]
struct Pinned<T> {
    buf: Option<PinnedHostSlice<T>>,
}

impl<T> Default for Pinned<T> {
    fn default() -> Self {
        Pinned { buf: None }
    }
}

impl<T: DeviceRepr + ValidAsZeroBits> Pinned<T> {
    /// The first `len` elements, growing the buffer first when it is shorter. Only called while
    /// no copy from or into this buffer is in flight (the lane's stream is idle between batches,
    /// and a batch grows each buffer before its first copy), so replacing it — which frees the
    /// old one — is safe. A failed allocation keeps the old buffer.
    fn get(&mut self, ctx: &Arc<CudaContext>, len: usize, flags: u32) -> Result<&mut [T]> {
        let elem = std::mem::size_of::<T>();
        if self.buf.as_ref().is_none_or(|b| b.len() < len) {
            let cap = pinned_capacity(len, elem).ok_or_else(|| {
                Error::Device(format!(
                    "a batch needs {len} × {elem} bytes of page-locked host memory, more than \
                     one allocation can hold"
                ))
            })?;
            // SAFETY: cudarc's only requirement is that the memory is treated as uninitialised;
            // it is zero-filled below before any slice of it is formed. The size was checked
            // above (cudarc would panic on overflow).
            let mut fresh =
                unsafe { ctx.alloc_pinned_with_flags::<T>(cap, flags) }.map_err(|e| {
                    Error::Device(format!(
                        "allocating {} bytes of page-locked host memory: {e}",
                        cap * elem
                    ))
                })?;
            let ptr = fresh
                .as_mut_ptr()
                .map_err(|e| driver("page-locked host memory", e))?;
            // SAFETY: `ptr` points to `cap` elements just allocated by cuMemHostAlloc and not
            // shared with anything yet; all-zero bytes are a valid `T` (`ValidAsZeroBits`).
            unsafe { std::ptr::write_bytes(ptr, 0, cap) };
            self.buf = Some(fresh);
        }
        let buf = self
            .buf
            .as_mut()
            .ok_or_else(|| Error::Device("page-locked staging buffer missing".into()))?;
        // `as_mut_slice` waits on the buffer's cudarc event, which is never recorded here (the
        // copies go through plain slices), so it returns at once.
        let all = buf
            .as_mut_slice()
            .map_err(|e| driver("page-locked host memory", e))?;
        all.get_mut(..len)
            .ok_or_else(|| Error::Device("page-locked staging buffer too short".into()))
    }
}

fn driver(what: &str, e: DriverError) -> Error {
    Error::Driver {
        what: what.to_string(),
        source: Box::new(e),
    }
}

/// The pinned buffers of one lane: three for the inputs, two for the results.
#[derive(Debug, Default)]
struct StagingBufs {
    up_u32: Pinned<u32>,
    up_i32: Pinned<i32>,
    up_f32: Pinned<f32>,
    down_f32: Pinned<f32>,
    down_i32: Pinned<i32>,
}

/// One stream with what a batch on it uses: staging and a workspace per element type.
struct CudaLane {
    stream: Arc<CudaStream>,
    staging: Mutex<StagingBufs>,
    f: LanePool<CudaSlice<f32>>,
    i: LanePool<CudaSlice<i32>>,
    u: LanePool<CudaSlice<u32>>,
}

impl Lane for CudaLane {
    fn end_batch(&self, clean: bool) -> std::result::Result<(), String> {
        if !clean {
            if let Err(e) = self.stream.synchronize() {
                // Copies or kernels may still target the batch's buffers and staging: never
                // free or reuse them.
                self.f.abandon_batch();
                self.i.abandon_batch();
                self.u.abandon_batch();
                return Err(format!("a stream could not be synchronised: {e}"));
            }
        }
        self.f.end_batch();
        self.i.end_batch();
        self.u.end_batch();
        Ok(())
    }
}

/// What [`Backend::upload_batch`] hands the plan: the staging itself belongs to the batch's lane
/// (kept busy until the lane is synchronised, by the read-back or by the end of the batch).
#[derive(Debug)]
pub struct LaneStaging(());

/// One GPU: its streams (lanes), the kernel module, the failed state.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    /// Load-time uploads and work outside a batch.
    load: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    k: Kernels,
    name: String,
    lanes: Arc<Lanes<CudaLane>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("lanes", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // The plan's weights and stores (freed after the backend, on the load stream) may have
        // been read by lanes: wait for every stream first. An error here has nowhere to go.
        let _ = self.ctx.synchronize();
    }
}

impl CudaBackend {
    /// Opens GPU `ordinal`, loads the embedded kernels and creates the lanes' streams. Call
    /// [`super::probe_device`] first: cudarc panics when the driver library is absent, this
    /// function assumes it is present.
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::Driver {
            what: format!("cannot open CUDA device {ordinal}"),
            source: Box::new(e),
        })?;
        // SAFETY: before any buffer exists; the backend orders every use of a buffer itself
        // (module doc: one stream per buffer, lanes handed over synchronised, load-time buffers
        // complete before use and freed after a context synchronisation).
        unsafe { ctx.disable_event_tracking() };
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let new_stream = || {
            ctx.new_stream()
                .map_err(|e| driver("creating a CUDA stream", e))
        };
        let load = new_stream()?;
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            lanes.push(CudaLane {
                stream: new_stream()?,
                staging: Mutex::default(),
                f: LanePool::default(),
                i: LanePool::default(),
                u: LanePool::default(),
            });
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(super::FATBIN.to_vec()))
            .map_err(|e| {
                let cc = ctx
                    .compute_capability()
                    .map(|(a, b)| format!("sm_{a}{b}"))
                    .unwrap_or_else(|_| "unknown".into());
                Error::Device(format!(
                    "loading the HCN kernels on {name} ({cc}): {e} (the fatbin holds sm_80/86/89/90 \
                     SASS and compute_80 PTX; an older driver than CUDA 13.0 rejects the PTX)"
                ))
            })?;
        let mut k = Kernels::new();
        for desc in KERNELS {
            for v in desc.variants.list() {
                let n = format!("{}_{}", desc.op, v.suffix);
                let f = module
                    .load_function(&n)
                    .map_err(|e| Error::Device(format!("kernel `{n}` not in the module: {e}")))?;
                k.insert((desc.op, v.suffix), f);
            }
        }
        Ok(CudaBackend {
            ctx,
            load,
            _module: module,
            k,
            name,
            lanes: Arc::new(Lanes::new(lanes)),
        })
    }

    /// The GPU's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// A driver error of `what` as the batch's error; a sticky one (or any failed
    /// synchronisation: `sync`) marks the backend failed first. The batch whose call saw the
    /// fault first is told it hit it; one that sees it after is told the device failed while it
    /// was in flight (the fault may be another batch's).
    fn fault(&self, what: &str, e: DriverError, sync: bool) -> Error {
        if !(sync || is_sticky(&e)) {
            return driver(what, e);
        }
        if self
            .lanes
            .fail(&format!("a device fault while {what}: {e}"))
        {
            return Error::Driver {
                what: format!("{what} (a device fault: the GPU executor is now failed)"),
                source: Box::new(e),
            };
        }
        let first = self.lanes.failed().unwrap_or_default();
        Error::Device(format!(
            "{what}: {e}; the GPU had already failed ({first}), so this batch's results are \
             discarded"
        ))
    }

    /// The stream of the calling thread's batch, or the load stream outside a batch.
    fn stream(&self) -> &Arc<CudaStream> {
        self.lanes.current().map_or(&self.load, |l| &l.stream)
    }

    /// A buffer of `len` elements (uninitialised, or zeroed): from the batch's lane workspace,
    /// or, outside a batch, a fresh allocation on the load stream, complete when this returns.
    fn buffer<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        zero: bool,
        pool: impl Fn(&CudaLane) -> &LanePool<CudaSlice<T>>,
    ) -> Result<Lease<CudaSlice<T>>> {
        let alloc = |stream: &Arc<CudaStream>, cap: usize| -> Result<CudaSlice<T>> {
            device_bytes::<T>(cap)?;
            // SAFETY: the contents are unspecified until a kernel, a copy or the memset below
            // writes them; `scratch_*` callers promise a kernel writes before anything reads.
            unsafe { stream.alloc::<T>(cap) }.map_err(|e| self.fault("GPU allocation", e, false))
        };
        let lane = self.lanes.current();
        let (mut lease, stream) = match lane {
            Some(lane) => (
                pool(lane).take(len, |cap| alloc(&lane.stream, cap))?,
                &lane.stream,
            ),
            None => (
                Lease::owned(alloc(&self.load, len.max(1))?, len),
                &self.load,
            ),
        };
        if zero && len > 0 {
            // The `len` elements asked for; the rest of a pooled buffer's capacity is never read.
            stream
                .memset_zeros(&mut lease.raw_mut().slice_mut(..len))
                .map_err(|e| self.fault("zeroing a GPU buffer", e, false))?;
        }
        if lane.is_none() {
            self.load
                .synchronize()
                .map_err(|e| self.fault("waiting for the GPU", e, true))?;
        }
        Ok(lease)
    }

    /// A load-time (or test) upload: a fresh buffer on the load stream, complete on return (so
    /// any lane may read it). Empty input gets one unused element (CUDA rejects empty buffers).
    fn upload<T: DeviceRepr + Copy + Default>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        let one = [T::default()];
        let src = if v.is_empty() { &one[..] } else { v };
        device_bytes::<T>(src.len())?;
        let d = self
            .load
            .clone_htod(src)
            .map_err(|e| self.fault("upload to the GPU", e, false))?;
        self.load
            .synchronize()
            .map_err(|e| self.fault("waiting for the GPU", e, true))?;
        Ok(d)
    }

    /// A synchronous download of `b` (weights or tests; a batch reads back through its staging).
    fn download<T: DeviceRepr>(&self, b: &Lease<CudaSlice<T>>) -> Result<Vec<T>> {
        let stream = self.stream();
        let v = stream
            .clone_dtoh(&b.raw().slice(..b.len()))
            .map_err(|e| self.fault("download from the GPU", e, false))?;
        stream
            .synchronize()
            .map_err(|e| self.fault("waiting for the GPU", e, true))?;
        Ok(v)
    }

    /// Copies `parts` into `pinned` back to back and enqueues one asynchronous host→device copy
    /// per part into a workspace buffer of `lane`. The copies read `pinned` after this returns:
    /// the lane keeps it untouched until its stream is synchronised.
    fn stage_up<T: DeviceRepr + ValidAsZeroBits + Copy>(
        &self,
        lane: &CudaLane,
        pinned: &mut Pinned<T>,
        pool: &LanePool<CudaSlice<T>>,
        parts: &[&[T]],
    ) -> Result<Vec<Lease<CudaSlice<T>>>> {
        let total = parts
            .iter()
            .try_fold(0usize, |a, p| a.checked_add(p.len()))
            .ok_or_else(|| Error::Device("batch inputs overflow".into()))?;
        let host = pinned.get(&self.ctx, total, UPLOAD_FLAGS)?;
        let mut at = 0;
        for p in parts {
            host[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let host: &[T] = host;
        let mut out = Vec::with_capacity(parts.len());
        at = 0;
        for p in parts {
            let mut d = pool.take(p.len(), |cap| {
                device_bytes::<T>(cap)?;
                // SAFETY: only the first `p.len()` elements are read by a kernel, and the copy
                // enqueued below on the same stream writes them first.
                unsafe { lane.stream.alloc::<T>(cap) }
                    .map_err(|e| self.fault("GPU allocation", e, false))
            })?;
            if !p.is_empty() {
                let mut dst = d.raw_mut().slice_mut(..p.len());
                lane.stream
                    .memcpy_htod(&host[at..at + p.len()], &mut dst)
                    .map_err(|e| self.fault("upload to the GPU", e, false))?;
            }
            out.push(d);
            at += p.len();
        }
        Ok(out)
    }
}

/// The summed length of `bufs`, in elements.
fn total_len<T>(bufs: &[&Lease<CudaSlice<T>>]) -> Result<usize> {
    bufs.iter()
        .try_fold(0usize, |a, b| a.checked_add(b.len()))
        .ok_or_else(|| Error::Device("batch outputs overflow".into()))
}

impl CudaBackend {
    /// Enqueues one asynchronous device→host copy per buffer (its [`DeviceBuffer::len`] first
    /// elements) into consecutive parts of `host` and returns where each part starts. `host`
    /// holds exactly the buffers' total length.
    fn stage_down<T: DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        bufs: &[&Lease<CudaSlice<T>>],
        host: &mut [T],
    ) -> Result<Vec<std::ops::Range<usize>>> {
        let mut ranges = Vec::with_capacity(bufs.len());
        let mut at = 0;
        for b in bufs {
            let part = host
                .get_mut(at..at + b.len())
                .ok_or_else(|| Error::Device("read-back staging too short".into()))?;
            if !part.is_empty() {
                stream
                    .memcpy_dtoh(&b.raw().slice(..b.len()), part)
                    .map_err(|e| self.fault("download from the GPU", e, false))?;
            }
            ranges.push(at..at + b.len());
            at += b.len();
        }
        Ok(ranges)
    }
}

impl Backend for CudaBackend {
    type F = Lease<CudaSlice<f32>>;
    type I = Lease<CudaSlice<i32>>;
    type U = Lease<CudaSlice<u32>>;
    type Store = DeviceStore;
    type Staging = LaneStaging;

    fn upload_store(
        &self,
        dtype: DType,
        bytes: &[u8],
        scales: Option<&[u8]>,
        rows: usize,
        dim: usize,
    ) -> Result<DeviceStore> {
        // A dtype without kernels, a short store or bad I8 scales is refused, never misread.
        let st = super::backend::check_store(dtype, bytes, scales, rows, dim)?;
        // cudarc's allocations are 256-byte aligned: I8 rows of D = 16k take the 128-bit loads.
        Ok(DeviceStore {
            bytes: self.upload(st.bytes)?,
            scales: st.scales.map(|s| self.upload(&s)).transpose()?,
            desc: StoreDesc { dtype, rows, dim },
        })
    }
    fn store_desc(&self, s: &DeviceStore) -> StoreDesc {
        s.desc
    }
    fn store_rows(&self, s: &DeviceStore) -> In<StoreRows> {
        In::from_addr(s.bytes.base_addr())
    }
    fn store_scales(&self, s: &DeviceStore) -> In<f32> {
        In::from_addr(s.scales.as_ref().map_or(0, |b| b.base_addr()))
    }
    fn upload_f32(&self, v: &[f32]) -> Result<Self::F> {
        Ok(Lease::owned(self.upload(v)?, v.len()))
    }
    fn upload_i32(&self, v: &[i32]) -> Result<Self::I> {
        Ok(Lease::owned(self.upload(v)?, v.len()))
    }
    fn upload_u32(&self, v: &[u32]) -> Result<Self::U> {
        Ok(Lease::owned(self.upload(v)?, v.len()))
    }
    fn zeros_f32(&self, len: usize) -> Result<Self::F> {
        self.buffer(len, true, |l| &l.f)
    }
    fn zeros_i32(&self, len: usize) -> Result<Self::I> {
        self.buffer(len, true, |l| &l.i)
    }
    fn scratch_f32(&self, len: usize) -> Result<Self::F> {
        self.buffer(len, false, |l| &l.f)
    }
    fn scratch_i32(&self, len: usize) -> Result<Self::I> {
        self.buffer(len, false, |l| &l.i)
    }
    fn download_f32(&self, b: &Self::F) -> Result<Vec<f32>> {
        self.download(b)
    }
    fn download_i32(&self, b: &Self::I) -> Result<Vec<i32>> {
        self.download(b)
    }

    fn failed(&self) -> Option<String> {
        self.lanes.failed()
    }

    fn begin_batch(&self) -> Result<BatchScope> {
        // An error a drop recorded in cudarc's one error slot (e.g. a timing event's destroy)
        // would otherwise surface in whichever call binds the context next: take it here. A
        // sticky one means the device has failed.
        if let Err(e) = self.ctx.check_err() {
            if is_sticky(&e) {
                self.lanes.fail(&format!(
                    "a device fault reported after an earlier batch: {e}"
                ));
            }
        }
        Ok(BatchScope::new(BatchGuard::begin(&self.lanes)?))
    }

    fn upload_batch(&self, inputs: HostInputs<'_>) -> Result<(LaneStaging, DeviceInputs<Self>)> {
        let lane = self.lanes.current().ok_or_else(|| {
            Error::Device("upload_batch outside a batch (Backend::begin_batch)".into())
        })?;
        // The lane's staging is idle: its stream was synchronised before the lane was handed
        // to this batch. From the first enqueued copy on it is busy until the read-back's
        // synchronisation, or the end of the batch's (which synchronises when that did not run).
        let mut bufs = lane.staging.lock().unwrap_or_else(|e| e.into_inner());
        let bufs = &mut *bufs;
        let u32s = self.stage_up(lane, &mut bufs.up_u32, &lane.u, inputs.u32s)?;
        let i32s = self.stage_up(lane, &mut bufs.up_i32, &lane.i, inputs.i32s)?;
        let f32s = self.stage_up(lane, &mut bufs.up_f32, &lane.f, inputs.f32s)?;
        Ok((LaneStaging(()), DeviceInputs { u32s, i32s, f32s }))
    }

    fn read_back<R>(
        &self,
        _staging: LaneStaging,
        f32s: &[&Self::F],
        i32s: &[&Self::I],
        read: impl FnOnce(&[&[f32]], &[&[i32]]) -> R,
    ) -> Result<R> {
        let lane = self.lanes.current().ok_or_else(|| {
            Error::Device("read_back outside a batch (Backend::begin_batch)".into())
        })?;
        let (nf, ni) = (total_len(f32s)?, total_len(i32s)?);
        let mut bufs = lane.staging.lock().unwrap_or_else(|e| e.into_inner());
        let bufs = &mut *bufs;
        // Growing a download buffer here is safe: no copy into it is in flight (the lane's
        // previous batch ended synchronised).
        let fr = self.stage_down(
            &lane.stream,
            f32s,
            bufs.down_f32.get(&self.ctx, nf, DOWNLOAD_FLAGS)?,
        )?;
        let ir = self.stage_down(
            &lane.stream,
            i32s,
            bufs.down_i32.get(&self.ctx, ni, DOWNLOAD_FLAGS)?,
        )?;
        // The one synchronisation of the batch: after it, every upload has been consumed and
        // every download has landed. An error here is an asynchronous fault of this lane's work
        // (or a sticky one of another's): the results are never read.
        lane.stream
            .synchronize()
            .map_err(|e| self.fault("waiting for the GPU", e, true))?;
        self.lanes.mark_clean(true);
        let hf: &[f32] = bufs.down_f32.get(&self.ctx, nf, DOWNLOAD_FLAGS)?;
        let hi: &[i32] = bufs.down_i32.get(&self.ctx, ni, DOWNLOAD_FLAGS)?;
        let f: Vec<&[f32]> = fr.into_iter().map(|r| &hf[r]).collect();
        let i: Vec<&[i32]> = ir.into_iter().map(|r| &hi[r]).collect();
        Ok(read(&f, &i))
    }

    unsafe fn launch<P: KernelParams>(
        &self,
        variant: Variant,
        geo: &Geometry,
        p: &P,
    ) -> Result<()> {
        if geo.is_empty() {
            return Ok(());
        }
        let f = self.k.get(&(P::DESC.op, variant.suffix)).ok_or_else(|| {
            Error::Device(format!(
                "no kernel `{}` in the module",
                entry_point::<P>(variant)
            ))
        })?;
        let arg = ByValue(*p);
        let mut l = self.stream().launch_builder(f);
        l.arg(&arg);
        // SAFETY: the one argument is the entry point's parameter struct, by value (see
        // `ByValue`); the caller guarantees what its addresses point at (`Backend::launch`).
        unsafe { l.launch(cfg(geo)) }.map_err(|e| {
            self.fault(
                &format!("launching {}", entry_point::<P>(variant)),
                e,
                false,
            )
        })?;
        Ok(())
    }

    /// A CUDA event recorded on the batch's stream now, with timing enabled (cudarc's default
    /// disables it). Created per mark: only the per-kernel timing switch calls this.
    fn mark(&self) -> Result<Mark> {
        self.stream()
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map(Mark::event)
            .map_err(|e| self.fault("recording a timing event", e, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_capacity_grows_to_powers_of_two_and_never_overflows() {
        assert_eq!(pinned_capacity(0, 4), Some(MIN_PINNED));
        assert_eq!(pinned_capacity(1, 4), Some(MIN_PINNED));
        assert_eq!(pinned_capacity(MIN_PINNED, 4), Some(MIN_PINNED));
        assert_eq!(pinned_capacity(MIN_PINNED + 1, 4), Some(2 * MIN_PINNED));
        assert_eq!(pinned_capacity(100_000, 4), Some(131_072));
        // The power of two would pass isize::MAX bytes: exactly what was asked.
        let big = (1usize << (usize::BITS - 2)) + 1;
        assert_eq!(pinned_capacity(big, 1), Some(big));
        // Not even that fits: an error for the caller, never cudarc's panic.
        assert_eq!(pinned_capacity(big, 4), None);
        assert_eq!(pinned_capacity(usize::MAX, 1), None);
    }
}
