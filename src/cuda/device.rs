//! The real GPU: [`Backend`] over cudarc's driver API. Loads the fatbin that build.rs embedded
//! (SASS for sm_80/86/89/90, PTX for newer GPUs), keeps one stream, and maps each backend call to
//! one kernel launch with the geometry from [`launch`]. Every driver error becomes
//! [`Error::Device`] naming the operation.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg,
};

use super::backend::{Backend, StoreDesc};
use super::launch::{self, Geometry};
use crate::tensor::DType;
use crate::{Error, Result};

fn dev(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Device(format!("{what}: {e}"))
}

fn cfg(g: &Geometry) -> LaunchConfig {
    LaunchConfig {
        grid_dim: g.grid,
        block_dim: g.block,
        shared_mem_bytes: 0,
    }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    launch::to_i32(v, what)
}

/// An uploaded store: the raw bytes of its `vectors` (the kernel variant reads them as its dtype;
/// device allocations are 256-byte aligned, so typed loads are aligned).
#[derive(Debug)]
pub struct DeviceStore {
    bytes: CudaSlice<u8>,
    desc: StoreDesc,
}

struct Kernels {
    linear: CudaFunction,
    gather: [CudaFunction; 3],
    attention: CudaFunction,
    co_interest: CudaFunction,
    score: [CudaFunction; 3],
    topk: CudaFunction,
}

fn by_dtype(fs: &[CudaFunction; 3], d: DType) -> &CudaFunction {
    match d {
        DType::F32 => &fs[0],
        DType::F16 => &fs[1],
        DType::BF16 => &fs[2],
    }
}

/// One GPU, one stream, the kernel module.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    k: Kernels,
    name: String,
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
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::Device(format!("cannot open CUDA device {ordinal}: {e}")))?;
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
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| Error::Device(format!("kernel `{n}` not in the module: {e}")))
        };
        let k = Kernels {
            linear: f("linear_f32")?,
            gather: [f("gather_f32")?, f("gather_f16")?, f("gather_bf16")?],
            attention: f("attention_f32")?,
            co_interest: f("co_interest_f32")?,
            score: [f("score_f32")?, f("score_f16")?, f("score_bf16")?],
            topk: f("topk_f32")?,
        };
        Ok(CudaBackend {
            ctx,
            stream,
            _module: module,
            k,
            name,
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

fn view<T>(b: &CudaSlice<T>, off: usize) -> Result<cudarc::driver::CudaView<'_, T>> {
    b.try_slice(off..)
        .ok_or_else(|| Error::Device(format!("offset {off} past a device buffer of {}", b.len())))
}

impl Backend for CudaBackend {
    type F = CudaSlice<f32>;
    type I = CudaSlice<i32>;
    type U = CudaSlice<u32>;
    type Store = DeviceStore;

    fn upload_store(
        &self,
        dtype: DType,
        bytes: &[u8],
        rows: usize,
        dim: usize,
    ) -> Result<DeviceStore> {
        let len = rows * dim * dtype.size();
        let bytes = bytes.get(..len).ok_or_else(|| {
            Error::Device(format!("store has {} bytes, expected {len}", bytes.len()))
        })?;
        Ok(DeviceStore {
            bytes: self.upload(bytes)?,
            desc: StoreDesc { dtype, rows, dim },
        })
    }
    fn store_desc(&self, s: &DeviceStore) -> StoreDesc {
        s.desc
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
    ) -> Result<()> {
        let g = launch::linear(rows, out_dim)?;
        if g.is_empty() {
            return Ok(());
        }
        let xv = view(x.0, x.1)?;
        let yoff = y.1;
        let ylen = y.0.len();
        let mut yv = y.0.try_slice_mut(yoff..).ok_or_else(|| {
            Error::Device(format!("offset {yoff} past a device buffer of {ylen}"))
        })?;
        let (ldx, ldy) = (i32_of(ldx, "ldx")?, i32_of(ldy, "ldy")?);
        let (rows, in_dim, out_dim) = (
            i32_of(rows, "rows")?,
            i32_of(in_dim, "in")?,
            i32_of(out_dim, "out")?,
        );
        let relu = i32::from(relu);
        let mut l = self.stream.launch_builder(&self.k.linear);
        l.arg(&xv)
            .arg(&ldx)
            .arg(w)
            .arg(b)
            .arg(&mut yv)
            .arg(&ldy)
            .arg(&rows)
            .arg(&in_dim)
            .arg(&out_dim)
            .arg(&relu);
        // SAFETY: the argument list matches `linear_f32`'s parameters in order and type; the
        // plan sizes every buffer for the extents documented in linear.cu.
        unsafe { l.launch(cfg(&g)) }.map_err(dev("launching linear_f32"))?;
        Ok(())
    }

    fn gather(
        &self,
        store: &DeviceStore,
        rows: &Self::U,
        count: usize,
        out: &mut Self::F,
    ) -> Result<()> {
        let g = launch::gather(count)?;
        if g.is_empty() {
            return Ok(());
        }
        let (count, dim) = (i32_of(count, "rows")?, i32_of(store.desc.dim, "D")?);
        let mut l = self
            .stream
            .launch_builder(by_dtype(&self.k.gather, store.desc.dtype));
        l.arg(&store.bytes).arg(rows).arg(&count).arg(&dim).arg(out);
        // SAFETY: matches `gather_<dtype>`; row indices were validated against the store by the
        // plan before upload.
        unsafe { l.launch(cfg(&g)) }.map_err(dev("launching gather"))?;
        Ok(())
    }

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
    ) -> Result<()> {
        let g = launch::attention(heads, users, head_dim)?;
        if g.is_empty() || n == 0 {
            return Ok(());
        }
        let qv = view(q.0, q.1)?;
        let kvw = view(kv, k_off)?;
        let vvw = view(kv, v_off)?;
        let ooff = out.1;
        let olen = out.0.len();
        let mut ov = out.0.try_slice_mut(ooff..).ok_or_else(|| {
            Error::Device(format!("offset {ooff} past a device buffer of {olen}"))
        })?;
        let ldq = i32_of(ldq, "ldq")?;
        let stride = i64::try_from(q_user_stride).map_err(|_| Error::Device("q stride".into()))?;
        let (ldkv, ldo, n, hd) = (
            i32_of(ldkv, "ldkv")?,
            i32_of(ldo, "ldo")?,
            i32_of(n, "n")?,
            i32_of(head_dim, "d")?,
        );
        let mut l = self.stream.launch_builder(&self.k.attention);
        l.arg(&qv)
            .arg(&ldq)
            .arg(&stride)
            .arg(&kvw)
            .arg(&vvw)
            .arg(&ldkv)
            .arg(offsets)
            .arg(&mut ov)
            .arg(&ldo)
            .arg(&n)
            .arg(&hd);
        // SAFETY: matches `attention_f32`; offsets ascend and index rows of the K/V buffer.
        unsafe { l.launch(cfg(&g)) }.map_err(dev("launching attention_f32"))?;
        Ok(())
    }

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
    ) -> Result<()> {
        let g = launch::co_interest(users)?;
        if g.is_empty() || n == 0 {
            return Ok(());
        }
        let codes = super::emu::pack_blocks(blocks);
        let (ld_in, ldo, n, dim, nb) = (
            i32_of(ld_in, "ld")?,
            i32_of(ldo, "ldo")?,
            i32_of(n, "n")?,
            i32_of(dim, "D")?,
            i32_of(blocks.len(), "blocks")?,
        );
        let mut l = self.stream.launch_builder(&self.k.co_interest);
        l.arg(lhat)
            .arg(shat)
            .arg(&ld_in)
            .arg(out)
            .arg(&ldo)
            .arg(&n)
            .arg(&dim)
            .arg(&nb)
            .arg(&codes);
        // SAFETY: matches `co_interest_f32`; n ≤ 64 and ≤ 16 blocks (checked at plan creation).
        unsafe { l.launch(cfg(&g)) }.map_err(dev("launching co_interest_f32"))?;
        Ok(())
    }

    fn score(
        &self,
        store: &DeviceStore,
        rows: &Self::U,
        offsets: &Self::I,
        xu: &Self::F,
        users: usize,
        max_m: usize,
        n: usize,
        mode: i32,
        out: &mut Self::F,
    ) -> Result<()> {
        let g = launch::score(max_m, users)?;
        if g.is_empty() || n == 0 {
            return Ok(());
        }
        let (dim, n) = (i32_of(store.desc.dim, "D")?, i32_of(n, "n")?);
        let mut l = self
            .stream
            .launch_builder(by_dtype(&self.k.score, store.desc.dtype));
        l.arg(&store.bytes)
            .arg(&dim)
            .arg(rows)
            .arg(offsets)
            .arg(xu)
            .arg(&n)
            .arg(&mode)
            .arg(out);
        // SAFETY: matches `score_<dtype>`; candidate rows validated against the store.
        unsafe { l.launch(cfg(&g)) }.map_err(dev("launching score"))?;
        Ok(())
    }

    fn topk(
        &self,
        scores: &Self::F,
        offsets: &Self::I,
        users: usize,
        k: usize,
        pos: &mut Self::I,
        val: &mut Self::F,
    ) -> Result<()> {
        let g = launch::topk(users)?;
        if g.is_empty() || k == 0 {
            return Ok(());
        }
        let k = i32_of(k, "k")?;
        let mut l = self.stream.launch_builder(&self.k.topk);
        l.arg(scores).arg(offsets).arg(&k).arg(pos).arg(val);
        // SAFETY: matches `topk_f32`; pos/val hold users × k slots.
        unsafe { l.launch(cfg(&g)) }.map_err(dev("launching topk_f32"))?;
        Ok(())
    }
}
