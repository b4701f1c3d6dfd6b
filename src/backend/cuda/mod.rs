//! The CUDA backend: device and module management (`device`), GPU tensor storage
//! (`storage`), the kernels compiled by `build.rs` (`kernels`), and the launch code of
//! each op (one module per op, named like `kernels/<op>.cu`), NVTX ranges (`nvtx`) and
//! the GPU memory plan (`memory`).
//!
//! Everything is loaded at run time through `cudarc`'s dynamic loading: the binary
//! builds and runs without CUDA, and `--device cuda` then says why it cannot start.

pub mod adam8bit;
pub mod adamw;
pub mod attention;
pub mod bce;
pub mod bias_gelu;
pub mod cast;
pub mod contact_head;
pub mod cross_entropy;
pub mod device;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod gather;
pub mod gemm;
pub mod grad_norm;
pub mod kernels;
pub mod launch;
pub mod layer_norm;
pub mod linear;
pub mod mean_pool;
pub mod memory;
pub mod nvtx;
pub mod rotary;
pub mod storage;

pub use device::{AttentionKernel, CudaDevice};
pub use storage::{CudaBuf, CudaStorage};
