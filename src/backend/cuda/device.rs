//! One CUDA device: its context, the single stream everything runs on, the kernel
//! modules (loaded once) and their functions (cached), and the cuBLAS handle.
//!
//! Memory comes from the driver's stream-ordered allocator (`cuMemAllocAsync`, which
//! cudarc uses when the device supports memory pools). At start the default pool's
//! release threshold is raised to "never", so freed blocks stay cached in the pool and
//! the steady-state training step makes no real device allocation.
//!
//! The device's multiprocessor count and opt-in shared-memory limit are read once at
//! open: the launchers size their grids from them (see each `kernels/<op>.cu` header).
//!
//! Out-of-memory is a typed error ([`OutOfMemory`]) so that the training loop can name
//! its token budget in the message ([`with_budget_hint`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};

use super::kernels;
use super::storage::{CudaBuf, CudaStorage};
use crate::backend::cpu::CpuStorage;
use crate::tensor::{DType, Tensor, TensorId};

/// Which attention the CUDA backend runs (`--attention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The fused flash kernel with rotary inside (`kernels/flash_attention.cu`); f32 and
    /// head dims other than 16, 24, 32, 64 and 128 fall back to the unfused path.
    #[default]
    Flash,
    /// The first path, kept as the reference: the rotary kernel, then q, k, v copied into
    /// padded per-sequence blocks, cuBLAS GEMMs and a masked softmax (`kernels/attention.cu`).
    Unfused,
}

impl std::str::FromStr for AttentionKernel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flash" | "fused" => Ok(AttentionKernel::Flash),
            "unfused" => Ok(AttentionKernel::Unfused),
            _ => bail!("unknown attention `{s}`: use flash or unfused"),
        }
    }
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionKernel::Flash => "flash",
            AttentionKernel::Unfused => "unfused",
        })
    }
}

/// The attention of devices opened from now on (the CLI's `--attention`).
static DEFAULT_ATTENTION: AtomicU8 = AtomicU8::new(0);

/// Choose the attention of CUDA devices opened after this call.
pub fn set_default_attention(kind: AttentionKernel) {
    DEFAULT_ATTENTION.store(kind as u8, Ordering::Relaxed);
}

/// The attention of devices opened from now on.
pub fn default_attention() -> AttentionKernel {
    match DEFAULT_ATTENTION.load(Ordering::Relaxed) {
        0 => AttentionKernel::Flash,
        _ => AttentionKernel::Unfused,
    }
}

/// A handle to an opened CUDA device (cheap to clone).
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLAS's workspace, allocated once from the memory pool (so that the GEMMs make
    /// no allocation of their own); dropped after the handle.
    _blas_workspace: cudarc::driver::CudaSlice<u8>,
    name: String,
    /// Streaming multiprocessors (grid sizes are multiples of it).
    sm_count: u32,
    /// Largest dynamic shared memory a block may be given after raising the kernel's
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` (opt-in limit), in bytes.
    max_dynamic_smem: u32,
    /// Fill fresh uninitialised buffers with NaN (tests: catches unwritten outputs).
    poison_uninit: AtomicBool,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Activation dtype of this run (f32, f16 or bf16).
    compute_dtype: Mutex<DType>,
    /// The attention path (`AttentionKernel as u8`).
    attention: AtomicU8,
    /// Half-precision copies of fp32 master weights, by the master's id. The optimizer
    /// rewrites them in the same pass that updates the masters.
    compute_copies: Mutex<HashMap<TensorId, Tensor>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.ordinal(), self.inner.name)
    }
}

/// Why CUDA cannot be used on this machine, or `None` when a device can be opened.
pub fn unavailable_reason() -> Option<String> {
    // Safety: only probes whether the shared libraries can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Some("no NVIDIA driver found (libcuda.so could not be loaded)".into());
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Some(
            "cuBLAS not found (libcublas.so could not be loaded; add the CUDA libraries to LD_LIBRARY_PATH)".into(),
        );
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the NVIDIA driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the NVIDIA driver could not be initialised: {e}")),
    }
}

impl CudaDevice {
    /// Open device `ordinal`: context, stream, cuBLAS, caching memory pool. Never panics
    /// when CUDA is missing; the error says what is missing.
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        if let Some(why) = unavailable_reason() {
            bail!("CUDA is not available: {why}");
        }
        if !kernels::BUILT_WITH_KERNELS {
            bail!(
                "this qf-engine was built without CUDA kernels — install nvcc (tools/install_cuda_toolchain.sh) and rebuild"
            );
        }
        let ctx = CudaContext::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
        // One stream: ordering is implicit, so cudarc's per-buffer events are not needed.
        // Safety: no buffer is shared with another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        keep_freed_memory_in_pool(&ctx)?;
        let blas = CudaBlas::new(stream.clone()).context("creating the cuBLAS handle")?;
        let blas_workspace = give_blas_a_workspace(&ctx, &stream, &blas)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let attr = |a, what: &str| -> Result<u32> {
            let v = ctx.attribute(a).with_context(|| format!("reading the {what} of CUDA device {ordinal}"))?;
            Ok(v.max(0) as u32)
        };
        use sys::CUdevice_attribute::*;
        let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count")?.max(1);
        let max_dynamic_smem = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "shared-memory limit")?;
        let poison = std::env::var("QF_CUDA_POISON").is_ok_and(|v| !v.is_empty() && v != "0");
        Ok(CudaDevice {
            inner: Arc::new(Inner {
                ctx,
                stream,
                blas,
                _blas_workspace: blas_workspace,
                name,
                sm_count,
                max_dynamic_smem,
                poison_uninit: AtomicBool::new(poison),
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                compute_dtype: Mutex::new(DType::F32),
                attention: AtomicU8::new(default_attention() as u8),
                compute_copies: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.inner.ctx.ordinal()
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    pub fn blas(&self) -> &CudaBlas {
        &self.inner.blas
    }

    /// Number of streaming multiprocessors (queried once at open).
    pub fn sm_count(&self) -> u32 {
        self.inner.sm_count
    }

    /// Opt-in limit of dynamic shared memory per block, in bytes.
    pub fn max_dynamic_smem(&self) -> u32 {
        self.inner.max_dynamic_smem
    }

    /// Fill every buffer made by [`CudaDevice::uninit`] with NaN (i32: `i32::MIN`) before
    /// it is handed out, so that an element a kernel fails to write shows up as NaN.
    /// For tests and debugging (also switched on by `QF_CUDA_POISON=1`); costs one memset
    /// per allocation.
    pub fn set_poison_uninit(&self, on: bool) {
        self.inner.poison_uninit.store(on, Ordering::Relaxed);
    }

    pub fn poison_uninit(&self) -> bool {
        self.inner.poison_uninit.load(Ordering::Relaxed)
    }

    /// Activation dtype (the precision of this run).
    pub fn compute_dtype(&self) -> DType {
        *self.inner.compute_dtype.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Choose the activation dtype: f32, f16 or bf16.
    pub fn set_compute_dtype(&self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            bail!("compute dtype must be f32, f16 or bf16, not {dtype}");
        }
        *self.inner.compute_dtype.lock().unwrap_or_else(|e| e.into_inner()) = dtype;
        Ok(())
    }

    /// The attention this device runs (flash unless `--attention unfused` or
    /// [`CudaDevice::set_attention_kernel`] chose the unfused reference path).
    pub fn attention_kernel(&self) -> AttentionKernel {
        match self.inner.attention.load(Ordering::Relaxed) {
            0 => AttentionKernel::Flash,
            _ => AttentionKernel::Unfused,
        }
    }

    pub fn set_attention_kernel(&self, kind: AttentionKernel) {
        self.inner.attention.store(kind as u8, Ordering::Relaxed);
    }

    /// `w` in `dtype`: `w` itself when it already is, else its cached half copy (made on
    /// first use).
    pub fn compute_copy(&self, w: &Tensor, dtype: DType) -> Result<Tensor> {
        if w.dtype() == dtype {
            return Ok(w.clone());
        }
        let mut cache = self.inner.compute_copies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&w.id()) {
            if c.dtype() == dtype {
                return Ok(c.clone());
            }
        }
        let c = w.to_dtype(dtype)?.with_requires_grad(false);
        cache.insert(w.id(), c.clone());
        Ok(c)
    }

    /// The cached half copy of `w`, if one was made (the optimizer refreshes it).
    pub fn cached_compute_copy(&self, w: &Tensor) -> Option<Tensor> {
        self.inner.compute_copies.lock().unwrap_or_else(|e| e.into_inner()).get(&w.id()).cloned()
    }

    /// Forget all half copies (after weights change outside the optimizer).
    pub fn clear_compute_copies(&self) {
        self.inner.compute_copies.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Wait for all queued work (only where a result is read on the host).
    pub fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().context("CUDA stream synchronisation failed")
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        Ok(self.inner.ctx.mem_get_info()?)
    }

    /// A kernel function, loading its module on first use and caching both.
    pub fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        let key = format!("{module}::{name}");
        if let Some(f) = self.inner.functions.lock().map_err(|_| anyhow!("CUDA function cache poisoned"))?.get(&key) {
            return Ok(f.clone());
        }
        let m = self.module(module)?;
        let f = m.load_function(name).with_context(|| format!("kernel `{name}` is missing from module `{module}`"))?;
        self.inner.functions.lock().map_err(|_| anyhow!("CUDA function cache poisoned"))?.insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, module: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.inner.modules.lock().map_err(|_| anyhow!("CUDA module cache poisoned"))?;
        if let Some(m) = modules.get(module) {
            return Ok(m.clone());
        }
        let image = kernels::module_image(module)
            .ok_or_else(|| anyhow!("kernel module `{module}` was not compiled into this binary"))?;
        let m = self.inner.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec())).with_context(|| {
            format!("loading kernel module `{module}` (is the driver new enough for PTX 9.0 / CUDA 13?)")
        })?;
        modules.insert(module, m.clone());
        Ok(m)
    }

    /// Zero-filled device memory.
    pub fn zeros(&self, dtype: DType, n: usize) -> Result<CudaStorage> {
        let s = &self.inner.stream;
        let buf = match dtype {
            DType::F32 => CudaBuf::F32(s.alloc_zeros(n).map_err(|e| self.oom(e, n * 4))?),
            DType::F16 => CudaBuf::F16(s.alloc_zeros(n).map_err(|e| self.oom(e, n * 2))?),
            DType::BF16 => CudaBuf::BF16(s.alloc_zeros(n).map_err(|e| self.oom(e, n * 2))?),
            DType::I32 => CudaBuf::I32(s.alloc_zeros(n).map_err(|e| self.oom(e, n * 4))?),
            DType::F64 => bail!("the CUDA backend does not store f64 tensors"),
        };
        Ok(CudaStorage::new(buf, self.clone()))
    }

    /// Uninitialised device memory, for outputs a kernel writes completely (poisoned
    /// with NaN when [`CudaDevice::set_poison_uninit`] is on).
    pub fn uninit(&self, dtype: DType, n: usize) -> Result<CudaStorage> {
        let s = &self.inner.stream;
        // Safety: every caller's kernel writes all `n` elements before any read.
        let buf = unsafe {
            match dtype {
                DType::F32 => CudaBuf::F32(s.alloc(n).map_err(|e| self.oom(e, n * 4))?),
                DType::F16 => CudaBuf::F16(s.alloc(n).map_err(|e| self.oom(e, n * 2))?),
                DType::BF16 => CudaBuf::BF16(s.alloc(n).map_err(|e| self.oom(e, n * 2))?),
                DType::I32 => CudaBuf::I32(s.alloc(n).map_err(|e| self.oom(e, n * 4))?),
                DType::F64 => bail!("the CUDA backend does not store f64 tensors"),
            }
        };
        let storage = CudaStorage::new(buf, self.clone());
        if self.poison_uninit() && n > 0 {
            self.poison(&storage)?;
        }
        Ok(storage)
    }

    /// Overwrite a buffer with the NaN pattern of its dtype (`i32::MIN` for i32).
    fn poison(&self, storage: &CudaStorage) -> Result<()> {
        let n = storage.len();
        let ptr = super::launch::storage_ptr(storage);
        let cu_stream = self.inner.stream.cu_stream();
        // Safety: `ptr` addresses `n` elements of the buffer's own type on this stream.
        unsafe {
            match storage.dtype() {
                DType::F32 => sys::cuMemsetD32Async(ptr, 0x7FC0_0000, n, cu_stream),
                DType::I32 => sys::cuMemsetD32Async(ptr, 0x8000_0000, n, cu_stream),
                DType::F16 => sys::cuMemsetD16Async(ptr, 0x7E00, n, cu_stream),
                DType::BF16 => sys::cuMemsetD16Async(ptr, 0x7FC0, n, cu_stream),
                DType::F64 => unreachable!("no f64 on the GPU"),
            }
            .result()
            .context("poisoning a fresh CUDA buffer")
        }
    }

    /// The error of a failed allocation of `bytes` bytes: [`OutOfMemory`] when the
    /// driver says so (with the device's free/total memory), else the driver's error.
    pub fn oom(&self, e: cudarc::driver::DriverError, bytes: usize) -> anyhow::Error {
        if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
            anyhow::Error::new(OutOfMemory { bytes, free_total: self.memory_info().ok() })
        } else {
            anyhow!("CUDA allocation of {bytes} bytes failed: {e}")
        }
    }

    /// Copy host memory to the device (f64 is narrowed to f32).
    pub fn upload(&self, s: &CpuStorage) -> Result<CudaStorage> {
        let st = &self.inner.stream;
        let buf = match s {
            CpuStorage::F32(v) => CudaBuf::F32(st.clone_htod(v).map_err(|e| self.oom(e, v.len() * 4))?),
            CpuStorage::F64(v) => {
                let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                CudaBuf::F32(st.clone_htod(&v).map_err(|e| self.oom(e, v.len() * 4))?)
            }
            CpuStorage::I32(v) => CudaBuf::I32(st.clone_htod(v).map_err(|e| self.oom(e, v.len() * 4))?),
        };
        Ok(CudaStorage::new(buf, self.clone()))
    }
}

/// CUDA ran out of device memory (an allocation from the memory pool, or cuBLAS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory {
    /// Size of the allocation that failed.
    pub bytes: usize,
    /// Free and total device memory when it failed, if the driver could tell.
    pub free_total: Option<(usize, usize)>,
}

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        write!(f, "CUDA out of memory allocating {:.1} MiB", mib(self.bytes))?;
        if let Some((free, total)) = self.free_total {
            write!(f, " ({:.0} MiB free of {:.0} MiB)", mib(free), mib(total))?;
        }
        write!(f, ": lower --max-tokens (the token budget per batch), or use --optimizer adamw8bit")
    }
}

impl std::error::Error for OutOfMemory {}

/// Whether `e` (or any error it wraps) is a CUDA out-of-memory error.
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<OutOfMemory>())
}

/// Name the token budget in an out-of-memory error from a training step and suggest a
/// smaller one (half of it, and gradient accumulation to keep the effective batch);
/// other errors pass through unchanged.
pub fn with_budget_hint(e: anyhow::Error, max_tokens: usize) -> anyhow::Error {
    if !is_out_of_memory(&e) {
        return e;
    }
    let smaller = (max_tokens / 2).max(1);
    e.context(format!(
        "the GPU ran out of memory in a training step with a token budget of {max_tokens} tokens per \
         micro-batch: try --max-tokens {smaller} (with --grad-accum 2 to keep the effective batch size)"
    ))
}

/// Give cuBLAS a fixed workspace from the memory pool: 32 MiB on Hopper and newer, 4 MiB
/// before (cuBLAS's recommended sizes), so that no GEMM allocates memory of its own.
fn give_blas_a_workspace(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    blas: &CudaBlas,
) -> Result<cudarc::driver::CudaSlice<u8>> {
    use cudarc::driver::DevicePtrMut;
    let major = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let bytes: usize = if major >= 9 { 32 << 20 } else { 4 << 20 };
    // Safety: cuBLAS only ever writes its scratch data into the workspace.
    let mut ws = unsafe { stream.alloc::<u8>(bytes) }.context("allocating the cuBLAS workspace")?;
    let (ptr, _record) = ws.device_ptr_mut(stream);
    // Safety: the buffer outlives the handle (it is dropped after it) and is used by no one else.
    unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut std::ffi::c_void, bytes) }
        .result()
        .context("setting the cuBLAS workspace")?;
    drop(_record);
    Ok(ws)
}

/// Raise the default memory pool's release threshold so freed memory is kept for reuse.
fn keep_freed_memory_in_pool(ctx: &Arc<CudaContext>) -> Result<()> {
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // Safety: plain driver calls on the context's own device.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().context("querying the CUDA memory pool")?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .context("configuring the CUDA memory pool")?;
    }
    Ok(())
}

/// A `u64` attribute of the device's default memory pool.
fn pool_attribute(dev: &CudaDevice, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut value: u64 = 0;
    // Safety: plain driver queries on the context's own device.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev.context().cu_device()).result()?;
        sys::cuMemPoolGetAttribute(pool, attr, &mut value as *mut u64 as *mut std::ffi::c_void).result()?;
    }
    Ok(value)
}

/// Peak bytes in use in the device's memory pool since the last reset.
pub fn pool_peak_bytes(dev: &CudaDevice) -> Result<u64> {
    pool_attribute(dev, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

/// Bytes of device memory the pool holds now (in use or cached for reuse). Constant
/// across steady-state training steps: they allocate only from the cache.
pub fn pool_reserved_bytes(dev: &CudaDevice) -> Result<u64> {
    pool_attribute(dev, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_errors_name_the_token_budget() {
        let e = anyhow::Error::new(OutOfMemory { bytes: 3 << 30, free_total: Some((1 << 30, 80 << 30)) })
            .context("in the backward pass of `linear`");
        assert!(is_out_of_memory(&e));
        let msg = format!("{:#}", with_budget_hint(e, 16384));
        assert!(msg.starts_with("the GPU ran out of memory in a training step with a token budget of 16384"), "{msg}");
        assert!(msg.contains("--max-tokens 8192"), "{msg}");
        assert!(msg.contains("CUDA out of memory allocating 3072.0 MiB (1024 MiB free of 81920 MiB)"), "{msg}");
        // other errors pass through unchanged
        let other = with_budget_hint(anyhow!("bad shape"), 16384);
        assert_eq!(format!("{other:#}"), "bad shape");
    }
}
