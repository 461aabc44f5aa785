//! The kernels of `kernels/*.cu`, compiled for the host by build.rs with the CUDA emulation
//! header (`kernels/emu/cuda_emu.h`) and run on the CPU. This is how CI *executes* every kernel
//! without a GPU: [`EmuBackend`] runs them through the same [`Backend`] interface as the GPU, so
//! `tests/cuda_emulation.rs` compares single launches with plain Rust references and the whole
//! GPU plan (`plan.rs`) runs end to end on the CPU.
//!
//! One FFI function serves every kernel: `hcn_emu_launch` (`kernels/emu/launch.cpp`) takes the
//! entry point's name and a pointer to its parameter struct (`src/abi.rs`), and checks the
//! struct's size against the C definition the kernel was compiled with. "Device" buffers are host
//! `Vec`s, their addresses host addresses; [`super::backend::input`] / [`super::backend::output`]
//! check every extent against the buffer as on the GPU. Launches are serialised inside the C++
//! emulation (one block at a time, a block's threads as OS threads); it is slow and meant for
//! tests only.

use std::ffi::{c_char, c_void, CString};

use super::backend::{
    check_store, entry_point, Backend, DeviceBuffer, DeviceInputs, HostInputs, StoreDesc,
};
use super::launch::Geometry;
use crate::abi::{In, KernelParams, StoreRows, Variant};
use crate::tensor::DType;
use crate::{Error, Result};

mod ffi {
    use std::ffi::{c_char, c_void};
    extern "C" {
        /// `kernels/emu/launch.cpp`: 0, 1 (no entry point `name`) or 2 (`size` is not the
        /// size of the entry point's parameter struct); `grid` and `block` are (x, y, z).
        pub fn hcn_emu_launch(
            name: *const c_char,
            grid: *const u32,
            block: *const u32,
            params: *const c_void,
            size: usize,
        ) -> i32;
    }
}

/// 16 bytes on a 16-byte boundary: the unit an [`EmuStore`] is held in.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
struct Line([u8; 16]);

/// An item store copied into host memory aligned to 16 bytes (as the GPU executor uploads it
/// into 256-byte-aligned memory), so the kernels' typed loads, and I8's 128-bit loads, are
/// valid whatever the file's alignment.
#[derive(Debug, Clone)]
pub struct EmuStore {
    /// The store's bytes (the tail of the last line is zero).
    lines: Vec<Line>,
    /// I8: one scale per row; empty for the float dtypes (whose kernels get a null pointer).
    scales: Vec<f32>,
    desc: StoreDesc,
}

impl EmuStore {
    /// `bytes`: `rows × dim` little-endian elements of `dtype` (a store's `vectors` tensor);
    /// `scales`: for I8, the `scales` tensor's bytes (`rows` little-endian F32). Checked by
    /// [`check_store`].
    pub fn from_bytes(
        dtype: DType,
        bytes: &[u8],
        scales: Option<&[u8]>,
        rows: usize,
        dim: usize,
    ) -> Result<Self> {
        let st = check_store(dtype, bytes, scales, rows, dim)?;
        let mut lines = vec![Line::default(); st.bytes.len().div_ceil(16)];
        // Byte for byte: the kernels read the elements as the host's (little-endian) values.
        for (l, c) in lines.iter_mut().zip(st.bytes.chunks(16)) {
            l.0[..c.len()].copy_from_slice(c);
        }
        Ok(EmuStore {
            lines,
            scales: st.scales.unwrap_or_default(),
            desc: StoreDesc { dtype, rows, dim },
        })
    }

    pub fn desc(&self) -> StoreDesc {
        self.desc
    }
}

/// A host vector standing for a device buffer: its address is the host address.
impl<T> DeviceBuffer for Vec<T> {
    type Elem = T;
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn base_addr(&self) -> u64 {
        self.as_ptr() as u64
    }
    fn base_addr_mut(&mut self) -> u64 {
        self.as_mut_ptr() as u64
    }
}

/// What an emulated scratch I32 buffer holds before a kernel writes it (0xDEADBEEF).
pub const SCRATCH_I32: i32 = 0xDEAD_BEEFu32 as i32;

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
        scales: Option<&[u8]>,
        rows: usize,
        dim: usize,
    ) -> Result<EmuStore> {
        EmuStore::from_bytes(dtype, bytes, scales, rows, dim)
    }
    fn store_desc(&self, s: &EmuStore) -> StoreDesc {
        s.desc
    }
    fn store_rows(&self, s: &EmuStore) -> In<StoreRows> {
        In::from_addr(s.lines.as_ptr() as u64)
    }
    fn store_scales(&self, s: &EmuStore) -> In<f32> {
        if s.scales.is_empty() {
            In::from_addr(0)
        } else {
            In::from_addr(s.scales.as_ptr() as u64)
        }
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
    /// Poisoned (NaN), so that a kernel reading an element it did not write shows in the
    /// results instead of passing on a zero the GPU would not give.
    fn scratch_f32(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![f32::NAN; len])
    }
    /// Poisoned, as [`EmuBackend::scratch_f32`].
    fn scratch_i32(&self, len: usize) -> Result<Vec<i32>> {
        Ok(vec![SCRATCH_I32; len])
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
    unsafe fn launch<P: KernelParams>(
        &self,
        variant: Variant,
        geo: &Geometry,
        p: &P,
    ) -> Result<()> {
        if geo.is_empty() {
            return Ok(());
        }
        let name = entry_point::<P>(variant);
        let c_name = CString::new(name.as_str())
            .map_err(|_| Error::Device(format!("emulation: kernel name {name:?}")))?;
        let (grid, block) = (geo.grid_array(), geo.block_array());
        // SAFETY: `p` is a live `repr(C)` struct of `size_of::<P>()` bytes, which the C++ side
        // checks against its definition before copying it; the caller guarantees its addresses
        // (`Backend::launch`). The emulation runs synchronously: the kernel has finished when
        // this returns.
        let rc = unsafe {
            ffi::hcn_emu_launch(
                c_name.as_ptr() as *const c_char,
                grid.as_ptr(),
                block.as_ptr(),
                (p as *const P).cast::<c_void>(),
                std::mem::size_of::<P>(),
            )
        };
        match rc {
            0 => Ok(()),
            1 => Err(Error::Device(format!("emulation: no kernel `{name}`"))),
            2 => Err(Error::Device(format!(
                "emulation: `{name}` takes a different parameter struct than {} ({} bytes)",
                P::DESC.params,
                std::mem::size_of::<P>()
            ))),
            rc => Err(Error::Device(format!("emulation: `{name}` returned {rc}"))),
        }
    }
}
