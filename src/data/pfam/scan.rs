//! Pass 1 of the Pfam reader: every row of a chunk is split into fields, checked and
//! measured, and where its name and sequence lie is remembered; nothing is copied.

use std::collections::HashMap;

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::shard::{trim_cr, Chunk, Columns, Shard};
use crate::data::dataset::{all_letters, bad_residue_message, find_bad_residue};
use crate::data::rng::FnvBuildHasher;

/// Pass-1 result of one chunk: validated and measured, nothing copied.
pub(super) struct ChunkScan<'a> {
    pub(super) rows: usize,
    pub(super) residue_bytes: usize,
    pub(super) name_bytes: usize,
    /// Chunk-local family index per row.
    pub(super) family_local: Vec<u32>,
    /// Where each row's name and sequence lie in the chunk, so pass 2 need not re-parse.
    pub(super) spans: Vec<RowSpan>,
    /// Chunk-local family table: (id, accession, first row in chunk).
    pub(super) families: Vec<(&'a [u8], &'a [u8], usize)>,
}

/// Byte ranges (relative to the chunk start) of one row's name and sequence.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowSpan {
    name_start: u32,
    name_len: u32,
    sequence_start: u32,
    sequence_len: u32,
}

impl RowSpan {
    fn new(chunk: &[u8], name: &[u8], sequence: &[u8]) -> RowSpan {
        let offset = |field: &[u8]| (field.as_ptr() as usize - chunk.as_ptr() as usize) as u32;
        RowSpan {
            name_start: offset(name),
            name_len: name.len() as u32,
            sequence_start: offset(sequence),
            sequence_len: sequence.len() as u32,
        }
    }

    pub(super) fn name<'a>(&self, chunk: &'a [u8]) -> &'a [u8] {
        &chunk[self.name_start as usize..(self.name_start + self.name_len) as usize]
    }

    pub(super) fn sequence<'a>(&self, chunk: &'a [u8]) -> &'a [u8] {
        &chunk[self.sequence_start as usize..(self.sequence_start + self.sequence_len) as usize]
    }
}

/// A problem found in pass 1: the 0-based line within the chunk and the message.
struct ChunkError {
    line_in_chunk: usize,
    message: String,
}

/// The fields of one data row that the reader uses.
struct RowFields<'a> {
    family_id: &'a [u8],
    name: &'a [u8],
    accession: &'a [u8],
    sequence: &'a [u8],
}

/// Split a row into its fields and check the count against the header.
fn split_row<'a>(
    line: &'a [u8],
    columns: &Columns,
    fields: &mut Vec<&'a [u8]>,
) -> std::result::Result<RowFields<'a>, String> {
    split_fields(line, fields);
    if fields.len() != columns.count {
        return Err(format!(
            "row has {} fields, the header has {} (ragged row; fields must not contain commas)",
            fields.len(),
            columns.count
        ));
    }
    Ok(RowFields {
        family_id: fields[columns.family_id],
        name: fields[columns.name],
        accession: fields[columns.accession],
        sequence: fields[columns.sequence],
    })
}

/// UTF-8 check with a fast path for the usual all-ASCII field.
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Validate the fields of one row.
fn check_row(row: &RowFields) -> std::result::Result<(), String> {
    for (value, column) in [(row.family_id, "family_id"), (row.name, "sequence_name")] {
        if value.is_empty() {
            return Err(format!("empty {column}"));
        }
        if !is_utf8(value) {
            return Err(format!("{column} is not valid UTF-8"));
        }
    }
    if !is_utf8(row.accession) {
        return Err("family_accession is not valid UTF-8".to_string());
    }
    if row.sequence.is_empty() {
        return Err("empty sequence".to_string());
    }
    if !all_letters(row.sequence) {
        let pos = find_bad_residue(row.sequence).unwrap_or(0);
        return Err(format!("column `sequence`: {}", bad_residue_message(row.sequence, pos)));
    }
    Ok(())
}

/// Iterate the non-blank lines of a chunk with their 0-based line index.
pub(super) fn data_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    Lines { rest: bytes, done: false }.map(trim_cr).enumerate().filter(|(_, line)| !line.is_empty())
}

/// Lines of a byte slice split at `\n` (like `split`, but with a word-at-a-time search).
struct Lines<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        match find_byte(self.rest, b'\n') {
            Some(p) => {
                let line = &self.rest[..p];
                self.rest = &self.rest[p + 1..];
                Some(line)
            }
            None => {
                self.done = true;
                Some(self.rest)
            }
        }
    }
}

/// Position of the first `needle` in `hay`, eight bytes at a time (the classic
/// "has a zero byte" bit trick on `word ^ needle`; exact for the lowest match).
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = LOW * needle as u64;
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let x = u64::from_le_bytes(word.try_into().unwrap_or([0; 8])) ^ pattern;
        let zero = x.wrapping_sub(LOW) & !x & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&b| b == needle).map(|p| at + p)
}

/// Split a line at commas into `fields` (cleared first).
fn split_fields<'a>(line: &'a [u8], fields: &mut Vec<&'a [u8]>) {
    fields.clear();
    let mut rest = line;
    while let Some(p) = find_byte(rest, b',') {
        fields.push(&rest[..p]);
        rest = &rest[p + 1..];
    }
    fields.push(rest);
}

/// Pass 1 over one chunk.
fn scan_chunk<'a>(bytes: &'a [u8], columns: &Columns) -> std::result::Result<ChunkScan<'a>, ChunkError> {
    if bytes.len() > u32::MAX as usize {
        // Row spans are stored as u32 offsets; a 4 GiB chunk means a 4 GiB line.
        return Err(ChunkError {
            line_in_chunk: 0,
            message: "line longer than 4 GiB (is this a CSV file?)".to_string(),
        });
    }
    let mut scan = ChunkScan {
        rows: 0,
        residue_bytes: 0,
        name_bytes: 0,
        family_local: Vec::new(),
        spans: Vec::new(),
        families: Vec::new(),
    };
    let mut local: HashMap<&'a [u8], u32, FnvBuildHasher> = HashMap::default();
    let mut fields = Vec::with_capacity(columns.count);
    for (k, line) in data_lines(bytes) {
        let fail = |message: String| ChunkError { line_in_chunk: k, message };
        let row = split_row(line, columns, &mut fields).map_err(fail)?;
        check_row(&row).map_err(fail)?;
        let next = scan.families.len() as u32;
        let f = *local.entry(row.family_id).or_insert(next);
        if f == next {
            scan.families.push((row.family_id, row.accession, scan.rows));
        } else if scan.families[f as usize].1 != row.accession {
            return Err(fail(accession_conflict(row.family_id, row.accession, scan.families[f as usize].1)));
        }
        scan.family_local.push(f);
        scan.spans.push(RowSpan::new(bytes, row.name, row.sequence));
        scan.rows += 1;
        scan.residue_bytes += row.sequence.len();
        scan.name_bytes += row.name.len();
    }
    Ok(scan)
}

pub(super) fn accession_conflict(id: &[u8], here: &[u8], earlier: &[u8]) -> String {
    format!(
        "family `{}` has family_accession `{}` here but `{}` in an earlier row",
        String::from_utf8_lossy(id),
        String::from_utf8_lossy(here),
        String::from_utf8_lossy(earlier)
    )
}

/// Pass 1 over all chunks in parallel; the first error in file order wins.
pub(super) fn scan_all_chunks<'a>(shards: &'a [Shard], chunks: &[Chunk]) -> Result<Vec<ChunkScan<'a>>> {
    let results: Vec<_> = chunks
        .par_iter()
        .map(|c| {
            let shard = &shards[c.shard];
            scan_chunk(&shard.bytes()[c.range.clone()], &shard.columns)
        })
        .collect();
    let mut scans = Vec::with_capacity(results.len());
    for (c, result) in chunks.iter().zip(results) {
        match result {
            Ok(scan) => scans.push(scan),
            Err(e) => {
                let shard = &shards[c.shard];
                let line = shard.line_number(&c.range, e.line_in_chunk);
                bail!("{}:{line}: {}", shard.path.display(), e.message);
            }
        }
    }
    Ok(scans)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_byte_agrees_with_position() {
        let hay = b"abc,defghijklmn,opqrstuvwxyz0123456789,";
        for start in 0..hay.len() {
            let h = &hay[start..];
            assert_eq!(find_byte(h, b','), h.iter().position(|&b| b == b','), "{start}");
            assert_eq!(find_byte(h, b'\n'), None);
        }
        let lines: Vec<&[u8]> = Lines { rest: b"a\nbc\n\nd", done: false }.collect();
        assert_eq!(lines, vec![&b"a"[..], b"bc", b"", b"d"]);
        let mut fields = Vec::new();
        split_fields(b"x,,yz,", &mut fields);
        assert_eq!(fields, vec![&b"x"[..], b"", b"yz", b""]);
    }
}
