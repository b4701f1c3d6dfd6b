//! qf-engine: fine-tune ESM-2 protein language models with a CPU reference backend and
//! hand-written CUDA kernels, driven from a minimal autograd tape — no deep-learning
//! framework underneath.
//!
//! Layout (see `docs/ARCHITECTURE.md`): `tensor` (storage and devices), `backend`
//! (the CPU reference and CUDA), `autograd` (the tape), `ops` (forward + backward of each
//! op), `model` (ESM-2, heads, checkpoints), `optim`, `data`, `train`, `metrics`.

pub mod autograd;
pub mod backend;
pub mod data;
pub mod embed;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod tensor;
pub mod train;

pub use autograd::{Grads, Tape};
pub use tensor::{DType, Device, Tensor};
