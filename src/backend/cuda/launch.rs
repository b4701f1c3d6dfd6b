//! Kernel launch helpers: device pointers of tensors, dtype-suffixed kernel names, the
//! launch shapes that the kernel headers document, and one `launch` entry point that
//! checks the result of every launch.
//!
//! Kernels take raw device pointers (`u64`), so one launcher serves every dtype; the
//! device runs a single stream, so no cross-stream event tracking is needed.
//!
//! Launch shapes (every kernel is grid-stride, so any shape is *correct*; these are the
//! efficient ones from the `kernels/<op>.cu` headers):
//!
//! | helper | block | grid | used by |
//! |---|---|---|---|
//! | [`warp_rows_config`] | (256,1,1) | ceil(rows / 8) | one warp per row: LayerNorm fwd, attention softmax |
//! | [`block_rows_config`] | (t,1,1) | min(rows, 65535) | one block per row: bias add, GELU fwd, embedding, gather, rotary, cross-entropy |
//! | [`flat_config`] | (256,1,1) | min(ceil(n / (256·per_thread)), k·SMs) | flat grid-stride maps and reductions |
//! | [`column_config`] | (32,8,1) | (ceil(cols/32), gy) | column sums: bias grad, bias+GELU backward |
//! | [`single_thread_config`] | (1,1,1) | (1,1,1) | scalar epilogues (clip_and_scale) |

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{sys, DevicePtr, LaunchConfig, PushKernelArg};

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

/// The null pointer argument (for the kernels' nullable pointers).
pub const NULL: Arg = Arg::Ptr(0);

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

/// Device address of a buffer.
pub fn storage_ptr(c: &CudaStorage) -> sys::CUdeviceptr {
    let s = c.device().stream();
    match &c.buf {
        CudaBuf::F32(b) => b.device_ptr(s).0,
        CudaBuf::F16(b) => b.device_ptr(s).0,
        CudaBuf::BF16(b) => b.device_ptr(s).0,
        CudaBuf::I32(b) => b.device_ptr(s).0,
    }
}

/// Device address of a GPU tensor's data.
pub fn ptr(t: &Tensor) -> Result<u64> {
    Ok(storage_ptr(cuda_storage(t)?))
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

/// Threads per block of the 1-D kernels.
pub const BLOCK: u32 = 256;
/// Threads per block of the row kernels (one block per row).
pub const ROW_BLOCK: u32 = 256;
/// Largest grid.x of the one-block-per-row kernels (they grid-stride over the rest).
pub const MAX_ROW_BLOCKS: usize = 65_535;
/// Largest grid.x CUDA accepts.
const MAX_GRID_X: usize = (1 << 31) - 1;

fn config(grid: usize, block: (u32, u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.clamp(1, MAX_GRID_X) as u32, 1, 1), block_dim: block, shared_mem_bytes: smem }
}

/// One warp per row: blocks of 256 threads (8 warps), grid ceil(rows / 8).
pub fn warp_rows_config(rows: usize) -> LaunchConfig {
    let warps = (BLOCK / 32) as usize;
    config(rows.div_ceil(warps), (BLOCK, 1, 1), 0)
}

/// One block of `threads` threads per row, grid min(rows, 65535) (rows grid-strided).
pub fn block_rows_config(rows: usize, threads: u32) -> LaunchConfig {
    config(rows.min(MAX_ROW_BLOCKS), (threads, 1, 1), 0)
}

/// A flat grid-stride launch over `n` elements, `per_thread` elements per thread and
/// pass, blocks of 256 threads, at most `blocks_per_sm` blocks per multiprocessor.
pub fn flat_config(dev: &CudaDevice, n: usize, per_thread: usize, blocks_per_sm: u32) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize * per_thread.max(1));
    let cap = (dev.sm_count() * blocks_per_sm) as usize;
    config(blocks.min(cap), (BLOCK, 1, 1), 0)
}

/// Elements per 16-byte vector access of a compute dtype (the elementwise kernels'
/// `N = 16 / sizeof(T)`).
pub fn vec_width(dtype: DType) -> usize {
    16 / dtype.size_in_bytes()
}

/// The column-sum kernels (`bias_grad`, `bias_gelu_backward`): block (32, 8, 1), grid
/// (ceil(cols/32), gy) with gy = clamp(ceil(4·SMs / grid.x), 1, ceil(rows/8)).
pub fn column_config(dev: &CudaDevice, rows: usize, cols: usize) -> LaunchConfig {
    let gx = cols.div_ceil(32).clamp(1, MAX_GRID_X);
    let gy = (4 * dev.sm_count() as usize).div_ceil(gx).clamp(1, rows.div_ceil(8).max(1)).min(65_535);
    LaunchConfig { grid_dim: (gx as u32, gy as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}

/// One thread (scalar epilogue kernels).
pub fn single_thread_config() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 }
}

/// Shared memory any kernel may take without raising its limit.
const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// Make `bytes` of dynamic shared memory available to `module::name`: up to 48 KiB
/// nothing is needed; above, the kernel's `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`
/// is raised (up to the device's opt-in limit). Returns the bytes to launch with: `bytes`,
/// or 0 when the device cannot give that much (the kernels that take dynamic shared
/// memory have a correct fallback without it).
pub fn dynamic_smem(dev: &CudaDevice, module: &'static str, name: &str, bytes: usize) -> Result<u32> {
    let Ok(b) = u32::try_from(bytes) else { return Ok(0) };
    if b <= DEFAULT_DYNAMIC_SMEM {
        return Ok(b);
    }
    if b > dev.max_dynamic_smem() {
        return Ok(0);
    }
    let f = dev.function(module, name)?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, b as i32)
        .with_context(|| format!("raising the dynamic shared-memory limit of `{name}` to {b} bytes"))?;
    Ok(b)
}

pub use super::storage::grid_stride_config;

/// `QF_CUDA_SYNC_CHECK=1`: synchronise after every launch so that an error raised while
/// a kernel runs (illegal address, …) is reported with that kernel's name. Slow; for
/// debugging only.
fn sync_check() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QF_CUDA_SYNC_CHECK").is_ok_and(|v| !v.is_empty() && v != "0"))
}

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
    if sync_check() {
        stream.synchronize().with_context(|| format!("CUDA kernel `{name}` failed while running"))?;
    }
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
