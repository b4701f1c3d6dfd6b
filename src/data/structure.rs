//! Protein structures from PDB and PDBx/mmCIF files (plain or gzip-compressed): per chain,
//! the one-letter sequence and the backbone (N, CA, C) and C-beta of every residue.
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
//! Rules (the same for both formats):
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
//!   named in the built-in table of modified amino acids below (MSE→MET, SEP→SER, …), or with
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

use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

/// File format of a structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructureFormat {
    Pdb,
    Mmcif,
}

/// Where the C-beta of a residue comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CbMode {
    /// Always the virtual C-beta from N, CA, C (as the contact dataset does); the CB atom only
    /// when N or C is missing.
    #[default]
    Virtual,
    /// The CB atom when present, else the virtual C-beta (glycine, truncated side chains).
    AtomOrVirtual,
}

/// Where the parent of a modified residue was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModificationSource {
    /// PDB `MODRES` or mmCIF `_pdbx_struct_mod_residue`.
    ModRes,
    /// The built-in table of common modified amino acids.
    BuiltinTable,
}

/// A modified amino acid mapped to its standard parent (e.g. MSE → MET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modification {
    pub parent: String,
    pub source: ModificationSource,
}

/// One residue of a chain. `ca` is always present: residues without CA are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Residue {
    /// Author residue number (PDB resSeq, mmCIF `auth_seq_id`).
    pub number: i32,
    /// Insertion code (PDB iCode, mmCIF `pdbx_PDB_ins_code`).
    pub ins_code: Option<char>,
    /// Residue name as written in the file (e.g. `MSE`).
    pub name: String,
    /// One-letter code in the ESM alphabet (`X` when unknown).
    pub one_letter: char,
    /// The residue's atoms were `HETATM` records (`group_PDB` in mmCIF).
    pub hetatm: bool,
    /// Parent of a modified residue, when this is one.
    pub modification: Option<Modification>,
    pub n: Option<[f32; 3]>,
    pub ca: [f32; 3],
    pub c: Option<[f32; 3]>,
    /// The experimental CB atom, when present.
    pub cb: Option<[f32; 3]>,
}

/// A polymer chain of amino acids.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// Author chain name (PDB chainID, mmCIF `auth_asym_id`); blank is `""`.
    pub id: String,
    pub residues: Vec<Residue>,
}

/// A polymer residue left out because it has no CA atom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedResidue {
    pub chain: String,
    pub number: i32,
    pub ins_code: Option<char>,
    pub name: String,
    /// 1-based line of its first atom record.
    pub line: usize,
    pub reason: String,
}

/// The protein chains of the first model of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Structure {
    /// The path as given.
    pub source: String,
    pub format: StructureFormat,
    /// Models in the file (only the first is read).
    pub models: usize,
    pub chains: Vec<Chain>,
    /// Polymer residues that were left out (no CA), for the caller to report.
    pub skipped: Vec<SkippedResidue>,
}

impl Residue {
    /// Author residue id as written in files: number followed by the insertion code.
    pub fn label(&self) -> String {
        residue_label(self.number, self.ins_code)
    }

    /// Virtual C-beta from N, CA, C, when N and C are present.
    pub fn virtual_cb(&self) -> Option<[f32; 3]> {
        Some(virtual_cb(self.n?, self.ca, self.c?))
    }

    /// The C-beta used for contacts under `mode` (falls back to the other source when the
    /// preferred one is missing; `None` when neither exists).
    pub fn cb_position(&self, mode: CbMode) -> Option<[f32; 3]> {
        match mode {
            CbMode::Virtual => self.virtual_cb().or(self.cb),
            CbMode::AtomOrVirtual => self.cb.or_else(|| self.virtual_cb()),
        }
    }
}

impl Chain {
    /// One-letter sequence of the chain's residues, in file order.
    pub fn sequence(&self) -> String {
        self.residues.iter().map(|r| r.one_letter).collect()
    }

    pub fn len(&self) -> usize {
        self.residues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.residues.is_empty()
    }

    /// C-beta of every residue under `mode`; NaN coordinates where none can be placed, so
    /// contact labels treat those pairs as unknown.
    pub fn cb_coords(&self, mode: CbMode) -> Vec<[f32; 3]> {
        let nan = [f32::NAN; 3];
        self.residues.iter().map(|r| r.cb_position(mode).unwrap_or(nan)).collect()
    }

    /// CA of every residue.
    pub fn ca_coords(&self) -> Vec<[f32; 3]> {
        self.residues.iter().map(|r| r.ca).collect()
    }

    /// Index of the residue with this author number and insertion code.
    pub fn position(&self, number: i32, ins_code: Option<char>) -> Option<usize> {
        self.residues.iter().position(|r| r.number == number && r.ins_code == ins_code)
    }
}

impl Structure {
    pub fn chain(&self, id: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.id == id)
    }

    /// Chain names in file order.
    pub fn chain_ids(&self) -> Vec<&str> {
        self.chains.iter().map(|c| c.id.as_str()).collect()
    }
}

impl fmt::Display for SkippedResidue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chain {} residue {} {} (line {}): {}",
            chain_display(&self.chain),
            residue_label(self.number, self.ins_code),
            self.name,
            self.line,
            self.reason
        )
    }
}

fn residue_label(number: i32, ins_code: Option<char>) -> String {
    match ins_code {
        Some(c) => format!("{number}{c}"),
        None => number.to_string(),
    }
}

fn chain_display(id: &str) -> &str {
    if id.is_empty() {
        "(blank)"
    } else {
        id
    }
}

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

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
        StructureFormat::Pdb => parse_pdb(text, source)?,
        StructureFormat::Mmcif => parse_mmcif(text, source)?,
    };
    let models = parsed.models;
    let (chains, skipped) = assemble_chains(parsed);
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

// ---------------------------------------------------------------------------------------
// The format-independent atom record
// ---------------------------------------------------------------------------------------

/// (chain, author number, insertion code)
type ResidueKey = (String, i32, Option<char>);

#[derive(Debug, Clone)]
struct AtomRecord {
    line: usize,
    hetatm: bool,
    /// mmCIF: `label_seq_id` is a number (`Some(true)`) or `.` (`Some(false)`); PDB: `None`.
    polymer: Option<bool>,
    /// PDB: the record comes after a `TER` for its chain.
    after_ter: bool,
    chain: String,
    number: i32,
    ins_code: Option<char>,
    res_name: String,
    atom_name: String,
    has_alt_loc: bool,
    occupancy: f32,
    xyz: [f32; 3],
}

impl AtomRecord {
    fn key(&self) -> ResidueKey {
        (self.chain.clone(), self.number, self.ins_code)
    }
}

/// What a format parser hands to the residue assembly.
struct ParsedAtoms {
    atoms: Vec<AtomRecord>,
    /// Parent residue names from `MODRES` / `_pdbx_struct_mod_residue`.
    modres: HashMap<ResidueKey, String>,
    models: usize,
}

// ---------------------------------------------------------------------------------------
// PDB format
// ---------------------------------------------------------------------------------------

fn parse_pdb(text: &[u8], source: &str) -> Result<ParsedAtoms> {
    let mut atoms: Vec<AtomRecord> = Vec::new();
    let mut modres = HashMap::new();
    let mut terminated: HashSet<String> = HashSet::new();
    let mut models = 0usize;
    let mut first_model_done = false;
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let record = record_name(line);
        match record {
            b"MODEL" => {
                models += 1;
                // a second MODEL also ends the first one when its ENDMDL is missing
                first_model_done |= models > 1;
            }
            b"ENDMDL" => first_model_done = true,
            b"END" => break,
            _ if first_model_done => {}
            b"ATOM" | b"HETATM" => {
                let mut atom = parse_pdb_atom(line, line_no, source)?;
                atom.after_ter = terminated.contains(&atom.chain);
                atoms.push(atom);
            }
            b"TER" => {
                let chain = match line.get(21) {
                    Some(&c) if c != b' ' => (c as char).to_string(),
                    _ => atoms.last().map(|a| a.chain.clone()).unwrap_or_default(),
                };
                terminated.insert(chain);
            }
            b"MODRES" => {
                let (key, parent) = parse_pdb_modres(line, line_no, source)?;
                modres.insert(key, parent);
            }
            _ => {}
        }
    }
    Ok(ParsedAtoms { atoms, modres, models: models.max(1) })
}

/// Record name: columns 1-6 without trailing blanks.
fn record_name(line: &[u8]) -> &[u8] {
    line[..line.len().min(6)].trim_ascii_end()
}

/// Text of 1-based columns `first..=last` (clipped to the line), as ASCII.
fn columns<'a>(line: &'a [u8], first: usize, last: usize, line_no: usize, source: &str) -> Result<&'a str> {
    let start = (first - 1).min(line.len());
    let end = last.min(line.len());
    std::str::from_utf8(&line[start..end])
        .map_err(|_| anyhow!("{source}:{line_no}: columns {first}-{last} are not ASCII text"))
}

fn parse_pdb_atom(line: &[u8], line_no: usize, source: &str) -> Result<AtomRecord> {
    let record = String::from_utf8_lossy(record_name(line)).into_owned();
    if line.len() < 54 {
        bail!(
            "{source}:{line_no}: {record} record is truncated: {} columns, but the x, y, z \
             coordinates need columns 31-54",
            line.len()
        );
    }
    let col = |first, last| columns(line, first, last, line_no, source);
    let number_text = col(23, 26)?.trim();
    let number: i32 = number_text.parse().map_err(|_| {
        anyhow!("{source}:{line_no}: residue number '{number_text}' in columns 23-26 is not an integer")
    })?;
    let coordinate = |axis: &str, first: usize| -> Result<f32> {
        let text = col(first, first + 7)?.trim();
        parse_finite(text).ok_or_else(|| {
            anyhow!("{source}:{line_no}: {axis} coordinate '{text}' in columns {first}-{} is not a number", first + 7)
        })
    };
    let xyz = [coordinate("x", 31)?, coordinate("y", 39)?, coordinate("z", 47)?];
    let occupancy_text = col(55, 60)?.trim();
    let occupancy = if occupancy_text.is_empty() {
        1.0
    } else {
        parse_finite(occupancy_text).ok_or_else(|| {
            anyhow!("{source}:{line_no}: occupancy '{occupancy_text}' in columns 55-60 is not a number")
        })?
    };
    Ok(AtomRecord {
        line: line_no,
        hetatm: record == "HETATM",
        polymer: None,
        after_ter: false,
        chain: col(22, 22)?.trim().to_string(),
        number,
        ins_code: optional_char(col(27, 27)?),
        res_name: col(18, 20)?.trim().to_ascii_uppercase(),
        atom_name: col(13, 16)?.trim().to_string(),
        has_alt_loc: !col(17, 17)?.trim().is_empty(),
        occupancy,
        xyz,
    })
}

/// `MODRES`: resName 13-15, chainID 17, seqNum 19-22, iCode 23, stdRes 25-27.
fn parse_pdb_modres(line: &[u8], line_no: usize, source: &str) -> Result<(ResidueKey, String)> {
    if line.len() < 27 {
        bail!(
            "{source}:{line_no}: MODRES record is truncated: {} columns, but the standard \
             residue name needs columns 25-27",
            line.len()
        );
    }
    let col = |first, last| columns(line, first, last, line_no, source);
    let number_text = col(19, 22)?.trim();
    let number: i32 = number_text.parse().map_err(|_| {
        anyhow!("{source}:{line_no}: MODRES residue number '{number_text}' in columns 19-22 is not an integer")
    })?;
    let chain = col(17, 17)?.trim().to_string();
    let parent = col(25, 27)?.trim().to_ascii_uppercase();
    Ok(((chain, number, optional_char(col(23, 23)?)), parent))
}

fn optional_char(text: &str) -> Option<char> {
    text.trim().chars().next()
}

fn parse_finite(text: &str) -> Option<f32> {
    text.parse::<f32>().ok().filter(|v| v.is_finite())
}

// ---------------------------------------------------------------------------------------
// mmCIF: tokenizer
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Value,
    Tag,
    Loop,
    DataBlock,
    /// `save_`, `global_`, `stop_`: not used by mmCIF data files, skipped.
    Reserved,
}

#[derive(Debug, Clone)]
struct Token<'a> {
    kind: TokenKind,
    text: Cow<'a, str>,
    line: usize,
    /// Quoted or text-field values are never `?`/`.` placeholders.
    quoted: bool,
}

impl Token<'_> {
    /// `None` for the CIF placeholders `?` (unknown) and `.` (inapplicable).
    fn value(&self) -> Option<&str> {
        let text: &str = &self.text;
        if !self.quoted && (text == "?" || text == ".") {
            None
        } else {
            Some(text)
        }
    }
}

struct CifTokenizer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    at_line_start: bool,
    source: &'a str,
}

impl<'a> CifTokenizer<'a> {
    fn new(text: &'a str, source: &'a str) -> Self {
        CifTokenizer { text, bytes: text.as_bytes(), pos: 0, line: 1, at_line_start: true, source }
    }

    fn next_token(&mut self) -> Result<Option<Token<'a>>> {
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                    self.at_line_start = true;
                }
                // every byte `bare` stops at is whitespace here too (form feed included),
                // or the tokenizer would stand still
                b if b.is_ascii_whitespace() => {
                    self.pos += 1;
                    self.at_line_start = false;
                }
                b'#' => self.skip_to_line_end(),
                b';' if self.at_line_start => return self.text_field().map(Some),
                b'\'' | b'"' => return self.quoted(b).map(Some),
                _ => return Ok(Some(self.bare())),
            }
        }
        Ok(None)
    }

    fn skip_to_line_end(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    /// `;` at the start of a line opens a text field that runs to the next line starting
    /// with `;`.
    fn text_field(&mut self) -> Result<Token<'a>> {
        let start_line = self.line;
        let body_start = self.pos + 1;
        let Some(rel_end) = self.text[body_start..].find("\n;") else {
            bail!("{}:{start_line}: text field opened by ';' is never closed by a line starting with ';'", self.source);
        };
        let body = &self.text[body_start..body_start + rel_end];
        self.line += body.matches('\n').count() + 1;
        self.pos = body_start + rel_end + 2;
        self.at_line_start = false;
        Ok(Token {
            kind: TokenKind::Value,
            text: Cow::Borrowed(body.trim_end_matches('\r')),
            line: start_line,
            quoted: true,
        })
    }

    /// A quoted value ends at the same quote followed by whitespace or the end of the line.
    fn quoted(&mut self, quote: u8) -> Result<Token<'a>> {
        let start = self.pos + 1;
        let mut end = start;
        loop {
            match self.bytes.get(end) {
                None | Some(b'\n') => bail!(
                    "{}:{}: quoted value {} is not closed on its line",
                    self.source,
                    self.line,
                    &self.text[self.pos..end].trim_end_matches('\r')
                ),
                Some(&c) if c == quote => {
                    let next = self.bytes.get(end + 1);
                    if next.is_none_or(|n| n.is_ascii_whitespace()) {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        self.pos = end + 1;
        self.at_line_start = false;
        let text = Cow::Borrowed(&self.text[start..end]);
        Ok(Token { kind: TokenKind::Value, text, line: self.line, quoted: true })
    }

    fn bare(&mut self) -> Token<'a> {
        let start = self.pos;
        while self.pos < self.bytes.len() && !self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        self.at_line_start = false;
        let text = &self.text[start..self.pos];
        let lower = text.to_ascii_lowercase();
        let kind = if text.starts_with('_') {
            TokenKind::Tag
        } else if lower == "loop_" {
            TokenKind::Loop
        } else if lower.starts_with("data_") {
            TokenKind::DataBlock
        } else if lower.starts_with("save_") || lower == "global_" || lower == "stop_" {
            TokenKind::Reserved
        } else {
            TokenKind::Value
        };
        Token { kind, text: Cow::Borrowed(text), line: self.line, quoted: false }
    }
}

// ---------------------------------------------------------------------------------------
// mmCIF: categories of interest
// ---------------------------------------------------------------------------------------

/// The `_atom_site` items we read, as column indices (some optional).
struct AtomSiteColumns {
    group: Option<usize>,
    atom_name: usize,
    alt_id: Option<usize>,
    res_name: usize,
    chain: usize,
    label_seq: Option<usize>,
    number: usize,
    ins_code: Option<usize>,
    xyz: [usize; 3],
    occupancy: Option<usize>,
    model: Option<usize>,
}

impl AtomSiteColumns {
    /// Column indices by item name (`items` lower case, without the `_atom_site.` prefix).
    fn find(items: &[String], line: usize, source: &str) -> Result<Self> {
        let index = |name: &str| items.iter().position(|i| i.eq_ignore_ascii_case(name));
        let required = |names: &[&str]| -> Result<usize> {
            names
                .iter()
                .find_map(|n| index(n))
                .ok_or_else(|| anyhow!("{source}:{line}: the _atom_site loop has no _atom_site.{} column", names[0]))
        };
        Ok(AtomSiteColumns {
            group: index("group_PDB"),
            atom_name: required(&["label_atom_id", "auth_atom_id"])?,
            alt_id: index("label_alt_id").or_else(|| index("auth_alt_id")),
            res_name: required(&["label_comp_id", "auth_comp_id"])?,
            chain: required(&["auth_asym_id", "label_asym_id"])?,
            label_seq: index("label_seq_id"),
            number: required(&["auth_seq_id", "label_seq_id"])?,
            ins_code: index("pdbx_PDB_ins_code"),
            xyz: [required(&["Cartn_x"])?, required(&["Cartn_y"])?, required(&["Cartn_z"])?],
            occupancy: index("occupancy"),
            model: index("pdbx_PDB_model_num"),
        })
    }
}

/// Collects `_atom_site` rows of the first model as [`AtomRecord`]s.
struct AtomSiteReader<'s> {
    source: &'s str,
    first_model: Option<i64>,
    models: HashSet<i64>,
    atoms: Vec<AtomRecord>,
}

impl<'s> AtomSiteReader<'s> {
    fn row(&mut self, cols: &AtomSiteColumns, row: &[Token]) -> Result<()> {
        if let Some(model) = self.model_of(cols, row)? {
            self.models.insert(model);
            if *self.first_model.get_or_insert(model) != model {
                return Ok(());
            }
        }
        let polymer = cols.label_seq.map(|i| row[i].value().is_some());
        if polymer == Some(false) {
            return Ok(()); // ligand or water: not part of a polymer chain
        }
        let text = |i: usize| row[i].value().unwrap_or("");
        let chain = text(cols.chain).to_string();
        let number = self.residue_number(&row[cols.number])?;
        let mut xyz = [0f32; 3];
        for ((axis, &i), item) in xyz.iter_mut().zip(&cols.xyz).zip(["Cartn_x", "Cartn_y", "Cartn_z"]) {
            *axis = self.number(&row[i], item)?;
        }
        let occupancy = match cols.occupancy.and_then(|i| row[i].value().map(|_| i)) {
            Some(i) => self.number(&row[i], "occupancy")?,
            None => 1.0,
        };
        self.atoms.push(AtomRecord {
            line: row[0].line,
            hetatm: cols.group.is_some_and(|i| text(i).eq_ignore_ascii_case("HETATM")),
            polymer,
            after_ter: false,
            chain,
            number,
            ins_code: cols.ins_code.and_then(|i| row[i].value()).and_then(optional_char),
            res_name: text(cols.res_name).to_ascii_uppercase(),
            atom_name: text(cols.atom_name).to_string(),
            has_alt_loc: cols.alt_id.is_some_and(|i| row[i].value().is_some()),
            occupancy,
            xyz,
        });
        Ok(())
    }

    fn model_of(&self, cols: &AtomSiteColumns, row: &[Token]) -> Result<Option<i64>> {
        match cols.model.map(|i| &row[i]) {
            Some(token) if token.value().is_some() => self.integer(token, "pdbx_PDB_model_num").map(Some),
            _ => Ok(None),
        }
    }

    fn integer(&self, token: &Token, item: &str) -> Result<i64> {
        let text = token.value().unwrap_or(&token.text);
        text.parse::<i64>()
            .map_err(|_| anyhow!("{}:{}: _atom_site.{item} value '{text}' is not an integer", self.source, token.line))
    }

    fn residue_number(&self, token: &Token) -> Result<i32> {
        let number = self.integer(token, "auth_seq_id")?;
        i32::try_from(number).map_err(|_| {
            anyhow!("{}:{}: _atom_site.auth_seq_id value {number} is out of range", self.source, token.line)
        })
    }

    fn number(&self, token: &Token, item: &str) -> Result<f32> {
        let text = token.value().unwrap_or(&token.text);
        parse_finite(text)
            .ok_or_else(|| anyhow!("{}:{}: _atom_site.{item} value '{text}' is not a number", self.source, token.line))
    }
}

/// Rows of `_pdbx_struct_mod_residue` → parent residue names by author residue.
fn mod_residue_rows(items: &[String], values: &[Token], source: &str) -> Result<HashMap<ResidueKey, String>> {
    let mut map = HashMap::new();
    let index = |name: &str| items.iter().position(|i| i == name);
    let (Some(chain), Some(number), Some(parent)) =
        (index("auth_asym_id"), index("auth_seq_id"), index("parent_comp_id"))
    else {
        return Ok(map); // without these items the category cannot be used
    };
    let ins_code = index("pdb_ins_code");
    for row in values.chunks_exact(items.len()) {
        let (Some(c), Some(n), Some(p)) = (row[chain].value(), row[number].value(), row[parent].value()) else {
            continue;
        };
        let n: i32 = n.parse().map_err(|_| {
            anyhow!("{source}:{}: _pdbx_struct_mod_residue.auth_seq_id value '{n}' is not an integer", row[number].line)
        })?;
        let icode = ins_code.and_then(|i| row[i].value()).and_then(optional_char);
        map.insert((c.to_string(), n, icode), p.to_ascii_uppercase());
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------------
// mmCIF: parser
// ---------------------------------------------------------------------------------------

fn parse_mmcif(bytes: &[u8], source: &str) -> Result<ParsedAtoms> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow!("{source}:{line}: mmCIF text is not valid UTF-8")
    })?;
    let mut tokens = CifTokenizer::new(text, source);
    let mut reader = AtomSiteReader { source, first_model: None, models: HashSet::new(), atoms: Vec::new() };
    let mut modres = HashMap::new();
    // Single-valued items (`_tag value`) of the categories we read, for files that write a
    // one-row category without `loop_`.
    let mut pairs: HashMap<String, Vec<(String, Token)>> = HashMap::new();
    let mut saw_atom_site = false;
    let mut blocks = 0;
    let mut pending = tokens.next_token()?;
    while let Some(token) = pending.take() {
        match token.kind {
            TokenKind::DataBlock => {
                blocks += 1;
                if blocks > 1 {
                    break; // only the first data block
                }
                pending = tokens.next_token()?;
            }
            TokenKind::Loop => {
                let (category, items, next) = read_loop_header(&mut tokens, &token, source)?;
                pending = match category.as_str() {
                    "_atom_site" => {
                        saw_atom_site = true;
                        let cols = AtomSiteColumns::find(&items, token.line, source)?;
                        stream_loop_rows(&mut tokens, next, items.len(), token.line, source, |row| {
                            reader.row(&cols, row)
                        })?
                    }
                    "_pdbx_struct_mod_residue" => {
                        let mut values = Vec::new();
                        let next = stream_loop_rows(&mut tokens, next, items.len(), token.line, source, |row| {
                            values.extend_from_slice(row);
                            Ok(())
                        })?;
                        modres.extend(mod_residue_rows(&items, &values, source)?);
                        next
                    }
                    _ => skip_loop_values(&mut tokens, next, items.len(), token.line, source)?,
                };
            }
            TokenKind::Tag => {
                let value = match tokens.next_token()? {
                    Some(v) if v.kind == TokenKind::Value => v,
                    _ => bail!("{source}:{}: data item {} has no value", token.line, token.text),
                };
                let (category, item) = split_tag(&token.text);
                if category == "_atom_site" || category == "_pdbx_struct_mod_residue" {
                    pairs.entry(category).or_default().push((item, value));
                }
                pending = tokens.next_token()?;
            }
            TokenKind::Value => {
                bail!("{source}:{}: value '{}' is not inside a loop_ and follows no data item", token.line, token.text)
            }
            TokenKind::Reserved => pending = tokens.next_token()?,
        }
    }
    if let Some(items) = pairs.remove("_atom_site") {
        saw_atom_site = true;
        let (names, row): (Vec<String>, Vec<Token>) = items.into_iter().unzip();
        let cols = AtomSiteColumns::find(&names, row[0].line, source)?;
        reader.row(&cols, &row)?;
    }
    if let Some(items) = pairs.remove("_pdbx_struct_mod_residue") {
        let (names, row): (Vec<String>, Vec<Token>) = items.into_iter().unzip();
        modres.extend(mod_residue_rows(&names, &row, source)?);
    }
    if !saw_atom_site {
        bail!("{source}: no _atom_site category (no atomic coordinates) in the mmCIF file");
    }
    let models = reader.models.len().max(1);
    Ok(ParsedAtoms { atoms: reader.atoms, modres, models })
}

/// `_category.item` → (`_category`, `item`), lower case (CIF names are case-insensitive).
fn split_tag(tag: &str) -> (String, String) {
    let lower = tag.to_ascii_lowercase();
    match lower.split_once('.') {
        Some((c, i)) => (c.to_string(), i.to_string()),
        None => (lower, String::new()),
    }
}

/// The item names after `loop_`, and the first token after them.
fn read_loop_header<'a>(
    tokens: &mut CifTokenizer<'a>,
    loop_token: &Token,
    source: &str,
) -> Result<(String, Vec<String>, Option<Token<'a>>)> {
    let mut category = String::new();
    let mut items = Vec::new();
    loop {
        let next = tokens.next_token()?;
        match next {
            Some(t) if t.kind == TokenKind::Tag => {
                let (c, item) = split_tag(&t.text);
                if items.is_empty() {
                    category = c;
                } else if c != category {
                    bail!("{source}:{}: loop_ mixes categories {category} and {c}", t.line);
                }
                items.push(item);
            }
            other => {
                if items.is_empty() {
                    bail!("{source}:{}: loop_ has no data item names", loop_token.line);
                }
                return Ok((category, items, other));
            }
        }
    }
}

/// Feed the loop's values to `on_row` one row at a time; returns the first token after the
/// loop. When the first row sits on one line (as wwPDB and every common writer do), every row
/// must: a row that runs onto the next line lacks a value, a line with more values has too
/// many, and both are reported at their line rather than as a shifted column much later.
fn stream_loop_rows<'a>(
    tokens: &mut CifTokenizer<'a>,
    first: Option<Token<'a>>,
    ncols: usize,
    loop_line: usize,
    source: &str,
    mut on_row: impl FnMut(&[Token<'a>]) -> Result<()>,
) -> Result<Option<Token<'a>>> {
    let mut row: Vec<Token<'a>> = Vec::with_capacity(ncols);
    let mut one_row_per_line: Option<bool> = None;
    let mut previous_row_line = 0usize;
    let mut pending = first;
    while let Some(token) = pending.take() {
        if token.kind != TokenKind::Value {
            pending = Some(token);
            break;
        }
        if row.is_empty() && one_row_per_line == Some(true) && token.line == previous_row_line {
            bail!(
                "{source}:{}: this line has more values than the {ncols} columns of the loop_ \
                 at line {loop_line}",
                token.line
            );
        }
        if let Some(start) = row.first() {
            if one_row_per_line == Some(true) && token.line != start.line {
                bail!(
                    "{source}:{}: row has {} values, but the loop_ at line {loop_line} has {ncols} \
                     columns (a value is missing)",
                    start.line,
                    row.len()
                );
            }
        }
        row.push(token);
        if row.len() == ncols {
            let single_line = row[0].line == row[ncols - 1].line;
            one_row_per_line.get_or_insert(single_line);
            previous_row_line = row[ncols - 1].line;
            on_row(&row)?;
            row.clear();
        }
        pending = tokens.next_token()?;
    }
    if let Some(start) = row.first() {
        bail!(
            "{source}:{}: the last row has {} values, but the loop_ at line {loop_line} has \
             {ncols} columns (a value is missing or the file is truncated)",
            start.line,
            row.len()
        );
    }
    Ok(pending)
}

fn skip_loop_values<'a>(
    tokens: &mut CifTokenizer<'a>,
    first: Option<Token<'a>>,
    ncols: usize,
    loop_line: usize,
    source: &str,
) -> Result<Option<Token<'a>>> {
    let mut count = 0usize;
    let mut last_line = loop_line;
    let mut pending = first;
    while let Some(token) = pending.take() {
        if token.kind != TokenKind::Value {
            pending = Some(token);
            break;
        }
        count += 1;
        last_line = token.line;
        pending = tokens.next_token()?;
    }
    if count % ncols != 0 {
        bail!(
            "{source}:{last_line}: the loop_ at line {loop_line} has {count} values, not a \
             multiple of its {ncols} columns"
        );
    }
    Ok(pending)
}

// ---------------------------------------------------------------------------------------
// Residue assembly (both formats)
// ---------------------------------------------------------------------------------------

/// The atom records at one residue position, in file order.
struct Site {
    key: ResidueKey,
    atoms: Vec<usize>,
}

/// How a residue position is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SiteClass {
    Polymer,
    /// A `HETATM` residue of unknown name: kept only when peptide-bonded to the chain.
    Candidate,
    Excluded,
}

/// A residue position resolved to one residue name, before the CA check.
struct ResolvedSite {
    key: ResidueKey,
    name: String,
    class: SiteClass,
    hetatm: bool,
    line: usize,
    n: Option<[f32; 3]>,
    ca: Option<[f32; 3]>,
    c: Option<[f32; 3]>,
    cb: Option<[f32; 3]>,
}

fn assemble_chains(parsed: ParsedAtoms) -> (Vec<Chain>, Vec<SkippedResidue>) {
    let (sites, chain_order) = group_sites(&parsed.atoms);
    let mut by_chain: HashMap<String, Vec<ResolvedSite>> = HashMap::new();
    for site in &sites {
        let resolved = resolve_site(site, &parsed.atoms, &parsed.modres);
        if resolved.class != SiteClass::Excluded {
            by_chain.entry(site.key.0.clone()).or_default().push(resolved);
        }
    }
    let mut chains = Vec::new();
    let mut skipped = Vec::new();
    for id in chain_order {
        let Some(sites) = by_chain.remove(&id) else {
            continue;
        };
        let residues = build_chain_residues(sites, &parsed.modres, &mut skipped);
        if !residues.is_empty() {
            chains.push(Chain { id, residues });
        }
    }
    (chains, skipped)
}

/// Group atom records by (chain, number, insertion code) in order of first appearance;
/// waters are dropped here. Returns the sites and the chain names in file order.
fn group_sites(atoms: &[AtomRecord]) -> (Vec<Site>, Vec<String>) {
    let mut sites: Vec<Site> = Vec::new();
    let mut index: HashMap<ResidueKey, usize> = HashMap::new();
    let mut chain_order: Vec<String> = Vec::new();
    for (i, atom) in atoms.iter().enumerate() {
        if is_water(&atom.res_name) {
            continue;
        }
        let key = atom.key();
        let slot = *index.entry(key.clone()).or_insert_with(|| {
            if !chain_order.contains(&key.0) {
                chain_order.push(key.0.clone());
            }
            sites.push(Site { key: key.clone(), atoms: Vec::new() });
            sites.len() - 1
        });
        sites[slot].atoms.push(i);
    }
    (sites, chain_order)
}

fn resolve_site(site: &Site, atoms: &[AtomRecord], modres: &HashMap<ResidueKey, String>) -> ResolvedSite {
    let records: Vec<&AtomRecord> = site.atoms.iter().map(|&i| &atoms[i]).collect();
    let name = choose_residue_name(&records).to_string();
    let own: Vec<&AtomRecord> = records.iter().copied().filter(|a| a.res_name == name).collect();
    let class = classify_site(&name, &own, modres.contains_key(&site.key));
    let atom = |atom_name: &str| pick_atom(&records, &name, atom_name);
    ResolvedSite {
        key: site.key.clone(),
        class,
        hetatm: own[0].hetatm,
        line: own[0].line,
        n: atom("N"),
        ca: atom("CA"),
        c: atom("C"),
        cb: atom("CB"),
        name,
    }
}

/// Microheterogeneity: the residue name whose altloc-labelled atoms reach the highest
/// occupancy (atoms without altloc are shared and do not discriminate); ties go to the name
/// seen first.
fn choose_residue_name<'a>(records: &[&'a AtomRecord]) -> &'a str {
    let mut names: Vec<(&str, f32, f32)> = Vec::new(); // (name, best altloc occ, best occ)
    for &atom in records {
        let alt_occ = if atom.has_alt_loc { atom.occupancy } else { f32::NEG_INFINITY };
        match names.iter_mut().find(|(n, _, _)| *n == atom.res_name) {
            Some(entry) => {
                entry.1 = entry.1.max(alt_occ);
                entry.2 = entry.2.max(atom.occupancy);
            }
            None => names.push((&atom.res_name, alt_occ, atom.occupancy)),
        }
    }
    let score = |&(_, alt, any): &(&str, f32, f32)| if alt.is_finite() { alt } else { any };
    let mut best = names[0];
    for entry in &names[1..] {
        if score(entry) > score(&best) {
            best = *entry;
        }
    }
    best.0
}

/// The coordinates of one atom of the chosen residue: its own records first, else a record
/// without altloc written under another name at the same position (shared backbone); among
/// those, the highest occupancy, ties to the first in the file.
fn pick_atom(records: &[&AtomRecord], res_name: &str, atom_name: &str) -> Option<[f32; 3]> {
    let best = |own: bool| {
        let mut found: Option<&AtomRecord> = None;
        for atom in records.iter().filter(|a| a.atom_name == atom_name) {
            let eligible = if own { atom.res_name == res_name } else { !atom.has_alt_loc };
            if eligible && found.is_none_or(|f| atom.occupancy > f.occupancy) {
                found = Some(atom);
            }
        }
        found.map(|a| a.xyz)
    };
    best(true).or_else(|| best(false))
}

fn classify_site(name: &str, own: &[&AtomRecord], in_modres: bool) -> SiteClass {
    let first = own[0];
    if is_nucleotide(name) {
        return SiteClass::Excluded;
    }
    if first.polymer == Some(true) || !first.hetatm {
        return SiteClass::Polymer;
    }
    if in_modres {
        return SiteClass::Polymer;
    }
    if own.iter().any(|a| a.after_ter) {
        return SiteClass::Excluded;
    }
    if modified_parent(name).is_some() {
        SiteClass::Polymer
    } else {
        SiteClass::Candidate
    }
}

/// Residues of one chain: candidates kept when peptide-bonded to a neighbour, residues
/// without CA reported, one-letter codes assigned.
fn build_chain_residues(
    sites: Vec<ResolvedSite>,
    modres: &HashMap<ResidueKey, String>,
    skipped: &mut Vec<SkippedResidue>,
) -> Vec<Residue> {
    let keep: Vec<bool> = (0..sites.len()).map(|i| keep_site(&sites, i)).collect();
    let mut residues = Vec::new();
    for (site, keep) in sites.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        let Some(ca) = site.ca else {
            skipped.push(SkippedResidue {
                chain: site.key.0.clone(),
                number: site.key.1,
                ins_code: site.key.2,
                name: site.name.clone(),
                line: site.line,
                reason: "no CA atom".to_string(),
            });
            continue;
        };
        let (one_letter, modification) = residue_code(&site.name, modres.get(&site.key));
        residues.push(Residue {
            number: site.key.1,
            ins_code: site.key.2,
            name: site.name,
            one_letter,
            hetatm: site.hetatm,
            modification,
            n: site.n,
            ca,
            c: site.c,
            cb: site.cb,
        });
    }
    residues
}

/// Polymer sites are kept; a candidate only when its N-CA-C backbone is peptide-bonded
/// (C–N < 2.0 Å; a peptide bond is 1.33 Å) to the previous or next site of the chain.
fn keep_site(sites: &[ResolvedSite], i: usize) -> bool {
    const PEPTIDE_BOND_MAX: f32 = 2.0;
    let site = &sites[i];
    match site.class {
        SiteClass::Polymer => true,
        SiteClass::Excluded => false,
        SiteClass::Candidate => {
            let (Some(n), Some(_), Some(c)) = (site.n, site.ca, site.c) else {
                return false;
            };
            let bonded_before =
                i.checked_sub(1).and_then(|p| sites[p].c).is_some_and(|prev_c| distance(prev_c, n) < PEPTIDE_BOND_MAX);
            let bonded_after =
                sites.get(i + 1).and_then(|s| s.n).is_some_and(|next_n| distance(c, next_n) < PEPTIDE_BOND_MAX);
            bonded_before || bonded_after
        }
    }
}

/// One-letter code and modification of a residue name: standard residues first, then the
/// file's own MODRES parent, then the built-in table, else `X`.
fn residue_code(name: &str, modres_parent: Option<&String>) -> (char, Option<Modification>) {
    if let Some(code) = standard_code(name) {
        return (code, None);
    }
    let from_file = modres_parent.and_then(|p| standard_code(p).map(|c| (c, p.clone(), ModificationSource::ModRes)));
    let from_table = || {
        modified_parent(name)
            .and_then(|p| standard_code(p).map(|c| (c, p.to_string(), ModificationSource::BuiltinTable)))
    };
    match from_file.or_else(from_table) {
        Some((code, parent, source)) => (code, Some(Modification { parent, source })),
        None => ('X', None),
    }
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}

// ---------------------------------------------------------------------------------------
// Residue names
// ---------------------------------------------------------------------------------------

/// One-letter code of the standard amino acids and the ambiguity / rare codes of the ESM
/// alphabet (SEC→U, PYL→O, ASX→B, GLX→Z, UNK→X), plus the common protonation-state names
/// of simulation files (HID/HIE/HIP, CYX/CYM, LYN).
pub fn standard_code(name: &str) -> Option<char> {
    let code = match name {
        "ALA" => 'A',
        "ARG" => 'R',
        "ASN" => 'N',
        "ASP" => 'D',
        "CYS" => 'C',
        "GLN" => 'Q',
        "GLU" => 'E',
        "GLY" => 'G',
        "HIS" => 'H',
        "ILE" => 'I',
        "LEU" => 'L',
        "LYS" => 'K',
        "MET" => 'M',
        "PHE" => 'F',
        "PRO" => 'P',
        "SER" => 'S',
        "THR" => 'T',
        "TRP" => 'W',
        "TYR" => 'Y',
        "VAL" => 'V',
        "SEC" => 'U',
        "PYL" => 'O',
        "ASX" => 'B',
        "GLX" => 'Z',
        "UNK" => 'X',
        "HID" | "HIE" | "HIP" => 'H',
        "CYX" | "CYM" => 'C',
        "LYN" => 'K',
        _ => return None,
    };
    Some(code)
}

/// Built-in parents of common modified amino acids (wwPDB Chemical Component Dictionary
/// `mon_nstd_parent_comp_id`; D-amino acids mapped to their L form), used when the file has
/// no `MODRES` / `_pdbx_struct_mod_residue` entry for the residue.
pub fn modified_parent(name: &str) -> Option<&'static str> {
    let parent = match name {
        "MSE" | "MSO" | "FME" | "CXM" | "SME" | "MHO" | "MED" => "MET",
        "SEP" | "SAC" | "DSN" => "SER",
        "TPO" | "DTH" => "THR",
        "PTR" | "TYS" | "TPQ" | "DTY" => "TYR",
        "CSO" | "CSD" | "CME" | "CSS" | "CAS" | "OCS" | "SCH" | "SMC" | "CSX" | "CMT" | "SNC" | "CCS" | "YCM"
        | "CSW" | "DCY" => "CYS",
        "MLY" | "M3L" | "MLZ" | "ALY" | "KCX" | "LLP" | "KPI" | "DLY" => "LYS",
        "HYP" | "DPR" => "PRO",
        "CGU" | "DGL" => "GLU",
        "PCA" | "DGN" => "GLN",
        "MEN" | "DSG" => "ASN",
        "NEP" | "HIC" | "DHI" => "HIS",
        "AIB" | "ABA" | "DAL" => "ALA",
        "NLE" | "MLE" | "DLE" => "LEU",
        "MVA" | "DVA" => "VAL",
        "DIL" => "ILE",
        "DAR" => "ARG",
        "DAS" => "ASP",
        "DPN" => "PHE",
        "TRQ" | "DTR" => "TRP",
        _ => return None,
    };
    Some(parent)
}

fn is_water(name: &str) -> bool {
    matches!(name, "HOH" | "WAT" | "DOD" | "H2O" | "SOL" | "TIP" | "TIP3")
}

/// Standard ribo- and deoxyribonucleotides: polymer residues that are not protein.
fn is_nucleotide(name: &str) -> bool {
    matches!(name, "A" | "C" | "G" | "U" | "I" | "N" | "DA" | "DC" | "DG" | "DT" | "DU" | "DI")
}

// ---------------------------------------------------------------------------------------
// Virtual C-beta
// ---------------------------------------------------------------------------------------

/// Virtual C-beta from the backbone (ideal tetrahedral geometry, as in trRosetta and the
/// ESM/contact-dataset labels): `b = CA − N`, `c = C − CA`, `a = b × c`,
/// `CB = −0.58273431·a + 0.56802827·b − 0.54067466·c + CA`. Computed in f64 like the dataset.
pub fn virtual_cb(n: [f32; 3], ca: [f32; 3], c: [f32; 3]) -> [f32; 3] {
    let f = |v: [f32; 3]| v.map(f64::from);
    let (n, ca, c) = (f(n), f(ca), f(c));
    let b = [ca[0] - n[0], ca[1] - n[1], ca[2] - n[2]];
    let cc = [c[0] - ca[0], c[1] - ca[1], c[2] - ca[2]];
    // a = b × c, perpendicular to the N-CA-C plane
    let a = [b[1] * cc[2] - b[2] * cc[1], b[2] * cc[0] - b[0] * cc[2], b[0] * cc[1] - b[1] * cc[0]];
    let mut cb = [0f32; 3];
    for k in 0..3 {
        cb[k] = (-0.58273431 * a[k] + 0.56802827 * b[k] - 0.54067466 * cc[k] + ca[k]) as f32;
    }
    cb
}
