//! The layout of a packed batch: where each sequence starts and ends (`cu_seqlens`), on
//! the host for the CPU backend and as an i32 tensor on the compute device for the CUDA
//! kernels. Both backends and the ops read it.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::tensor::{Device, Tensor};

/// Where each packed sequence starts and ends, on the host and on the compute device.
#[derive(Clone, Debug)]
pub struct SeqLayout {
    /// `n_seqs + 1` offsets.
    pub cu: Arc<Vec<usize>>,
    pub max_len: usize,
    /// The same offsets as an i32 tensor on the compute device (read by CUDA kernels).
    pub cu_device: Tensor,
}

impl SeqLayout {
    pub fn new(cu_seqlens: &[u32], device: &Device) -> Result<SeqLayout> {
        if cu_seqlens.len() < 2 || cu_seqlens[0] != 0 || cu_seqlens.windows(2).any(|w| w[1] <= w[0]) {
            bail!("cu_seqlens must start at 0 and increase strictly, got {cu_seqlens:?}");
        }
        let cu: Vec<usize> = cu_seqlens.iter().map(|&c| c as usize).collect();
        let max_len = cu.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let cu_device = Tensor::from_i32(cu_seqlens.iter().map(|&c| c as i32).collect(), &[cu.len()], device)?;
        Ok(SeqLayout { cu: Arc::new(cu), max_len, cu_device })
    }

    pub fn n_seqs(&self) -> usize {
        self.cu.len() - 1
    }

    pub fn n_tokens(&self) -> usize {
        *self.cu.last().unwrap_or(&0)
    }

    pub fn len_of(&self, s: usize) -> usize {
        self.cu[s + 1] - self.cu[s]
    }
}
