//! Backends: the fp32/f64 CPU reference (`cpu`) and the CUDA backend (`cuda`).
//!
//! Ops in `crate::ops` dispatch on the storage of their inputs; each op's maths lives
//! in `backend/cpu/<op>.rs` and `kernels/<op>.cu` under the same name.

pub mod cpu;
pub mod cuda;
