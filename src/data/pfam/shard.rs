//! The Pfam reader's input: the shards memory-mapped, their headers parsed (columns found
//! by name) and their data rows cut into ~4 MiB chunks at line boundaries, the parallel
//! work items of both passes.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;

/// The header of Google's Pfam split files.
pub const PFAM_HEADER: &str = "family_id,sequence_name,family_accession,aligned_sequence,sequence";

/// Columns this reader needs (found by name in the header).
const REQUIRED_COLUMNS: [&str; 4] = ["family_id", "sequence_name", "family_accession", "sequence"];

/// Target size of one parallel work item.
const CHUNK_BYTES: usize = 4 << 20;

/// Positions of the needed columns in one shard's header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Columns {
    pub(super) count: usize,
    pub(super) family_id: usize,
    pub(super) name: usize,
    pub(super) accession: usize,
    pub(super) sequence: usize,
}

/// One memory-mapped shard and where its data rows start.
pub(super) struct Shard {
    pub(super) path: PathBuf,
    map: Mmap,
    pub(super) columns: Columns,
    data_start: usize,
}

impl Shard {
    pub(super) fn open(path: &Path) -> Result<Shard> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file.metadata().with_context(|| format!("{}: cannot stat", path.display()))?.len();
        if len == 0 {
            bail!("{}: file is empty (expected the header `{PFAM_HEADER}`)", path.display());
        }
        // SAFETY: the map is read-only and lives as long as this `Shard`; as with any
        // memory-mapped input, the file must not be truncated while it is being read.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot memory-map", path.display()))?;
        let header_end = map.iter().position(|&b| b == b'\n').unwrap_or(map.len());
        let columns = parse_header(&map[..header_end]).map_err(|msg| anyhow!("{}:1: {msg}", path.display()))?;
        let data_start = (header_end + 1).min(map.len());
        Ok(Shard { path: path.to_path_buf(), map, columns, data_start })
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// 1-based file line of the `k`-th line (0-based, blank lines included) of a chunk.
    pub(super) fn line_number(&self, chunk: &Range<usize>, k: usize) -> usize {
        let before = self.bytes()[self.data_start..chunk.start].iter().filter(|&&b| b == b'\n');
        1 + before.count() + k + 1
    }
}

/// Find the required columns in a header line, or say which one is missing.
fn parse_header(line: &[u8]) -> std::result::Result<Columns, String> {
    let line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
    let line = trim_cr(line);
    let text = String::from_utf8_lossy(line);
    let names: Vec<&str> = text.split(',').map(str::trim).collect();
    let find = |col: &str| names.iter().position(|n| *n == col);
    let present: Vec<&str> = REQUIRED_COLUMNS.iter().copied().filter(|c| find(c).is_some()).collect();
    if present.is_empty() {
        let shown: String = text.chars().take(60).collect();
        return Err(format!("no header: expected `{PFAM_HEADER}`, found `{shown}`"));
    }
    if let Some(missing) = REQUIRED_COLUMNS.iter().find(|c| find(c).is_none()) {
        return Err(format!("header lacks column `{missing}` (header is `{text}`)"));
    }
    Ok(Columns {
        count: names.len(),
        family_id: find("family_id").unwrap_or(0),
        name: find("sequence_name").unwrap_or(0),
        accession: find("family_accession").unwrap_or(0),
        sequence: find("sequence").unwrap_or(0),
    })
}

pub(super) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A parallel work item: a byte range of one shard's data rows, ending after a newline.
pub(super) struct Chunk {
    pub(super) shard: usize,
    pub(super) range: Range<usize>,
}

/// Cut every shard's data region into ~[`CHUNK_BYTES`] pieces at line boundaries.
pub(super) fn cut_chunks(shards: &[Shard]) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (s, shard) in shards.iter().enumerate() {
        let bytes = shard.bytes();
        let mut start = shard.data_start;
        while start < bytes.len() {
            let target = (start + CHUNK_BYTES).min(bytes.len());
            let end = match bytes[target..].iter().position(|&b| b == b'\n') {
                Some(p) => target + p + 1,
                None => bytes.len(),
            };
            chunks.push(Chunk { shard: s, range: start..end });
            start = end;
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_missing_column() {
        let e = parse_header(b"family_id,sequence_name,family_accession,aligned_sequence").unwrap_err();
        assert!(e.contains("lacks column `sequence`"), "{e}");
        let e = parse_header(b"Pkinase,P1/1-9,PF1.1,MKV,MKV").unwrap_err();
        assert!(e.starts_with("no header"), "{e}");
        let c = parse_header(PFAM_HEADER.as_bytes()).unwrap();
        assert_eq!((c.count, c.family_id, c.name, c.accession, c.sequence), (5, 0, 1, 2, 4));
    }
}
