//! Element-type conversion on the CPU: f32 ↔ f64 (f16/bf16 are GPU compute types only;
//! the CUDA twin is `kernels/cast.cu`).

use anyhow::{bail, Result};

use super::CpuStorage;
use crate::tensor::DType;

/// `src`'s elements as `dtype` (a copy, also when the dtype already matches).
pub fn cast(src: &CpuStorage, dtype: DType) -> Result<CpuStorage> {
    Ok(match (src, dtype) {
        (s, d) if s.dtype() == d => s.clone(),
        (CpuStorage::F32(v), DType::F64) => CpuStorage::F64(v.iter().map(|&x| x as f64).collect()),
        (CpuStorage::F64(v), DType::F32) => CpuStorage::F32(v.iter().map(|&x| x as f32).collect()),
        (s, d) => bail!("the CPU backend cannot convert {} to {d}", s.dtype()),
    })
}
