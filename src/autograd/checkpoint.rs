//! Activation recomputation ("gradient checkpointing"): a block of ops keeps only its
//! inputs through the forward pass and is run again in the backward pass.
//!
//! Reference: T. Chen, B. Xu, C. Zhang, C. Guestrin, "Training Deep Nets with Sublinear
//! Memory Cost" (arXiv:1604.06174, 2016), §4; PyTorch `torch.utils.checkpoint` (the
//! non-reentrant variant) does the same with RNG-state replay.
//!
//! For a block `y = f(x; θ)` on a recording tape, [`checkpoint`]:
//!
//! 1. runs `f` on a **child** tape ([`Tape::child`]) that continues the parent's dropout
//!    stream at its current offset, then drops the child: the activations the block's ops
//!    saved are freed as soon as `f` returns, and the parent's dropout offset moves past
//!    what the block drew, exactly as if the ops had run on the parent;
//! 2. records **one** node on the parent whose outputs are `f`'s outputs and which saves
//!    only the input handles `x` (θ are reached through `f`'s captures);
//! 3. in the backward pass, re-runs `f(x)` on a fresh recording tape that starts at the
//!    same dropout position, so every op sees the same inputs, weights and dropout bits and
//!    produces bit-identical outputs `y'`; then back-propagates from `y'` with the incoming
//!    gradients `∂L/∂y` as seeds ([`Tape::backward_from_many`]) into the same [`Grads`].
//!
//! Gradients are keyed by tensor id, and the recomputation uses the saved input handles
//! and the parameters' own handles, so the contributions land on `x` and `θ` directly;
//! every intermediate of the recomputation is new and consumed inside the inner backward.
//! Both passes run the same code on a recording tape, so gradients are **bit-identical**
//! to running the block without recomputation (the accumulation order inside the block is
//! unchanged, and `∂L/∂y` is complete before the node runs, as for any node).
//!
//! Memory: instead of all of the block's saved activations, the tape keeps its inputs
//! (for an ESM-2 layer: `[tokens, hidden]` instead of ~20× that plus the attention
//! probabilities). Extra outputs of the block (attention probabilities for a contact head)
//! stay alive as long as their consumers keep them; their gradients are seeded into the
//! recomputation like `∂L/∂y`. Cost: one more forward of the block per backward.
//!
//! Why the forward pass runs on a *recording* child rather than an inference tape: an
//! inference tape also switches dropout off (`ops::dropout`), and running the forward and
//! the recomputation through the same code on the same kind of tape is what makes the
//! replay exact without special cases in the ops. The child's saved tensors live only
//! until the block returns, so the forward pass holds at most one block's activations —
//! the same peak the recomputation has in the backward pass.
//!
//! On a tape that does not record (inference) `f` simply runs on that tape.

use anyhow::{ensure, Result};

use super::{Grads, Tape};
use crate::tensor::Tensor;

/// Run `f(inputs)` without keeping its activations; recompute them in the backward pass
/// (see the module docs). `f` must be deterministic given its inputs, the parameters it
/// captures and the tape's dropout stream (every op of this engine is). `name` labels the
/// node in backward errors.
pub fn checkpoint<F>(tape: &Tape, name: &'static str, inputs: &[Tensor], f: F) -> Result<Vec<Tensor>>
where
    F: Fn(&Tape, &[Tensor]) -> Result<Vec<Tensor>> + 'static,
{
    if !tape.is_recording() {
        return f(tape, inputs);
    }
    let (seed, start) = tape.dropout_position();
    let child = tape.child();
    let outputs = f(&child, inputs)?;
    tape.set_dropout_offset(child.dropout_position().1);
    let recorded = !child.is_empty();
    drop(child); // frees what the block's ops saved
    if !recorded || !outputs.iter().any(Tensor::requires_grad) {
        return Ok(outputs);
    }
    let saved: Vec<Tensor> = inputs.to_vec();
    let shapes: Vec<Vec<usize>> = outputs.iter().map(|t| t.shape().to_vec()).collect();
    let out_refs: Vec<&Tensor> = outputs.iter().collect();
    tape.record(name, &out_refs, move |outs, grads| {
        let replay = Tape::at_dropout_position(seed, start);
        let again = f(&replay, &saved)?;
        recompute_backward(replay, &again, &shapes, outs, grads)
    });
    Ok(outputs)
}

/// Back-propagate through the recomputed block: each recomputed output whose original
/// received a gradient is a root seeded with that gradient.
fn recompute_backward(
    replay: Tape,
    again: &[Tensor],
    shapes: &[Vec<usize>],
    outs: &[Option<Tensor>],
    grads: &mut Grads,
) -> Result<()> {
    ensure!(
        again.len() == shapes.len(),
        "recomputation returned {} outputs, the forward pass {}",
        again.len(),
        shapes.len()
    );
    let mut roots = Vec::with_capacity(again.len());
    for ((t, shape), g) in again.iter().zip(shapes).zip(outs) {
        ensure!(t.shape() == &shape[..], "recomputed output has shape {:?}, the forward pass {:?}", t.shape(), shape);
        if let Some(g) = g {
            roots.push((t, g.clone()));
        }
    }
    replay.backward_from_many(&roots, grads)
}
