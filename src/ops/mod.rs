//! Ops: forward + backward of each operation, recorded on the autograd tape.
//!
//! Each op checks its inputs, dispatches on the device of its inputs (the CPU kernels
//! in `backend/cpu/<op>.rs`, the CUDA launches in `backend/cuda/<op>.rs`), and records a
//! backward node when the tape records and an input needs a gradient. Backward nodes
//! accumulate into their inputs' gradients.

pub mod adam8bit;
pub mod adamw;
pub mod attention;
pub mod bce;
pub mod contact_head;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod gather;
pub mod gelu;
pub mod grad_norm;
pub mod layer_norm;
pub mod linear;
pub mod mean_pool;
pub mod rotary;

pub use attention::{attention, SeqLayout};
pub use bce::bce_with_logits;
pub use contact_head::contact_head;
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use elementwise::{add, scale, tanh};
pub use embedding::embedding;
pub use flash_attention::flash_attention;
pub use gather::gather_rows;
pub use gelu::bias_gelu;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use mean_pool::mean_pool;
pub use rotary::rotary;

use anyhow::{anyhow, Result};

use crate::tensor::{Element, Tensor};

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

/// The gradient of output `i` of a node (present: the tape only calls a node whose
/// outputs received a gradient; multi-output nodes check for themselves).
pub(crate) fn out_grad(outs: &[Option<Tensor>], i: usize) -> Result<&Tensor> {
    outs.get(i).and_then(Option::as_ref).ok_or_else(|| anyhow!("missing gradient for output {i}"))
}

/// Mutable slice of an optional gradient buffer; empty when the input needs no gradient
/// (the CPU kernels skip the work for empty outputs).
pub(crate) fn grad_slice<T: Element>(g: &mut Option<Tensor>) -> Result<&mut [T]> {
    match g {
        Some(t) => t.as_mut_slice::<T>(),
        None => Ok(&mut []),
    }
}

/// Check that every tensor is on the same device as the first.
pub(crate) fn ensure_same_device(op: &str, tensors: &[&Tensor]) -> Result<()> {
    let d = tensors[0].device();
    for t in &tensors[1..] {
        if !t.device().same(&d) {
            anyhow::bail!("{op}: inputs are on different devices ({} and {})", d.name(), t.device().name());
        }
    }
    Ok(())
}
