//! The real GPU: [`Backend`] over cudarc's driver API. Loads the fatbin that build.rs embedded
//! (SASS for sm_80/86/89/90, PTX for newer GPUs), keeps one stream, and launches a kernel with
//! its parameter struct (`src/abi.rs`) as the one by-value argument ([`Backend::launch`]), with
//! the geometry from [`launch`]. Every driver error becomes [`Error::Device`] naming the
//! operation.
//!
//! Per-request transfers are staged through page-locked (pinned) host memory: a copy from or to
//! pageable memory makes the driver bounce it through its own pinned buffer and, for downloads,
//! blocks until it is done, so each of a batch's copies would cost a round trip. Here a batch
//! copies its inputs into a [`PinnedStaging`] and enqueues every host→device copy asynchronously
//! on the stream, launches its kernels, enqueues every device→host copy into the same staging and
//! synchronises the stream once before reading the results. Staging areas live in a pool owned by
//! the backend (one per batch in flight, so concurrent `run_batch` calls never share one); each
//! grows — to the next power of two — only when a larger batch arrives, so steady-state requests
//! allocate no pinned memory at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DriverError, LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};

use super::backend::{
    entry_point, Backend, DeviceBuffer, DeviceInputs, HostInputs, Mark, StoreDesc,
};
use super::launch::Geometry;
use crate::abi::{In, KernelParams, StoreRows, Variant, KERNELS};
use crate::tensor::DType;
use crate::{Error, Result};

fn dev(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Driver {
        what: what.to_string(),
        source: Box::new(e),
    }
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
    // The guard cudarc returns would record a read/write event on drop, which matters only with
    // several streams (cudarc's multi-stream mode): the backend has one stream, which orders
    // every copy, launch and free, so it is dropped at once.
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
    /// no copy from or into this buffer is in flight (see [`PinnedStaging`]), so replacing it —
    /// which frees the old one — is safe. A failed allocation keeps the old buffer.
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
            let ptr = fresh.as_mut_ptr().map_err(dev("page-locked host memory"))?;
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
        let all = buf.as_mut_slice().map_err(dev("page-locked host memory"))?;
        all.get_mut(..len)
            .ok_or_else(|| Error::Device("page-locked staging buffer too short".into()))
    }
}

/// The pinned buffers of one batch in flight: three for the inputs, two for the results.
#[derive(Debug, Default)]
struct StagingBufs {
    up_u32: Pinned<u32>,
    up_i32: Pinned<i32>,
    up_f32: Pinned<f32>,
    down_f32: Pinned<f32>,
    down_i32: Pinned<i32>,
}

type Pool = Arc<Mutex<Vec<StagingBufs>>>;

/// A batch's staging area, taken from the backend's pool by [`Backend::upload_batch`] and given
/// back when dropped. The invariant that makes the asynchronous copies sound: its buffers are
/// neither written, nor freed, nor handed to another batch while a copy from or into them may be
/// in flight. `read_back` synchronises the stream before it marks the area `idle`; a batch that
/// fails between upload and read-back drops it busy, and the drop synchronises the stream first.
pub struct PinnedStaging {
    bufs: StagingBufs,
    pool: Pool,
    stream: Arc<CudaStream>,
    /// No copy involving these buffers is in flight.
    idle: bool,
}

impl std::fmt::Debug for PinnedStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedStaging")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl Drop for PinnedStaging {
    fn drop(&mut self) {
        let bufs = std::mem::take(&mut self.bufs);
        if !self.idle && self.stream.synchronize().is_err() {
            // The context failed with copies possibly still targeting these buffers: freeing
            // them (or letting another batch write them) could let a late DMA scribble over
            // reused host memory. Leaking them is the safe choice on a dead device.
            std::mem::forget(bufs);
            return;
        }
        // A poisoned lock only means another thread panicked while pushing or popping; the Vec
        // itself is always consistent.
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(bufs);
    }
}

/// One GPU, one stream, the kernel module, the pinned staging pool.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    k: Kernels,
    name: String,
    staging: Pool,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Opens GPU `ordinal` and loads the embedded kernels. Call [`super::probe_device`] first:
    /// cudarc panics when the driver library is absent, this function assumes it is present.
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::Driver {
            what: format!("cannot open CUDA device {ordinal}"),
            source: Box::new(e),
        })?;
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let stream = ctx.default_stream();
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
            stream,
            _module: module,
            k,
            name,
            staging: Pool::default(),
        })
    }

    /// The GPU's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// cudarc rejects zero-length allocations; empty buffers get one (unused) element.
    fn upload<T: cudarc::driver::DeviceRepr + Copy + Default>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>> {
        let one = [T::default()];
        let src = if v.is_empty() { &one[..] } else { v };
        self.stream
            .clone_htod(src)
            .map_err(dev("upload to the GPU"))
    }
}

impl CudaBackend {
    /// A staging area for one batch: an idle one from the pool, or a new empty one (its pinned
    /// buffers are allocated on first use).
    fn take_staging(&self) -> PinnedStaging {
        let bufs = self
            .staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        PinnedStaging {
            bufs,
            pool: self.staging.clone(),
            stream: self.stream.clone(),
            idle: true,
        }
    }

    /// Copies `parts` into `pinned` back to back and enqueues one asynchronous host→device copy
    /// per part into a new device buffer. The copies read `pinned` after this returns: the caller
    /// keeps it untouched until the stream is synchronised.
    fn stage_up<T: DeviceRepr + ValidAsZeroBits + Copy>(
        &self,
        pinned: &mut Pinned<T>,
        parts: &[&[T]],
    ) -> Result<Vec<CudaSlice<T>>> {
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
            let d = if p.is_empty() {
                // cudarc rejects zero-length allocations; the kernels read nothing from it.
                self.stream
                    .alloc_zeros::<T>(1)
                    .map_err(dev("GPU allocation"))?
            } else {
                // SAFETY: the buffer is uninitialised only until the copy enqueued right after
                // on the same stream overwrites all of it; nothing reads it before.
                let mut d =
                    unsafe { self.stream.alloc::<T>(p.len()) }.map_err(dev("GPU allocation"))?;
                self.stream
                    .memcpy_htod(&host[at..at + p.len()], &mut d)
                    .map_err(dev("upload to the GPU"))?;
                d
            };
            out.push(d);
            at += p.len();
        }
        Ok(out)
    }
}

/// The summed length of `bufs`, in elements.
fn total_len<T>(bufs: &[&CudaSlice<T>]) -> Result<usize> {
    bufs.iter()
        .try_fold(0usize, |a, b| a.checked_add(b.len()))
        .ok_or_else(|| Error::Device("batch outputs overflow".into()))
}

/// Enqueues one asynchronous device→host copy per buffer into consecutive parts of `host` and
/// returns where each part starts. `host` holds exactly the buffers' total length.
fn stage_down<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    bufs: &[&CudaSlice<T>],
    host: &mut [T],
) -> Result<Vec<std::ops::Range<usize>>> {
    let mut ranges = Vec::with_capacity(bufs.len());
    let mut at = 0;
    for b in bufs {
        let part = host
            .get_mut(at..at + b.len())
            .ok_or_else(|| Error::Device("read-back staging too short".into()))?;
        stream
            .memcpy_dtoh(*b, part)
            .map_err(dev("download from the GPU"))?;
        ranges.push(at..at + b.len());
        at += b.len();
    }
    Ok(ranges)
}

impl Backend for CudaBackend {
    type F = CudaSlice<f32>;
    type I = CudaSlice<i32>;
    type U = CudaSlice<u32>;
    type Store = DeviceStore;
    type Staging = PinnedStaging;

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
        self.upload(v)
    }
    fn upload_i32(&self, v: &[i32]) -> Result<Self::I> {
        self.upload(v)
    }
    fn upload_u32(&self, v: &[u32]) -> Result<Self::U> {
        self.upload(v)
    }
    fn zeros_f32(&self, len: usize) -> Result<Self::F> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(dev("GPU allocation"))
    }
    fn zeros_i32(&self, len: usize) -> Result<Self::I> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(dev("GPU allocation"))
    }
    fn download_f32(&self, b: &Self::F) -> Result<Vec<f32>> {
        self.stream
            .clone_dtoh(b)
            .map_err(dev("download from the GPU"))
    }
    fn download_i32(&self, b: &Self::I) -> Result<Vec<i32>> {
        self.stream
            .clone_dtoh(b)
            .map_err(dev("download from the GPU"))
    }

    fn upload_batch(&self, inputs: HostInputs<'_>) -> Result<(PinnedStaging, DeviceInputs<Self>)> {
        let mut st = self.take_staging();
        // From the first enqueued copy on, the staging is busy until a synchronisation: if
        // anything below fails, dropping `st` waits for what was enqueued.
        st.idle = false;
        let bufs = &mut st.bufs;
        let u32s = self.stage_up(&mut bufs.up_u32, inputs.u32s)?;
        let i32s = self.stage_up(&mut bufs.up_i32, inputs.i32s)?;
        let f32s = self.stage_up(&mut bufs.up_f32, inputs.f32s)?;
        Ok((st, DeviceInputs { u32s, i32s, f32s }))
    }

    fn read_back<R>(
        &self,
        mut staging: PinnedStaging,
        f32s: &[&Self::F],
        i32s: &[&Self::I],
        read: impl FnOnce(&[&[f32]], &[&[i32]]) -> R,
    ) -> Result<R> {
        let (nf, ni) = (total_len(f32s)?, total_len(i32s)?);
        staging.idle = false;
        let bufs = &mut staging.bufs;
        // Growing a download buffer here is safe: these two are only ever used inside
        // `read_back`, which leaves them idle (synchronised) whether it succeeds or fails.
        let fr = stage_down(
            &self.stream,
            f32s,
            bufs.down_f32.get(&self.ctx, nf, DOWNLOAD_FLAGS)?,
        )?;
        let ir = stage_down(
            &self.stream,
            i32s,
            bufs.down_i32.get(&self.ctx, ni, DOWNLOAD_FLAGS)?,
        )?;
        // The one synchronisation of the batch: after it, every upload has been consumed and
        // every download has landed, so the staging is idle again.
        self.stream
            .synchronize()
            .map_err(dev("waiting for the GPU"))?;
        staging.idle = true;
        let bufs = &mut staging.bufs;
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
        let mut l = self.stream.launch_builder(f);
        l.arg(&arg);
        // SAFETY: the one argument is the entry point's parameter struct, by value (see
        // `ByValue`); the caller guarantees what its addresses point at (`Backend::launch`).
        unsafe { l.launch(cfg(geo)) }.map_err(|e| Error::Driver {
            what: format!("launching {}", entry_point::<P>(variant)),
            source: Box::new(e),
        })?;
        Ok(())
    }

    /// A CUDA event recorded on the stream now, with timing enabled (cudarc's default disables
    /// it). Created per mark: only the per-kernel timing switch calls this.
    fn mark(&self) -> Result<Mark> {
        self.stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map(Mark::event)
            .map_err(dev("recording a timing event"))
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
