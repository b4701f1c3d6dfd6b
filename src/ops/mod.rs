//! Ops: forward + backward of each operation, recorded on the autograd tape.
//!
//! Each op checks its inputs, dispatches both directions on the device of its inputs (the
//! CPU twin in `backend/cpu/<op>.rs`, the CUDA launches in `backend/cuda/<op>.rs`, the
//! kernels in `kernels/<op>.cu`, all under the op's name), and is the one place that
//! records a backward node, when the tape records and an input needs a gradient. Backward
//! nodes accumulate into their inputs' gradients. The backends know nothing of the tape.
//! The optimizer ops (`adamw`, `adam8bit`, `grad_norm`) dispatch by device and record
//! nothing: optimizer updates are not differentiated.

pub mod adam8bit;
pub mod adamw;
pub mod attention;
pub mod bce;
pub mod bias_gelu;
pub mod cast;
pub mod contact_head;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod gather;
pub mod grad_norm;
pub mod layer_norm;
pub mod linear;
pub mod mean_pool;
pub mod rotary;

pub use attention::{attention, attention_first_query, SeqLayout};
pub use bce::bce_with_logits;
pub use bias_gelu::bias_gelu;
pub use cast::cast;
pub use contact_head::contact_head;
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use elementwise::{add, scale, tanh};
pub use embedding::embedding;
pub use flash_attention::flash_attention;
pub use gather::gather_rows;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use mean_pool::mean_pool;
pub use rotary::rotary;

use anyhow::{anyhow, Result};

use crate::tensor::{Element, Tensor};

pub(crate) use crate::backend::cpu::with_real;

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
