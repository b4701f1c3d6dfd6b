//! Device memory of a GPU tensor: a typed `cudarc` slice and its device.

use anyhow::{bail, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::{bf16, f16};

use super::device::CudaDevice;
use crate::backend::cpu::CpuStorage;
use crate::tensor::DType;

/// A typed device buffer.
#[derive(Debug)]
pub enum CudaBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
    I32(CudaSlice<i32>),
}

/// GPU tensor storage.
#[derive(Debug)]
pub struct CudaStorage {
    pub buf: CudaBuf,
    device: CudaDevice,
}

/// Threads per block for one-dimensional grid-stride kernels.
pub const BLOCK: u32 = 256;

/// Launch shape for a grid-stride kernel over `n` elements without knowing the device:
/// ceil(n/256) blocks, at most 65,535 (the kernels loop over the rest). The launchers
/// use [`super::launch::flat_config`], which caps the grid by the device's SM count.
pub fn grid_stride_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

impl CudaStorage {
    pub fn new(buf: CudaBuf, device: CudaDevice) -> Self {
        CudaStorage { buf, device }
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        match self.buf {
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::F16(_) => DType::F16,
            CudaBuf::BF16(_) => DType::BF16,
            CudaBuf::I32(_) => DType::I32,
        }
    }

    pub fn len(&self) -> usize {
        match &self.buf {
            CudaBuf::F32(s) => s.len(),
            CudaBuf::F16(s) => s.len(),
            CudaBuf::BF16(s) => s.len(),
            CudaBuf::I32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy to the host; half-precision values become f32 there.
    pub fn download(&self) -> Result<CpuStorage> {
        let st = self.device.stream();
        Ok(match &self.buf {
            CudaBuf::F32(s) => CpuStorage::F32(st.clone_dtoh(s)?),
            CudaBuf::F16(s) => CpuStorage::F32(st.clone_dtoh(s)?.into_iter().map(f32::from).collect()),
            CudaBuf::BF16(s) => CpuStorage::F32(st.clone_dtoh(s)?.into_iter().map(f32::from).collect()),
            CudaBuf::I32(s) => CpuStorage::I32(st.clone_dtoh(s)?),
        })
    }

    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.download()?.to_f32_vec())
    }

    pub fn to_i32_vec(&self) -> Result<Vec<i32>> {
        match self.download()? {
            CpuStorage::I32(v) => Ok(v),
            s => bail!("tensor has dtype {}, expected i32", s.dtype()),
        }
    }

    /// A device-to-device copy.
    pub fn duplicate(&self) -> Result<CudaStorage> {
        let st = self.device.stream();
        let bytes = self.len() * self.dtype().size_in_bytes();
        let oom = |e| self.device.oom(e, bytes);
        let buf = match &self.buf {
            CudaBuf::F32(s) => CudaBuf::F32(st.clone_dtod(s).map_err(oom)?),
            CudaBuf::F16(s) => CudaBuf::F16(st.clone_dtod(s).map_err(oom)?),
            CudaBuf::BF16(s) => CudaBuf::BF16(st.clone_dtod(s).map_err(oom)?),
            CudaBuf::I32(s) => CudaBuf::I32(st.clone_dtod(s).map_err(oom)?),
        };
        Ok(CudaStorage::new(buf, self.device.clone()))
    }

    /// Convert between f32 and the half types on the device (`kernels/cast.cu`).
    pub fn to_dtype(&self, dtype: DType) -> Result<CudaStorage> {
        if dtype == self.dtype() {
            return self.duplicate();
        }
        super::cast::cast(self, dtype)
    }
}
