//! Embedding one chunk of proteins: length-sorted token-budget batches
//! (`data::batching::eval_plan_by_length`), the encoder's hidden states of the asked
//! layers, and per protein the outputs, windows merged.
//!
//! A protein longer than the window runs as overlapping windows (`eval_windows`: stride
//! half a window, the last one aligned to the protein's end), each a standalone sequence
//! `<cls> window <eos>`. Per-residue vectors are the mean over the windows that cover
//! the residue; `mean` is the mean of those over the residues; `bos` is the mean of the
//! windows' `<cls>` vectors; contact probabilities are the mean over the windows that hold
//! both residues (pairs no window holds are 0, counted in `uncovered_pairs`, as in
//! `predict-contacts`).

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::input::Chunk;
use super::options::{Include, LengthPolicy};
use crate::autograd::Tape;
use crate::data::batching::{eval_plan_by_length, eval_windows, pack, BatchConfig, PlanItem};
use crate::model::{ContactModel, ModelInputs};
use crate::tensor::{DType, Device};
use crate::train::contact_eval::{sigmoid, Accumulator as ContactAccumulator};

/// The outputs of one protein.
#[derive(Clone, Debug, PartialEq)]
pub struct ProteinEmbedding {
    pub name: String,
    /// Residues in the FASTA record.
    pub length: usize,
    /// Residues embedded (`length` unless `--truncate` cut it).
    pub embedded: usize,
    /// Windows the protein ran as.
    pub windows: usize,
    /// Per asked layer (in the order asked): `[hidden]`.
    pub mean: Vec<Vec<f32>>,
    /// Per asked layer: `[embedded, hidden]`, row-major.
    pub per_tok: Vec<Vec<f32>>,
    /// Per asked layer: `[hidden]`.
    pub bos: Vec<Vec<f32>>,
    /// `[embedded, embedded]` probabilities.
    pub contacts: Option<Vec<f32>>,
    /// Residue pairs i < j no window held (contact probability 0).
    pub uncovered_pairs: usize,
}

/// What the chunk's model runs need to know.
pub struct ChunkSettings<'a> {
    pub layers: &'a [usize],
    pub include: Include,
    pub length: LengthPolicy,
    pub max_tokens: usize,
}

/// Sums over the windows of one protein.
struct ProteinSums {
    residues: usize,
    windows_expected: usize,
    windows_seen: usize,
    /// Per layer `[residues, hidden]` sums, and per residue how many windows covered it.
    per_residue: Vec<Vec<f32>>,
    cover: Vec<u32>,
    bos: Vec<Vec<f64>>,
    contacts: Option<ContactAccumulator>,
}

impl ProteinSums {
    fn new(row: usize, residues: usize, windows: usize, n_layers: usize, hidden: usize, inc: &Include) -> Self {
        let keep_residues = inc.mean || inc.per_tok;
        ProteinSums {
            residues,
            windows_expected: windows,
            windows_seen: 0,
            per_residue: (0..n_layers)
                .map(|_| if keep_residues { vec![0.0; residues * hidden] } else { vec![] })
                .collect(),
            cover: vec![0; if keep_residues { residues } else { 0 }],
            bos: (0..n_layers).map(|_| if inc.bos { vec![0.0; hidden] } else { vec![] }).collect(),
            contacts: inc.contacts.then(|| ContactAccumulator::new(row, residues)),
        }
    }

    /// Add one window: `states[k]` is layer k's `[tokens, hidden]` block of the batch,
    /// the window's `<cls>` at token `first`.
    fn add_window(
        &mut self,
        item: &PlanItem,
        states: &[Vec<f32>],
        first: usize,
        hidden: usize,
        contacts: Option<&[f32]>,
    ) {
        let (start, len) = (item.residue_start, item.residue_len);
        for (k, s) in states.iter().enumerate() {
            if !self.per_residue[k].is_empty() {
                let src = &s[(first + 1) * hidden..(first + 1 + len) * hidden];
                let dst = &mut self.per_residue[k][start * hidden..(start + len) * hidden];
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
            }
            if !self.bos[k].is_empty() {
                let cls = &s[first * hidden..(first + 1) * hidden];
                self.bos[k].iter_mut().zip(cls).for_each(|(d, &v)| *d += v as f64);
            }
        }
        self.cover.iter_mut().skip(start).take(len).for_each(|c| *c += 1);
        if let (Some(acc), Some(p)) = (self.contacts.as_mut(), contacts) {
            acc.add(start, len, p);
        }
        self.windows_seen += 1;
    }

    fn finish(self, name: &str, length: usize, hidden: usize, inc: &Include) -> ProteinEmbedding {
        let l = self.residues;
        let mut per_tok = Vec::new();
        let mut mean = Vec::new();
        for mut sums in self.per_residue {
            if sums.is_empty() {
                continue;
            }
            if self.windows_expected > 1 {
                for (row, &c) in sums.chunks_mut(hidden).zip(&self.cover) {
                    row.iter_mut().for_each(|v| *v /= c as f32);
                }
            }
            if inc.mean {
                let mut m = vec![0f64; hidden];
                for row in sums.chunks(hidden) {
                    m.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
                }
                mean.push(m.into_iter().map(|v| (v / l as f64) as f32).collect());
            }
            if inc.per_tok {
                per_tok.push(sums);
            }
        }
        let n = self.windows_seen as f64;
        let bos = self
            .bos
            .into_iter()
            .filter(|b| !b.is_empty())
            .map(|b| b.iter().map(|&v| (v / n) as f32).collect())
            .collect();
        let map = self.contacts.map(ContactAccumulator::finish);
        ProteinEmbedding {
            name: name.to_string(),
            length,
            embedded: l,
            windows: self.windows_seen,
            mean,
            per_tok,
            bos,
            uncovered_pairs: map.as_ref().map_or(0, |m| m.uncovered_pairs),
            contacts: map.map(|m| m.probs),
        }
    }
}

/// Embed every protein of `chunk`, handing each to `on_protein` as soon as its last
/// window has run (proteins come out shortest first).
pub fn embed_chunk(
    model: &ContactModel,
    chunk: &Chunk,
    settings: &ChunkSettings,
    device: &Device,
    mut on_protein: impl FnMut(ProteinEmbedding) -> Result<()>,
) -> Result<()> {
    let set = &chunk.set;
    let hidden = model.config().hidden_size;
    let rows: Vec<usize> = (0..set.len()).collect();
    let max_len = settings.length.max_item_tokens();
    let bcfg = BatchConfig::new(settings.max_tokens, max_len, 0)?;
    let plan = eval_plan_by_length(&rows, &set.token_lengths(), &bcfg)?;
    let dtype = match model.params.get(model.esm.word_embeddings).dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let inc = settings.include;
    let mut open: HashMap<usize, ProteinSums> = HashMap::new();
    for batch in &plan {
        let packed = pack(&batch.items, set, |_| None)?;
        let inp = ModelInputs::new(&packed, model.config(), device, dtype)?;
        let tape = Tape::inference();
        let (enc, states) =
            model.esm.forward_hidden_states(&model.params, &tape, &inp, settings.layers, inc.contacts)?;
        let states: Vec<Vec<f32>> = if inc.any_layer_output() {
            states.iter().map(|s| s.to_vec_f32()).collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let contact_probs = match inc.contacts {
            true => {
                let logits = model.head.forward(&model.params, &tape, &enc.attention_probs, &inp.layout)?;
                Some(logits.to_vec_f32()?.into_iter().map(sigmoid).collect::<Vec<f32>>())
            }
            false => None,
        };
        drop(enc);
        let mut contact_offset = 0;
        for (i, item) in batch.items.iter().enumerate() {
            let first = packed.cu_seqlens[i] as usize;
            let residues = set.seq_len(item.row);
            let sums = open.entry(item.row).or_insert_with(|| {
                let windows = eval_windows(residues, bcfg.window_residues()).len();
                ProteinSums::new(item.row, residues, windows, settings.layers.len(), hidden, &inc)
            });
            let pairs = item.residue_len * item.residue_len;
            let probs = contact_probs.as_ref().map(|p| &p[contact_offset..contact_offset + pairs]);
            contact_offset += pairs;
            sums.add_window(item, &states, first, hidden, probs);
            if sums.windows_seen == sums.windows_expected {
                let done = open.remove(&item.row).expect("present");
                on_protein(done.finish(set.name(item.row), chunk.full_lengths[item.row], hidden, &inc))?;
            }
        }
    }
    if let Some((&row, _)) = open.iter().next() {
        bail!("internal: protein `{}` did not get all its windows", set.name(row));
    }
    Ok(())
}
