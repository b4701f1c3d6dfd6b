//! Protein structures from PDB and PDBx/mmCIF files (plain or gzip-compressed): per chain,
//! the one-letter sequence and the backbone (N, CA, C) and C-beta of every residue.
//!
//! This file is the entry point only: reading a file or a `file.pdb:A` spec, gzip and format
//! detection, and the chain selection. The work is split by reason to change:
//! * `types.rs`: the public result types and the virtual C-beta.
//! * `pdb.rs`: PDB fixed-column records (`ATOM`/`HETATM`, `MODRES`, `TER`, `MODEL`/`ENDMDL`).
//! * `cif.rs`: CIF 1.1 syntax (tokens, `loop_` headers and rows), format-independent of PDBx.
//! * `mmcif.rs`: the PDBx categories we read (`_atom_site`, `_pdbx_struct_mod_residue`).
//! * `record.rs`: the format-independent atom record both readers produce.
//! * `assembly.rs`: the residue policies (first model, altloc choice, microheterogeneity,
//!   MODRES/MSE and other `HETATM` residues, insertion codes, author chains, missing CA).
//! * `residue_names.rs`: the residue-name tables (one-letter codes, modified amino acids).
//!
//! Formats followed:
//! * PDB: "Protein Data Bank Contents Guide: Atomic Coordinate Entry Format Description,
//!   version 3.3" — fixed columns of `ATOM`/`HETATM` (atom name 13-16, altLoc 17, resName
//!   18-20, chainID 22, resSeq 23-26, iCode 27, x/y/z 31-54, occupancy 55-60), `MODRES`
//!   (resName 13-15, chainID 17, seqNum 19-22, iCode 23, stdRes 25-27), `TER`, `MODEL`/`ENDMDL`.
//! * mmCIF: the PDBx/mmCIF dictionary (`mmcif_pdbx_v50.dic`) and the CIF 1.1 syntax (data
//!   blocks, `loop_`, bare / 'single' / "double" quoted values, `;` text fields, `?` unknown,
//!   `.` inapplicable). `_atom_site` is read by its column names, never by position.
//!
//! Rules (the same for both formats; each is kept in `assembly.rs`, which says why):
//! * **First model only** (PDB `MODEL`/`ENDMDL`; mmCIF the first `pdbx_PDB_model_num` seen).
//! * **Chains and numbering are the author's**: mmCIF `auth_asym_id`, `auth_seq_id` and
//!   `pdbx_PDB_ins_code` (falling back to the `label_` items only when the author items are
//!   absent), so `file.cif:A` selects the same chain and numbers as `file.pdb:A`.
//! * **Alternate locations**: per atom, the record with the highest occupancy (ties: the
//!   first in the file, i.e. normally altloc `A`).
//! * **Microheterogeneity** (different residue names at one position under different
//!   altlocs, e.g. 1EJG A22 PRO/SER): one residue, the name whose altloc-labelled atoms reach
//!   the highest occupancy (ties: the first in the file). Atoms without an altloc are shared
//!   by all the variants.
//! * **Polymer residues**: PDB `ATOM` records; PDB `HETATM` residues listed by `MODRES`, or
//!   named in the built-in table of modified amino acids (MSE→MET, SEP→SER, …), or with
//!   N, CA, C peptide-bonded (C–N < 2 Å) to a neighbouring residue of the chain (these become
//!   `X`). `HETATM` residues after the chain's `TER` are ligands. mmCIF: rows with a numeric
//!   `label_seq_id` (polymer residues, whatever their `group_PDB`); `.` marks non-polymer
//!   entities (ligands, waters). Waters and nucleotides are never protein residues.
//! * **One-letter code**: standard residues; the parent of a modified residue (mmCIF
//!   `_pdbx_struct_mod_residue.parent_comp_id`, PDB `MODRES` stdRes, else the built-in table);
//!   `X` for anything else.
//! * **Residues without a CA atom are skipped and reported** in [`Structure::skipped`].
//! * Chain breaks (missing residues) are kept as they are: residues follow the file order.
//!
//! C-beta: [`virtual_cb`] is the standard ideal-geometry reconstruction from N, CA, C.
//! The contact dataset computes every C-beta that way, so [`CbMode::Virtual`] (the default)
//! uses it for every residue, glycine included; [`CbMode::AtomOrVirtual`] prefers the
//! experimental CB atom.
//!
//! **Why our own reader and not the `pdbtbx` crate** (issue 16; pdbtbx 0.12.0, the latest on
//! crates.io, tried on the 11 files of `../shared/data/pdb` and the 6 of `tests/fixtures/pdb`):
//! * It does not build with `default-features = false` (its `read`/`save` modules import the
//!   gzip functions unconditionally); the `compression` feature (flate2) is the minimum.
//! * `pdb1ejg.pdb` cannot be read at all, even at `StrictnessLevel::Loose`: its SEQRES check
//!   raises "Multiple residues in SEQRES validation" for A22 PRO/SER and A25 LEU/ILE (the
//!   microheterogeneity this reader exists to handle), and that level still fails.
//! * An mmCIF `_atom_site` row with `?` as `type_symbol` (3JQH with one element edited)
//!   panics ("Atom element should be provided", `read/mmcif/parser.rs:452`) instead of
//!   returning an error; `tests/fuzz_readers.rs` allows no panic. Its errors name the line
//!   but not the file when the text is read from memory (as we do after gunzip).
//! * Altlocs are rewritten: atoms without an altloc are copied into every altloc conformer and
//!   their occupancy divided by the conformer count (`reshuffle_conformers`), so shared atoms
//!   can no longer be told apart (3JQH A11 GLN N..CD: occupancy 1.00 read back as 0.333, twice;
//!   the same in the 1EJG excerpt). Our altloc and microheterogeneity rules need that flag.
//! * Lost information our rules use: mmCIF `_pdbx_struct_mod_residue` is not read (1A8O.cif:
//!   4 entries, pdbtbx 0, so MSE would lose its MODRES source), the mmCIF `label_seq_id` `.`
//!   (non-polymer) flag and PDB `TER` are not exposed, blank PDB chain IDs are renamed `A`,
//!   `B`, … (our `""`; 1UBI with the chain blanked), there are no line numbers (for
//!   [`SkippedResidue`] and errors), and with "first model only" the model count is 1 (2sdf:
//!   30, 2BEG: 10).
//! * Where it reads a file, it agrees: on the 16 other files the non-water atom records
//!   (chain, number, insertion code, residue and atom name, altloc, occupancy) are the same
//!   except for the altloc rewrite above, every coordinate is bit-identical in f32, and our
//!   policies run on its atoms give the same chains, residue labels, sequences, CA and
//!   virtual C-beta (bit-identical).
//! * Slower: our whole read (parse and assembly) against pdbtbx's parse alone, 3 runs each on a
//!   loaded 2-core machine: 2XHE 8-16 ms vs 73-140 ms, 3O21 10-16 vs 44-56, 2BEG.cif 22-28 vs
//!   82-88, 4ZHL.cif 2-8 vs 9-15.
//!
//! So the crate would need every one of our rules plus workarounds for the altloc rewrite and
//! the SEQRES failure; the reader stays ours and no dependency is added.

mod assembly;
mod cif;
mod mmcif;
mod pdb;
mod record;
mod residue_names;
mod types;

pub use residue_names::{modified_parent, standard_code};
pub use types::{
    virtual_cb, CbMode, Chain, Modification, ModificationSource, Residue, SkippedResidue, Structure, StructureFormat,
};

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use types::chain_display;

/// Read a PDB or mmCIF file (optionally gzip-compressed). With `chain`, only that chain is
/// returned, and it is an error if the file has no such protein chain.
pub fn read_structure(path: impl AsRef<Path>, chain: Option<&str>) -> Result<Structure> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read structure file {}", path.display()))?;
    let source = path.display().to_string();
    let text = decompress_if_gzip(bytes, &source)?;
    let format = detect_format(&text, path);
    parse_structure(&text, &source, format, chain)
}

/// Split a command-line spec `file.pdb:A` into the path and the chain. The suffix after the
/// last `:` is taken as a chain name when it is 1-4 letters or digits and the whole spec is
/// not itself an existing file; otherwise the spec is all path.
pub fn parse_structure_spec(spec: &str) -> (PathBuf, Option<String>) {
    if let Some((path, chain)) = spec.rsplit_once(':') {
        let chain_like = !chain.is_empty() && chain.len() <= 4 && chain.chars().all(|c| c.is_ascii_alphanumeric());
        if chain_like && !path.is_empty() && !Path::new(spec).exists() {
            return (PathBuf::from(path), Some(chain.to_string()));
        }
    }
    (PathBuf::from(spec), None)
}

/// [`read_structure`] on a `file.pdb:A` spec.
pub fn read_structure_spec(spec: &str) -> Result<Structure> {
    let (path, chain) = parse_structure_spec(spec);
    read_structure(path, chain.as_deref())
}

/// Parse structure text already in memory; `source` names it in error messages.
pub fn parse_structure(text: &[u8], source: &str, format: StructureFormat, chain: Option<&str>) -> Result<Structure> {
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        bail!("{source}: the file is empty");
    }
    let parsed = match format {
        StructureFormat::Pdb => pdb::parse_pdb(text, source)?,
        StructureFormat::Mmcif => mmcif::parse_mmcif(text, source)?,
    };
    let models = parsed.models;
    let (chains, skipped) = assembly::assemble_chains(parsed);
    let mut structure = Structure { source: source.to_string(), format, models, chains, skipped };
    if structure.chains.is_empty() {
        bail!("{source}: no protein residues with a CA atom in the first model");
    }
    if let Some(id) = chain {
        select_chain(&mut structure, id)?;
    }
    Ok(structure)
}

fn select_chain(structure: &mut Structure, id: &str) -> Result<()> {
    if structure.chain(id).is_none() {
        let present: Vec<&str> = structure.chains.iter().map(|c| chain_display(&c.id)).collect();
        bail!("{}: chain '{}' not found (protein chains in the file: {})", structure.source, id, present.join(", "));
    }
    structure.chains.retain(|c| c.id == id);
    structure.skipped.retain(|s| s.chain == id);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Loading: gzip and format detection
// ---------------------------------------------------------------------------------------

fn decompress_if_gzip(bytes: Vec<u8>, source: &str) -> Result<Vec<u8>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("{source}: cannot decompress gzip data: {e}"))?;
    Ok(out)
}

/// mmCIF when the first meaningful line is a `data_` block header (or the name ends in
/// `.cif`/`.mmcif` and the content does not look like PDB records); PDB otherwise.
fn detect_format(text: &[u8], path: &Path) -> StructureFormat {
    let first = text.split(|&b| b == b'\n').map(|l| l.trim_ascii()).find(|l| !l.is_empty() && !l.starts_with(b"#"));
    match first {
        Some(l) if l.len() >= 5 && l[..5].eq_ignore_ascii_case(b"data_") => StructureFormat::Mmcif,
        Some(l) if looks_like_pdb_record(l) => StructureFormat::Pdb,
        _ if has_cif_extension(path) => StructureFormat::Mmcif,
        _ => StructureFormat::Pdb,
    }
}

fn looks_like_pdb_record(line: &[u8]) -> bool {
    const RECORDS: [&[u8]; 8] = [b"HEADER", b"ATOM", b"HETATM", b"REMARK", b"TITLE", b"CRYST1", b"MODEL", b"COMPND"];
    RECORDS.iter().any(|r| line.starts_with(r))
}

fn has_cif_extension(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase());
    let name = name.unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    name.ends_with(".cif") || name.ends_with(".mmcif")
}
