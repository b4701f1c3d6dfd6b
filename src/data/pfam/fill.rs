//! Pass 2 of the Pfam reader: the chunks' families are merged into one table, the
//! columns of the set are allocated once at their final size, and every chunk copies its
//! rows into its own disjoint slices in parallel.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::scan::{accession_conflict, data_lines, ChunkScan};
use super::shard::{Chunk, Shard};
use crate::data::dataset::{Family, LabelledSet};
use crate::data::rng::FnvBuildHasher;

/// Where each chunk's rows, residues and names start in the final arenas.
pub(super) struct Layout {
    row_base: Vec<usize>,
    residue_base: Vec<usize>,
    name_base: Vec<usize>,
    rows: usize,
    residues: usize,
    names: usize,
}

impl Layout {
    pub(super) fn new(scans: &[ChunkScan]) -> Layout {
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
pub(super) fn locate_row(shards: &[Shard], chunks: &[Chunk], layout: &Layout, row: usize) -> (PathBuf, usize) {
    // Last chunk starting at or before `row`; chunks without rows share the next base.
    let c = layout.row_base.partition_point(|&base| base <= row).saturating_sub(1);
    let chunk = &chunks[c];
    let shard = &shards[chunk.shard];
    let local = row - layout.row_base[c];
    let k = data_lines(&shard.bytes()[chunk.range.clone()]).nth(local).map(|(k, _)| k).unwrap_or(0);
    (shard.path.clone(), shard.line_number(&chunk.range, k))
}

/// Global family table (first appearance in file order) and each chunk's local→global map.
pub(super) struct MergedFamilies {
    families: Vec<Family>,
    local_to_global: Vec<Vec<u32>>,
}

pub(super) fn merge_families(
    shards: &[Shard],
    chunks: &[Chunk],
    scans: &[ChunkScan],
    layout: &Layout,
) -> Result<MergedFamilies> {
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
pub(super) fn fill_set(
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
