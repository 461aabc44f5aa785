//! The kernels of `kernels/*.cu`, compiled for the host by build.rs with the CUDA emulation
//! header (`kernels/emu/cuda_emu.h`) and run on the CPU. This is how CI *executes* every kernel
//! without a GPU: `tests/cuda_emulation.rs` compares these runs with plain Rust references, and
//! [`EmuBackend`] lets the whole GPU plan (`plan.rs`) run end to end on the CPU.
//!
//! Each safe wrapper checks every slice against the extent the kernel will touch (the same
//! [`launch`] geometry the GPU uses), so a wrong size is an error, not a wild read. Launches are
//! serialised inside the C++ emulation (one block at a time, a block's threads as OS threads);
//! it is slow and meant for tests only.

use std::ffi::c_void;

use super::backend::{Backend, DeviceInputs, HostInputs, StoreDesc};
use super::launch::{self, Geometry};
use crate::tensor::DType;
use crate::{Error, Result};

mod ffi {
    use std::ffi::c_void;
    // Signatures mirror kernels/emu/launch.cpp one to one.
    extern "C" {
        pub fn hcn_emu_linear_f32(
            g: *const u32,
            b: *const u32,
            x: *const f32,
            ldx: i32,
            w: *const f32,
            bias: *const f32,
            y: *mut f32,
            ldy: i32,
            rows: i32,
            in_dim: i32,
            out_dim: i32,
            relu: i32,
        );
        pub fn hcn_emu_gather_f32(
            g: *const u32,
            b: *const u32,
            store: *const c_void,
            rows: *const u32,
            count: i32,
            dim: i32,
            out: *mut f32,
        );
        pub fn hcn_emu_gather_f16(
            g: *const u32,
            b: *const u32,
            store: *const c_void,
            rows: *const u32,
            count: i32,
            dim: i32,
            out: *mut f32,
        );
        pub fn hcn_emu_gather_bf16(
            g: *const u32,
            b: *const u32,
            store: *const c_void,
            rows: *const u32,
            count: i32,
            dim: i32,
            out: *mut f32,
        );
        pub fn hcn_emu_attention_f32(
            g: *const u32,
            b: *const u32,
            q: *const f32,
            ldq: i32,
            q_user_stride: i64,
            k: *const f32,
            v: *const f32,
            ldkv: i32,
            kv_offsets: *const i32,
            out: *mut f32,
            ldo: i32,
            n: i32,
            head_dim: i32,
        );
        pub fn hcn_emu_co_interest_f32(
            g: *const u32,
            b: *const u32,
            lhat: *const f32,
            shat: *const f32,
            ld_in: i32,
            out: *mut f32,
            ldo: i32,
            n: i32,
            dim: i32,
            num_blocks: i32,
            block_codes: u32,
        );
        pub fn hcn_emu_score_f32(
            g: *const u32,
            b: *const u32,
            store: *const c_void,
            dim: i32,
            rows: *const u32,
            offs: *const i32,
            xu: *const f32,
            n: i32,
            mode: i32,
            out: *mut f32,
        );
        pub fn hcn_emu_score_f16(
            g: *const u32,
            b: *const u32,
            store: *const c_void,
            dim: i32,
            rows: *const u32,
            offs: *const i32,
            xu: *const f32,
            n: i32,
            mode: i32,
            out: *mut f32,
        );
        pub fn hcn_emu_score_bf16(
            g: *const u32,
            b: *const u32,
            store: *const c_void,
            dim: i32,
            rows: *const u32,
            offs: *const i32,
            xu: *const f32,
            n: i32,
            mode: i32,
            out: *mut f32,
        );
        pub fn hcn_emu_topk_f32(
            g: *const u32,
            b: *const u32,
            scores: *const f32,
            offs: *const i32,
            k: i32,
            out_pos: *mut i32,
            out_score: *mut f32,
        );
    }
}

fn need(len: usize, required: usize, what: &str) -> Result<()> {
    if len < required {
        return Err(Error::Device(format!(
            "emulation: {what} has {len} elements, the kernel reads/writes {required}"
        )));
    }
    Ok(())
}

/// Elements a `rows × cols` view with leading dimension `ld` spans.
fn extent(rows: usize, ld: usize, cols: usize) -> usize {
    if rows == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

fn check_offsets(offsets: &[i32], users: usize, what: &str) -> Result<usize> {
    need(offsets.len(), users + 1, what)?;
    let offsets = &offsets[..users + 1];
    if offsets[0] < 0 || offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::Device(format!(
            "emulation: {what} must be ascending from ≥ 0"
        )));
    }
    Ok(offsets[users] as usize)
}

/// An item store copied into a host buffer of its dtype (as the GPU executor uploads it):
/// aligned, so the kernels' typed loads are valid whatever the file's alignment.
#[derive(Debug, Clone)]
pub struct EmuStore {
    data: StoreData,
    desc: StoreDesc,
}

#[derive(Debug, Clone)]
enum StoreData {
    F32(Vec<f32>),
    Half(Vec<u16>),
}

/// I8 stores (SPEC §3) have no kernels yet (issue 13).
fn no_i8() -> Error {
    Error::Device("no I8 kernels yet (issue 13)".into())
}

impl EmuStore {
    /// `bytes`: `rows × dim` little-endian elements of `dtype` (a store's `vectors` tensor).
    pub fn from_bytes(dtype: DType, bytes: &[u8], rows: usize, dim: usize) -> Result<Self> {
        need(bytes.len() / dtype.size(), rows * dim, "store bytes")?;
        let bytes = &bytes[..rows * dim * dtype.size()];
        let data = match dtype {
            DType::F32 => StoreData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::F16 | DType::BF16 => StoreData::Half(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::I8 => return Err(no_i8()),
        };
        Ok(EmuStore {
            data,
            desc: StoreDesc { dtype, rows, dim },
        })
    }

    pub fn desc(&self) -> StoreDesc {
        self.desc
    }

    fn ptr(&self) -> *const c_void {
        match &self.data {
            StoreData::F32(v) => v.as_ptr().cast(),
            StoreData::Half(v) => v.as_ptr().cast(),
        }
    }

    fn check_rows(&self, rows: &[u32]) -> Result<()> {
        match rows.iter().find(|&&r| r as usize >= self.desc.rows) {
            Some(r) => Err(Error::Device(format!(
                "emulation: row {r} out of a store of {} rows",
                self.desc.rows
            ))),
            None => Ok(()),
        }
    }
}

fn g(geo: &Geometry) -> ([u32; 3], [u32; 3]) {
    (geo.grid_array(), geo.block_array())
}

/// `linear.cu`: `y[r, o] = relu?(Σ_i x[r, i] w[o, i] + bias[o])`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    relu: bool,
) -> Result<()> {
    let geo = launch::linear(rows, out_dim)?;
    if ldx < in_dim || ldy < out_dim {
        return Err(Error::Device(
            "emulation: leading dimension below the row width".into(),
        ));
    }
    need(x.len(), extent(rows, ldx, in_dim), "linear x")?;
    need(w.len(), out_dim * in_dim, "linear weight")?;
    need(bias.len(), out_dim, "linear bias")?;
    need(y.len(), extent(rows, ldy, out_dim), "linear y")?;
    if geo.is_empty() || in_dim == 0 && rows == 0 {
        return Ok(());
    }
    let (gr, bl) = g(&geo);
    let i = |v: usize| launch::to_i32(v, "linear size");
    // SAFETY: every pointer covers the extent the kernel touches (checked above); the emulation
    // runs synchronously and returns after the last thread finished, so the borrows outlive it.
    unsafe {
        ffi::hcn_emu_linear_f32(
            gr.as_ptr(),
            bl.as_ptr(),
            x.as_ptr(),
            i(ldx)?,
            w.as_ptr(),
            bias.as_ptr(),
            y.as_mut_ptr(),
            i(ldy)?,
            i(rows)?,
            i(in_dim)?,
            i(out_dim)?,
            relu as i32,
        );
    }
    Ok(())
}

/// `gather_<dtype>`: `out[i, :] = widen(store[rows[i], :])`.
pub fn gather(store: &EmuStore, rows: &[u32], out: &mut [f32]) -> Result<()> {
    let dim = store.desc.dim;
    store.check_rows(rows)?;
    need(out.len(), rows.len() * dim, "gather out")?;
    let geo = launch::gather(rows.len())?;
    if geo.is_empty() {
        return Ok(());
    }
    let (gr, bl) = g(&geo);
    let f = match store.desc.dtype {
        DType::F32 => ffi::hcn_emu_gather_f32,
        DType::F16 => ffi::hcn_emu_gather_f16,
        DType::BF16 => ffi::hcn_emu_gather_bf16,
        DType::I8 => return Err(no_i8()),
    };
    // SAFETY: rows are < store rows (checked), out holds count × dim; synchronous call.
    unsafe {
        f(
            gr.as_ptr(),
            bl.as_ptr(),
            store.ptr(),
            rows.as_ptr(),
            launch::to_i32(rows.len(), "rows")?,
            launch::to_i32(dim, "D")?,
            out.as_mut_ptr(),
        );
    }
    Ok(())
}

/// `attention_f32`: per (head, user) `softmax(Q Kᵀ / sqrt(d)) V`; `k` and `v` are slices of the
/// K/V buffer starting at the K and V columns.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    ldq: usize,
    q_user_stride: usize,
    k: &[f32],
    v: &[f32],
    ldkv: usize,
    kv_offsets: &[i32],
    out: &mut [f32],
    ldo: usize,
    users: usize,
    n: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    let geo = launch::attention(heads, users, head_dim)?;
    let width = heads * head_dim;
    let total = check_offsets(kv_offsets, users, "kv offsets")?;
    let q_rows = if q_user_stride == 0 {
        extent(n, ldq, width)
    } else {
        (users.max(1) - 1) * q_user_stride + extent(n, ldq, width)
    };
    need(q.len(), q_rows, "attention q")?;
    need(k.len(), extent(total, ldkv, width), "attention k")?;
    need(v.len(), extent(total, ldkv, width), "attention v")?;
    need(out.len(), extent(users * n, ldo, width), "attention out")?;
    if geo.is_empty() || n == 0 {
        return Ok(());
    }
    let (gr, bl) = g(&geo);
    let i = |x: usize| launch::to_i32(x, "attention size");
    // SAFETY: extents checked above against the offsets and strides the kernel uses.
    unsafe {
        ffi::hcn_emu_attention_f32(
            gr.as_ptr(),
            bl.as_ptr(),
            q.as_ptr(),
            i(ldq)?,
            q_user_stride as i64,
            k.as_ptr(),
            v.as_ptr(),
            i(ldkv)?,
            kv_offsets.as_ptr(),
            out.as_mut_ptr(),
            i(ldo)?,
            i(n)?,
            i(head_dim)?,
        );
    }
    Ok(())
}

/// `co_interest_f32`: E, the two softmax alignments, and the concat of `blocks` (codes 0 long,
/// 1 short, 2 long_aligned, 3 short_aligned).
#[allow(clippy::too_many_arguments)]
pub fn co_interest(
    lhat: &[f32],
    shat: &[f32],
    ld_in: usize,
    out: &mut [f32],
    ldo: usize,
    users: usize,
    n: usize,
    dim: usize,
    blocks: &[u8],
) -> Result<()> {
    let geo = launch::co_interest(users)?;
    if n > launch::MAX_INTERESTS
        || blocks.len() > launch::MAX_CONCAT_BLOCKS
        || blocks.iter().any(|&b| b > 3)
    {
        return Err(Error::Device(
            "emulation: co_interest shape outside the kernel's limits".into(),
        ));
    }
    need(
        lhat.len(),
        extent(users * n, ld_in, dim),
        "co_interest lhat",
    )?;
    need(
        shat.len(),
        extent(users * n, ld_in, dim),
        "co_interest shat",
    )?;
    need(
        out.len(),
        extent(users * n, ldo, blocks.len() * dim),
        "co_interest out",
    )?;
    if geo.is_empty() || n == 0 {
        return Ok(());
    }
    let codes = launch::pack_blocks(blocks);
    let (gr, bl) = g(&geo);
    let i = |x: usize| launch::to_i32(x, "co_interest size");
    // SAFETY: extents checked above.
    unsafe {
        ffi::hcn_emu_co_interest_f32(
            gr.as_ptr(),
            bl.as_ptr(),
            lhat.as_ptr(),
            shat.as_ptr(),
            i(ld_in)?,
            out.as_mut_ptr(),
            i(ldo)?,
            i(n)?,
            i(dim)?,
            i(blocks.len())?,
            codes,
        );
    }
    Ok(())
}

/// `score_<dtype>`: one score per candidate row, `mode` 0 softmax, 1 max, 2 mean.
#[allow(clippy::too_many_arguments)]
pub fn score(
    store: &EmuStore,
    rows: &[u32],
    offsets: &[i32],
    xu: &[f32],
    users: usize,
    n: usize,
    mode: i32,
    out: &mut [f32],
) -> Result<()> {
    let dim = store.desc.dim;
    let total = check_offsets(offsets, users, "candidate offsets")?;
    need(rows.len(), total, "candidate rows")?;
    store.check_rows(&rows[..total])?;
    need(xu.len(), users * n * dim, "score X^U")?;
    need(out.len(), total, "score out")?;
    if dim > launch::MAX_DIM || n * dim > launch::MAX_SCORE_XU || !(0..=2).contains(&mode) {
        return Err(Error::Device(
            "emulation: score shape outside the kernel's limits".into(),
        ));
    }
    let max_m = offsets[..=users]
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0);
    let geo = launch::score(max_m, users)?;
    if geo.is_empty() || n == 0 {
        return Ok(());
    }
    let (gr, bl) = g(&geo);
    let f = match store.desc.dtype {
        DType::F32 => ffi::hcn_emu_score_f32,
        DType::F16 => ffi::hcn_emu_score_f16,
        DType::BF16 => ffi::hcn_emu_score_bf16,
        DType::I8 => return Err(no_i8()),
    };
    // SAFETY: rows < store rows, offsets ascending within rows/out, X^U covers users × n × D.
    unsafe {
        f(
            gr.as_ptr(),
            bl.as_ptr(),
            store.ptr(),
            launch::to_i32(dim, "D")?,
            rows.as_ptr(),
            offsets.as_ptr(),
            xu.as_ptr(),
            launch::to_i32(n, "n")?,
            mode,
            out.as_mut_ptr(),
        );
    }
    Ok(())
}

/// `topk_f32`: per user the `k` largest scores (ties: lower position), written in ascending
/// position order into slots `b·k …`; unused slots get position −1.
pub fn topk(
    scores: &[f32],
    offsets: &[i32],
    users: usize,
    k: usize,
    pos: &mut [i32],
    val: &mut [f32],
) -> Result<()> {
    let total = check_offsets(offsets, users, "score offsets")?;
    need(scores.len(), total, "topk scores")?;
    need(pos.len(), users * k, "topk positions")?;
    need(val.len(), users * k, "topk values")?;
    let geo = launch::topk(users)?;
    if geo.is_empty() || k == 0 {
        return Ok(());
    }
    let (gr, bl) = g(&geo);
    // SAFETY: extents checked above.
    unsafe {
        ffi::hcn_emu_topk_f32(
            gr.as_ptr(),
            bl.as_ptr(),
            scores.as_ptr(),
            offsets.as_ptr(),
            launch::to_i32(k, "k")?,
            pos.as_mut_ptr(),
            val.as_mut_ptr(),
        );
    }
    Ok(())
}

/// Runs the GPU plan on the CPU emulation: host `Vec`s stand in for device buffers.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmuBackend;

impl Backend for EmuBackend {
    type F = Vec<f32>;
    type I = Vec<i32>;
    type U = Vec<u32>;
    type Store = EmuStore;
    /// Host memory is all there is: nothing to stage.
    type Staging = ();

    fn upload_store(
        &self,
        dtype: DType,
        bytes: &[u8],
        rows: usize,
        dim: usize,
    ) -> Result<EmuStore> {
        EmuStore::from_bytes(dtype, bytes, rows, dim)
    }
    fn store_desc(&self, s: &EmuStore) -> StoreDesc {
        s.desc
    }
    fn upload_f32(&self, v: &[f32]) -> Result<Vec<f32>> {
        Ok(v.to_vec())
    }
    fn upload_i32(&self, v: &[i32]) -> Result<Vec<i32>> {
        Ok(v.to_vec())
    }
    fn upload_u32(&self, v: &[u32]) -> Result<Vec<u32>> {
        Ok(v.to_vec())
    }
    fn zeros_f32(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn zeros_i32(&self, len: usize) -> Result<Vec<i32>> {
        Ok(vec![0; len])
    }
    fn download_f32(&self, b: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(b.clone())
    }
    fn download_i32(&self, b: &Vec<i32>) -> Result<Vec<i32>> {
        Ok(b.clone())
    }
    fn upload_batch(&self, inputs: HostInputs<'_>) -> Result<((), DeviceInputs<Self>)> {
        Ok((
            (),
            DeviceInputs {
                u32s: inputs.u32s.iter().map(|v| v.to_vec()).collect(),
                i32s: inputs.i32s.iter().map(|v| v.to_vec()).collect(),
                f32s: inputs.f32s.iter().map(|v| v.to_vec()).collect(),
            },
        ))
    }
    fn read_back<R>(
        &self,
        _staging: (),
        f32s: &[&Vec<f32>],
        i32s: &[&Vec<i32>],
        read: impl FnOnce(&[&[f32]], &[&[i32]]) -> R,
    ) -> Result<R> {
        let f: Vec<&[f32]> = f32s.iter().map(|b| b.as_slice()).collect();
        let i: Vec<&[i32]> = i32s.iter().map(|b| b.as_slice()).collect();
        Ok(read(&f, &i))
    }
    fn linear(
        &self,
        x: (&Vec<f32>, usize),
        ldx: usize,
        w: &Vec<f32>,
        b: &Vec<f32>,
        y: (&mut Vec<f32>, usize),
        ldy: usize,
        rows: usize,
        in_dim: usize,
        out_dim: usize,
        relu: bool,
    ) -> Result<()> {
        linear(
            sub(x.0, x.1)?,
            ldx,
            w,
            b,
            sub_mut(y.0, y.1)?,
            ldy,
            rows,
            in_dim,
            out_dim,
            relu,
        )
    }
    fn gather(
        &self,
        store: &EmuStore,
        rows: &Vec<u32>,
        count: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        gather(store, &rows[..count.min(rows.len())], out)
    }
    fn attention(
        &self,
        q: (&Vec<f32>, usize),
        ldq: usize,
        q_user_stride: usize,
        kv: &Vec<f32>,
        k_off: usize,
        v_off: usize,
        ldkv: usize,
        offsets: &Vec<i32>,
        out: (&mut Vec<f32>, usize),
        ldo: usize,
        users: usize,
        n: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        attention(
            sub(q.0, q.1)?,
            ldq,
            q_user_stride,
            sub(kv, k_off)?,
            sub(kv, v_off)?,
            ldkv,
            offsets,
            sub_mut(out.0, out.1)?,
            ldo,
            users,
            n,
            heads,
            head_dim,
        )
    }
    fn co_interest(
        &self,
        lhat: &Vec<f32>,
        shat: &Vec<f32>,
        ld_in: usize,
        out: &mut Vec<f32>,
        ldo: usize,
        users: usize,
        n: usize,
        dim: usize,
        blocks: &[u8],
    ) -> Result<()> {
        co_interest(lhat, shat, ld_in, out, ldo, users, n, dim, blocks)
    }
    fn score(
        &self,
        store: &EmuStore,
        rows: &Vec<u32>,
        offsets: &Vec<i32>,
        xu: &Vec<f32>,
        users: usize,
        _max_m: usize,
        n: usize,
        mode: i32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        score(store, rows, offsets, xu, users, n, mode, out)
    }
    fn topk(
        &self,
        scores: &Vec<f32>,
        offsets: &Vec<i32>,
        users: usize,
        k: usize,
        pos: &mut Vec<i32>,
        val: &mut Vec<f32>,
    ) -> Result<()> {
        topk(scores, offsets, users, k, pos, val)
    }
}

fn sub(v: &[f32], off: usize) -> Result<&[f32]> {
    v.get(off..).ok_or_else(|| {
        Error::Device(format!(
            "emulation: offset {off} past a buffer of {}",
            v.len()
        ))
    })
}

fn sub_mut(v: &mut [f32], off: usize) -> Result<&mut [f32]> {
    let len = v.len();
    v.get_mut(off..)
        .ok_or_else(|| Error::Device(format!("emulation: offset {off} past a buffer of {len}")))
}
