//! The model's input: sequences packed end to end with no padding.
//!
//! This is FlashAttention's "varlen" layout: token `t` of the batch belongs to
//! sequence `s` when `cu_seqlens[s] <= t < cu_seqlens[s + 1]`, and attention is
//! restricted to tokens of the same sequence. Each sequence is
//! `<cls> residues… <eos>` (or a crop of one, see `positions`).

use anyhow::{bail, Result};

/// A batch of packed sequences.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackedBatch {
    /// Token ids of all sequences, end to end.
    pub tokens: Vec<u32>,
    /// Sequence boundaries: `len = n_seqs + 1`, `cu_seqlens[0] = 0`, last = `tokens.len()`.
    pub cu_seqlens: Vec<u32>,
    /// Rotary position of every token. A whole sequence counts 0..L from its `<cls>`;
    /// a crop keeps the true positions of its residues (the rotary offset).
    pub positions: Vec<u32>,
    /// Class label of each sequence (classification); empty when there are none.
    pub labels: Vec<u32>,
    /// Dataset row of each sequence, so predictions can be traced back.
    pub rows: Vec<usize>,
}

impl PackedBatch {
    /// An empty batch to push sequences into.
    pub fn new() -> Self {
        PackedBatch { cu_seqlens: vec![0], ..Default::default() }
    }

    /// Number of sequences.
    pub fn n_seqs(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Number of tokens.
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Length of the longest sequence.
    pub fn max_seqlen(&self) -> usize {
        self.cu_seqlens.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }

    /// Append one tokenized sequence whose first token sits at rotary position `first_position`.
    pub fn push(&mut self, ids: &[u32], first_position: u32, label: Option<u32>, row: usize) {
        if self.cu_seqlens.is_empty() {
            self.cu_seqlens.push(0);
        }
        self.tokens.extend_from_slice(ids);
        self.positions.extend((0..ids.len() as u32).map(|i| first_position + i));
        self.cu_seqlens.push(self.tokens.len() as u32);
        if let Some(l) = label {
            self.labels.push(l);
        }
        self.rows.push(row);
    }

    /// Index of the first token (`<cls>`) of every sequence.
    pub fn first_token_rows(&self) -> Vec<u32> {
        self.cu_seqlens[..self.n_seqs()].to_vec()
    }

    /// Check the invariants the kernels rely on.
    pub fn validate(&self) -> Result<()> {
        let n = self.n_seqs();
        if n == 0 {
            bail!("empty batch: no sequences");
        }
        if self.cu_seqlens[0] != 0 || self.cu_seqlens.last().map(|&c| c as usize) != Some(self.tokens.len()) {
            bail!("cu_seqlens must start at 0 and end at the token count {}", self.tokens.len());
        }
        if self.cu_seqlens.windows(2).any(|w| w[1] <= w[0]) {
            bail!("cu_seqlens must be strictly increasing (no empty sequences)");
        }
        if self.positions.len() != self.tokens.len() {
            bail!("positions has {} entries for {} tokens", self.positions.len(), self.tokens.len());
        }
        if !self.labels.is_empty() && self.labels.len() != n {
            bail!("{} labels for {} sequences", self.labels.len(), n);
        }
        Ok(())
    }
}
