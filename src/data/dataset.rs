//! The compact in-memory form of every sequence set the readers produce.
//!
//! A [`LabelledSet`] holds N protein sequences with their names and (optionally) a
//! family label per row. Storage is columnar: all residues live in one byte arena and
//! all names in another, addressed by `N + 1` offsets each, so a 1.3 M-row Pfam split
//! costs one allocation per column instead of millions of `String`s. Family labels are
//! a `u32` index per row into a table of [`Family`] (`id`, optional accession).
//!
//! Residues are stored upper-case ASCII letters. Which bytes are accepted as residues is
//! decided here, once, for all readers ([`find_bad_residue`]): any ASCII letter is a
//! residue (ESM-2 maps letters outside its alphabet, i.e. `J`, to `<unk>`, and the other
//! IUPAC codes `X B U Z O` have tokens of their own); anything else — digits, `*`,
//! gaps, spaces, punctuation, non-ASCII — is an error, because in a sequence column it
//! means a corrupt file or shifted columns, not a residue. Letters outside the 20
//! canonical amino acids are counted ([`LabelledSet::nonstandard_residues`]) so they can
//! be reported.
//!
//! An unlabelled set (FASTA for prediction) is the same type with no family table.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::data::rng::fnv1a64;

/// A protein family (a class label): Pfam short name and accession, or a free label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Family {
    /// Family name, e.g. `Pkinase` (Pfam `#=GF ID`, CSV `family_id`, FASTA label).
    pub id: String,
    /// Accession with version when known, e.g. `PF00069.25`.
    pub accession: Option<String>,
}

/// Sequences, names and family labels in columnar arenas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelledSet {
    residues: Vec<u8>,
    residue_offsets: Vec<usize>,
    names: Vec<u8>,
    name_offsets: Vec<usize>,
    /// Family index per row; empty for an unlabelled set.
    family: Vec<u32>,
    families: Vec<Family>,
}

/// Open a text input for line-by-line reading, decompressing it when it is gzip
/// (recognised by its magic bytes `1f 8b`, whatever the extension; multi-member
/// gzip such as bgzip is read to the end).
pub fn open_input(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 18, file);
    let magic = reader.fill_buf().with_context(|| format!("{}: cannot read", path.display()))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        let decoder = flate2::bufread::MultiGzDecoder::new(reader);
        Ok(Box::new(BufReader::with_capacity(1 << 18, decoder)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Read the next line (without `\n` / `\r\n`) into `buf`; `false` at end of input.
/// `line_no` is the 1-based number of the line read, used in the error text.
pub fn read_line_bytes(reader: &mut dyn BufRead, buf: &mut Vec<u8>, path: &Path, line_no: usize) -> Result<bool> {
    buf.clear();
    let n = reader
        .read_until(b'\n', buf)
        .with_context(|| format!("{}:{line_no}: cannot read (truncated or corrupt gzip?)", path.display()))?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(true)
}

/// The 20 canonical amino acids (upper case).
const CANONICAL: &[u8; 20] = b"ACDEFGHIKLMNPQRSTVWY";

/// True for the 20 canonical amino-acid letters (either case).
pub fn is_canonical_residue(b: u8) -> bool {
    CANONICAL.contains(&b.to_ascii_uppercase())
}

/// Position of the first byte of `seq` that is not an ASCII letter, if any.
pub fn find_bad_residue(seq: &[u8]) -> Option<usize> {
    seq.iter().position(|b| !b.is_ascii_alphabetic())
}

/// True when every byte is an ASCII letter (branch-free, so it vectorizes).
pub fn all_letters(seq: &[u8]) -> bool {
    seq.iter().fold(true, |ok, &b| ok & ((b | 0x20).wrapping_sub(b'a') < 26))
}

/// Human-readable description of the (possibly multi-byte) character at `pos`:
/// `'1'`, `'*'`, `' '`, `'é'`, or `byte 0xE9` for invalid UTF-8.
pub fn describe_char_at(bytes: &[u8], pos: usize) -> String {
    let end = (pos + 4).min(bytes.len());
    let chunk = &bytes[pos..end];
    let valid = match std::str::from_utf8(chunk) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()]).unwrap_or(""),
    };
    match valid.chars().next() {
        Some(c) => format!("{c:?}"),
        None => format!("byte 0x{:02X}", bytes[pos]),
    }
}

/// Error text for a sequence containing a non-letter at `pos` (0-based); names the character
/// and its 1-based position.
pub fn bad_residue_message(seq: &[u8], pos: usize) -> String {
    format!(
        "invalid residue {} at position {} of the sequence (residues must be letters; \
         digits, gaps, '*' and punctuation are not accepted)",
        describe_char_at(seq, pos),
        pos + 1
    )
}

impl LabelledSet {
    /// An empty set.
    pub fn new() -> Self {
        LabelledSet { residue_offsets: vec![0], name_offsets: vec![0], ..Default::default() }
    }

    /// Assemble a set from already-built columns (used by the parallel CSV reader).
    /// Checks that the columns agree; residues must already be upper-case letters.
    pub fn from_parts(
        residues: Vec<u8>,
        residue_offsets: Vec<usize>,
        names: Vec<u8>,
        name_offsets: Vec<usize>,
        family: Vec<u32>,
        families: Vec<Family>,
    ) -> Result<Self> {
        let n = residue_offsets.len().saturating_sub(1);
        if residue_offsets.first() != Some(&0) || residue_offsets.last() != Some(&residues.len()) {
            bail!("internal: residue offsets do not span the residue arena");
        }
        if name_offsets.len() != n + 1 || name_offsets.last() != Some(&names.len()) {
            bail!("internal: name offsets do not match the row count {n}");
        }
        if !family.is_empty() && family.len() != n {
            bail!("internal: {} family labels for {n} rows", family.len());
        }
        if family.iter().any(|&f| f as usize >= families.len()) {
            bail!("internal: family index out of range");
        }
        if std::str::from_utf8(&names).is_err() {
            bail!("internal: sequence names are not UTF-8");
        }
        Ok(LabelledSet { residues, residue_offsets, names, name_offsets, family, families })
    }

    /// Number of rows (sequences).
    pub fn len(&self) -> usize {
        self.residue_offsets.len().saturating_sub(1)
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every row carries a family label.
    pub fn is_labelled(&self) -> bool {
        !self.family.is_empty() || (self.is_empty() && !self.families.is_empty())
    }

    /// Residues of row `i` (upper-case letters). Panics if `i >= len()`, like slice indexing.
    pub fn sequence(&self, i: usize) -> &str {
        let bytes = self.sequence_bytes(i);
        // Residues are ASCII letters by construction.
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// Residues of row `i` as bytes.
    pub fn sequence_bytes(&self, i: usize) -> &[u8] {
        &self.residues[self.residue_offsets[i]..self.residue_offsets[i + 1]]
    }

    /// Number of residues of row `i`.
    pub fn seq_len(&self, i: usize) -> usize {
        self.residue_offsets[i + 1] - self.residue_offsets[i]
    }

    /// Name of row `i` (e.g. `Q85A82/1-270`).
    pub fn name(&self, i: usize) -> &str {
        let bytes = &self.names[self.name_offsets[i]..self.name_offsets[i + 1]];
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// Family index of row `i`, `None` for an unlabelled set.
    pub fn family_of(&self, i: usize) -> Option<u32> {
        self.family.get(i).copied()
    }

    /// The family of row `i`, `None` for an unlabelled set.
    pub fn family(&self, i: usize) -> Option<&Family> {
        self.family_of(i).map(|f| &self.families[f as usize])
    }

    /// Family index per row (empty for an unlabelled set).
    pub fn family_column(&self) -> &[u32] {
        &self.family
    }

    /// The family table (in order of first appearance in the input).
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// Rows per family, indexed like [`families`](Self::families).
    pub fn family_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.families.len()];
        for &f in &self.family {
            counts[f as usize] += 1;
        }
        counts
    }

    /// Family id → family index.
    pub fn family_lookup(&self) -> HashMap<&str, u32> {
        self.families.iter().enumerate().map(|(i, f)| (f.id.as_str(), i as u32)).collect()
    }

    /// Index of the family with this id.
    pub fn family_index(&self, id: &str) -> Option<u32> {
        self.families.iter().position(|f| f.id == id).map(|i| i as u32)
    }

    /// Model input length of every row: residues + `<cls>` + `<eos>`.
    pub fn token_lengths(&self) -> Vec<u32> {
        self.residue_offsets.windows(2).map(|w| (w[1] - w[0] + 2) as u32).collect()
    }

    /// Residue count of every row.
    pub fn residue_lengths(&self) -> Vec<usize> {
        self.residue_offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Total number of residues.
    pub fn total_residues(&self) -> usize {
        self.residues.len()
    }

    /// Number of residues that are letters outside the 20 canonical amino acids
    /// (`X B U Z O J` and other letters). ESM-2 has tokens for `X B U Z O`; others become `<unk>`.
    pub fn nonstandard_residues(&self) -> usize {
        self.residues.iter().filter(|&&b| !is_canonical_residue(b)).count()
    }

    /// Row index of every name (first occurrence wins).
    pub fn name_lookup(&self) -> HashMap<&str, usize> {
        let mut map = HashMap::with_capacity(self.len());
        for i in 0..self.len() {
            map.entry(self.name(i)).or_insert(i);
        }
        map
    }

    /// First pair of rows `(first, second)` that share a name, if any: `second` is the
    /// earliest row whose name occurred before, `first` that earlier occurrence.
    ///
    /// Parallel: every name is hashed (FNV-1a), the `(hash, row)` pairs are sorted, and
    /// only rows with equal hashes are compared byte for byte.
    pub fn first_duplicate_name(&self) -> Option<(usize, usize)> {
        let mut keyed: Vec<(u64, usize)> =
            (0..self.len()).into_par_iter().map(|i| (fnv1a64(self.name_bytes(i)), i)).collect();
        keyed.par_sort_unstable();
        let mut best: Option<(usize, usize)> = None;
        for group in keyed.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
            // Rows ascending within a group; the first equal earlier row is the first occurrence.
            for (k, &(_, row)) in group.iter().enumerate().skip(1) {
                let name = self.name_bytes(row);
                let earlier = group[..k].iter().find(|&&(_, r)| self.name_bytes(r) == name);
                if let Some(&(_, first)) = earlier {
                    if best.is_none_or(|(_, b)| row < b) {
                        best = Some((first, row));
                    }
                }
            }
        }
        best
    }

    fn name_bytes(&self, i: usize) -> &[u8] {
        &self.names[self.name_offsets[i]..self.name_offsets[i + 1]]
    }

    /// A new set with only `rows` (in that order); the family table is kept whole so
    /// family indices stay valid.
    pub fn subset(&self, rows: &[usize]) -> LabelledSet {
        let mut out = LabelledSet::new();
        out.families = self.families.clone();
        for &r in rows {
            out.push_row(self.name(r), self.sequence_bytes(r), self.family_of(r));
        }
        out
    }

    /// Append one row. `residues` must already be validated letters; they are stored
    /// upper-cased. Use [`LabelledSetBuilder`] from readers.
    fn push_row(&mut self, name: &str, residues: &[u8], family: Option<u32>) {
        self.residues.extend(residues.iter().map(|b| b.to_ascii_uppercase()));
        self.residue_offsets.push(self.residues.len());
        self.names.extend_from_slice(name.as_bytes());
        self.name_offsets.push(self.names.len());
        if let Some(f) = family {
            self.family.push(f);
        }
    }
}

/// Incremental construction of a [`LabelledSet`] by the sequential readers (FASTA,
/// Stockholm): interns family ids, validates residues, rejects duplicate names.
#[derive(Debug, Default)]
pub struct LabelledSetBuilder {
    set: LabelledSet,
    family_index: HashMap<String, u32>,
    name_index: HashMap<String, usize>,
    labelled: Option<bool>,
}

impl LabelledSetBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        LabelledSetBuilder { set: LabelledSet::new(), ..Default::default() }
    }

    /// Number of rows pushed so far.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Index of family `id`, creating it on first use. If the family is known with a
    /// different accession, an error says so (the caller adds file and line).
    pub fn intern_family(&mut self, id: &str, accession: Option<&str>) -> Result<u32> {
        if let Some(&f) = self.family_index.get(id) {
            let known = &mut self.set.families[f as usize].accession;
            match (known.as_deref(), accession) {
                (Some(a), Some(b)) if a != b => {
                    bail!("family `{id}` has accession `{b}` here but `{a}` earlier")
                }
                (None, Some(b)) => *known = Some(b.to_string()),
                _ => {}
            }
            return Ok(f);
        }
        let f = self.set.families.len() as u32;
        self.set.families.push(Family { id: id.to_string(), accession: accession.map(str::to_string) });
        self.family_index.insert(id.to_string(), f);
        Ok(f)
    }

    /// Row index of an already pushed name.
    pub fn row_of_name(&self, name: &str) -> Option<usize> {
        self.name_index.get(name).copied()
    }

    /// Append a row. Errors (without location; the caller adds it) on an empty name,
    /// an empty sequence, a non-letter residue, a duplicate name, or mixing labelled and
    /// unlabelled rows.
    pub fn push(&mut self, name: &str, residues: &[u8], family: Option<u32>) -> Result<usize> {
        if name.is_empty() {
            bail!("empty sequence name");
        }
        if residues.is_empty() {
            bail!("sequence `{name}` is empty");
        }
        if let Some(pos) = find_bad_residue(residues) {
            bail!("sequence `{name}`: {}", bad_residue_message(residues, pos));
        }
        if let Some(&first) = self.name_index.get(name) {
            bail!("duplicate sequence name `{name}` (first seen as row {})", first + 1);
        }
        match self.labelled {
            None => self.labelled = Some(family.is_some()),
            Some(l) if l != family.is_some() => {
                bail!("sequence `{name}`: labelled and unlabelled rows mixed")
            }
            _ => {}
        }
        if let Some(f) = family {
            if f as usize >= self.set.families.len() {
                bail!("internal: family index {f} was not interned");
            }
        }
        let row = self.set.len();
        self.set.push_row(name, residues, family);
        self.name_index.insert(name.to_string(), row);
        Ok(row)
    }

    /// The finished set.
    pub fn finish(self) -> LabelledSet {
        self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_stores_rows_columnar_and_uppercases() {
        let mut b = LabelledSetBuilder::new();
        let k = b.intern_family("Kinase", Some("PF00069.25")).unwrap();
        let g = b.intern_family("GTP", None).unwrap();
        b.push("a/1-3", b"mkv", Some(k)).unwrap();
        b.push("b/2-6", b"ACDXJ", Some(g)).unwrap();
        b.push("c/1-2", b"WW", Some(k)).unwrap();
        let s = b.finish();
        assert_eq!(s.len(), 3);
        assert_eq!(s.sequence(0), "MKV");
        assert_eq!(s.name(1), "b/2-6");
        assert_eq!(s.family(2).unwrap().accession.as_deref(), Some("PF00069.25"));
        assert_eq!(s.family_counts(), vec![2, 1]);
        assert_eq!(s.token_lengths(), vec![5, 7, 4]);
        assert_eq!(s.nonstandard_residues(), 2);
        assert!(s.is_labelled());
        let sub = s.subset(&[2, 0]);
        assert_eq!(sub.name(0), "c/1-2");
        assert_eq!(sub.family_of(1), Some(k));
    }

    #[test]
    fn builder_rejects_bad_rows_with_reasons() {
        let mut b = LabelledSetBuilder::new();
        b.push("x", b"MK", None).unwrap();
        let e = b.push("x", b"MK", None).unwrap_err().to_string();
        assert!(e.contains("duplicate sequence name `x`"), "{e}");
        let e = b.push("y", b"MK1", None).unwrap_err().to_string();
        assert!(e.contains("invalid residue '1' at position 3"), "{e}");
        let e = b.push("z", b"", None).unwrap_err().to_string();
        assert!(e.contains("`z` is empty"), "{e}");
        let f = b.intern_family("F", Some("PF1.1")).unwrap();
        let e = b.push("w", b"MK", Some(f)).unwrap_err().to_string();
        assert!(e.contains("mixed"), "{e}");
        let e = b.intern_family("F", Some("PF1.2")).unwrap_err().to_string();
        assert!(e.contains("`PF1.2` here but `PF1.1` earlier"), "{e}");
    }

    #[test]
    fn first_duplicate_is_the_earliest_repeated_row() {
        let mut b = LabelledSetBuilder::new();
        let mut set = LabelledSet::new();
        for name in ["x", "y", "z", "y", "x"] {
            set.push_row(name, b"MK", None);
        }
        assert_eq!(set.first_duplicate_name(), Some((1, 3)));
        b.push("only", b"MK", None).unwrap();
        assert_eq!(b.finish().first_duplicate_name(), None);
    }

    #[test]
    fn describes_non_ascii_characters() {
        assert_eq!(describe_char_at("AÉB".as_bytes(), 1), "'É'");
        assert_eq!(describe_char_at(&[b'A', 0xE9, b'B'], 1), "byte 0xE9");
        assert_eq!(find_bad_residue(b"ACD-E"), Some(3));
    }
}
