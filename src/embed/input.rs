//! The FASTA input of `embed`: a first pass that validates the whole file (so a bad
//! record or a duplicate name stops the run before any work) and counts what is to do,
//! then a stream of length-sorted chunks.
//!
//! Names are remembered as 64-bit hashes (16 bytes per sequence with the line of the
//! header), not as strings: the duplicate check and `--resume` cost about 1.6 MB per
//! 100,000 sequences.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::data::dataset::{LabelledSet, LabelledSetBuilder};
use crate::data::fasta::{FastaRecord, FastaStream};

/// A 64-bit hash of a sequence name (SipHash with fixed keys; only compared within one
/// process, never stored).
pub fn name_hash(name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// What the first pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputScan {
    /// Records in the file.
    pub sequences: usize,
    /// Records already in the index (`--resume`).
    pub already_done: usize,
    /// Records to embed, and their residues (after `--truncate`).
    pub to_do: usize,
    pub residues_to_do: u64,
    /// The longest record, in residues.
    pub longest: usize,
}

/// Read the whole file once: every record valid, names unique, counts of what `done`
/// (hashes of names already embedded) leaves to do. `embedded_len` maps a record's
/// length to the residues embedded.
pub fn scan_fasta(path: &Path, done: &HashSet<u64>, embedded_len: impl Fn(usize) -> usize) -> Result<InputScan> {
    let mut first_line: HashMap<u64, usize> = HashMap::new();
    let mut scan = InputScan::default();
    for record in FastaStream::open(path)? {
        let record = record?;
        let h = name_hash(&record.name);
        if let Some(first) = first_line.insert(h, record.header_line) {
            bail!(
                "{}:{}: duplicate sequence name `{}` (first at line {first}); embeddings are stored under \
                 sequence names, so every name must be unique: rename the duplicates",
                path.display(),
                record.header_line,
                record.name
            );
        }
        scan.sequences += 1;
        scan.longest = scan.longest.max(record.residues.len());
        if done.contains(&h) {
            scan.already_done += 1;
        } else {
            scan.to_do += 1;
            scan.residues_to_do += embedded_len(record.residues.len()) as u64;
        }
    }
    if scan.sequences == 0 {
        bail!("{}: no FASTA records (empty file, or no `>` header)", path.display());
    }
    Ok(scan)
}

/// A chunk of records to embed, as a set (rows in file order), with each row's length
/// in the file (before `--truncate`).
pub struct Chunk {
    pub set: LabelledSet,
    pub full_lengths: Vec<usize>,
}

/// Records of the file not in `done`, in chunks of about `chunk_tokens` tokens (each
/// record costs its embedded residues + 2), truncated to `embedded_len`.
pub struct ChunkReader<'a, F: Fn(usize) -> usize> {
    records: FastaStream,
    done: &'a HashSet<u64>,
    embedded_len: F,
    chunk_tokens: usize,
}

impl<'a, F: Fn(usize) -> usize> ChunkReader<'a, F> {
    pub fn open(path: &Path, done: &'a HashSet<u64>, embedded_len: F, chunk_tokens: usize) -> Result<Self> {
        Ok(ChunkReader { records: FastaStream::open(path)?, done, embedded_len, chunk_tokens: chunk_tokens.max(1) })
    }

    /// The next chunk, or `None` at the end of the file.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let mut builder = LabelledSetBuilder::new();
        let mut full_lengths = Vec::new();
        let mut tokens = 0;
        while tokens < self.chunk_tokens {
            let Some(record) = self.records.next() else { break };
            let FastaRecord { name, residues, header_line, .. } = record?;
            if self.done.contains(&name_hash(&name)) {
                continue;
            }
            let keep = (self.embedded_len)(residues.len());
            builder.push(&name, &residues[..keep], None).map_err(|e| anyhow!("line {header_line}: {e}"))?;
            full_lengths.push(residues.len());
            tokens += keep + 2;
        }
        if builder.is_empty() {
            return Ok(None);
        }
        Ok(Some(Chunk { set: builder.finish(), full_lengths }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fasta(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn scan_counts_and_refuses_duplicates() {
        let f = fasta(">a\nACDE\n>b\nMK\nLL\n>c\nW\n");
        let done: HashSet<u64> = [name_hash("b")].into();
        let s = scan_fasta(f.path(), &done, |l| l.min(3)).unwrap();
        assert_eq!(s, InputScan { sequences: 3, already_done: 1, to_do: 2, residues_to_do: 4, longest: 4 });
        let f = fasta(">a\nACDE\n>b\nMK\n>a\nW\n");
        let e = scan_fasta(f.path(), &HashSet::new(), |l| l).unwrap_err().to_string();
        assert!(e.ends_with(":5: duplicate sequence name `a` (first at line 1); embeddings are stored under sequence names, so every name must be unique: rename the duplicates"), "{e}");
        let f = fasta("\n\n");
        assert!(scan_fasta(f.path(), &HashSet::new(), |l| l).unwrap_err().to_string().contains("no FASTA records"));
    }

    #[test]
    fn chunks_skip_done_records_and_truncate() {
        let f = fasta(">a\nACDEF\n>b\nMK\n>c\nWWWWWW\n>d\nG\n");
        let done: HashSet<u64> = [name_hash("b")].into();
        let mut r = ChunkReader::open(f.path(), &done, |l| l.min(4), 9).unwrap();
        let c = r.next_chunk().unwrap().unwrap();
        assert_eq!((c.set.len(), c.set.sequence(0), c.set.sequence(1)), (2, "ACDE", "WWWW"));
        assert_eq!(c.full_lengths, vec![5, 6]);
        let c = r.next_chunk().unwrap().unwrap();
        assert_eq!((c.set.len(), c.set.name(0)), (1, "d"));
        assert!(r.next_chunk().unwrap().is_none());
    }
}
