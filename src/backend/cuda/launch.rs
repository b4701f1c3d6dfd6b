//! Kernel launch helpers: device pointers of tensors, dtype-suffixed kernel names, launch
//! shapes, and one `launch` entry point that checks the result of every launch.
//!
//! Kernels take raw device pointers (`u64`), so one launcher serves every dtype; the
//! device runs a single stream, so no cross-stream event tracking is needed.

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::device::CudaDevice;
use super::storage::{CudaBuf, CudaStorage};
use crate::tensor::{DType, Storage, Tensor};

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer (0 = null).
    Ptr(u64),
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
}

/// `i32` argument from a size, checked.
pub fn int(n: usize) -> Result<Arg> {
    i32::try_from(n).map(Arg::I32).map_err(|_| anyhow!("size {n} does not fit a 32-bit kernel argument"))
}

/// `i64` (long) argument from a size.
pub fn long(n: usize) -> Arg {
    Arg::I64(n as i64)
}

/// The CUDA storage of a tensor.
pub fn cuda_storage(t: &Tensor) -> Result<&CudaStorage> {
    match t.storage() {
        Storage::Cuda(c) => Ok(c),
        Storage::Cpu(_) => bail!("expected a GPU tensor, got a CPU one"),
    }
}

/// The device a GPU tensor lives on.
pub fn device_of(t: &Tensor) -> Result<CudaDevice> {
    Ok(cuda_storage(t)?.device().clone())
}

/// Device address of a GPU tensor's data.
pub fn ptr(t: &Tensor) -> Result<u64> {
    let c = cuda_storage(t)?;
    let s = c.device().stream();
    Ok(match &c.buf {
        CudaBuf::F32(b) => b.device_ptr(s).0,
        CudaBuf::F16(b) => b.device_ptr(s).0,
        CudaBuf::BF16(b) => b.device_ptr(s).0,
        CudaBuf::I32(b) => b.device_ptr(s).0,
    })
}

/// Pointer argument of a tensor.
pub fn p(t: &Tensor) -> Result<Arg> {
    Ok(Arg::Ptr(ptr(t)?))
}

/// Pointer argument of an optional tensor (null when absent).
pub fn p_opt(t: Option<&Tensor>) -> Result<Arg> {
    Ok(Arg::Ptr(match t {
        Some(t) => ptr(t)?,
        None => 0,
    }))
}

/// Kernel-name suffix of a compute dtype.
pub fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        d => bail!("no CUDA kernels for {d} tensors"),
    })
}

/// `name_<suffix>` for the compute dtype.
pub fn kname(name: &str, dtype: DType) -> Result<String> {
    Ok(format!("{name}_{}", suffix(dtype)?))
}

/// Threads per block of the row kernels (one block per row).
pub const ROW_BLOCK: u32 = 256;

/// One block per row.
pub fn rows_config(rows: usize) -> Result<LaunchConfig> {
    let rows = u32::try_from(rows.max(1)).map_err(|_| anyhow!("too many rows ({rows}) for one launch"))?;
    Ok(LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (ROW_BLOCK, 1, 1), shared_mem_bytes: 0 })
}

pub use super::storage::grid_stride_config;

/// Launch `module::name` with `args` and report any launch error with the kernel's name.
pub fn launch(dev: &CudaDevice, module: &'static str, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    let f = dev.function(module, name)?;
    let stream = dev.stream();
    let mut b = stream.launch_builder(&f);
    for a in args {
        match a {
            Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
            Arg::I32(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
        };
    }
    // Safety: each launcher passes the arguments in the order and types documented at
    // the top of its kernels/<op>.cu file.
    unsafe { b.launch(cfg) }.with_context(|| format!("launching CUDA kernel `{name}`"))?;
    Ok(())
}

/// A new uninitialised GPU tensor (its kernel writes every element).
pub fn empty(dev: &CudaDevice, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::from_storage(Storage::Cuda(dev.uninit(dtype, n)?), shape, dtype))
}

/// A new zero-filled GPU tensor.
pub fn zeros(dev: &CudaDevice, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::zeros(shape, dtype, &crate::tensor::Device::Cuda(dev.clone()))
}
