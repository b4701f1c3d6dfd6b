//! Model inputs built once per batch from a [`PackedBatch`]: token ids, rotary positions,
//! the token-dropout scale of every token, the sequence layout and the `<cls>` rows, all
//! on the compute device.

use anyhow::Result;

use super::config::EsmConfig;
use crate::data::batch::PackedBatch;
use crate::ops::SeqLayout;
use crate::tensor::{DType, Device, Tensor};

/// Fraction of tokens ESM-2 masked in pre-training (15 %) times the share of those
/// replaced by `<mask>` (80 %): the embedding rescaling assumes this ratio.
const MASK_RATIO_TRAIN: f64 = 0.15 * 0.8;

#[derive(Clone)]
pub struct ModelInputs {
    pub ids: Tensor,
    pub positions: Tensor,
    pub row_scale: Tensor,
    pub layout: SeqLayout,
    pub cls_rows: Tensor,
    /// Class labels (i32), when the batch has them.
    pub labels: Option<Tensor>,
}

impl ModelInputs {
    /// Upload a batch; `dtype` is the dtype of the embedding table (f32, or f64 on the
    /// CPU for reference checks).
    pub fn new(batch: &PackedBatch, cfg: &EsmConfig, device: &Device, dtype: DType) -> Result<ModelInputs> {
        batch.validate()?;
        let n = batch.n_tokens();
        let ids: Vec<i32> = batch.tokens.iter().map(|&t| t as i32).collect();
        let positions: Vec<i32> = batch.positions.iter().map(|&p| p as i32).collect();
        let scale = token_dropout_scale(batch, cfg);
        let scale_dtype = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let labels = if batch.labels.is_empty() {
            None
        } else {
            let l: Vec<i32> = batch.labels.iter().map(|&l| l as i32).collect();
            Some(Tensor::from_i32(l, &[batch.n_seqs()], device)?)
        };
        let cls: Vec<i32> = batch.first_token_rows().iter().map(|&r| r as i32).collect();
        Ok(ModelInputs {
            ids: Tensor::from_i32(ids, &[n], device)?,
            positions: Tensor::from_i32(positions, &[n], device)?,
            row_scale: Tensor::from_f32(scale, &[n], scale_dtype, device)?,
            layout: SeqLayout::new(&batch.cu_seqlens, device)?,
            cls_rows: Tensor::from_i32(cls, &[batch.n_seqs()], device)?,
            labels,
        })
    }

    pub fn n_seqs(&self) -> usize {
        self.layout.n_seqs()
    }

    pub fn n_tokens(&self) -> usize {
        self.layout.n_tokens()
    }
}

/// ESM-2's token-dropout rescaling (Hugging Face `EsmEmbeddings`): `<mask>` embeddings
/// are zeroed and every other embedding of a sequence is multiplied by
/// `(1 − 0.15·0.8) / (1 − m/L)`, where `m` counts the sequence's `<mask>` tokens and `L`
/// its length including `<cls>` and `<eos>`. Applied in training and inference alike.
pub fn token_dropout_scale(batch: &PackedBatch, cfg: &EsmConfig) -> Vec<f32> {
    let mut scale = vec![1.0f32; batch.n_tokens()];
    if !cfg.token_dropout {
        return scale;
    }
    for w in batch.cu_seqlens.windows(2) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        let toks = &batch.tokens[a..b];
        let masks = toks.iter().filter(|&&t| t == cfg.mask_token_id).count();
        let ratio = masks as f64 / toks.len() as f64;
        let factor = ((1.0 - MASK_RATIO_TRAIN) / (1.0 - ratio)) as f32;
        for (s, &t) in scale[a..b].iter_mut().zip(toks) {
            *s = if t == cfg.mask_token_id { 0.0 } else { factor };
        }
    }
    scale
}
