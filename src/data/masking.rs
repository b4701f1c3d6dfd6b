//! ESM-2's masked-language-model corruption of a packed batch.
//!
//! The rule is BERT's, as ESM-1b/ESM-2 were trained (Rives et al. 2021, Lin et al. 2023:
//! "15% of tokens … 80% replaced by `<mask>`, 10% by a random token, 10% unchanged") and
//! as transformers' `DataCollatorForLanguageModeling` implements it:
//!
//! 1. every token that is not special is *selected* independently with probability
//!    `select` (0.15) — a Bernoulli draw per token, as the collator's
//!    `torch.bernoulli(probability_matrix)`, so the count per sequence varies;
//! 2. a selected token becomes `<mask>` with probability `mask` (0.8); otherwise, with
//!    probability `random / (1 − mask)` (0.5), a random residue; otherwise it is kept;
//! 3. the loss is computed at the selected positions only, against the original token.
//!
//! Special tokens (`<cls>`, `<pad>`, `<eos>`, `<unk>`, `<mask>`, as in the collator's
//! `get_special_tokens_mask`, which uses the tokenizer's `all_special_ids`) are never
//! selected. One deliberate difference from the collator: its random replacement is
//! drawn from the whole vocabulary (`randint(len(tokenizer))`, special tokens included);
//! here it is one of the 20 standard amino acids, uniformly (the replacement may equal
//! the original, as in the collator).
//!
//! Every sequence draws from its own stream, keyed by `(seed, epoch, row, residue
//! start)`, so the corruption of a protein does not depend on which batch it landed in
//! or on the token budget: an evaluation with a fixed mask seed scores the same positions
//! in every run.

use anyhow::{bail, Result};

use super::batch::PackedBatch;
use super::batching::PlanItem;
use super::rng::Rng;
use super::tokenizer::{CLS, EOS, MASK, PAD, UNK};

/// Stream tag of the masking draws (independent of the shuffle and crop streams).
const MASK_STREAM: u64 = 0x4D41_534B;

/// The 20 standard amino acids' token ids (`L A G V S E R T I D P K Q N F Y M H W C`).
pub const STANDARD_RESIDUES: std::ops::RangeInclusive<u32> = 4..=23;

/// Probabilities of the corruption.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskingConfig {
    /// Share of (non-special) tokens selected for the loss.
    pub select: f64,
    /// Share of the selected tokens replaced by `<mask>`.
    pub mask: f64,
    /// Share of the selected tokens replaced by a random standard residue.
    pub random: f64,
}

impl Default for MaskingConfig {
    /// ESM-2's 15 % / 80-10-10.
    fn default() -> Self {
        MaskingConfig { select: 0.15, mask: 0.8, random: 0.1 }
    }
}

impl MaskingConfig {
    /// A configuration with `select` and the standard 80-10-10 split, checked.
    pub fn with_select(select: f64) -> Result<Self> {
        let cfg = MaskingConfig { select, ..MaskingConfig::default() };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let in_unit = |x: f64| (0.0..=1.0).contains(&x);
        if !(self.select > 0.0 && self.select <= 1.0) {
            bail!("the masking probability must be in (0, 1], got {}", self.select);
        }
        if !in_unit(self.mask) || !in_unit(self.random) || self.mask + self.random > 1.0 {
            bail!(
                "the <mask> and random shares {} + {} must lie in [0, 1] and sum to at most 1",
                self.mask,
                self.random
            );
        }
        Ok(())
    }

    /// Probability of a random residue given that the token was not turned into `<mask>`.
    fn random_given_not_mask(&self) -> f64 {
        if self.mask >= 1.0 {
            0.0
        } else {
            self.random / (1.0 - self.mask)
        }
    }
}

/// Whether a token may be selected (not one of the special tokens).
pub fn is_maskable(token: u32) -> bool {
    !matches!(token, CLS | PAD | EOS | UNK | MASK)
}

/// What happened to one selected token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    Mask,
    Random,
    Kept,
}

/// A corrupted batch: the model input and the loss targets.
#[derive(Clone, Debug)]
pub struct MaskedBatch {
    /// The batch with its selected tokens replaced.
    pub batch: PackedBatch,
    /// Token rows (indices into the packed tokens) of the selected positions, ascending.
    pub target_rows: Vec<u32>,
    /// Original token at each selected position.
    pub targets: Vec<u32>,
    /// What was done at each selected position.
    pub kinds: Vec<Corruption>,
}

impl MaskedBatch {
    pub fn n_targets(&self) -> usize {
        self.targets.len()
    }
}

/// Corrupt one sequence's tokens in place; returns `(offset, original, kind)` of every
/// selected position.
pub fn corrupt_sequence(tokens: &mut [u32], rng: &mut Rng, cfg: &MaskingConfig) -> Vec<(usize, u32, Corruption)> {
    let random_share = cfg.random_given_not_mask();
    let n_residues = (*STANDARD_RESIDUES.end() - *STANDARD_RESIDUES.start() + 1) as u64;
    let mut picked = Vec::new();
    for (i, t) in tokens.iter_mut().enumerate() {
        // Draw for every token, special or not, so that a position's fate does not depend
        // on the tokens before it.
        let selected = rng.next_f64() < cfg.select;
        let (u_mask, u_random, pick) = (rng.next_f64(), rng.next_f64(), rng.below(n_residues) as u32);
        if !selected || !is_maskable(*t) {
            continue;
        }
        let original = *t;
        let kind = if u_mask < cfg.mask {
            *t = MASK;
            Corruption::Mask
        } else if u_random < random_share {
            *t = STANDARD_RESIDUES.start() + pick;
            Corruption::Random
        } else {
            Corruption::Kept
        };
        picked.push((i, original, kind));
    }
    picked
}

/// The stream of one sequence: `(seed, epoch, row, first residue)`.
pub fn sequence_rng(seed: u64, epoch: u64, item: &PlanItem) -> Rng {
    Rng::from_words(&[seed, MASK_STREAM, epoch, item.row as u64, item.residue_start as u64])
}

/// Corrupt a packed batch whose sequences are `items` (in packing order).
pub fn mask_batch(
    packed: &PackedBatch,
    items: &[PlanItem],
    cfg: &MaskingConfig,
    seed: u64,
    epoch: u64,
) -> Result<MaskedBatch> {
    if items.len() != packed.n_seqs() {
        bail!("mask_batch: {} plan items for {} packed sequences", items.len(), packed.n_seqs());
    }
    let mut batch = packed.clone();
    let (mut target_rows, mut targets, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    for (s, item) in items.iter().enumerate() {
        let (a, b) = (packed.cu_seqlens[s] as usize, packed.cu_seqlens[s + 1] as usize);
        let mut rng = sequence_rng(seed, epoch, item);
        for (off, original, kind) in corrupt_sequence(&mut batch.tokens[a..b], &mut rng, cfg) {
            target_rows.push((a + off) as u32);
            targets.push(original);
            kinds.push(kind);
        }
    }
    Ok(MaskedBatch { batch, target_rows, targets, kinds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_are_never_selected() {
        let mut toks = vec![CLS, PAD, EOS, UNK, MASK];
        let cfg = MaskingConfig { select: 1.0, ..MaskingConfig::default() };
        let picked = corrupt_sequence(&mut toks, &mut Rng::new(1), &cfg);
        assert!(picked.is_empty());
        assert_eq!(toks, vec![CLS, PAD, EOS, UNK, MASK]);
    }

    #[test]
    fn bad_probabilities_are_refused() {
        for p in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(MaskingConfig::with_select(p).is_err(), "{p} accepted");
        }
        assert!(MaskingConfig { select: 0.15, mask: 0.9, random: 0.2 }.validate().is_err());
    }
}
