//! Row-major matrix products through cuBLAS `GemmEx` with fp32 accumulation.
//!
//! cuBLAS is column-major; a row-major `C = op(A)·op(B)` is computed as the column-major
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ`, i.e. the operands swapped with the same transpose flags.
//! Inputs may be f32, f16 or bf16; the output f32 or the inputs' type. Weight gradients
//! are accumulated straight into their fp32 buffers (`beta = 1`).

use std::ffi::c_void;

use anyhow::{bail, Context, Result};
use cudarc::cublas::{result as blas, sys};

use super::device::CudaDevice;
use crate::tensor::DType;

/// A row-major matrix operand: device pointer, dtype, leading dimension (row stride in
/// elements) and whether it is read transposed.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub ptr: u64,
    pub dtype: DType,
    pub ld: usize,
    pub trans: bool,
}

fn cuda_type(d: DType) -> Result<sys::cudaDataType> {
    Ok(match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        d => bail!("cuBLAS GEMM does not take {d} operands"),
    })
}

fn op(trans: bool) -> sys::cublasOperation_t {
    if trans {
        sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// Batch description for strided-batched products (element strides between batches).
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    pub count: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

/// `C (m×n, row-major, ld = ldc, dtype c_type) = alpha·op(A)·op(B) + beta·C`, where
/// `op(A)` is `m×k` and `op(B)` is `k×n`; `batch` repeats it over strided matrices.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dev: &CudaDevice,
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c_ptr: u64,
    c_type: DType,
    ldc: usize,
    alpha: f32,
    beta: f32,
    batch: Option<Batch>,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let handle = *dev.blas().handle();
    let (alpha, beta) = (alpha, beta);
    let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
    let algo = sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
    let (ta, tb) = (cuda_type(a.dtype)?, cuda_type(b.dtype)?);
    let tc = cuda_type(c_type)?;
    let to_int = |x: usize| i32::try_from(x).context("GEMM dimension exceeds 32 bits");
    // Safety: pointers come from live GPU tensors of the sizes the callers checked.
    unsafe {
        match batch {
            None => blas::gemm_ex(
                handle,
                op(b.trans),
                op(a.trans),
                to_int(n)?,
                to_int(m)?,
                to_int(k)?,
                &alpha as *const f32 as *const c_void,
                b.ptr as *const c_void,
                tb,
                to_int(b.ld)?,
                a.ptr as *const c_void,
                ta,
                to_int(a.ld)?,
                &beta as *const f32 as *const c_void,
                c_ptr as *mut c_void,
                tc,
                to_int(ldc)?,
                compute,
                algo,
            ),
            Some(bt) => blas::gemm_strided_batched_ex(
                handle,
                op(b.trans),
                op(a.trans),
                to_int(n)?,
                to_int(m)?,
                to_int(k)?,
                &alpha as *const f32 as *const c_void,
                b.ptr as *const c_void,
                tb,
                to_int(b.ld)?,
                bt.stride_b as i64,
                a.ptr as *const c_void,
                ta,
                to_int(a.ld)?,
                bt.stride_a as i64,
                &beta as *const f32 as *const c_void,
                c_ptr as *mut c_void,
                tc,
                to_int(ldc)?,
                bt.stride_c as i64,
                to_int(bt.count)?,
                compute,
                algo,
            ),
        }
    }
    .map_err(|e| anyhow::anyhow!("cuBLAS GEMM ({m}×{n}×{k}) failed: {e:?}"))
}
