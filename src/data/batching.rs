//! Token-budget batching with length bucketing and packing (no padding), and the
//! packing of a planned batch into the model input [`PackedBatch`].
//!
//! Every item is `<cls> residues[start..start+len] <eos>`, so it costs `len + 2` tokens;
//! `max_len` (the window, in tokens, e.g. 1024) bounds an item and `max_tokens` bounds
//! the sum over a batch. `max_len > max_tokens` is refused, so no item can overflow.
//!
//! **Training plans** ([`training_plan`]), per `(seed, epoch)`:
//! 1. the rows are shuffled;
//! 2. a row longer than the window is cropped to a random window: its start is drawn
//!    uniformly over all `L − W + 1` possible starts (`W = max_len − 2` residues), from
//!    a stream keyed by `(seed, epoch, row)`, so each epoch sees a fresh crop;
//! 3. the shuffled items are cut into chunks of ~100 batches' worth and each chunk is
//!    sorted by length (stable), so items of similar length end up together;
//! 4. batches are filled greedily up to the budget in that order;
//! 5. the batch order is shuffled.
//!
//! Every row appears exactly once per epoch.
//!
//! **Evaluation plans** ([`eval_plan`]) keep every residue: a row longer than the window
//! becomes overlapping windows of `W` residues with stride `W / 2` (the last window is
//! aligned to the row's end, so every residue is covered and every window is full
//! length). Each window is an item carrying its row; [`average_by_row`] averages the
//! windows' logits per row. Batches are filled greedily in row order.
//!
//! [`pack`] tokenizes with the ESM-2 alphabet of [`crate::data::tokenizer`], one token per
//! residue byte ([`residue_token`]), and gives every item positions `0..len+2`: a classification crop is a standalone
//! sequence, as ESM would see a domain cut out of its protein.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::data::batch::PackedBatch;
use crate::data::dataset::LabelledSet;
use crate::data::rng::Rng;
use crate::data::tokenizer::{residue_token, CLS, EOS};

/// Stream tags so the shuffle and the crops of one `(seed, epoch)` are independent.
const SHUFFLE_STREAM: u64 = 0x5348_5546;
const CROP_STREAM: u64 = 0x4352_4F50;

/// Batches per length-sorting chunk.
const BATCHES_PER_BUCKET_CHUNK: usize = 100;

/// Budget and window of a batch plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchConfig {
    /// Most tokens in one batch (sum over its items of residues + 2).
    pub max_tokens: usize,
    /// Most tokens in one item, `<cls>` and `<eos>` included (e.g. 1024).
    pub max_len: usize,
    /// Seed of the shuffles and crops.
    pub seed: u64,
}

impl BatchConfig {
    /// A checked configuration.
    pub fn new(max_tokens: usize, max_len: usize, seed: u64) -> Result<Self> {
        if max_len < 3 {
            bail!("max_len {max_len} is too small: an item needs <cls>, one residue and <eos> (3 tokens)");
        }
        if max_len > max_tokens {
            bail!(
                "max_len {max_len} exceeds the token budget max_tokens {max_tokens}: one window \
                 would not fit in a batch; raise max_tokens or lower max_len"
            );
        }
        Ok(BatchConfig { max_tokens, max_len, seed })
    }

    /// Residues in a full window (`max_len − 2`).
    pub fn window_residues(&self) -> usize {
        self.max_len - 2
    }
}

/// One item of a batch: residues `residue_start .. residue_start + residue_len` of `row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PlanItem {
    pub row: usize,
    pub residue_start: usize,
    pub residue_len: usize,
}

impl PlanItem {
    /// Tokens this item takes: residues + `<cls>` + `<eos>`.
    pub fn n_tokens(&self) -> usize {
        self.residue_len + 2
    }
}

/// The items of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlannedBatch {
    pub items: Vec<PlanItem>,
}

impl PlannedBatch {
    /// Tokens in the batch.
    pub fn n_tokens(&self) -> usize {
        self.items.iter().map(PlanItem::n_tokens).sum()
    }

    /// Items in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Residue count of `row` from the token lengths, checking the row exists and is non-empty.
fn residues_of(row: usize, token_lens: &[u32]) -> Result<usize> {
    match token_lens.get(row) {
        None => bail!("row {row} is out of range: the set has {} rows", token_lens.len()),
        Some(&t) if t < 3 => bail!("row {row} has no residues (token length {t})"),
        Some(&t) => Ok(t as usize - 2),
    }
}

/// Start of the random crop of a row of `residues` residues to a window of `window`
/// residues in `epoch`: uniform over `0..=residues − window` (0 when the row fits).
pub fn crop_start(seed: u64, epoch: u64, row: usize, residues: usize, window: usize) -> usize {
    if residues <= window {
        return 0;
    }
    let mut rng = Rng::from_words(&[seed, epoch, CROP_STREAM, row as u64]);
    rng.below_usize(residues - window + 1)
}

/// The training batches of one epoch (see the module documentation).
pub fn training_plan(rows: &[usize], token_lens: &[u32], cfg: &BatchConfig, epoch: u64) -> Result<Vec<PlannedBatch>> {
    let window = cfg.window_residues();
    let mut rng = Rng::from_words(&[cfg.seed, epoch, SHUFFLE_STREAM]);
    let mut order = rows.to_vec();
    rng.shuffle(&mut order);
    let mut items = Vec::with_capacity(order.len());
    for &row in &order {
        let residues = residues_of(row, token_lens)?;
        let residue_start = crop_start(cfg.seed, epoch, row, residues, window);
        items.push(PlanItem { row, residue_start, residue_len: residues.min(window) });
    }
    sort_within_chunks(&mut items, cfg.max_tokens);
    let mut batches = fill_greedily(&items, cfg.max_tokens);
    rng.shuffle(&mut batches);
    Ok(batches)
}

/// Length bucketing: sort each chunk of ~[`BATCHES_PER_BUCKET_CHUNK`] batches by length.
fn sort_within_chunks(items: &mut [PlanItem], max_tokens: usize) {
    if items.is_empty() {
        return;
    }
    let total: usize = items.iter().map(PlanItem::n_tokens).sum();
    let mean = total.div_ceil(items.len()).max(1);
    let per_batch = (max_tokens / mean).max(1);
    let chunk = per_batch * BATCHES_PER_BUCKET_CHUNK;
    for c in items.chunks_mut(chunk) {
        c.sort_by_key(PlanItem::n_tokens);
    }
}

/// Cut a sequence of items into consecutive batches of at most `max_tokens` tokens.
fn fill_greedily(items: &[PlanItem], max_tokens: usize) -> Vec<PlannedBatch> {
    let mut batches = Vec::new();
    let mut current = PlannedBatch::default();
    let mut tokens = 0;
    for &item in items {
        if tokens + item.n_tokens() > max_tokens && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        tokens += item.n_tokens();
        current.items.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Windows `(start, len)` covering a row of `residues` residues with windows of at most
/// `window` residues and stride `window / 2`; the last window ends at the row's end.
pub fn eval_windows(residues: usize, window: usize) -> Vec<(usize, usize)> {
    if residues <= window || window == 0 {
        return vec![(0, residues)];
    }
    let stride = (window / 2).max(1);
    let last = residues - window;
    let mut windows: Vec<(usize, usize)> = (0..last).step_by(stride).map(|s| (s, window)).collect();
    windows.push((last, window));
    windows
}

/// Evaluation batches: every row, long rows as overlapping windows, in row order.
pub fn eval_plan(rows: &[usize], token_lens: &[u32], cfg: &BatchConfig) -> Result<Vec<PlannedBatch>> {
    let window = cfg.window_residues();
    let mut items = Vec::with_capacity(rows.len());
    for &row in rows {
        let residues = residues_of(row, token_lens)?;
        for (residue_start, residue_len) in eval_windows(residues, window) {
            items.push(PlanItem { row, residue_start, residue_len });
        }
    }
    Ok(fill_greedily(&items, cfg.max_tokens))
}

/// [`eval_plan`] with the items sorted by length first (stable, so the windows of a row
/// stay together): batches of similar lengths, which a padded attention path (CUDA's
/// unfused one) computes with the least waste. Rows come out in another order; callers
/// put results back in row order.
pub fn eval_plan_by_length(rows: &[usize], token_lens: &[u32], cfg: &BatchConfig) -> Result<Vec<PlannedBatch>> {
    let window = cfg.window_residues();
    let mut items = Vec::with_capacity(rows.len());
    for &row in rows {
        let residues = residues_of(row, token_lens)?;
        for (residue_start, residue_len) in eval_windows(residues, window) {
            items.push(PlanItem { row, residue_start, residue_len });
        }
    }
    items.sort_by_key(|it| it.residue_len);
    Ok(fill_greedily(&items, cfg.max_tokens))
}

/// Build the model input of one planned batch. `label_of_row` gives the class of a row
/// (all `None` for unlabelled prediction). Errors on rows or ranges outside the set and
/// on a batch in which only some items have labels.
pub fn pack(batch: &[PlanItem], set: &LabelledSet, label_of_row: impl Fn(usize) -> Option<u32>) -> Result<PackedBatch> {
    if batch.is_empty() {
        bail!("cannot pack an empty batch");
    }
    let crops = batch.iter().map(|item| item_residues(item, set)).collect::<Result<Vec<_>>>()?;
    let labels: Vec<Option<u32>> = batch.iter().map(|item| label_of_row(item.row)).collect();
    let labelled = labels.iter().any(Option::is_some);
    if let Some(i) = labels.iter().position(|l| labelled && l.is_none()) {
        bail!(
            "row {} (`{}`) has no class label but other rows of the batch do; map the split \
             onto the label map and plan only its kept rows",
            batch[i].row,
            set.name(batch[i].row)
        );
    }
    let mut packed = PackedBatch::new();
    let total: usize = batch.iter().map(PlanItem::n_tokens).sum();
    packed.tokens.reserve(total);
    packed.positions.reserve(total);
    let mut ids: Vec<u32> = Vec::new();
    for ((item, label), residues) in batch.iter().zip(labels).zip(crops) {
        ids.clear();
        ids.push(CLS);
        ids.extend(residues.iter().map(|&b| residue_token(b)));
        ids.push(EOS);
        packed.push(&ids, 0, label, item.row);
    }
    Ok(packed)
}

/// The residues an item refers to, checked against the set.
fn item_residues<'s>(item: &PlanItem, set: &'s LabelledSet) -> Result<&'s [u8]> {
    if item.row >= set.len() {
        bail!("row {} is out of range: the set has {} rows", item.row, set.len());
    }
    let seq = set.sequence_bytes(item.row);
    let end = item.residue_start.saturating_add(item.residue_len);
    if item.residue_len == 0 || end > seq.len() {
        bail!(
            "item residues {}..{end} of row {} (`{}`) are outside its {} residues",
            item.residue_start,
            item.row,
            set.name(item.row),
            seq.len()
        );
    }
    Ok(&seq[item.residue_start..end])
}

/// Per-row averages of per-item vectors (e.g. the logits of a row's windows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowAverages {
    /// Distinct rows, in order of first appearance.
    pub rows: Vec<usize>,
    /// Items (windows) averaged for each row.
    pub windows: Vec<usize>,
    /// `rows.len() × width` averages, row-major.
    pub values: Vec<f32>,
    pub width: usize,
}

impl RowAverages {
    /// The averaged vector of the `i`-th row in `rows`.
    pub fn row_values(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// Average `values` (`item_rows.len() × width`, one vector per item) over the items of
/// each row. Averaging logits is the geometric mean of the windows' probabilities up to
/// normalisation; pass probabilities instead for the arithmetic mean.
pub fn average_by_row(item_rows: &[usize], values: &[f32], width: usize) -> Result<RowAverages> {
    if values.len() != item_rows.len() * width {
        bail!(
            "{} values for {} items of width {width} (expected {})",
            values.len(),
            item_rows.len(),
            item_rows.len() * width
        );
    }
    let mut slot_of_row = std::collections::HashMap::new();
    let mut out = RowAverages { rows: Vec::new(), windows: Vec::new(), values: Vec::new(), width };
    let mut sums: Vec<f64> = Vec::new();
    for (i, &row) in item_rows.iter().enumerate() {
        let slot = *slot_of_row.entry(row).or_insert_with(|| {
            out.rows.push(row);
            out.windows.push(0);
            sums.resize(sums.len() + width, 0.0);
            out.rows.len() - 1
        });
        out.windows[slot] += 1;
        for (s, &v) in sums[slot * width..(slot + 1) * width].iter_mut().zip(&values[i * width..(i + 1) * width]) {
            *s += v as f64;
        }
    }
    out.values = sums
        .chunks(width.max(1))
        .zip(&out.windows)
        .flat_map(|(chunk, &n)| chunk.iter().map(move |&s| (s / n as f64) as f32))
        .collect();
    if width == 0 {
        out.values.clear();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_window_over_budget() {
        let e = BatchConfig::new(512, 1024, 0).unwrap_err().to_string();
        assert!(e.contains("max_len 1024 exceeds the token budget max_tokens 512"), "{e}");
        assert!(BatchConfig::new(10, 2, 0).is_err());
        assert_eq!(BatchConfig::new(1024, 1024, 0).unwrap().window_residues(), 1022);
    }

    #[test]
    fn windows_overlap_by_half_and_end_at_the_row_end() {
        assert_eq!(eval_windows(5, 10), vec![(0, 5)]);
        assert_eq!(eval_windows(10, 10), vec![(0, 10)]);
        assert_eq!(eval_windows(11, 10), vec![(0, 10), (1, 10)]);
        assert_eq!(eval_windows(25, 10), vec![(0, 10), (5, 10), (10, 10), (15, 10)]);
        assert_eq!(eval_windows(26, 10), vec![(0, 10), (5, 10), (10, 10), (15, 10), (16, 10)]);
    }

    #[test]
    fn averages_windows_per_row() {
        let avg = average_by_row(&[3, 7, 3], &[1.0, 2.0, 5.0, 5.0, 3.0, 4.0], 2).unwrap();
        assert_eq!(avg.rows, vec![3, 7]);
        assert_eq!(avg.windows, vec![2, 1]);
        assert_eq!(avg.row_values(0), &[2.0, 3.0]);
        assert_eq!(avg.row_values(1), &[5.0, 5.0]);
        assert!(average_by_row(&[1], &[1.0], 2).is_err());
    }
}
