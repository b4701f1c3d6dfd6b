//! Fused weighted softmax cross-entropy on the GPU (`kernels/cross_entropy.cu`).
//!
//! Forward: one kernel computes each row's loss (fp32 maths, one online max/sum pass);
//! the mean is summed on the device by one block (`sum_f32` in the same file, deterministic).
//! Backward: `cross_entropy_backward` recomputes the softmax from the saved logits and
//! writes `dL·w_y/Σw·(softmax − onehot)`, reading the upstream gradient `dL` from device
//! memory (no host sync) and multiplying it in fp32 before rounding to the logits'
//! dtype — with fp16 loss scaling the small gradients stay normal fp16 numbers.
//! Both kernels run one block per row: 256 threads up to 4,096 classes, 1,024 above.

use anyhow::Result;
use cudarc::driver::LaunchConfig;

use super::elementwise::check_scalar;
use super::kernels;
use super::launch::{block_rows_config, device_of, empty, int, long, null, p, p_opt, zeros};
use super::nvtx;
use crate::backend::cpu::cross_entropy::IGNORE_INDEX;
use crate::tensor::{DType, Tensor};

/// Above this many classes a row gets 1,024 threads instead of 256.
const WIDE_ROW_CLASSES: usize = 4096;

fn row_config(rows: usize, classes: usize) -> LaunchConfig {
    block_rows_config(rows, if classes > WIDE_ROW_CLASSES { 1024 } else { 256 })
}

/// The mean loss (one-element f32 tensor) and `Σ w_y` over the non-ignored rows (a device
/// scalar the backward reads).
pub fn forward(logits: &Tensor, labels: &Tensor, weights: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let _r = nvtx::fwd("cross_entropy");
    let dev = device_of(logits)?;
    let (rows, classes) = logits.dims2()?;
    // Σ w_y over the non-ignored rows, on the device (no copy of the labels to the host).
    let wsum = empty(&dev, &[1], DType::F32)?;
    kernels::cross_entropy::label_weight_sum(
        &dev,
        block_rows_config(1, 256),
        p(&wsum)?,
        p(labels)?,
        p_opt(weights)?,
        int(rows)?,
        int(classes)?,
        IGNORE_INDEX,
    )?;
    let loss_rows = empty(&dev, &[rows], DType::F32)?;
    // cross_entropy_forward_backward_T(loss_rows, dlogits = null, logits, labels,
    //                                  class_weights, rows, n_classes, ignore_index, weight_sum)
    kernels::cross_entropy::cross_entropy_forward_backward(
        &dev,
        row_config(rows, classes),
        p(&loss_rows)?,
        null(),
        p(logits)?,
        p(labels)?,
        p_opt(weights)?,
        int(rows)?,
        int(classes)?,
        IGNORE_INDEX,
        p(&wsum)?,
    )?;
    // sum_f32(out, x, n): one block, so the loss is deterministic.
    let loss = zeros(&dev, &[1], DType::F32)?;
    kernels::cross_entropy::sum_f32(&dev, block_rows_config(1, 256), p(&loss)?, p(&loss_rows)?, long(rows))?;
    Ok((loss, wsum))
}

/// A new tensor `dL·w_y/Σw·(softmax − onehot)` for the loss gradient `dloss` (device scalar).
pub fn backward(
    dloss: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
    wsum: &Tensor,
) -> Result<Tensor> {
    let _r = nvtx::bwd("cross_entropy");
    check_scalar(dloss)?;
    let dev = device_of(logits)?;
    let (rows, classes) = logits.dims2()?;
    let dlogits = empty(&dev, logits.shape(), logits.dtype())?;
    // cross_entropy_backward_T(dlogits, logits, labels, class_weights, rows,
    //                          n_classes, ignore_index, weight_sum, dloss)
    kernels::cross_entropy::cross_entropy_backward(
        &dev,
        row_config(rows, classes),
        p(&dlogits)?,
        p(logits)?,
        p(labels)?,
        p_opt(weights)?,
        int(rows)?,
        int(classes)?,
        IGNORE_INDEX,
        p(wsum)?,
        p(dloss)?,
    )?;
    Ok(dlogits)
}
