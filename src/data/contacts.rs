//! Residue-residue contact labels and the prepared contact dataset.
//!
//! Labels: a contact is a pair of residues whose C-beta atoms are closer than 8 Å
//! ([`CONTACT_CUTOFF`]). Pairs closer in sequence than `min_sep` (default 6,
//! [`MIN_SEPARATION`]) and pairs with an unknown C-beta (NaN coordinates) are *not evaluated*:
//! [`ContactLabels`] keeps that as a separate mask, not as zeros.
//!
//! Dataset format (`../shared/data/contacts/README.md`): per split, `<split>.fasta` with one
//! record `>{PDBID}_{CHAIN} len={L}` per chain, and `<split>.safetensors` (safetensors format,
//! <https://github.com/huggingface/safetensors>) with `cb` f32 [R, 3] (virtual C-beta), `ca`
//! f32 [R, 3] and `offsets` i64 [N + 1]; chain i is FASTA record i and rows
//! `offsets[i]..offsets[i+1]`. The tensor file is memory-mapped and coordinates are returned
//! without copying when the data is aligned (it is for files written by safetensors ≥ 0.4,
//! whose header is padded to 8 bytes).
//!
//! A chain read from a PDB/mmCIF file becomes the same kind of item with
//! [`ContactItem::from_chain`], so a structure file is evaluated exactly like a dataset entry.

use crate::data::structure::{CbMode, Chain};
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// C-beta distance below which two residues are in contact (Å).
pub const CONTACT_CUTOFF: f32 = 8.0;
/// Smallest sequence separation |i − j| that is evaluated.
pub const MIN_SEPARATION: usize = 6;
/// Label value of a pair that is not evaluated, in [`ContactLabels::masked`].
pub const UNKNOWN: u8 = 255;

// ---------------------------------------------------------------------------------------
// Contact labels
// ---------------------------------------------------------------------------------------

/// Contact labels of one chain, row-major L×L.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactLabels {
    pub len: usize,
    pub min_sep: usize,
    /// 1 where the C-beta distance is below the cutoff (symmetric, diagonal included).
    pub contacts: Vec<u8>,
    /// 1 where the pair is evaluated: |i − j| ≥ `min_sep` and both C-betas are known.
    pub evaluated: Vec<u8>,
}

/// L×L contact map (1 where ‖cb_i − cb_j‖ < `cutoff`, else 0; pairs with a NaN coordinate 0).
pub fn contact_map(cb: &[[f32; 3]], cutoff: f32) -> Vec<u8> {
    let len = cb.len();
    let cutoff2 = cutoff * cutoff;
    let mut map = vec![0u8; len * len];
    for i in 0..len {
        for j in i..len {
            // compare squared distances; NaN compares false, so unknown is "no contact"
            let contact = u8::from(squared_distance(cb[i], cb[j]) < cutoff2);
            map[i * len + j] = contact;
            map[j * len + i] = contact;
        }
    }
    map
}

/// L×L mask of evaluated pairs: |i − j| ≥ `min_sep` and both C-betas finite.
pub fn evaluation_mask(cb: &[[f32; 3]], min_sep: usize) -> Vec<u8> {
    let len = cb.len();
    let known: Vec<bool> = cb.iter().map(|p| p.iter().all(|v| v.is_finite())).collect();
    let mut mask = vec![0u8; len * len];
    for i in 0..len {
        for j in 0..len {
            mask[i * len + j] = u8::from(i.abs_diff(j) >= min_sep && known[i] && known[j]);
        }
    }
    mask
}

/// Contacts and evaluation mask of a chain's C-betas.
pub fn contact_labels(cb: &[[f32; 3]], cutoff: f32, min_sep: usize) -> ContactLabels {
    ContactLabels { len: cb.len(), min_sep, contacts: contact_map(cb, cutoff), evaluated: evaluation_mask(cb, min_sep) }
}

fn squared_distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

impl ContactLabels {
    pub fn is_contact(&self, i: usize, j: usize) -> bool {
        self.contacts[i * self.len + j] == 1
    }

    pub fn is_evaluated(&self, i: usize, j: usize) -> bool {
        self.evaluated[i * self.len + j] == 1
    }

    /// Evaluated contacts with i < j and j − i ≥ `sep` (each unordered pair once).
    pub fn count_contacts(&self, sep: usize) -> usize {
        let mut count = 0;
        for i in 0..self.len {
            for j in (i + sep.max(1))..self.len {
                count += usize::from(self.is_evaluated(i, j) && self.is_contact(i, j));
            }
        }
        count
    }

    /// Labels with the mask folded in: 0 or 1 where evaluated, [`UNKNOWN`] elsewhere — the
    /// form [`crate::metrics::contact::ContactMetrics::add`] takes.
    pub fn masked(&self) -> Vec<u8> {
        self.contacts.iter().zip(&self.evaluated).map(|(&c, &e)| if e == 1 { c } else { UNKNOWN }).collect()
    }
}

// ---------------------------------------------------------------------------------------
// One chain ready for contact prediction
// ---------------------------------------------------------------------------------------

/// A chain's sequence and coordinates, from the dataset or from a structure file.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactItem {
    pub name: String,
    pub sequence: String,
    /// C-beta per residue; NaN where none could be placed.
    pub cb: Vec<[f32; 3]>,
    pub ca: Vec<[f32; 3]>,
}

impl ContactItem {
    /// From a chain of a PDB/mmCIF file. `mode` picks the C-beta: [`CbMode::Virtual`]
    /// matches the dataset's labels.
    pub fn from_chain(chain: &Chain, name: &str, mode: CbMode) -> Self {
        ContactItem {
            name: name.to_string(),
            sequence: chain.sequence(),
            cb: chain.cb_coords(mode),
            ca: chain.ca_coords(),
        }
    }

    pub fn len(&self) -> usize {
        self.sequence.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequence.is_empty()
    }

    pub fn labels(&self, cutoff: f32, min_sep: usize) -> ContactLabels {
        contact_labels(&self.cb, cutoff, min_sep)
    }
}

// ---------------------------------------------------------------------------------------
// The dataset
// ---------------------------------------------------------------------------------------

/// One split of the contact dataset, memory-mapped.
pub struct ContactSet {
    fasta_path: PathBuf,
    tensors_path: PathBuf,
    mmap: Mmap,
    /// Byte ranges of the tensors' data in `mmap`.
    cb_bytes: Range<usize>,
    ca_bytes: Option<Range<usize>>,
    offsets: Vec<usize>,
    records: Vec<FastaRecord>,
    index: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
struct FastaRecord {
    name: String,
    sequence: String,
    /// 1-based line of the header.
    line: usize,
}

impl std::fmt::Debug for ContactSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactSet")
            .field("fasta", &self.fasta_path)
            .field("tensors", &self.tensors_path)
            .field("chains", &self.records.len())
            .field("residues", &self.residues())
            .finish()
    }
}

impl ContactSet {
    /// `<dir>/<split>.fasta` and `<dir>/<split>.safetensors`.
    pub fn open(dir: impl AsRef<Path>, split: &str) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            bail!("contact dataset directory {} does not exist", dir.display());
        }
        Self::open_files(&dir.join(format!("{split}.fasta")), &dir.join(format!("{split}.safetensors")))
    }

    /// `<prefix>.fasta` and `<prefix>.safetensors`, e.g. prefix `data/contacts/valid`.
    pub fn open_prefix(prefix: impl AsRef<Path>) -> Result<Self> {
        let prefix = prefix.as_ref().as_os_str().to_string_lossy().into_owned();
        Self::open_files(Path::new(&format!("{prefix}.fasta")), Path::new(&format!("{prefix}.safetensors")))
    }

    pub fn open_files(fasta: &Path, tensors: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(fasta)
            .with_context(|| format!("cannot read contact dataset FASTA {}", fasta.display()))?;
        let records = parse_fasta(&text, &fasta.display().to_string())?;
        let file = std::fs::File::open(tensors)
            .with_context(|| format!("cannot open contact dataset tensors {}", tensors.display()))?;
        // SAFETY: read-only map; the dataset files must not be modified while open.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", tensors.display()))?;
        let layout = read_tensor_layout(&mmap, tensors)?;
        let offsets = read_offsets(&mmap[layout.offsets.clone()], layout.rows, tensors)?;
        check_chain_lengths(&records, &offsets, fasta, tensors)?;
        let index = unique_name_index(&records, fasta)?;
        Ok(ContactSet {
            fasta_path: fasta.to_path_buf(),
            tensors_path: tensors.to_path_buf(),
            mmap,
            cb_bytes: layout.cb,
            ca_bytes: layout.ca,
            offsets,
            records,
            index,
        })
    }

    /// Number of chains.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Total residues over all chains.
    pub fn residues(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    /// Name of chain `i` (`{PDBID}_{CHAIN}`). Panics when `i >= len()`.
    pub fn name(&self, i: usize) -> &str {
        &self.records[i].name
    }

    pub fn sequence(&self, i: usize) -> &str {
        &self.records[i].sequence
    }

    /// Residues of chain `i`.
    pub fn length(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// Index of the chain with this name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// C-beta of every residue of chain `i`: borrowed from the map when aligned.
    pub fn cb(&self, i: usize) -> Cow<'_, [[f32; 3]]> {
        points(&self.mmap[self.cb_bytes.clone()], self.offsets[i]..self.offsets[i + 1])
    }

    /// CA of every residue of chain `i` (`None` when the file has no `ca` tensor).
    pub fn ca(&self, i: usize) -> Option<Cow<'_, [[f32; 3]]>> {
        let bytes = self.ca_bytes.clone()?;
        Some(points(&self.mmap[bytes], self.offsets[i]..self.offsets[i + 1]))
    }

    /// Contact labels of chain `i`.
    pub fn labels(&self, i: usize, cutoff: f32, min_sep: usize) -> ContactLabels {
        contact_labels(&self.cb(i), cutoff, min_sep)
    }

    /// Chain `i` as an owned item (the same type as a chain read from a structure file).
    pub fn item(&self, i: usize) -> ContactItem {
        ContactItem {
            name: self.name(i).to_string(),
            sequence: self.sequence(i).to_string(),
            cb: self.cb(i).into_owned(),
            ca: self.ca(i).map(Cow::into_owned).unwrap_or_default(),
        }
    }
}

/// Rows `rows` of an [R, 3] little-endian f32 tensor.
fn points(data: &[u8], rows: Range<usize>) -> Cow<'_, [[f32; 3]]> {
    let bytes = &data[rows.start * 12..rows.end * 12];
    if cfg!(target_endian = "little") {
        if let Ok(slice) = bytemuck::try_cast_slice::<u8, [f32; 3]>(bytes) {
            return Cow::Borrowed(slice);
        }
    }
    let value = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    Cow::Owned(bytes.chunks_exact(12).map(|p| [value(&p[0..4]), value(&p[4..8]), value(&p[8..12])]).collect())
}

/// Where the tensors lie in the file.
struct TensorLayout {
    rows: usize,
    cb: Range<usize>,
    ca: Option<Range<usize>>,
    offsets: Range<usize>,
}

fn read_tensor_layout(bytes: &[u8], path: &Path) -> Result<TensorLayout> {
    let shown = path.display();
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("{shown}: not a valid safetensors file: {e}"))?;
    let data_start = 8 + header_len;
    let tensor = |name: &str, dtype: Dtype| -> Result<Option<(Vec<usize>, Range<usize>)>> {
        let Some(info) = metadata.info(name) else {
            return Ok(None);
        };
        if info.dtype != dtype {
            bail!("{shown}: tensor '{name}' has dtype {:?}, expected {dtype:?}", info.dtype);
        }
        let (begin, end) = info.data_offsets;
        Ok(Some((info.shape.clone(), data_start + begin..data_start + end)))
    };
    let missing = |name: &str| anyhow!("{shown}: no tensor '{name}' (expected cb, ca, offsets)");
    let (cb_shape, cb) = tensor("cb", Dtype::F32)?.ok_or_else(|| missing("cb"))?;
    let rows = point_rows(&cb_shape, "cb", path)?;
    let ca = match tensor("ca", Dtype::F32)? {
        Some((shape, range)) => {
            let ca_rows = point_rows(&shape, "ca", path)?;
            if ca_rows != rows {
                bail!("{shown}: tensor 'ca' has {ca_rows} rows but 'cb' has {rows}");
            }
            Some(range)
        }
        None => None,
    };
    let (offsets_shape, offsets) = tensor("offsets", Dtype::I64)?.ok_or_else(|| missing("offsets"))?;
    if offsets_shape.len() != 1 || offsets_shape[0] == 0 {
        bail!("{shown}: tensor 'offsets' has shape {offsets_shape:?}, expected [N + 1]");
    }
    Ok(TensorLayout { rows, cb, ca, offsets })
}

/// R of an [R, 3] tensor.
fn point_rows(shape: &[usize], name: &str, path: &Path) -> Result<usize> {
    match shape {
        [rows, 3] => Ok(*rows),
        _ => bail!("{}: tensor '{name}' has shape {shape:?}, expected [R, 3]", path.display()),
    }
}

/// `offsets` as row indices: starts at 0, never decreases, ends at R.
fn read_offsets(bytes: &[u8], rows: usize, path: &Path) -> Result<Vec<usize>> {
    let shown = path.display();
    let values: Vec<i64> =
        bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8 bytes"))).collect();
    if values[0] != 0 {
        bail!("{shown}: offsets[0] is {}, expected 0", values[0]);
    }
    for (k, pair) in values.windows(2).enumerate() {
        if pair[1] < pair[0] {
            bail!("{shown}: offsets are not monotone: offsets[{}] = {} < offsets[{k}] = {}", k + 1, pair[1], pair[0]);
        }
    }
    let last = *values.last().expect("offsets is not empty");
    if last != rows as i64 {
        bail!("{shown}: the last offset is {last}, but 'cb' has {rows} rows");
    }
    Ok(values.into_iter().map(|v| v as usize).collect())
}

fn check_chain_lengths(records: &[FastaRecord], offsets: &[usize], fasta: &Path, tensors: &Path) -> Result<()> {
    let chains = offsets.len() - 1;
    if records.len() != chains {
        bail!(
            "{} has {} records but {} has offsets for {chains} chains",
            fasta.display(),
            records.len(),
            tensors.display()
        );
    }
    for (i, record) in records.iter().enumerate() {
        let rows = offsets[i + 1] - offsets[i];
        if rows != record.sequence.len() {
            bail!(
                "{}:{}: chain {} has {} residues but rows {}..{} of {} hold {rows}",
                fasta.display(),
                record.line,
                record.name,
                record.sequence.len(),
                offsets[i],
                offsets[i + 1],
                tensors.display()
            );
        }
    }
    Ok(())
}

fn unique_name_index(records: &[FastaRecord], fasta: &Path) -> Result<HashMap<String, usize>> {
    let mut index = HashMap::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        if let Some(first) = index.insert(record.name.clone(), i) {
            bail!(
                "{}:{}: chain name {} is used twice (first at line {})",
                fasta.display(),
                record.line,
                record.name,
                records[first].line
            );
        }
    }
    Ok(index)
}

/// FASTA records `>NAME len=L` (the `len=` field optional, checked when present); the
/// sequence may span several lines.
fn parse_fasta(text: &str, source: &str) -> Result<Vec<FastaRecord>> {
    let mut records: Vec<(FastaRecord, Option<usize>)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('>') {
            records.push(parse_fasta_header(header, line_no, source)?);
        } else if !line.is_empty() {
            let Some((record, _)) = records.last_mut() else {
                bail!("{source}:{line_no}: sequence before the first '>' header");
            };
            if let Some(bad) = line.chars().find(|c| !c.is_ascii_alphabetic()) {
                bail!("{source}:{line_no}: character '{bad}' is not a residue letter");
            }
            record.sequence.push_str(line);
        }
    }
    records.into_iter().map(|(record, declared)| check_fasta_record(record, declared, source)).collect()
}

/// Name (first word) and the `len=` field, when present.
fn parse_fasta_header(header: &str, line_no: usize, source: &str) -> Result<(FastaRecord, Option<usize>)> {
    let name = header.split_whitespace().next().unwrap_or("");
    if name.is_empty() {
        bail!("{source}:{line_no}: FASTA header has no name");
    }
    let declared = match header.split_whitespace().find_map(|w| w.strip_prefix("len=")) {
        Some(field) => Some(field.parse().map_err(|_| anyhow!("{source}:{line_no}: len={field} is not a number"))?),
        None => None,
    };
    let record = FastaRecord { name: name.to_string(), sequence: String::new(), line: line_no };
    Ok((record, declared))
}

/// Empty sequences are an error; a `len=` field must match the sequence.
fn check_fasta_record(record: FastaRecord, declared: Option<usize>, source: &str) -> Result<FastaRecord> {
    let line_no = record.line;
    if record.sequence.is_empty() {
        bail!("{source}:{line_no}: record {} has no sequence", record.name);
    }
    if let Some(declared) = declared.filter(|&d| d != record.sequence.len()) {
        bail!(
            "{source}:{line_no}: header says len={declared} but the sequence of {} has {} residues",
            record.name,
            record.sequence.len()
        );
    }
    Ok(record)
}
