//! Device facts about memory: the bytes in use in a CUDA device's default memory pool and
//! its high-water mark (with `device::pool_peak_bytes`). What a training run *needs* is
//! planned above, in `train::memory`; this module knows nothing of models.

use anyhow::Result;

use super::CudaDevice;

/// Bytes in use in a CUDA device's default memory pool now.
pub fn pool_used_bytes(dev: &CudaDevice) -> Result<u64> {
    pool_attribute(dev, cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT, None)
}

/// Restart the pool's high-water mark (`pool_peak_bytes`) at the bytes in use now.
pub fn reset_pool_peak(dev: &CudaDevice) -> Result<()> {
    pool_attribute(dev, cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Some(0)).map(|_| ())
}

fn pool_attribute(dev: &CudaDevice, attr: cudarc::driver::sys::CUmemPool_attribute, set: Option<u64>) -> Result<u64> {
    use cudarc::driver::sys;
    dev.synchronize()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut value: u64 = set.unwrap_or(0);
    // Safety: plain driver queries on the device's own default pool.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev.context().cu_device()).result()?;
        let v = &mut value as *mut u64 as *mut std::ffi::c_void;
        match set {
            Some(_) => sys::cuMemPoolSetAttribute(pool, attr, v).result()?,
            None => sys::cuMemPoolGetAttribute(pool, attr, v).result()?,
        }
    }
    Ok(value)
}
