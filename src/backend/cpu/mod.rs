//! The CPU backend: plain Rust, generic over f32 and f64, parallel with rayon.
//!
//! It is the reference every CUDA kernel is tested against (in f64 for tight checks)
//! and what `qf-engine train` runs on when there is no GPU. Kernels here work on
//! slices; `crate::ops` wraps them into tape-recording ops.

pub mod adam8bit;
pub mod adamw;
pub mod attention;
pub mod attention_bf16;
pub mod bce;
pub mod bias_gelu;
pub mod cast;
pub mod contact_head;
pub mod cross_entropy;
pub mod denormals;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod gather;
pub mod grad_norm;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod matmul_bf16;
pub mod mean_pool;
pub mod philox;
pub mod quant8;
pub mod real;
pub mod rotary;
pub mod simd;
pub mod vector_exp;

use anyhow::Result;

use crate::tensor::DType;
pub use real::Real;

/// Host memory of a CPU tensor.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::I32(_) => DType::I32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            CpuStorage::F32(v) => v.clone(),
            CpuStorage::F64(v) => v.iter().map(|&x| x as f32).collect(),
            CpuStorage::I32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Convert between the CPU element types (f16/bf16 are GPU compute types only).
    pub fn to_dtype(&self, dtype: DType) -> Result<CpuStorage> {
        cast::cast(self, dtype)
    }
}

/// Raw pointer that may be shared across rayon tasks writing disjoint regions.
///
/// Safety: users guarantee that concurrent tasks never touch the same element.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Pointer to element `i`.
    ///
    /// # Safety
    /// `i` must be in bounds of the allocation this pointer came from.
    #[inline]
    pub unsafe fn at(self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// `n` copies of `value` (in practice zeros), written by the rayon pool when `n` is large.
/// A fresh buffer's fill is a pass over memory that would otherwise run on the calling
/// thread alone while the pool waits: the zero fills of op outputs and gradient buffers
/// were about 5 % of an ESM-2 8M bf16 training step, all of it on the main thread.
pub fn filled<T: Copy + Send + Sync>(n: usize, value: T) -> Vec<T> {
    const SERIAL_BELOW: usize = 1 << 16;
    const CHUNK: usize = 1 << 14;
    if n < SERIAL_BELOW || rayon::current_num_threads() < 2 {
        return vec![value; n];
    }
    // Safety: every chunk writes all of its elements.
    unsafe {
        written(n, CHUNK, |_, chunk| {
            for x in chunk {
                x.write(value);
            }
        })
    }
}

/// A new buffer of `n` elements written by `write(start, chunk)` over the rayon pool, in
/// chunks of `chunk` elements (the last one shorter) starting at element `start`, with no
/// fill first: where an op's kernel writes every output element, a zero fill is one more
/// pass over memory (the gradient and activation buffers of an ESM-2 35M bf16 training
/// step were about 3.5 % of it in fills).
///
/// # Safety
/// `write` must write every element of each chunk it is given.
pub unsafe fn written<T: Send>(
    n: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    if n > 0 {
        let chunk = chunk.max(1);
        v.spare_capacity_mut()[..n].par_chunks_mut(chunk).enumerate().for_each(|(i, c)| write(i * chunk, c));
    }
    // Safety: the caller's `write` wrote every element of every chunk.
    v.set_len(n);
    v
}

/// `dst` viewed as slots to write, for kernels that write their whole output and serve both
/// fresh buffers ([`written`]) and existing ones.
///
/// # Safety
/// Only valid `T`s may be stored through the result (never `MaybeUninit::uninit()`).
pub(crate) unsafe fn as_slots<T>(dst: &mut [T]) -> &mut [std::mem::MaybeUninit<T>] {
    // `MaybeUninit<T>` has `T`'s layout.
    std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut std::mem::MaybeUninit<T>, dst.len())
}

/// Keep freed memory in the process heap for reuse instead of returning it to the OS.
///
/// A training step allocates and frees the same large activation buffers every step;
/// with glibc's defaults each buffer above the mmap threshold is a fresh mapping whose
/// pages the kernel must fault in and zero again (≈ 15–20 % of CPU time measured on
/// ESM-2 8M). Called once at start by the CLI; a no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Run `$body` with `$T` bound to the CPU compute type of `$dtype` (f32 or f64).
macro_rules! with_real {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
            d => anyhow::bail!("the CPU backend computes in f32 or f64, not {}", d),
        }
    };
}
pub(crate) use with_real;

/// Deterministic values in [-1, 1) for the backend's unit tests (an LCG: no dependency).
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Below and above the size where the pool fills it, on one thread and on several.
    #[test]
    fn filled_equals_vec_macro() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for n in [0usize, 7, (1 << 16) - 1, 1 << 16, 100_003] {
            assert_eq!(super::filled(n, 2.5f32), vec![2.5f32; n], "n = {n}");
            assert_eq!(pool.install(|| super::filled(n, -1i32)), vec![-1i32; n], "n = {n}, 3 threads");
        }
    }
}
