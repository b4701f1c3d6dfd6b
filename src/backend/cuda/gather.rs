//! Row gather / scatter-add on the GPU (`kernels/gather.cu`): one block per listed row
//! (block 256, grid min(n, 65535)). The scatter-add has no atomics: the rows must be
//! distinct, as the `<cls>` rows of different sequences are (the model's only use).
//! That needs a host copy to check, so only debug builds check it here (with the range
//! the CPU path checks always); the CPU emulation of the tests checks every
//! `scatter_add_rows` launch (tests/kernel_emu).

use anyhow::Result;

use super::kernels;
use super::launch::{block_rows_config, device_of, empty, int, p, ROW_BLOCK};
use super::nvtx;
use crate::tensor::Tensor;

/// `out[i] = x[rows[i]]`, a new tensor.
pub fn forward(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let _r = nvtx::fwd("gather_rows");
    let dev = device_of(x)?;
    let (_, dim) = x.dims2()?;
    let n = rows.numel();
    #[cfg(debug_assertions)]
    check_rows(rows, x.dims2()?.0)?;
    let y = empty(&dev, &[n, dim], x.dtype())?;
    // gather_rows_T(out, x, rows, n, dim)
    kernels::gather::gather_rows(&dev, block_rows_config(n, ROW_BLOCK), p(&y)?, p(x)?, p(rows)?, int(n)?, int(dim)?)?;
    Ok(y)
}

/// `dx[rows[i]] += dy[i]` (distinct rows: no atomics).
pub fn backward(dx: &Tensor, dy: &Tensor, rows: &Tensor) -> Result<()> {
    let _r = nvtx::bwd("gather_rows");
    let dev = device_of(dy)?;
    let (n, dim) = dy.dims2()?;
    // scatter_add_rows_T(dx, dout, rows, n, dim)
    kernels::gather::scatter_add_rows(
        &dev,
        block_rows_config(n, ROW_BLOCK),
        p(dx)?,
        p(dy)?,
        p(rows)?,
        int(n)?,
        int(dim)?,
    )
}

/// Debug builds: every row inside `0..n_rows` and none listed twice (the backward adds
/// without atomics). A host copy of the rows, so not in release builds.
#[cfg(debug_assertions)]
fn check_rows(rows: &Tensor, n_rows: usize) -> Result<()> {
    let idx = rows.to_vec_i32()?;
    let mut seen = std::collections::HashMap::new();
    for (k, &r) in idx.iter().enumerate() {
        if r < 0 || r as usize >= n_rows {
            anyhow::bail!("gather_rows: row {r} is outside 0..{n_rows}");
        }
        if let Some(first) = seen.insert(r, k) {
            anyhow::bail!(
                "gather_rows on CUDA: rows[{first}] and rows[{k}] are both row {r}; its backward \
                 (scatter_add_rows) adds without atomics and requires distinct rows"
            );
        }
    }
    Ok(())
}
