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
//!
//! This file lists the shards and runs the two passes over them: `shard.rs` maps the
//! shards and cuts the chunks, pass 1 (read and check every row) is `scan.rs`, pass 2
//! (copy into the final arenas) is `fill.rs`. Imports go mod → fill → scan → shard.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::data::dataset::LabelledSet;
use fill::{fill_set, locate_row, merge_families, Layout};
use scan::scan_all_chunks;
use shard::{cut_chunks, Shard};

mod fill;
mod scan;
mod shard;

pub use shard::PFAM_HEADER;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_parse() {
        assert_eq!(parse_shard_name("data-00003-of-00009"), Some((3, 9)));
        assert_eq!(parse_shard_name("data-3-of-9"), Some((3, 9)));
        assert_eq!(parse_shard_name("data-00003-of-00009.csv"), None);
        assert_eq!(parse_shard_name("README.md"), None);
    }
}
