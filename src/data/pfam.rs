//! Reader for the "Pfam seed random split" layout (Google's `pfam-seed-random-split`
//! Kaggle/GCS dataset, Bileschi et al. 2022, and `../shared/data/pfam`).
//!
//! Layout: `<dir>/{train,dev,test}/data-NNNNN-of-MMMMM` (no extension), each shard a
//! UTF-8 CSV with a header row
//! `family_id,sequence_name,family_accession,aligned_sequence,sequence` and unquoted
//! fields (no field contains a comma). Columns are found by name, so their order may
//! differ; `aligned_sequence` is not needed and may be absent; extra columns are ignored.
//!
//! Speed and memory: every shard is memory-mapped and cut into ~4 MiB chunks at line
//! boundaries; all chunks of all shards are processed in parallel with rayon in two
//! passes. Pass 1 validates every row and measures it (rows, residue bytes, name bytes,
//! families); pass 2 copies residues and names straight from the mapped files into
//! arenas allocated once at their exact final size, each chunk writing its own disjoint
//! slice. The file contents are never copied into `String`s and no intermediate copy of
//! the residues is held: the peak is the final [`LabelledSet`] plus the (page-cache
//! backed) mappings.
//!
//! Checks, each reported as `path:line: what is wrong`: missing split directory, no
//! shards or a missing shard number, empty file, missing header or header lacking a
//! column, a row whose field count differs from the header's, empty `family_id`,
//! `sequence_name` or `sequence`, a non-letter in `sequence` (see
//! [`crate::data::dataset`] for why letters are accepted and everything else is not),
//! one family with two accessions, and a duplicate `sequence_name` within the split.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;

use crate::data::dataset::{all_letters, bad_residue_message, find_bad_residue, Family, LabelledSet};
use crate::data::rng::FnvBuildHasher;

/// The header of Google's Pfam split files.
pub const PFAM_HEADER: &str = "family_id,sequence_name,family_accession,aligned_sequence,sequence";

/// Columns this reader needs (found by name in the header).
const REQUIRED_COLUMNS: [&str; 4] = ["family_id", "sequence_name", "family_accession", "sequence"];

/// Target size of one parallel work item.
const CHUNK_BYTES: usize = 4 << 20;

/// Read every shard of `dir/<split>` (e.g. `split = "train"`) into one set. Rows keep
/// the file order: shard 0 first, lines in order.
pub fn read_pfam_split(dir: &Path, split: &str) -> Result<LabelledSet> {
    let split_dir = dir.join(split);
    if !split_dir.is_dir() {
        bail!(
            "{}: split directory not found (a Pfam split directory holds train/, dev/ and test/ \
             folders of data-NNNNN-of-MMMMM shards)",
            split_dir.display()
        );
    }
    let shards = list_shards(&split_dir)?;
    let set = read_pfam_shards(&shards)?;
    if set.is_empty() {
        bail!("{}: the split has no rows (every shard holds only a header)", split_dir.display());
    }
    Ok(set)
}

/// The shards `data-NNNNN-of-MMMMM` of one split directory, in shard order. Errors when
/// there are none, when shards disagree on `MMMMM`, or when a shard number is missing.
pub fn list_shards(split_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(split_dir)
        .with_context(|| format!("{}: cannot list the split directory", split_dir.display()))?;
    let mut found: Vec<(usize, usize, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", split_dir.display()))?;
        let name = entry.file_name();
        if let Some((index, total)) = name.to_str().and_then(parse_shard_name) {
            found.push((index, total, entry.path()));
        }
    }
    if found.is_empty() {
        bail!("{}: no shards named data-NNNNN-of-MMMMM in this directory", split_dir.display());
    }
    found.sort();
    if let Some(w) = found.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "{}: two files claim shard {}: {} and {}",
            split_dir.display(),
            w[0].0,
            w[0].2.display(),
            w[1].2.display()
        );
    }
    let total = found[0].1;
    if let Some((_, other, path)) = found.iter().find(|(_, t, _)| *t != total) {
        bail!(
            "{}: shard names disagree on the shard count ({} says {other}, others {total})",
            split_dir.display(),
            path.display()
        );
    }
    for expected in 0..total {
        if found.get(expected).map(|f| f.0) != Some(expected) {
            bail!(
                "{}: shard data-{expected:05}-of-{total:05} is missing ({} of {total} shards present)",
                split_dir.display(),
                found.len().min(total)
            );
        }
    }
    if found.len() != total {
        bail!("{}: more shards than data-*-of-{total:05} promises", split_dir.display());
    }
    Ok(found.into_iter().map(|(_, _, p)| p).collect())
}

/// `data-00003-of-00009` → `(3, 9)`.
fn parse_shard_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("data-")?;
    let (index, total) = rest.split_once("-of-")?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(index) || !all_digits(total) {
        return None;
    }
    Some((index.parse().ok()?, total.parse().ok()?))
}

/// Read a list of Pfam CSV files (any names) into one set, rows in file order.
pub fn read_pfam_shards(paths: &[PathBuf]) -> Result<LabelledSet> {
    // Opened in parallel; the first failing shard in order is the one reported.
    let opened: Vec<Result<Shard>> = paths.par_iter().map(|p| Shard::open(p)).collect();
    let shards = opened.into_iter().collect::<Result<Vec<_>>>()?;
    let chunks = cut_chunks(&shards);
    let scans = scan_all_chunks(&shards, &chunks)?;
    let layout = Layout::new(&scans);
    let families = merge_families(&shards, &chunks, &scans, &layout)?;
    let set = fill_set(&shards, &chunks, &scans, &layout, families)?;
    if let Some((first, dup)) = set.first_duplicate_name() {
        let (path, line) = locate_row(&shards, &chunks, &layout, dup);
        let (path0, line0) = locate_row(&shards, &chunks, &layout, first);
        bail!(
            "{}:{line}: duplicate sequence_name `{}` (first at {}:{line0})",
            path.display(),
            set.name(dup),
            path0.display()
        );
    }
    Ok(set)
}

/// Positions of the needed columns in one shard's header.
#[derive(Debug, Clone, Copy)]
struct Columns {
    count: usize,
    family_id: usize,
    name: usize,
    accession: usize,
    sequence: usize,
}

/// One memory-mapped shard and where its data rows start.
struct Shard {
    path: PathBuf,
    map: Mmap,
    columns: Columns,
    data_start: usize,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
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

    fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// 1-based file line of the `k`-th line (0-based, blank lines included) of a chunk.
    fn line_number(&self, chunk: &Range<usize>, k: usize) -> usize {
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

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A parallel work item: a byte range of one shard's data rows, ending after a newline.
struct Chunk {
    shard: usize,
    range: Range<usize>,
}

/// Cut every shard's data region into ~[`CHUNK_BYTES`] pieces at line boundaries.
fn cut_chunks(shards: &[Shard]) -> Vec<Chunk> {
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

/// Pass-1 result of one chunk: validated and measured, nothing copied.
struct ChunkScan<'a> {
    rows: usize,
    residue_bytes: usize,
    name_bytes: usize,
    /// Chunk-local family index per row.
    family_local: Vec<u32>,
    /// Where each row's name and sequence lie in the chunk, so pass 2 need not re-parse.
    spans: Vec<RowSpan>,
    /// Chunk-local family table: (id, accession, first row in chunk).
    families: Vec<(&'a [u8], &'a [u8], usize)>,
}

/// Byte ranges (relative to the chunk start) of one row's name and sequence.
#[derive(Debug, Clone, Copy)]
struct RowSpan {
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

    fn name<'a>(&self, chunk: &'a [u8]) -> &'a [u8] {
        &chunk[self.name_start as usize..(self.name_start + self.name_len) as usize]
    }

    fn sequence<'a>(&self, chunk: &'a [u8]) -> &'a [u8] {
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
fn data_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
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

fn accession_conflict(id: &[u8], here: &[u8], earlier: &[u8]) -> String {
    format!(
        "family `{}` has family_accession `{}` here but `{}` in an earlier row",
        String::from_utf8_lossy(id),
        String::from_utf8_lossy(here),
        String::from_utf8_lossy(earlier)
    )
}

/// Pass 1 over all chunks in parallel; the first error in file order wins.
fn scan_all_chunks<'a>(shards: &'a [Shard], chunks: &[Chunk]) -> Result<Vec<ChunkScan<'a>>> {
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

/// Where each chunk's rows, residues and names start in the final arenas.
struct Layout {
    row_base: Vec<usize>,
    residue_base: Vec<usize>,
    name_base: Vec<usize>,
    rows: usize,
    residues: usize,
    names: usize,
}

impl Layout {
    fn new(scans: &[ChunkScan]) -> Layout {
        let mut layout = Layout {
            row_base: Vec::with_capacity(scans.len()),
            residue_base: Vec::with_capacity(scans.len()),
            name_base: Vec::with_capacity(scans.len()),
            rows: 0,
            residues: 0,
            names: 0,
        };
        for s in scans {
            layout.row_base.push(layout.rows);
            layout.residue_base.push(layout.residues);
            layout.name_base.push(layout.names);
            layout.rows += s.rows;
            layout.residues += s.residue_bytes;
            layout.names += s.name_bytes;
        }
        layout
    }
}

/// File and 1-based line of a global row (used only to report errors).
fn locate_row(shards: &[Shard], chunks: &[Chunk], layout: &Layout, row: usize) -> (PathBuf, usize) {
    // Last chunk starting at or before `row`; chunks without rows share the next base.
    let c = layout.row_base.partition_point(|&base| base <= row).saturating_sub(1);
    let chunk = &chunks[c];
    let shard = &shards[chunk.shard];
    let local = row - layout.row_base[c];
    let k = data_lines(&shard.bytes()[chunk.range.clone()]).nth(local).map(|(k, _)| k).unwrap_or(0);
    (shard.path.clone(), shard.line_number(&chunk.range, k))
}

/// Global family table (first appearance in file order) and each chunk's local→global map.
struct MergedFamilies {
    families: Vec<Family>,
    local_to_global: Vec<Vec<u32>>,
}

fn merge_families(shards: &[Shard], chunks: &[Chunk], scans: &[ChunkScan], layout: &Layout) -> Result<MergedFamilies> {
    let mut index: HashMap<&[u8], u32, FnvBuildHasher> = HashMap::default();
    let mut accessions: Vec<&[u8]> = Vec::new();
    let mut families = Vec::new();
    let mut local_to_global = Vec::with_capacity(scans.len());
    for (c, scan) in scans.iter().enumerate() {
        let mut map = Vec::with_capacity(scan.families.len());
        for &(id, accession, first_row) in &scan.families {
            let next = families.len() as u32;
            let g = *index.entry(id).or_insert(next);
            if g == next {
                families.push(Family {
                    id: String::from_utf8_lossy(id).into_owned(),
                    accession: (!accession.is_empty()).then(|| String::from_utf8_lossy(accession).into_owned()),
                });
                accessions.push(accession);
            } else if accessions[g as usize] != accession {
                let (path, line) = locate_row(shards, chunks, layout, layout.row_base[c] + first_row);
                bail!("{}:{line}: {}", path.display(), accession_conflict(id, accession, accessions[g as usize]));
            }
            map.push(g);
        }
        local_to_global.push(map);
    }
    Ok(MergedFamilies { families, local_to_global })
}

/// One chunk's disjoint slices of the final columns.
struct ChunkTarget<'t> {
    residues: &'t mut [u8],
    residue_ends: &'t mut [usize],
    names: &'t mut [u8],
    name_ends: &'t mut [usize],
    family: &'t mut [u32],
}

/// Pass 2: allocate the columns once and let every chunk fill its own slices in parallel.
fn fill_set(
    shards: &[Shard],
    chunks: &[Chunk],
    scans: &[ChunkScan],
    layout: &Layout,
    merged: MergedFamilies,
) -> Result<LabelledSet> {
    let mut residues = vec![0u8; layout.residues];
    let mut residue_offsets = vec![0usize; layout.rows + 1];
    let mut names = vec![0u8; layout.names];
    let mut name_offsets = vec![0usize; layout.rows + 1];
    let mut family = vec![0u32; layout.rows];
    let targets =
        split_targets(scans, &mut residues, &mut residue_offsets[1..], &mut names, &mut name_offsets[1..], &mut family);
    targets.into_par_iter().enumerate().for_each(|(c, target)| {
        let shard = &shards[chunks[c].shard];
        let bytes = &shard.bytes()[chunks[c].range.clone()];
        fill_chunk(bytes, &scans[c], &merged.local_to_global[c], layout, c, target);
    });
    LabelledSet::from_parts(residues, residue_offsets, names, name_offsets, family, merged.families)
}

fn split_targets<'t>(
    scans: &[ChunkScan],
    mut residues: &'t mut [u8],
    mut residue_ends: &'t mut [usize],
    mut names: &'t mut [u8],
    mut name_ends: &'t mut [usize],
    mut family: &'t mut [u32],
) -> Vec<ChunkTarget<'t>> {
    let mut targets = Vec::with_capacity(scans.len());
    for s in scans {
        let (r, rest) = std::mem::take(&mut residues).split_at_mut(s.residue_bytes);
        residues = rest;
        let (re, rest) = std::mem::take(&mut residue_ends).split_at_mut(s.rows);
        residue_ends = rest;
        let (n, rest) = std::mem::take(&mut names).split_at_mut(s.name_bytes);
        names = rest;
        let (ne, rest) = std::mem::take(&mut name_ends).split_at_mut(s.rows);
        name_ends = rest;
        let (f, rest) = std::mem::take(&mut family).split_at_mut(s.rows);
        family = rest;
        targets.push(ChunkTarget { residues: r, residue_ends: re, names: n, name_ends: ne, family: f });
    }
    targets
}

/// Copy one validated chunk into its slices (residues upper-cased).
fn fill_chunk(bytes: &[u8], scan: &ChunkScan, to_global: &[u32], layout: &Layout, c: usize, target: ChunkTarget) {
    let (mut r_at, mut n_at) = (0usize, 0usize);
    for (row, span) in scan.spans.iter().enumerate() {
        let sequence = span.sequence(bytes);
        let residues = &mut target.residues[r_at..r_at + sequence.len()];
        residues.copy_from_slice(sequence);
        residues.make_ascii_uppercase();
        r_at += sequence.len();
        target.residue_ends[row] = layout.residue_base[c] + r_at;
        let name = span.name(bytes);
        target.names[n_at..n_at + name.len()].copy_from_slice(name);
        n_at += name.len();
        target.name_ends[row] = layout.name_base[c] + n_at;
        target.family[row] = to_global[scan.family_local[row] as usize];
    }
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

    #[test]
    fn shard_names_parse() {
        assert_eq!(parse_shard_name("data-00003-of-00009"), Some((3, 9)));
        assert_eq!(parse_shard_name("data-3-of-9"), Some((3, 9)));
        assert_eq!(parse_shard_name("data-00003-of-00009.csv"), None);
        assert_eq!(parse_shard_name("README.md"), None);
    }

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
