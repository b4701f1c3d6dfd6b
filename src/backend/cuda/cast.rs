//! Element-type conversion on the GPU (`kernels/cast.cu`): f32 to f16/bf16 (round to
//! nearest even) and back. Flat grid-stride launches: block 256, grid
//! min(ceil(n / 1024), 32·SMs), 4 elements per thread.

use anyhow::{bail, Result};

use super::kernels;
use super::launch::{self, long, storage_ptr, Ptr, TPtr};
use super::storage::CudaStorage;
use crate::tensor::DType;

/// A new buffer with `src`'s elements converted to `dtype` (a different dtype).
pub fn cast(src: &CudaStorage, dtype: DType) -> Result<CudaStorage> {
    let dev = src.device();
    let n = src.len();
    let out = dev.uninit(dtype, n)?;
    let cfg = launch::flat_config(dev, n, 4, 32);
    let (dst, from) = (storage_ptr(&out), storage_ptr(src));
    match (src.dtype(), dtype) {
        (DType::F32, DType::F16 | DType::BF16) => {
            kernels::cast::cast_f32_to(dev, cfg, TPtr::from_addr(dst, dtype)?, Ptr::from_addr(from), long(n))?
        }
        (DType::F16, DType::F32) => {
            kernels::cast::cast_f16_to_f32(dev, cfg, Ptr::from_addr(dst), Ptr::from_addr(from), long(n))?
        }
        (DType::BF16, DType::F32) => {
            kernels::cast::cast_bf16_to_f32(dev, cfg, Ptr::from_addr(dst), Ptr::from_addr(from), long(n))?
        }
        (a, b) => bail!("no CUDA conversion from {a} to {b}"),
    }
    Ok(out)
}
