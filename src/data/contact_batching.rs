//! Batches for contact prediction: chains from the prepared contact set or from structure
//! files, random crops that keep their true positions, and the pair targets of the loss.
//!
//! **Crops and positions.** The batch plans are those of [`crate::data::batching`]: a
//! chain longer than the window (`crop` residues) is cut to a window whose start is drawn
//! uniformly over all `L − W + 1` starts, anew each epoch. A crop of residues `s..s+W`
//! becomes the item `<cls> r_s … r_{s+W−1} <eos>` at rotary positions `s, s+1, …, s+W+1`:
//! every residue keeps the position it has in the whole chain (residue `i` sits at `i + 1`
//! behind `<cls>` at 0), `<cls>` takes the position just before the first residue of the
//! crop and `<eos>` the one just after its last. The contact head removes the first and
//! last token of each item, so it sees exactly the crop's residues, and a crop is exactly
//! the full-length forward with attention restricted to the crop window. Because rotary
//! attention depends only on differences of positions, the offset itself leaves the
//! model's outputs unchanged up to rounding (both tested in `tests/contact_train.rs`): a
//! crop differs from the whole chain only by what it cannot attend to.
//!
//! **Targets.** For an item of `L'` residues the logits are an `L' × L'` block; the target
//! of pair `(i, j)` is 1 when the C-beta distance of the residues is below 8 Å, and the
//! mask selects each unordered pair once (`i < j`) with `j − i ≥ min_sep` and both C-betas
//! known. The logits are symmetric, so the upper triangle carries the whole loss.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::data::batch::PackedBatch;
use crate::data::batching::PlanItem;
use crate::data::contacts::{contact_labels, ContactItem, ContactSet};
use crate::data::structure::{read_structure_spec, CbMode};
use crate::data::tokenizer::{residue_token, CLS, EOS};

/// Chains with coordinates: a split of the prepared contact set, or structure files.
pub enum ContactCorpus {
    Set(ContactSet),
    Items(Vec<ContactItem>),
}

impl ContactCorpus {
    /// `<dir>/<split>.fasta` + `<dir>/<split>.safetensors`.
    pub fn open_split(dir: &Path, split: &str) -> Result<Self> {
        Ok(ContactCorpus::Set(ContactSet::open(dir, split)?))
    }

    /// Chains of PDB/mmCIF files given as `file.pdb` (every protein chain) or `file.pdb:A`.
    pub fn from_structures(specs: &[String]) -> Result<Self> {
        Ok(ContactCorpus::Items(read_structure_items(specs)?))
    }

    pub fn len(&self) -> usize {
        match self {
            ContactCorpus::Set(s) => s.len(),
            ContactCorpus::Items(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn name(&self, i: usize) -> &str {
        match self {
            ContactCorpus::Set(s) => s.name(i),
            ContactCorpus::Items(v) => &v[i].name,
        }
    }

    pub fn sequence(&self, i: usize) -> &str {
        match self {
            ContactCorpus::Set(s) => s.sequence(i),
            ContactCorpus::Items(v) => &v[i].sequence,
        }
    }

    /// Residues of chain `i`.
    pub fn length(&self, i: usize) -> usize {
        self.sequence(i).len()
    }

    /// C-beta of every residue of chain `i` (NaN where unknown).
    pub fn cb(&self, i: usize) -> Cow<'_, [[f32; 3]]> {
        match self {
            ContactCorpus::Set(s) => s.cb(i),
            ContactCorpus::Items(v) => Cow::Borrowed(&v[i].cb),
        }
    }

    /// Token lengths (`residues + 2`) of every chain, as the batch planners take them.
    pub fn token_lengths(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.length(i) as u32 + 2).collect()
    }

    /// Total residues.
    pub fn residues(&self) -> usize {
        (0..self.len()).map(|i| self.length(i)).sum()
    }
}

/// The chains of PDB/mmCIF files given as `file.pdb` (every protein chain) or `file.pdb:A`,
/// named `<file stem>_<chain>`. C-betas are virtual (from N, CA, C) as in the contact set.
pub fn read_structure_items(specs: &[String]) -> Result<Vec<ContactItem>> {
    Ok(read_numbered_structure_items(specs)?.into_iter().map(|(item, _)| item).collect())
}

/// A chain's residue numbers: author number and insertion code, one per residue.
pub type ResidueNumbering = Vec<(i32, Option<char>)>;

/// As [`read_structure_items`], with each chain's residue numbers.
pub fn read_numbered_structure_items(specs: &[String]) -> Result<Vec<(ContactItem, ResidueNumbering)>> {
    let mut items = Vec::new();
    for spec in specs {
        let s = read_structure_spec(spec)?;
        if !s.skipped.is_empty() {
            let shown: Vec<String> = s.skipped.iter().take(3).map(|r| r.to_string()).collect();
            eprintln!(
                "note: {spec}: {} residue(s) without a CA atom skipped ({}{})",
                s.skipped.len(),
                shown.join("; "),
                if s.skipped.len() > 3 { "; …" } else { "" }
            );
        }
        let stem = Path::new(&s.source).file_name().and_then(|n| n.to_str()).unwrap_or("structure");
        let stem = stem.split('.').next().unwrap_or(stem);
        for chain in &s.chains {
            if chain.is_empty() {
                continue;
            }
            let name = if chain.id.is_empty() { stem.to_string() } else { format!("{stem}_{}", chain.id) };
            let numbers = chain.residues.iter().map(|r| (r.number, r.ins_code)).collect();
            items.push((ContactItem::from_chain(chain, &name, CbMode::Virtual), numbers));
        }
    }
    if items.is_empty() {
        bail!("no protein chains in {}", specs.join(", "));
    }
    Ok(items)
}

/// Token ids `<cls> residues <eos>` of residues `start..start+len` of `seq` (letters
/// outside the alphabet become `<unk>`, as ESM does).
fn item_tokens(seq: &[u8], start: usize, len: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(len + 2);
    ids.push(CLS);
    ids.extend(seq[start..start + len].iter().map(|&b| residue_token(b)));
    ids.push(EOS);
    ids
}

/// Check an item against the corpus.
fn check_item(item: &PlanItem, corpus: &ContactCorpus) -> Result<()> {
    if item.row >= corpus.len() {
        bail!("row {} is out of range: the set has {} chains", item.row, corpus.len());
    }
    let l = corpus.length(item.row);
    if item.residue_len == 0 || item.residue_start + item.residue_len > l {
        bail!(
            "residues {}..{} of chain {} (`{}`) are outside its {l} residues",
            item.residue_start,
            item.residue_start + item.residue_len,
            item.row,
            corpus.name(item.row)
        );
    }
    Ok(())
}

/// The model input of planned items, each at its true positions (see the module doc).
pub fn pack_crops(items: &[PlanItem], corpus: &ContactCorpus) -> Result<PackedBatch> {
    if items.is_empty() {
        bail!("cannot pack an empty batch");
    }
    let mut packed = PackedBatch::new();
    for item in items {
        check_item(item, corpus)?;
        let ids = item_tokens(corpus.sequence(item.row).as_bytes(), item.residue_start, item.residue_len);
        packed.push(&ids, item.residue_start as u32, None, item.row);
    }
    Ok(packed)
}

/// Targets and mask of the pairs of every item, in the contact head's packed layout.
pub struct PairTargets {
    pub targets: Vec<f32>,
    pub mask: Vec<f32>,
    /// Pairs in the loss (mask ones).
    pub evaluated: usize,
}

/// Pair targets of planned items: contacts under `cutoff` Å, upper triangle with
/// `j − i ≥ min_sep` (see the module doc).
pub fn pair_targets(items: &[PlanItem], corpus: &ContactCorpus, cutoff: f32, min_sep: usize) -> Result<PairTargets> {
    let total: usize = items.iter().map(|it| it.residue_len * it.residue_len).sum();
    let (mut targets, mut mask) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let mut evaluated = 0;
    for item in items {
        check_item(item, corpus)?;
        let cb = corpus.cb(item.row);
        let (s, l) = (item.residue_start, item.residue_len);
        let labels = contact_labels(&cb[s..s + l], cutoff, min_sep);
        for i in 0..l {
            for j in 0..l {
                let on = j > i && labels.is_evaluated(i, j);
                targets.push(if labels.is_contact(i, j) { 1.0 } else { 0.0 });
                mask.push(if on { 1.0 } else { 0.0 });
                evaluated += usize::from(on);
            }
        }
    }
    Ok(PairTargets { targets, mask, evaluated })
}

/// Read the sequences of a FASTA file (name = first word of the header) for prediction.
pub fn read_fasta_sequences(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(h) = line.strip_prefix('>') {
            let name = h.split_whitespace().next().unwrap_or("").to_string();
            if name.is_empty() {
                bail!("{}:{}: FASTA header has no name", path.display(), n + 1);
            }
            out.push((name, String::new()));
        } else if !line.is_empty() {
            let Some(last) = out.last_mut() else {
                bail!("{}:{}: sequence before the first `>` header", path.display(), n + 1);
            };
            if let Some(c) = line.chars().find(|c| !c.is_ascii_alphabetic()) {
                bail!("{}:{}: character `{c}` is not a residue letter", path.display(), n + 1);
            }
            last.1.push_str(line);
        }
    }
    if let Some((name, _)) = out.iter().find(|(_, s)| s.is_empty()) {
        bail!("{}: record `{name}` has no sequence", path.display());
    }
    if out.is_empty() {
        bail!("{}: no FASTA records", path.display());
    }
    Ok(out)
}
