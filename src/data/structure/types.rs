//! The public result of the structure reader: [`Structure`] → [`Chain`] → [`Residue`], the
//! residues left out ([`SkippedResidue`]), and where a residue's C-beta comes from
//! ([`CbMode`], [`virtual_cb`]). No parsing here: this changes only when callers need more
//! from a structure (the contact code reads `cb_coords` / `ca_coords`).

use std::fmt;

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

pub(super) fn residue_label(number: i32, ins_code: Option<char>) -> String {
    match ins_code {
        Some(c) => format!("{number}{c}"),
        None => number.to_string(),
    }
}

pub(super) fn chain_display(id: &str) -> &str {
    if id.is_empty() {
        "(blank)"
    } else {
        id
    }
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
