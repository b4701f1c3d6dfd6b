//! Backends: the fp32/f64 CPU reference (`cpu`) and the CUDA backend (`cuda`).
//!
//! Backends compute and know nothing of the tape, the model or the optimizer: each op has
//! its CPU twin in `backend/cpu/<op>.rs`, its kernels in `kernels/<op>.cu` and their
//! launches in `backend/cuda/<op>.rs`, and `crate::ops::<op>` (the same name) dispatches
//! both directions by device and records the tape node (docs/ARCHITECTURE.md;
//! `tests/architecture.rs` keeps the names in step).

pub mod cpu;
pub mod cuda;
pub mod seq_layout;

pub use seq_layout::SeqLayout;

use anyhow::{bail, Result};

use crate::tensor::{ensure_same_shape, Storage, Tensor};
use cpu::{with_real, Real};

/// `dst += src` in place (gradient accumulation). `dst` must not be shared.
pub fn add_into(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    ensure_same_shape(dst, src, "add_into")?;
    if dst.dtype() != src.dtype() {
        bail!("add_into: dtypes {} and {} differ", dst.dtype(), src.dtype());
    }
    match src.storage() {
        Storage::Cpu(_) => with_real!(src.dtype(), T => {
            let s = src.as_slice::<T>()?;
            cpu::elementwise::axpy(dst.as_mut_slice::<T>()?, T::one(), s);
            Ok(())
        }),
        Storage::Cuda(_) => cuda::elementwise::accumulate(dst, src),
    }
}
