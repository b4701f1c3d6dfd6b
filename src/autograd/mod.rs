//! The autograd tape.
//!
//! Each op computes its output eagerly and, when the tape records and an input needs a
//! gradient, pushes a node: the ids of its outputs and a closure holding what its backward
//! needs (the saved tensors). `backward` walks the nodes in reverse: it takes the gradients
//! of a node's outputs out of [`Grads`] (they are complete, since every consumer came later
//! on the tape) and lets the node add its contributions into its inputs' gradients.
//!
//! Every contribution is accumulated (`+=`) into a buffer from [`Grads::acc`], which is
//! zero-filled on first use; an op whose backward writes its whole contribution may instead
//! write the first one into a fresh buffer ([`Grads::has`]). Parameter gradients therefore
//! sum across calls to `backward` until [`Grads::clear`]: gradient accumulation over
//! micro-batches needs nothing else.
//! An inference tape ([`Tape::inference`]) records nothing.
//!
//! [`checkpoint`] runs a block of ops without keeping its activations and recomputes them
//! in the backward pass (activation recomputation, see `checkpoint.rs`).

mod checkpoint;

pub use checkpoint::checkpoint;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::tensor::{Tensor, TensorId};

type BackwardFn = Box<dyn FnOnce(&[Option<Tensor>], &mut Grads) -> Result<()>>;

struct Node {
    name: &'static str,
    outputs: Vec<TensorId>,
    backward: BackwardFn,
}

/// Records ops for the backward pass.
pub struct Tape {
    recording: bool,
    nodes: RefCell<Vec<Node>>,
    /// Dropout stream: the step's seed and the next unused element offset.
    dropout_seed: u64,
    dropout_offset: Cell<u64>,
}

impl Tape {
    /// A tape that records (training).
    pub fn new() -> Self {
        Tape::with_seed(0)
    }

    /// A recording tape whose dropout masks derive from `seed` (one seed per step).
    pub fn with_seed(seed: u64) -> Self {
        Tape { recording: true, nodes: RefCell::new(Vec::new()), dropout_seed: seed, dropout_offset: Cell::new(0) }
    }

    /// A tape that records nothing (inference): ops only compute outputs, dropout is off.
    pub fn inference() -> Self {
        Tape { recording: false, nodes: RefCell::new(Vec::new()), dropout_seed: 0, dropout_offset: Cell::new(0) }
    }

    /// A recording tape that continues this tape's dropout stream where it stands: the
    /// same seed, starting at the current offset. Ops run on it draw exactly the dropout
    /// bits they would have drawn on this tape (see [`checkpoint`]).
    pub fn child(&self) -> Tape {
        Tape::at_dropout_position(self.dropout_seed, self.dropout_offset.get())
    }

    /// A recording tape whose dropout stream starts at `(seed, offset)`.
    pub fn at_dropout_position(seed: u64, offset: u64) -> Tape {
        Tape { recording: true, nodes: RefCell::new(Vec::new()), dropout_seed: seed, dropout_offset: Cell::new(offset) }
    }

    /// `(seed, next unused offset)` of the dropout stream.
    pub fn dropout_position(&self) -> (u64, u64) {
        (self.dropout_seed, self.dropout_offset.get())
    }

    /// Move the dropout stream to `offset` (after a child tape drew from it).
    pub fn set_dropout_offset(&self, offset: u64) {
        self.dropout_offset.set(offset);
    }

    /// `(seed, offset)` for a dropout over `n` elements; advances the offset so the next
    /// call draws different bits.
    pub fn dropout_stream(&self, n: usize) -> (u64, u64) {
        let off = self.dropout_offset.get();
        self.dropout_offset.set(off + n.div_ceil(4) as u64);
        (self.dropout_seed, off)
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an op over `inputs` must record a node: the tape records and some input
    /// needs a gradient.
    pub fn needs_grad(&self, inputs: &[&Tensor]) -> bool {
        self.recording && inputs.iter().any(|t| t.requires_grad())
    }

    /// Record a node producing `outputs`. The closure receives the gradients of the
    /// outputs (None where no gradient flowed) and adds into its inputs' gradients.
    pub fn record(
        &self,
        name: &'static str,
        outputs: &[&Tensor],
        backward: impl FnOnce(&[Option<Tensor>], &mut Grads) -> Result<()> + 'static,
    ) {
        debug_assert!(self.recording);
        self.nodes.borrow_mut().push(Node {
            name,
            outputs: outputs.iter().map(|t| t.id()).collect(),
            backward: Box::new(backward),
        });
    }

    /// Back-propagate from `root`, whose gradient is `seed` (e.g. ones, or the loss scale).
    /// Consumes the tape, releasing the saved activations as it goes.
    pub fn backward_from(self, root: &Tensor, seed: Tensor, grads: &mut Grads) -> Result<()> {
        self.backward_from_many(&[(root, seed)], grads)
    }

    /// Back-propagate from several outputs at once, each with its seed gradient.
    pub fn backward_from_many(self, roots: &[(&Tensor, Tensor)], grads: &mut Grads) -> Result<()> {
        if !self.recording {
            bail!("backward on an inference tape: nothing was recorded");
        }
        for (root, seed) in roots {
            if seed.shape() != root.shape() {
                bail!("gradient seed shape {:?} differs from root shape {:?}", seed.shape(), root.shape());
            }
            grads.accumulate(root, seed)?;
        }
        let nodes = self.nodes.into_inner();
        for node in nodes.into_iter().rev() {
            let outs: Vec<Option<Tensor>> = node.outputs.iter().map(|id| grads.take(*id)).collect();
            if outs.iter().all(Option::is_none) {
                continue;
            }
            (node.backward)(&outs, grads).map_err(|e| e.context(format!("in the backward pass of `{}`", node.name)))?;
        }
        Ok(())
    }

    /// Back-propagate from a one-element loss with gradient 1.
    pub fn backward(self, loss: &Tensor, grads: &mut Grads) -> Result<()> {
        self.backward_scaled(loss, 1.0, grads)
    }

    /// Back-propagate from a one-element loss with gradient `scale` (loss scaling).
    pub fn backward_scaled(self, loss: &Tensor, scale: f32, grads: &mut Grads) -> Result<()> {
        if loss.numel() != 1 {
            bail!("backward needs a one-element loss, got shape {:?}", loss.shape());
        }
        let seed = Tensor::from_f32(vec![scale], loss.shape(), loss.dtype(), &loss.device())?;
        self.backward_from(loss, seed, grads)
    }
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

/// Gradients by tensor id.
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    pub fn new() -> Self {
        Grads::default()
    }

    /// The gradient of `t`, if any flowed into it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    /// Whether a gradient contribution to `t` was made yet. An op whose backward can write
    /// its contribution into a fresh buffer does so when none was (then [`Grads::put`]s it),
    /// instead of adding into the zeros [`Grads::take_acc`] would fill.
    pub fn has(&self, t: &Tensor) -> bool {
        self.map.contains_key(&t.id())
    }

    /// Mutable gradient of `t` (e.g. for unscaling in place).
    pub fn get_mut(&mut self, t: &Tensor) -> Option<&mut Tensor> {
        self.map.get_mut(&t.id())
    }

    /// Remove and return the gradient with this id.
    pub fn take(&mut self, id: TensorId) -> Option<Tensor> {
        self.map.remove(&id)
    }

    /// Remove the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }

    /// The buffer that gradient contributions to `t` are added into, zero-filled on first
    /// use, with `t`'s shape, dtype and device, and never shared with another handle (a
    /// gradient passed through unchanged to two inputs is copied before it is added to).
    pub fn acc(&mut self, t: &Tensor) -> Result<&mut Tensor> {
        use std::collections::hash_map::Entry;
        match self.map.entry(t.id()) {
            Entry::Occupied(e) => {
                let g = e.into_mut();
                g.make_unique()?;
                Ok(g)
            }
            Entry::Vacant(e) => Ok(e.insert(t.zeros_like()?)),
        }
    }

    /// The accumulation buffer of `t` as a host slice (CPU backend).
    pub fn acc_slice<T: crate::tensor::Element>(&mut self, t: &Tensor) -> Result<&mut [T]> {
        self.acc(t)?.as_mut_slice::<T>()
    }

    /// Take `t`'s accumulation buffer out of the store (zero-filled when new) so that an op
    /// can fill several gradient buffers at once; `None` when `t` needs no gradient. Give it
    /// back with [`Grads::put`].
    pub fn take_acc(&mut self, t: &Tensor) -> Result<Option<Tensor>> {
        if !t.requires_grad() {
            return Ok(None);
        }
        let mut g = match self.map.remove(&t.id()) {
            Some(g) => g,
            None => t.zeros_like()?,
        };
        g.make_unique()?;
        Ok(Some(g))
    }

    /// Return a buffer taken with [`Grads::take_acc`].
    pub fn put(&mut self, t: &Tensor, g: Option<Tensor>) {
        if let Some(g) = g {
            self.map.insert(t.id(), g);
        }
    }

    /// Add `g` into the gradient of `t` (moving it in when there is none yet).
    pub fn accumulate(&mut self, t: &Tensor, g: &Tensor) -> Result<()> {
        if g.shape() != t.shape() {
            bail!("gradient shape {:?} does not match tensor shape {:?}", g.shape(), t.shape());
        }
        match self.map.get_mut(&t.id()) {
            Some(buf) => {
                buf.make_unique()?;
                crate::backend::add_into(buf, g)
            }
            None => {
                self.map.insert(t.id(), g.clone());
                Ok(())
            }
        }
    }

    /// Insert a gradient buffer for `t` (e.g. a parameter's persistent buffer).
    pub fn insert(&mut self, t: &Tensor, g: Tensor) {
        self.map.insert(t.id(), g);
    }

    /// Drop every gradient.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
